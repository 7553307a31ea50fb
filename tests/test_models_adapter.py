"""LoRA adapters as a model source: applied, merged, identified by checksum, refused on mismatch."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from knowgate.errors import ConfigError, MissingPackageError, ModelLoadError
from knowgate.models import ModelConfig
from knowgate.models.loading import adapter_model_id, adapter_sha256, apply_adapter

peft = pytest.importorskip("peft")


def _tiny_llama(hidden: int = 32, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def _save_adapter(model: torch.nn.Module, directory: Path, base: str | None, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    lora = peft.LoraConfig(r=2, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    wrapped = peft.get_peft_model(copy.deepcopy(model), lora)
    wrapped.peft_config["default"].base_model_name_or_path = base
    wrapped.save_pretrained(str(directory), save_embedding_layers=False)
    return directory


def test_adapter_changes_the_merged_weights(tmp_path: Path) -> None:
    base = _tiny_llama()
    directory = _save_adapter(base, tmp_path / "a", base=None)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        before = base(ids).logits
        merged = apply_adapter(copy.deepcopy(base), directory, "tiny")
        after = merged(ids).logits
    assert type(merged) is type(base)  # merged back into a plain transformers model
    assert not torch.allclose(before, after)
    # merging is W + B A * alpha / r on the targeted layers only
    lora_state = dict(peft.utils.load_peft_weights(str(directory)))
    a = lora_state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = lora_state["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    scale = peft.LoraConfig.from_pretrained(str(directory)).lora_alpha / 2
    expected = base.model.layers[0].self_attn.q_proj.weight + scale * b.float() @ a.float()
    assert torch.allclose(merged.model.layers[0].self_attn.q_proj.weight, expected, atol=1e-6)
    assert torch.equal(
        merged.model.layers[0].self_attn.k_proj.weight, base.model.layers[0].self_attn.k_proj.weight
    )


def test_adapter_for_another_shape_is_refused(tmp_path: Path) -> None:
    directory = _save_adapter(_tiny_llama(hidden=32), tmp_path / "a", base=None)
    with pytest.raises(ModelLoadError, match="does not fit"):
        apply_adapter(_tiny_llama(hidden=48), directory, "tiny")


def test_adapter_for_another_architecture_is_refused(tmp_path: Path) -> None:
    directory = _save_adapter(_tiny_llama(), tmp_path / "a", base=None)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64))
    with pytest.raises(ModelLoadError, match="not a linear layer"):
        apply_adapter(gpt2, directory, "tiny-gpt2")


def test_adapter_naming_another_base_is_refused(tmp_path: Path) -> None:
    directory = _save_adapter(_tiny_llama(), tmp_path / "a", base="gemma3-270m")
    with pytest.raises(ModelLoadError, match="trained on 'gemma3-270m'"):
        apply_adapter(_tiny_llama(), directory, "smollm2-135m")


def test_missing_peft_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _save_adapter(_tiny_llama(), tmp_path / "a", base=None)
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingPackageError, match=r"knowgate\[study\]"):
        apply_adapter(_tiny_llama(), directory, "tiny")


def test_checksum_and_model_id(tmp_path: Path) -> None:
    first = _save_adapter(_tiny_llama(), tmp_path / "taught", base=None, seed=1)
    second = _save_adapter(_tiny_llama(), tmp_path / "other", base=None, seed=2)
    sha = adapter_sha256(first)
    assert len(sha) == 64 and sha == adapter_sha256(first)
    assert sha != adapter_sha256(second)
    assert adapter_model_id("smollm2-135m", first, sha) == f"smollm2-135m+taught@{sha[:12]}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        adapter_sha256(tmp_path / "empty")


def test_config_accepts_an_adapter_directory_as_source(tmp_path: Path) -> None:
    directory = tmp_path / "taught"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "smollm2-135m", "peft_type": "LORA"})
    )
    config = ModelConfig(source=str(directory))
    assert config.source == "smollm2-135m" and config.adapter == directory
    assert ModelConfig.from_dict(config.model_dump()) == config  # round trip
    explicit = ModelConfig(source="smollm2-135m", adapter=directory)
    assert explicit == config
    with pytest.raises(ConfigError, match="give one adapter"):
        ModelConfig.from_dict({"source": str(directory), "adapter": str(directory)})
    with pytest.raises(ConfigError, match="not a LoRA adapter directory"):
        ModelConfig.from_dict({"adapter": str(tmp_path)})
    nameless = tmp_path / "nameless"
    nameless.mkdir()
    (nameless / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ConfigError, match="names no base model"):
        ModelConfig.from_dict({"source": str(nameless)})
    with pytest.raises(ConfigError, match="cannot take one"):  # an adapter needs local weights
        ModelConfig.from_dict(
            {"source": "openai:http://127.0.0.1:8080/v1#smollm", "adapter": str(directory)}
        )


@pytest.mark.slow
def test_adapter_on_the_packaged_model(tmp_path: Path, smollm) -> None:
    from knowgate.models import LanguageModel
    from knowgate.models.fingerprint import model_fingerprint

    directory = _save_adapter(smollm.model, tmp_path / "random-adapter", base="smollm2-135m")
    tuned = LanguageModel.load(ModelConfig(source=str(directory)))
    sha = adapter_sha256(directory)
    assert tuned.model_id == f"smollm2-135m+random-adapter@{sha[:12]}"
    prompt = smollm.format_prompt("What is the capital of France?")
    base_logits = smollm.prefill([prompt]).next_logits
    tuned_logits = tuned.prefill([prompt]).next_logits
    assert not torch.allclose(base_logits, tuned_logits)
    assert model_fingerprint(tuned) == f"{model_fingerprint(smollm)}+lora:{sha}"
    other = tmp_path / "mismatched"
    _save_adapter(_tiny_llama(hidden=32), other, base="smollm2-135m")
    with pytest.raises(ModelLoadError, match="does not fit base model 'smollm2-135m'"):
        LanguageModel.load(ModelConfig(source=str(other)))
