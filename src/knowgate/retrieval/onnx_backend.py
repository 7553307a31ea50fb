"""ONNX Runtime embedding backends: the embedding model exported once, cached, run without torch.

sentence-transformers has ``backend="onnx"`` itself, but it needs ``optimum-onnx``, whose every
release pins ``transformers<4.58`` (knowgate runs on transformers 5), and it exports through the
model hub's file layout. So knowgate exports the model's transformer with PyTorch's own ONNX
exporter (``torch.onnx.export``, the ``torch.export``-based one: the older TorchScript tracer bakes
transformers 5's attention-mask logic in as constants and gets padded batches wrong), optionally
quantises it with ONNX Runtime's dynamic int8 quantiser, and runs it with ONNX Runtime.

Only the transformer runs in ONNX Runtime. Tokenisation and every module after the transformer
(pooling, normalisation, dense layers) are the sentence-transformers model's own, so the vectors
are the model's, whatever its pooling.

Exports are cached under ``<knowgate cache>/embeddings/<key>/`` (``$KNOWGATE_CACHE_DIR``, else
the user's cache directory), keyed by the model files, the backend and the exporter versions, and
checked against their recorded SHA-256 on every load: a missing, truncated or altered export is
rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from knowgate.checkpoint_cache import cached_checkpoint, default_cache_dir
from knowgate.errors import MissingPackageError, ModelLoadError
from knowgate.retrieval.config import EmbeddingBackend

if TYPE_CHECKING:
    import onnxruntime
    import torch
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

ONNX_EXTRA_COMMAND = "pip install 'knowgate[onnx]'"
CACHE_FOLDER = "embeddings"
MODEL_FILE = "model.onnx"
OUTPUT_NAME = "last_hidden_state"
#: Inputs a BERT-like transformer takes, in the order the exported graph declares them.
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
#: Bump when the export or quantisation recipe changes, so old cache entries are not reused.
_RECIPE = 1
_OPSET = 18


def require_onnxruntime(backend: str) -> ModuleType:
    """Import ONNX Runtime, or say which extra installs it.

    Raises:
        MissingPackageError: ``onnxruntime`` (or the exporter's ``onnx``/``onnxscript``) is
            not installed.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingPackageError(
            f"embedding_backend {backend!r} needs ONNX Runtime, which is not installed. "
            f"Install it with:\n  {ONNX_EXTRA_COMMAND}\nor set embedding_backend: torch."
        ) from exc
    return onnxruntime


def _require_exporter(backend: str) -> None:
    """The exporter's own dependencies, checked before minutes of work start."""
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError as exc:
            raise MissingPackageError(
                f"exporting the embedding model for embedding_backend {backend!r} needs the "
                f"package {module!r}, which is not installed. Install it with:\n"
                f"  {ONNX_EXTRA_COMMAND}"
            ) from exc


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


def export_key(model_id: str, location: Path, backend: EmbeddingBackend) -> str:
    """The cache key of an export: model files (size, mtime), backend, recipe, tool versions.

    A changed model folder, or another torch / ONNX Runtime, gets a fresh export rather than a
    stale one; sizes and modification times are enough to notice a replaced file without
    reading the weights on every load.
    """
    files = {
        path.relative_to(location).as_posix(): [path.stat().st_size, path.stat().st_mtime_ns]
        for path in sorted(location.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }
    material = {
        "model_id": model_id,
        "files": files,
        "backend": backend,
        "recipe": _RECIPE,
        "opset": _OPSET,
        "versions": {
            p: _version(p) for p in ("torch", "transformers", "onnxruntime", "onnx", "onnxscript")
        },
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _transformer_module(model: SentenceTransformer, model_id: str) -> Any:
    """The model's first module, which must hold a Hugging Face transformer (``.auto_model``)."""
    first = model[0]
    if getattr(first, "auto_model", None) is None:
        raise ModelLoadError(
            f"embedding model {model_id!r} does not start with a transformer module "
            f"(it starts with {type(first).__name__}); the ONNX backends export only "
            "transformer-based sentence-transformers models. Use embedding_backend: torch."
        )
    return first


def _tokenize(model: SentenceTransformer, texts: list[str]) -> dict[str, Any]:
    """Model inputs for ``texts`` (sentence-transformers 6 ``preprocess``, earlier ``tokenize``)."""
    preprocess = getattr(model, "preprocess", None) or model.tokenize
    return dict(preprocess(texts))


def _export_float32(model: SentenceTransformer, model_id: str, directory: Path) -> None:
    """Write the transformer as ``directory/model.onnx`` with dynamic batch and sequence axes."""
    import torch

    transformer = _transformer_module(model, model_id).auto_model
    probe = _tokenize(model, ["a probe sentence for the exporter", "and a second, longer one"])
    names = [name for name in _INPUT_NAMES if name in probe]

    class HiddenStates(torch.nn.Module):
        """The transformer with positional tensor inputs and its token embeddings as output."""

        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra)
            return out.last_hidden_state

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    log.info("exporting embedding model %s to ONNX in %s", model_id, directory)
    with torch.no_grad():
        torch.onnx.export(
            HiddenStates().eval(),
            tuple(probe[name] for name in names),
            str(directory / MODEL_FILE),
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
            opset_version=_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _quantize_int8(source: Path, directory: Path) -> None:
    """Dynamic int8 quantisation of the float32 export ``source`` (its matrix products).

    Weights are quantised per output channel ahead of time, activations per batch at run time,
    so no calibration data is needed. Only ``MatMul`` is quantised: it is where the time goes,
    and leaving the embedding lookup and layer norms in float32 keeps their precision.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.info("quantising %s to int8 in %s", source, directory)
    quantize_dynamic(
        str(source),
        str(directory / MODEL_FILE),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )


def exported_model(
    model: SentenceTransformer,
    model_id: str,
    location: Path,
    backend: EmbeddingBackend,
    cache_dir: Path | None = None,
) -> Path:
    """The cached ONNX file for ``backend``, exported (and quantised) first if needed.

    ``onnx-int8`` is quantised from the cached ``onnx`` export, which is built first if missing.

    Raises:
        MissingPackageError: the ``onnx`` extra is not installed.
        ModelLoadError: the model cannot be exported, or the cache is not writable.
    """
    if backend == "torch":
        raise ValueError("the torch backend has no ONNX export")
    require_onnxruntime(backend)
    cache_dir = cache_dir or default_cache_dir()

    def build(directory: Path) -> None:
        _require_exporter(backend)
        if backend == "onnx-int8":
            _quantize_int8(exported_model(model, model_id, location, "onnx", cache_dir), directory)
            return
        try:
            _export_float32(model, model_id, directory)
        except ModelLoadError:
            raise
        except Exception as exc:  # the exporter raises many types; all mean "cannot export"
            raise ModelLoadError(
                f"cannot export embedding model {model_id!r} to ONNX: {exc}. "
                "Use embedding_backend: torch."
            ) from exc

    entry = cached_checkpoint(
        export_key(model_id, location, backend),
        cache_dir,
        build,
        source=f"{model_id} ({backend})",
        folder=CACHE_FOLDER,
        verify_files=True,
    )
    return entry / MODEL_FILE


class OnnxEncoder:
    """Embeds texts with an ONNX export of a sentence-transformers model.

    Args:
        model: the model, loaded with torch: its tokenizer and post-transformer modules are
            used as they are; its transformer is replaced by the ONNX session.
        model_file: the exported ``model.onnx``.
        backend: the backend name, for messages.
        threads: ONNX Runtime intra-op threads; ``None`` takes torch's current setting, so one
            ``torch.set_num_threads`` governs both backends alike.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        model_file: Path,
        backend: EmbeddingBackend,
        *,
        model_id: str,
        threads: int | None = None,
    ) -> None:
        import torch

        ort = require_onnxruntime(backend)
        transformer = _transformer_module(model, model_id)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self._session: onnxruntime.InferenceSession = ort.InferenceSession(
                str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise ModelLoadError(
                f"ONNX Runtime cannot load the exported embedding model {model_file}: {exc}. "
                f"Delete {model_file.parent} to export it again."
            ) from exc
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._model = model
        self._output_name = getattr(transformer, "module_output_name", "token_embeddings")
        self._tail = list(model)[1:]
        self.model_file = model_file

    def encode(self, texts: Sequence[str], *, batch_size: int, progress: bool) -> np.ndarray:
        """Unit vectors for ``texts``, as an ``(n, dimension)`` float32 array, in input order.

        Texts are batched longest first, as sentence-transformers does, so a batch pads to
        similar lengths.
        """
        import torch
        from tqdm.auto import tqdm

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        chunks: list[np.ndarray] = []
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="embedding (onnx)", disable=not progress):
            features = _tokenize(self._model, [texts[i] for i in order[start : start + batch_size]])
            feed = {name: features[name].numpy() for name in self._input_names}
            (hidden,) = self._session.run([OUTPUT_NAME], feed)
            features[self._output_name] = torch.from_numpy(hidden)
            with torch.inference_mode():
                for module in self._tail:
                    features = module(features)
                vectors = torch.nn.functional.normalize(features["sentence_embedding"], dim=-1)
            chunks.append(vectors.numpy())
        stacked = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
        out = np.empty_like(stacked)
        out[np.asarray(order, dtype=np.int64)] = stacked
        return out
