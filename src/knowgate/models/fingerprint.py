"""Model identity: a fingerprint that changes when a loaded model's weights change.

Caches of model outputs (closed-book runs, retrieval-branch runs) are keyed by it, so answers
of one set of weights are never reused for another. Hashing multi-gigabyte checkpoints on every
run would be slow, so the fingerprint reads what identifies the weights cheaply: the packaged
or GGUF file's SHA-256 (memoised by the model cache), the small files and the ends of large
ones in a local checkpoint directory, the pinned revision of a hub id.
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from knowgate.checkpoint_cache import sha256_file
from knowgate.errors import ModelLoadError
from knowgate.models.config import ModelConfig
from knowgate.models.loading import adapter_model_id, adapter_sha256, resolve_source


class Fingerprinted(Protocol):
    """What a fingerprint reads: a model's configured source, its id and its weights.

    A :class:`~knowgate.models.LanguageModel` (declared structurally, so the language model
    can ask for its own fingerprint without an import cycle).
    """

    config: ModelConfig
    model_id: str
    model: Any


log = logging.getLogger(__name__)

_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _sha256_path_stats(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for p in sorted(paths):
        digest.update(f"{p.name}:{p.stat().st_size}\n".encode())
        if p.suffix in {".json", ".txt", ".model"} or p.stat().st_size < (1 << 20):
            digest.update(p.read_bytes())
        else:  # large weight file: hash head and tail (full reads of GBs per run are too slow)
            with p.open("rb") as fh:
                digest.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read(1 << 20))
    return digest.hexdigest()


def _hash_parameters(model: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(lm: Fingerprinted) -> str:
    """A string that changes when the model's weights change (memoised per instance).

    Packaged and GGUF models: SHA-256 of the GGUF file. Local directories: digests of the config,
    tokenizer and weight files. Hub ids: the pinned revision (``unpinned`` warns). A LoRA adapter
    merged into any of these adds ``+lora:`` and the adapter's SHA-256. Anything else (a model
    wrapped in memory, an adapter changed on disk since loading): SHA-256 of every parameter.
    """
    if lm in _FINGERPRINTS:
        return _FINGERPRINTS[lm]
    try:
        resolved = resolve_source(lm.config.source)
    except ModelLoadError:
        resolved = None
    adapter, suffix = lm.config.adapter, ""
    if resolved is not None and adapter is not None:
        try:
            sha = adapter_sha256(adapter)
        except ModelLoadError:
            sha = ""
        if sha and adapter_model_id(resolved.model_id, adapter, sha) == lm.model_id:
            resolved, suffix = replace(resolved, model_id=lm.model_id), f"+lora:{sha}"
        else:
            resolved = None
    if resolved is not None and resolved.model_id != lm.model_id:
        resolved = None  # the wrapped model is not what the config names
    if resolved is None:
        fingerprint = "params:" + _hash_parameters(lm.model)
    elif resolved.kind == "packaged" and resolved.packaged is not None:
        fingerprint = "gguf:" + resolved.packaged.sha256()
    elif resolved.kind == "gguf":
        fingerprint = "gguf:" + sha256_file(Path(resolved.location))
    elif resolved.kind == "local":
        files = [p for p in Path(resolved.location).iterdir() if p.is_file()]
        fingerprint = "dir:" + _sha256_path_stats(files)
    else:
        revision = lm.config.revision
        if revision is None:
            log.warning(
                "hub model %s has no pinned revision; caches keyed by its fingerprint cannot "
                "detect upstream weight changes (set model.revision to a commit)",
                lm.model_id,
            )
        fingerprint = f"hub:{revision or 'unpinned'}"
    if resolved is not None:
        fingerprint += suffix
    _FINGERPRINTS[lm] = fingerprint
    return fingerprint


def inherit_fingerprint(parent: Fingerprinted, child: Fingerprinted) -> None:
    """Let ``child`` (the same weights under another prompt) reuse ``parent``'s fingerprint.

    Used by :meth:`knowgate.models.LanguageModel.with_prompt`; a no-op until the parent's is
    computed.
    """
    if parent in _FINGERPRINTS and child.model is parent.model:
        _FINGERPRINTS[child] = _FINGERPRINTS[parent]
