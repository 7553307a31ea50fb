"""The runner on the real default model: one pass, every signal, batched == one-by-one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from knowgate.errors import InputError, KnowgateError
from knowgate.models import summarize_logits
from knowgate.signals import compute_features, feature_names

QUESTIONS = [
    "What is the capital of France?",
    "Who wrote the play Hamlet, the tragedy set in Denmark?",
    "What is 2 + 2?",
]


def test_summarize_logits_uniform_and_peaked() -> None:
    vocab = 1000
    token, entropy, logprob, margin = summarize_logits(torch.zeros(1, vocab))
    assert entropy.item() == pytest.approx(math.log(vocab), rel=1e-5)
    assert logprob.item() == pytest.approx(-math.log(vocab), rel=1e-5)
    assert margin.item() == pytest.approx(0.0, abs=1e-7)
    peaked = torch.full((1, vocab), -1e4)
    peaked[0, 7] = 0.0
    token, entropy, logprob, margin = summarize_logits(peaked)
    assert token.item() == 7
    assert entropy.item() == pytest.approx(0.0, abs=1e-6)
    assert margin.item() == pytest.approx(1.0, abs=1e-6)


def test_run_gives_answer_and_every_feature(smollm) -> None:
    out = smollm.ask("What is the capital of France?")
    assert "paris" in out.answer.lower()
    feats = out.features()
    assert set(feats) == set(feature_names(family="sparsity")) | set(
        feature_names(family="uncertainty")
    )
    assert all(math.isfinite(v) for v in feats.values())
    assert out.capture.hidden.shape == (30, 576)
    assert out.capture.mlp.shape == (30, 1536)
    assert out.draft.stop_reason in {"eos", "newline"}
    assert out.draft.token_ids[-1] in set(smollm.stop_token_ids().tolist())
    assert len(out.draft.stats) == len(out.draft.token_ids) - 1  # stop token excluded


def test_left_padded_batch_equals_one_by_one(smollm) -> None:
    prompts = [smollm.format_prompt(q) for q in QUESTIONS]
    lengths = {smollm.count_tokens(p) for p in prompts}
    assert len(lengths) == len(prompts), "the test needs prompts of different lengths"
    batched = smollm.run(prompts, batch_size=len(prompts))
    single = [smollm.run([p])[0] for p in prompts]
    for b, s in zip(batched, single, strict=True):
        assert b.answer == s.answer
        assert b.draft.token_ids == s.draft.token_ids
        fb, fs = b.features(), s.features()
        for name in fb:
            assert fb[name] == pytest.approx(fs[name], rel=1e-3, abs=1e-4), name


def test_hidden_capture_matches_output_hidden_states(smollm) -> None:
    prompt = smollm.format_prompt(QUESTIONS[0])
    out = smollm.prefill([prompt])
    enc = smollm.tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        ref = smollm.model(**enc, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is block i's output; the last entry has the final norm applied.
    for i in (0, 10, 28):
        np.testing.assert_allclose(
            out.captures[0].hidden[i], ref[i + 1][0, -1].numpy(), rtol=1e-4, atol=1e-3
        )


def test_mlp_capture_is_the_down_projection_input(smollm) -> None:
    prompt = smollm.format_prompt(QUESTIONS[0])
    mlp_out: dict[int, torch.Tensor] = {}
    layer = 5
    mlp = smollm.layout.blocks[layer].mlp
    handle = mlp.register_forward_hook(lambda m, a, o: mlp_out.setdefault(layer, o[0, -1]))
    try:
        pre = smollm.prefill([prompt])
    finally:
        handle.remove()
    captured = torch.from_numpy(pre.captures[0].mlp[layer])
    with torch.inference_mode():
        expected = mlp.down_proj(captured)
    torch.testing.assert_close(expected, mlp_out[layer], rtol=1e-4, atol=1e-4)


def _hook_count(lm) -> int:
    return sum(
        len(b._forward_hooks) + len(d._forward_pre_hooks)
        for b, d in zip(lm.layout.blocks, lm.layout.down_projections, strict=True)
    )


def test_hooks_are_removed_after_runs_and_on_exceptions(smollm, monkeypatch) -> None:
    before = _hook_count(smollm)
    smollm.run([smollm.format_prompt("Who painted the Mona Lisa?")])
    assert _hook_count(smollm) == before

    def boom(*args, **kwargs):
        raise RuntimeError("forward failed")

    monkeypatch.setattr(smollm, "_forward", boom)
    with pytest.raises(RuntimeError, match="forward failed"):
        smollm.prefill([smollm.format_prompt("Who painted the Mona Lisa?")])
    assert _hook_count(smollm) == before


def test_decode_selected_rows_continues_the_same_cache(smollm) -> None:
    prompts = [smollm.format_prompt(q) for q in QUESTIONS]
    full = smollm.run(prompts, batch_size=3)
    pre = smollm.prefill(prompts)
    drafts = smollm.decode(pre, rows=[2, 0])
    assert [d.token_ids for d in drafts] == [full[2].draft.token_ids, full[0].draft.token_ids]
    with pytest.raises(KnowgateError, match="already decoded"):
        smollm.decode(pre)


def test_max_new_tokens_and_length_stop(smollm) -> None:
    out = smollm.run(
        [smollm.format_prompt("Tell me a long story about dragons.")], max_new_tokens=3
    )
    assert len(out[0].draft.token_ids) <= 3
    if out[0].draft.stop_reason == "length":
        assert len(out[0].draft.stats) == 3


def test_bad_prompts_raise_clear_errors(smollm) -> None:
    with pytest.raises(InputError, match="empty"):
        smollm.run(["   "])
    with pytest.raises(InputError, match="list of prompts"):
        smollm.run("a single string")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="strings"):
        smollm.run([42])  # type: ignore[list-item]
    with pytest.raises(InputError, match="question must be a string"):
        smollm.ask(None)  # type: ignore[arg-type]
    too_long = "word " * (smollm.max_prompt_tokens + 10)
    with pytest.raises(InputError, match=r"accepts at most \d+"):
        smollm.run([too_long])


def test_features_are_computable_from_the_capture_alone(smollm) -> None:
    out = smollm.ask("Who discovered penicillin?")
    assert compute_features(out.capture) == out.features()
