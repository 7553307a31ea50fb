"""Resolve a model source (packaged name, hub id, local directory, GGUF file) and load it."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from knowgate.checkpoint_cache import cached_checkpoint, default_cache_dir, sha256_file, sha256_of
from knowgate.errors import MissingPackageError, ModelLoadError, UnknownModelError
from knowgate.models.config import ADAPTER_CONFIG_FILE, ModelConfig, adapter_base_model
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
        adapter_sha256: SHA-256 of the LoRA adapter merged into the weights, if any (it is part
            of ``model_id``).
    """

    kind: SourceKind
    model_id: str
    location: str
    packaged: PackagedModel | None = None
    adapter_sha256: str | None = None


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
        if (path / ADAPTER_CONFIG_FILE).is_file() and not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a LoRA adapter, not a model: load it through ModelConfig(source=...) "
                "or ModelConfig(adapter=...), which find its base model"
            )
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


ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


def adapter_sha256(directory: Path) -> str:
    """SHA-256 over an adapter's config and weights (the identity of a fine-tuned model).

    Raises:
        ModelLoadError: the directory lacks ``adapter_config.json`` or the safetensors weights.
    """
    files = [directory / ADAPTER_CONFIG_FILE, directory / ADAPTER_WEIGHTS_FILE]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise ModelLoadError(f"adapter {directory} lacks {', '.join(missing)} (peft format)")

    def blocks() -> Any:
        for path in files:
            yield f"{path.name}\n".encode()
            yield path.read_bytes()

    return sha256_of(blocks())


def adapter_model_id(base_id: str, directory: Path, sha256: str) -> str:
    """``<base>+<adapter folder>@<sha256[:12]>``: a fine-tuned model is a different model."""
    return f"{base_id}+{directory.name}@{sha256[:12]}"


def apply_adapter(model: Any, directory: Path, base_source: str) -> Any:
    """Load a LoRA adapter onto ``model`` with peft and merge it into the weights.

    Merging leaves a plain transformers model, so hooks, decoding and speed are those of the
    base model.

    Raises:
        MissingPackageError: peft is not installed.
        ModelLoadError: the adapter names another base model or does not fit this one.
    """
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise MissingPackageError(
            "loading a LoRA adapter needs the peft package: pip install 'knowgate[study]'"
        ) from exc
    try:
        named_base = adapter_base_model(directory)
    except ValueError:
        named_base = None
    if named_base is not None and not _same_model(named_base, base_source):
        raise ModelLoadError(
            f"adapter {directory} was trained on {named_base!r}, not on {base_source!r}"
        )
    expected = _adapter_shapes(directory)
    modules = dict(model.named_modules())
    for key, shape in expected.items():
        problem = _adapter_key_problem(key, shape, modules)
        if problem:
            raise ModelLoadError(
                f"adapter {directory} does not fit base model {base_source!r}: {problem}"
            )
    try:
        peft_model = PeftModel.from_pretrained(model, str(directory), is_trainable=False)
        return peft_model.merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"adapter {directory} does not fit base model {base_source!r}: {exc}"
        ) from exc


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return resolve_source(a).model_id == resolve_source(b).model_id
    except ModelLoadError:
        return False


def _adapter_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    path = directory / ADAPTER_WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(f"adapter {directory} has no {ADAPTER_WEIGHTS_FILE}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _adapter_key_problem(key: str, shape: tuple[int, ...], modules: dict[str, Any]) -> str | None:
    """Why a LoRA weight (``base_model.model.<module>.lora_A.weight``) does not fit, if it does not.

    peft itself only warns about adapter weights that match no module, so an adapter for another
    architecture would load as a silent no-op; this check refuses it instead.
    """
    name = key.removeprefix("base_model.model.")
    for part in (".lora_A.weight", ".lora_B.weight"):
        if name.endswith(part):
            target = modules.get(name.removesuffix(part))
            if target is None or not hasattr(target, "in_features"):
                return f"{name.removesuffix(part)!r} is not a linear layer of this model"
            if part == ".lora_A.weight" and shape[-1] != target.in_features:
                return f"{key} expects {shape[-1]} inputs, the layer has {target.in_features}"
            if part == ".lora_B.weight" and shape[0] != target.out_features:
                return f"{key} has {shape[0]} outputs, the layer has {target.out_features}"
            return None
    return None  # other adapter tensors (biases, magnitude vectors) are peft's to check


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
    if config.adapter is not None:
        sha = adapter_sha256(config.adapter)
        model = apply_adapter(model, config.adapter, config.source)
        resolved = replace(
            resolved,
            model_id=adapter_model_id(resolved.model_id, config.adapter, sha),
            adapter_sha256=sha,
        )
    model = model.to(config.device).eval()  # type: ignore[arg-type]  # transformers stub
    log.info("loaded %s in %.1f s", resolved.model_id, time.perf_counter() - start)
    return model, tokenizer, resolved


def clear_cache(cache_dir: Path | None = None) -> None:
    """Delete every cached dequantized checkpoint."""
    shutil.rmtree((cache_dir or default_cache_dir()) / "dequantized", ignore_errors=True)
