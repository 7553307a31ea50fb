"""Layer discovery on real (SmolLM2, Gemma-3) and tiny random (Qwen2, GPT-2, Mistral, Phi) LMs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    MistralConfig,
    PhiConfig,
    Qwen2Config,
)

from knowgate.errors import ConfigError, UnsupportedArchitectureError
from knowgate.models import LanguageModel, ModelConfig, discover_layout


def tiny_configs(vocab: int):
    common = {"vocab_size": vocab}
    return {
        "qwen2": Qwen2Config(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        ),
        "mistral": MistralConfig(
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        ),
        "gpt2": GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=512, **common),
        "phi": PhiConfig(
            hidden_size=32,
            intermediate_size=56,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=512,
            **common,
        ),
    }


def expected_intermediate(cfg) -> int:
    return getattr(cfg, "intermediate_size", None) or 4 * cfg.n_embd


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "gpt2", "phi"])
def test_tiny_random_models(arch, smollm) -> None:
    torch.manual_seed(0)
    cfg = tiny_configs(len(smollm.tokenizer))[arch]
    model = AutoModelForCausalLM.from_config(cfg).eval()
    lm = LanguageModel(model, smollm.tokenizer, model_id=f"tiny-{arch}")
    n_layers = cfg.num_hidden_layers
    assert lm.architecture == arch
    assert lm.layout.num_layers == n_layers
    prompts = [lm.format_prompt("What is the capital of France?"), lm.format_prompt("Hi?")]
    outs = lm.run(prompts, max_new_tokens=4)
    for out in outs:
        assert out.capture.hidden.shape == (n_layers, 32)
        assert out.capture.mlp.shape == (n_layers, expected_intermediate(cfg))
        assert all(math.isfinite(v) for v in out.features().values())
    # The residual capture is the block output: compare with output_hidden_states.
    enc = smollm.tokenizer([prompts[1]], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        ref = model(**enc, output_hidden_states=True).hidden_states
    single = lm.prefill([prompts[1]]).captures[0]
    for i in range(n_layers - 1):
        np.testing.assert_allclose(single.hidden[i], ref[i + 1][0, -1].numpy(), atol=1e-4)
    # The last of hidden_states is the final norm's output: the state demonstration selection
    # reads (the norm is found beside the blocks: norm, ln_f, final_layernorm).
    assert lm.layout.final_norm is not None
    np.testing.assert_allclose(
        lm.final_hidden_states([prompts[1]])[0], ref[-1][0, -1].numpy(), atol=1e-4
    )
    # Left-padded batch row equals the one-by-one capture.
    np.testing.assert_allclose(outs[1].capture.hidden, single.hidden, atol=1e-4)


def test_layer_selection_with_negative_indices(smollm) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_configs(len(smollm.tokenizer))["qwen2"]).eval()
    lm = LanguageModel(
        model, smollm.tokenizer, model_id="tiny", config=ModelConfig(source="x/y", layers=(-1, 0))
    )
    assert lm.layers == (0, 2)
    out = lm.ask("Hello?")
    assert out.capture.layers == (0, 2)
    with pytest.raises(ConfigError, match="out of range"):
        LanguageModel(model, smollm.tokenizer, model_id="t", config=ModelConfig(layers=(5,)))


def test_model_without_blocks_names_its_architecture() -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Cfg", (), {"model_type": "flatnet", "num_hidden_layers": 2})()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(UnsupportedArchitectureError, match="flatnet"):
        discover_layout(Flat())


def test_model_without_mlp_names_its_architecture() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.Linear(4, 4)

    class NoMlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Cfg", (), {"model_type": "attnonly", "num_hidden_layers": 2})()
            self.layers = nn.ModuleList([Block(), Block()])

    with pytest.raises(UnsupportedArchitectureError, match="down-projection.*attnonly"):
        discover_layout(NoMlp())


@pytest.mark.slow
def test_gemma3_real(gemma) -> None:
    assert gemma.architecture == "gemma3_text"
    assert gemma.formatter.style == "few_shot"  # base model: no chat template
    out = gemma.ask("What is the capital of Italy?")
    assert "rome" in out.answer.lower()
    assert out.capture.hidden.shape == (18, 640)
    assert out.capture.mlp.shape == (18, 2048)
    batched = gemma.run(
        [gemma.format_prompt(q) for q in ("What is the capital of Italy?", "Who wrote Hamlet?")]
    )
    assert batched[0].answer == out.answer
    for name, value in batched[0].features().items():
        assert value == pytest.approx(out.features()[name], rel=1e-3, abs=1e-4), name
