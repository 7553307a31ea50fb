"""Resolve a model source (packaged name, hub id, local directory, GGUF file) and load it."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from knowgate.errors import ModelLoadError, UnknownModelError
from knowgate.models.cache import cached_checkpoint, default_cache_dir, sha256_file
from knowgate.models.config import ModelConfig
from knowgate.models.packaged import PACKAGED_MODELS, PackagedModel

log = logging.getLogger(__name__)

SourceKind = Literal["packaged", "gguf", "local", "hub"]


@dataclass(frozen=True)
class ResolvedSource:
    """Where a model's weights come from.

    Attributes:
        kind: packaged model, GGUF file, local directory or hub id.
        model_id: the identifier recorded in traces and policy artifacts.
        location: path or hub id to load from.
        packaged: the packaged-model entry, for ``kind == "packaged"``.
    """

    kind: SourceKind
    model_id: str
    location: str
    packaged: PackagedModel | None = None


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


def resolve_source(source: str) -> ResolvedSource:
    """Classify a model source, raising a helpful error for names we cannot place."""
    if source in PACKAGED_MODELS:
        return ResolvedSource("packaged", source, source, PACKAGED_MODELS[source])
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ResolvedSource("gguf", str(path.resolve()), str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory but has no config.json: not a model dir")
        return ResolvedSource("local", str(path.resolve()), str(path.resolve()))
    if _looks_like_hub_id(source):
        return ResolvedSource("hub", source, source)
    known = ", ".join(sorted(PACKAGED_MODELS))
    raise UnknownModelError(
        f"unknown model {source!r}. Known packaged models: {known}; or pass a Hugging Face hub id "
        f"(org/name), a local model directory, or a .gguf file."
    )


def _dequantize_into(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    """Load a GGUF checkpoint with transformers and save it as a plain float32 checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s (once; later loads use the cache)", gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The GGUF quantizer marks the model as non-serialisable, but the weights are already plain
    # float32 tensors after dequantization; drop the marker so save_pretrained writes them.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _checkpoint_from_gguf(resolved: ResolvedSource, cache_dir: Path) -> Path:
    if resolved.packaged is not None:
        packaged = resolved.packaged
        checksum = packaged.sha256()  # also raises MissingPackageError with the pip command

        def build(out: Path) -> None:
            parts = packaged.part_paths()
            if len(parts) == 1:
                _dequantize_into(parts[0].parent, parts[0].name, out)
                return
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                assembled = Path(tmp) / packaged.gguf_name
                with assembled.open("wb") as fh:
                    for block in packaged.iter_bytes():
                        fh.write(block)
                _dequantize_into(Path(tmp), assembled.name, out)

        return cached_checkpoint(checksum, cache_dir, build, source=f"packaged:{packaged.name}")

    path = Path(resolved.location)
    checksum = sha256_file(path)
    return cached_checkpoint(
        checksum,
        cache_dir,
        lambda out: _dequantize_into(path.parent, path.name, out),
        source=str(path),
    )


def load_pretrained(config: ModelConfig) -> tuple[Any, Any, ResolvedSource]:
    """Load the torch model and tokenizer described by ``config``.

    Returns:
        ``(model, tokenizer, resolved_source)``; the model is in eval mode on ``config.device``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_source(config.source)
    cache_dir = config.cache_dir or default_cache_dir()
    start = time.perf_counter()
    if resolved.kind in ("packaged", "gguf"):
        location: str = str(_checkpoint_from_gguf(resolved, cache_dir))
        kwargs: dict[str, Any] = {}
    else:
        location = resolved.location
        kwargs = {"revision": config.revision} if config.revision else {}
    dtype = getattr(torch, config.dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except OSError as exc:
        hint = (
            " This machine may have no access to the Hugging Face hub; packaged models "
            f"({', '.join(sorted(PACKAGED_MODELS))}) work offline."
            if resolved.kind == "hub"
            else ""
        )
        raise ModelLoadError(f"could not load model {config.source!r}: {exc}.{hint}") from exc
    model = model.to(config.device).eval()  # type: ignore[arg-type]  # transformers stub
    log.info("loaded %s in %.1f s", resolved.model_id, time.perf_counter() - start)
    return model, tokenizer, resolved


def clear_cache(cache_dir: Path | None = None) -> None:
    """Delete every cached dequantized checkpoint."""
    shutil.rmtree((cache_dir or default_cache_dir()) / "dequantized", ignore_errors=True)
