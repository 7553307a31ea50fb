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
    token, entropy, logprob, margin, logit_margin = summarize_logits(torch.zeros(1, vocab))
    assert entropy.item() == pytest.approx(math.log(vocab), rel=1e-5)
    assert logprob.item() == pytest.approx(-math.log(vocab), rel=1e-5)
    assert margin.item() == pytest.approx(0.0, abs=1e-7)
    assert logit_margin.item() == pytest.approx(0.0, abs=1e-7)
    peaked = torch.full((1, vocab), -1e4)
    peaked[0, 7] = 0.0
    peaked[0, 3] = -2.5
    token, entropy, logprob, margin, logit_margin = summarize_logits(peaked)
    assert token.item() == 7
    # two live logits 0 and -2.5: p = 1 / (1 + e^-2.5) = 0.92414, p2 = 0.07586
    assert logprob.item() == pytest.approx(math.log(0.924142), abs=1e-5)
    assert margin.item() == pytest.approx(0.924142 - 0.075858, abs=1e-5)
    assert logit_margin.item() == pytest.approx(2.5, abs=1e-6)


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


def _greedy_reference(lm, prompt: str, steps: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and their log-probabilities from transformers' full forward pass per step.

    No KV cache and no knowgate decoding code: the reference the runner's cached decode must
    reproduce.
    """
    ids = lm.tokenizer(
        prompt, return_tensors="pt", add_special_tokens=lm._add_special(prompt)
    ).input_ids
    tokens: list[int] = []
    logprobs: list[float] = []
    with torch.inference_mode():
        for _ in range(steps):
            logp = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].float(), dim=-1)
            token = int(logp.argmax())
            tokens.append(token)
            logprobs.append(float(logp[token]))
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokens, logprobs


def test_max_new_tokens_and_length_stop(smollm) -> None:
    prompt = smollm.format_prompt("Tell me a long story about dragons.")
    expected, logprobs = _greedy_reference(smollm, prompt, 3)
    # Precondition, read off the reference: none of the first three tokens could end an answer
    # (no special token such as EOS, no newline), so a limit of 1 or 3 tokens is the only
    # possible reason to stop and the length branch below always runs.
    tok = smollm.tokenizer
    assert not set(expected) & set(tok.all_special_ids), tok.convert_ids_to_tokens(expected)
    assert all("\n" not in tok.decode([t]) for t in expected), tok.convert_ids_to_tokens(expected)
    for limit in (1, 3):
        draft = smollm.run([prompt], max_new_tokens=limit)[0].draft
        assert draft.stop_reason == "length"
        assert draft.token_ids == expected[:limit]  # greedy: the reference's first tokens
        assert len(draft.stats) == limit  # every token is an answer token: none to exclude
        np.testing.assert_allclose(draft.stats.logprob, logprobs[:limit], atol=1e-3)
        assert draft.text == tok.decode(expected[:limit], skip_special_tokens=True).strip()
    # Without the limit the same answer goes on past three tokens.
    assert smollm.run([prompt], max_new_tokens=16)[0].draft.token_ids[:3] == expected


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
    # a zero budget is a mistake, not "the configured default"
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="max_new_tokens"):
            smollm.run(["Q: hi"], max_new_tokens=bad)  # type: ignore[arg-type]
        with pytest.raises(InputError, match="max_new_tokens"):
            smollm.sample(["Q: hi"], k=1, max_new_tokens=bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="max_new_tokens"):
        smollm.decode(smollm.prefill(["Q: hi"]), max_new_tokens=0)


def test_features_are_computable_from_the_capture_alone(smollm) -> None:
    out = smollm.ask("Who discovered penicillin?")
    assert compute_features(out.capture) == out.features()


def _hf_hidden_states(lm, prompt: str) -> tuple[list[torch.Tensor], list[int]]:
    """Block outputs from transformers' own ``output_hidden_states`` and the token ids."""
    enc = lm.tokenizer(prompt, return_tensors="pt", add_special_tokens=lm._add_special(prompt))
    with torch.inference_mode():
        out = lm.model(**enc, output_hidden_states=True)
    # hidden_states[0] is the embedding output; block i's output is hidden_states[i + 1], except
    # that the last entry has the final norm applied, so the last block is compared below 1e-3
    return [h[0] for h in out.hidden_states], enc.input_ids[0].tolist()


def test_question_positions_match_transformers_hidden_states(smollm) -> None:
    question = "Who wrote the play Hamlet?"
    prompt = smollm.format_prompt(question)
    capture = smollm.prefill([prompt], questions=[question]).captures[0]
    states, ids = _hf_hidden_states(smollm, prompt)
    # find the question's tokens independently: the token run that decodes to the question
    n = len(ids)
    spans = [
        (i, j)
        for i in range(n)
        for j in range(i + 1, n + 1)
        if smollm.tokenizer.decode(ids[i:j]).strip() == question
    ]
    assert spans, "the question's tokens were not found in the prompt"
    lo, hi = min(spans, key=lambda s: s[1] - s[0])
    layer = 10  # a middle block, untouched by the final norm
    row = capture.layers.index(layer)
    expected_end = states[layer + 1][hi - 1].numpy()
    expected_mean = states[layer + 1][lo:hi].mean(dim=0).numpy()
    np.testing.assert_allclose(capture.at("question_end").hidden[row], expected_end, atol=1e-3)
    np.testing.assert_allclose(capture.at("question_mean").hidden[row], expected_mean, atol=1e-3)
    np.testing.assert_allclose(capture.hidden[row], states[layer + 1][-1].numpy(), atol=1e-3)
    assert capture.question_states is not None and capture.question_states.shape[0] == hi - lo


def test_question_positions_batched_equal_one_by_one(smollm) -> None:
    prompts = [smollm.format_prompt(q) for q in QUESTIONS]
    batched = smollm.prefill(prompts, questions=QUESTIONS).captures
    for q, p, b in zip(QUESTIONS, prompts, batched, strict=True):
        s = smollm.prefill([p], questions=[q]).captures[0]
        for position in ("question_end", "question_mean"):
            np.testing.assert_allclose(b.at(position).hidden, s.at(position).hidden, atol=2e-3)
            np.testing.assert_allclose(b.at(position).mlp, s.at(position).mlp, atol=2e-3)
        np.testing.assert_allclose(b.question_states, s.question_states, atol=2e-3)


def test_question_must_occur_in_its_prompt(smollm) -> None:
    with pytest.raises(KnowgateError, match="does not occur"):
        smollm.prefill([smollm.format_prompt("Who wrote Hamlet?")], questions=["Who is Ada?"])
    with pytest.raises(InputError, match="2 questions for 1 prompts"):
        smollm.prefill([smollm.format_prompt("Who wrote Hamlet?")], questions=["a", "b"])


def test_first_draft_token_statistics_are_the_prefills(smollm) -> None:
    out = smollm.ask("What is the capital of Italy?")
    assert out.capture.draft is not None and out.capture.draft.logit_margin is not None
    assert out.capture.draft.logit_margin[0] == pytest.approx(
        out.capture.next_token.logit_margin[0], abs=1e-4
    )
    feats = out.features()
    assert feats["draft_min_logit_margin"] <= feats["draft_mean_logit_margin"]
    assert "draft_first_margin" not in feats  # it duplicated next_token_margin


def test_sampling_is_seeded_and_near_zero_temperature_is_greedy(smollm) -> None:
    prompts = [smollm.format_prompt(q) for q in QUESTIONS[:2]]
    greedy = [o.draft for o in smollm.run(prompts)]
    cold = smollm.sample(prompts, k=3, temperature=1e-4)
    assert [[d.token_ids for d in row] for row in cold] == [[g.token_ids] * 3 for g in greedy]
    a = smollm.sample(prompts, k=4, temperature=1.0, seed=7)
    b = smollm.sample(prompts, k=4, temperature=1.0, seed=7)
    assert [[d.text for d in row] for row in a] == [[d.text for d in row] for row in b]
    assert all(len(row) == 4 for row in a)
    with pytest.raises(InputError, match="k must be"):
        smollm.sample(prompts, k=0)
    with pytest.raises(InputError, match="temperature"):
        smollm.sample(prompts, k=2, temperature=0.0)


def test_next_token_probability_matches_a_softmax_of_the_logits(smollm) -> None:
    prompt = smollm.format_prompt("Is Paris in France? Answer yes or no.")
    probs = smollm.next_token_probability([prompt], ["yes", "no"])
    assert probs.shape == (1, 2)
    enc = smollm.tokenizer(
        prompt, return_tensors="pt", add_special_tokens=smollm._add_special(prompt)
    )
    with torch.inference_mode():
        logits = smollm.model(**enc).logits[0, -1].float()
    p = torch.softmax(logits, dim=-1)
    yes = {
        smollm.tokenizer(t, add_special_tokens=False).input_ids[0]
        for t in ("yes", " yes", "Yes", " Yes", "YES", " YES")
        if len(smollm.tokenizer(t, add_special_tokens=False).input_ids) == 1
    }
    assert probs[0, 0] == pytest.approx(float(p[sorted(yes)].sum()), abs=1e-4)
    assert 0.0 < probs[0].sum() <= 1.0
    with pytest.raises(InputError, match="single-token"):
        smollm.next_token_probability([prompt], ["antidisestablishmentarianism"])
