"""The router on the real default model: decisions, call counts, fallbacks, batching, threads."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from knowgate.config import RouterConfig, load_config
from knowgate.errors import ConfigError, InputError, KnowledgeBaseError, PolicyError
from knowgate.policy import build_policy
from knowgate.retrieval import Document, KnowledgeBase
from knowgate.routing import GenerationRequest, Router, load_knowledge_base

DOCS = [
    Document(id="kg", title="knowgate", text="knowgate was released in 2026 by the knowgate team."),
    Document(id="paris", title="Paris", text="Paris is the capital and largest city of France."),
    Document(id="hamlet", title="Hamlet", text="Hamlet is a tragedy written by Shakespeare."),
]
QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "When was knowgate released?"]


@pytest.fixture(scope="session")
def kb() -> KnowledgeBase:
    return KnowledgeBase.build(DOCS, progress=False)


class Counting:
    """Wraps the model's prefill/decode to count real forward-pass calls per request."""

    def __init__(self, lm, monkeypatch) -> None:
        self.prefill_rows = 0
        self.decoded_rows = 0
        orig_prefill, orig_decode = lm.prefill, lm.decode

        def prefill(prompts):
            self.prefill_rows += len(prompts)
            return orig_prefill(prompts)

        def decode(pre, rows=None, **kw):
            drafts = orig_decode(pre, rows=rows, **kw)
            self.decoded_rows += len(drafts)
            return drafts

        monkeypatch.setattr(lm, "prefill", prefill)
        monkeypatch.setattr(lm, "decode", decode)


class CountingRetriever:
    def __init__(self, kb: KnowledgeBase, fail: bool = False) -> None:
        self.kb, self.fail, self.calls = kb, fail, 0

    def search(self, query: str, k: int = 5):
        self.calls += 1
        if self.fail:
            raise ConnectionError("index server unreachable")
        return self.kb.search(query, k)


def threshold_policy(value: float = 0.3):
    return build_policy(
        "threshold", feature="next_token_max_prob", direction="higher_is_known", value=value
    )


def test_known_query_is_one_lm_call_and_no_retrieval(smollm, kb, monkeypatch) -> None:
    counter = Counting(smollm, monkeypatch)
    retriever = CountingRetriever(kb)
    routed = Router(smollm, build_policy("never"), retriever).route(QUESTIONS[0])
    assert routed.decision.retrieve is False
    assert routed.calls == {"lm": 1, "retriever": 0}
    assert (counter.prefill_rows, counter.decoded_rows, retriever.calls) == (1, 1, 0)
    assert routed.passages == [] and routed.retrieval_error is None
    # The answer is the closed-book generation of the same pass.
    assert routed.answer == smollm.ask(QUESTIONS[0]).answer
    # never reads no signal: the policy decides first, the prefill serves the answer only.
    assert {"prefill", "policy", "decode", "total"} <= set(routed.timings_ms)
    assert "signals" not in routed.timings_ms


def test_unknown_query_retrieves_once_and_answers_with_passages(smollm, kb, monkeypatch) -> None:
    counter = Counting(smollm, monkeypatch)
    retriever = CountingRetriever(kb)
    routed = Router(smollm, build_policy("always"), retriever).route(QUESTIONS[2])
    assert routed.decision.retrieve is True
    # always reads no signal, so it is plain RAG: no gate prefill, one LM call with passages.
    assert routed.calls == {"lm": 1, "retriever": 1}
    assert retriever.calls == 1
    assert counter.prefill_rows == 1 and counter.decoded_rows == 1
    assert "prefill" not in routed.timings_ms and "signals" not in routed.timings_ms
    assert routed.passages[0].id == "kg" and routed.passages[0].rank == 1
    assert "2026" in routed.answer
    assert "retrieve" in routed.timings_ms and "answer_with_passages" in routed.timings_ms


def test_draft_mode_decides_after_the_draft(smollm, kb) -> None:
    policy = build_policy(
        "threshold", feature="draft_mean_prob", direction="higher_is_known", value=0.0
    )
    router = Router(smollm, policy, kb, config=RouterConfig(gate={"mode": "draft"}))
    routed = router.route(QUESTIONS[0])
    assert routed.decision.mode == "draft" and routed.decision.retrieve is False
    assert routed.calls == {"lm": 1, "retriever": 0}
    assert "draft_mean_prob" in routed.features
    with pytest.raises(ConfigError, match="draft features"):
        Router(smollm, policy, kb)  # a pre gate cannot read draft features


def test_threshold_decides_and_can_be_overridden_per_request(smollm, kb) -> None:
    router = Router(smollm, threshold_policy(0.0), kb)
    first = router.route(QUESTIONS[1])
    assert first.decision.retrieve is False
    p = first.features["next_token_max_prob"]
    flipped = router.route(QUESTIONS[1], threshold=min(1.0, p + 0.01))
    assert flipped.decision.retrieve is True
    # a gate that reads signals spends its prefill, then the answer with passages: two calls
    assert flipped.calls == {"lm": 2, "retriever": 1}
    assert flipped.decision.threshold == pytest.approx(min(1.0, p + 0.01))


def test_batch_equals_single_routes(smollm, kb) -> None:
    router = Router(smollm, threshold_policy(0.3), kb)
    batched = router.route_batch(QUESTIONS)
    for q, b in zip(QUESTIONS, batched, strict=True):
        s = router.route(q)
        assert (b.answer, b.decision.retrieve) == (s.answer, s.decision.retrieve)
        assert [p.id for p in b.passages] == [p.id for p in s.passages]


def test_threads_get_the_same_results_as_sequential_calls(smollm, kb) -> None:
    router = Router(smollm, threshold_policy(0.3), kb)
    sequential = [router.route(q) for q in QUESTIONS]
    barrier = threading.Barrier(len(QUESTIONS) * 2)

    def work(q: str):
        barrier.wait()
        return router.route(q)

    with ThreadPoolExecutor(max_workers=len(QUESTIONS) * 2) as pool:
        concurrent = list(pool.map(work, QUESTIONS * 2))
    for i, got in enumerate(concurrent):
        want = sequential[i % len(QUESTIONS)]
        assert got.answer == want.answer
        assert got.decision == want.decision
        assert got.features["hidden_hoyer_last"] == pytest.approx(
            want.features["hidden_hoyer_last"], rel=1e-5
        )


def test_async_forms(smollm, kb) -> None:
    router = Router(smollm, build_policy("never"), kb)

    async def main():
        one = await router.aroute(QUESTIONS[0])
        many = await router.aroute_batch(QUESTIONS[:2])
        return one, many

    one, many = asyncio.run(main())
    assert one.answer == many[0].answer


def test_failing_retriever_falls_back_closed_book_visibly(smollm, kb) -> None:
    retriever = CountingRetriever(kb, fail=True)
    routed = Router(smollm, build_policy("always"), retriever).route(QUESTIONS[0])
    assert routed.decision.retrieve is True
    assert routed.passages == []
    assert "ConnectionError" in routed.retrieval_error
    assert "unreachable" in routed.retrieval_error
    assert routed.calls == {"lm": 1, "retriever": 1}
    assert routed.answer == smollm.ask(QUESTIONS[0]).answer


def test_no_retriever_is_recorded(smollm) -> None:
    routed = Router(smollm, build_policy("always")).route(QUESTIONS[0])
    assert routed.retrieval_error.startswith("no retriever configured")
    assert routed.calls == {"lm": 1, "retriever": 0}


class RecordingGenerator:
    """An answer generator that records its requests and answers from a list."""

    def __init__(self, answers: list[str]) -> None:
        self.answers, self.requests = list(answers), []

    def answer(self, request: GenerationRequest) -> str:
        self.requests.append(request)
        return self.answers.pop(0)


def test_generator_writes_the_answer(smollm, kb) -> None:
    generator = RecordingGenerator(["generated closed-book", "generated with passages"])
    router = Router(smollm, build_policy("never"), kb, generator=generator)
    routed = router.route(QUESTIONS[0])
    assert routed.answer == "generated closed-book"
    assert routed.calls == {"lm": 1, "retriever": 0, "generator": 1}
    prompt = smollm.config.prompt
    assert generator.requests[0] == GenerationRequest(QUESTIONS[0], (), prompt.system_prompt, "")
    rag = Router(smollm, build_policy("always"), kb, generator=generator).route(QUESTIONS[2])
    assert rag.answer == "generated with passages" and rag.passages
    request = generator.requests[1]
    assert request.query == QUESTIONS[2] and request.passages == tuple(rag.passages)
    assert request.system_prompt == prompt.rag_system_prompt
    # The context is written as the local model's prompts write it: "[rank] title: text".
    assert request.context.splitlines()[0] == f"[1] knowgate: {DOCS[0].text}"
    with pytest.raises(ConfigError, match="answer"):
        Router(smollm, build_policy("never"), kb, generator=object())  # type: ignore[arg-type]


def test_per_query_policies_are_used_as_given(smollm, kb) -> None:
    config = RouterConfig(policy={"threshold": 0.9})
    router = Router(smollm, threshold_policy(0.0), kb, config=config)
    assert router.policy.threshold == 0.9  # the config's threshold overrides the router's policy
    always, never = build_policy("always"), build_policy("never")
    routed = router.route_batch(QUESTIONS[:2], policies=[always, never])
    assert [r.decision.policy for r in routed] == ["always", "never"]
    assert [r.decision.retrieve for r in routed] == [True, False]
    low = threshold_policy(0.0)
    (as_given,) = router.route_batch(QUESTIONS[:1], policies=[low])
    assert as_given.decision.threshold == 0.0 and as_given.decision.policy == low.policy_id
    with pytest.raises(InputError, match="one policy per query"):
        router.route_batch(QUESTIONS[:2], policies=[always])
    with pytest.raises(InputError, match="policy or policies"):
        router.route_batch(QUESTIONS[:1], policy=always, policies=[always])
    with pytest.raises(ConfigError, match="evaluation-only"):
        router.route_batch(QUESTIONS[:1], policies=[build_policy("oracle")])
    gate = router.gate(QUESTIONS[0], policy=never)
    assert gate.decision.policy == "never" and gate.decision.retrieve is False


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        (42, "must be a string"),
        (None, "must be a string"),
        ("x" * 5000, "limit is 4000"),
    ],
)
def test_bad_queries(smollm, kb, query, message) -> None:
    router = Router(smollm, build_policy("never"), kb)
    with pytest.raises(InputError, match=message):
        router.route(query)


def test_query_longer_than_the_context(smollm, kb) -> None:
    config = RouterConfig(limits={"max_query_chars": 200_000})
    router = Router(smollm, build_policy("never"), kb, config=config)
    with pytest.raises(InputError, match="accepts at most"):
        router.route("why " * 9000)


def test_rag_prompt_drops_passages_that_do_not_fit(smollm) -> None:
    long_docs = [Document(id=f"d{i}", title=f"T{i}", text="filler words " * 400) for i in range(3)]
    router = Router(smollm, build_policy("always"), KnowledgeBase.build(long_docs, progress=False))
    routed = router.route("What is in the filler?")
    assert 1 <= len(routed.passages) <= 3  # all fit here (800 chars each); the cut is tested below
    many = routed.passages * 100
    prompt, used = router._fit_passages("q", many)
    assert 0 < used < len(many)
    assert smollm.count_tokens(prompt) <= smollm.max_prompt_tokens
    over = smollm.format_prompt("q", many[: used + 1])
    assert smollm.count_tokens(over) > smollm.max_prompt_tokens  # the largest count that fits


def test_policy_for_another_model_is_refused(smollm, kb) -> None:
    policy = build_policy(
        "threshold", feature="next_token_max_prob", direction="higher_is_known", value=0.3
    )
    policy.model_id = "gemma3-270m"
    with pytest.raises(PolicyError, match="fitted for model 'gemma3-270m'"):
        Router(smollm, policy, kb)
    forced = Router(smollm, policy, kb, config=RouterConfig(policy={"force": True}))
    assert forced.route(QUESTIONS[0]).answer


def test_evaluation_only_policies_cannot_route(smollm, kb) -> None:
    with pytest.raises(ConfigError, match="evaluation-only"):
        Router(smollm, build_policy("oracle"), kb)


def test_knowledge_base_with_another_embedding_model(kb, tmp_path: Path) -> None:
    kb.save(tmp_path / "kb")
    assert len(load_knowledge_base(tmp_path / "kb", kb.embedding_model_id)) == len(DOCS)
    with pytest.raises(KnowledgeBaseError, match="built with embedding model"):
        load_knowledge_base(tmp_path / "kb", "sentence-transformers/all-mpnet-base-v2")


def test_config_rejects_unknown_keys_and_resolves_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gate:\n  mode: pre\n  moode: draft\n")
    with pytest.raises(ConfigError, match="gate.moode: unknown key"):
        load_config(bad)
    good = tmp_path / "sub" / "router.yaml"
    good.parent.mkdir()
    good.write_text("retrieval:\n  knowledge_base: ../kb\npolicy:\n  name: never\n")
    cfg = load_config(good)
    assert cfg.retrieval.knowledge_base == (tmp_path / "kb").resolve()
    with pytest.raises(ConfigError, match="not both"):
        RouterConfig.from_dict({"policy": {"name": "never", "path": "p.json"}})


def test_from_config_uses_given_components(smollm, kb) -> None:
    config = RouterConfig(policy={"name": "never"})
    router = Router.from_config(config, model=smollm, retriever=kb)
    assert router.route(QUESTIONS[0]).decision.policy.startswith("never")
    assert router.describe() == {
        "model": "smollm2-135m",
        "policy": "never",
        "gate_mode": "pre",
        "knowledge_base": True,
    }
    # Without a policy, the model's bundled one, with the config's threshold.
    bundled = Router.from_config(RouterConfig(policy={"threshold": 0.3}), model=smollm)
    assert bundled.policy.threshold == 0.3 and bundled.policy.model_id == "smollm2-135m"
    assert bundled.policy.name == "fused"


def test_trace_to_dict_shape(smollm, kb) -> None:
    routed = Router(smollm, build_policy("always"), kb).route(QUESTIONS[0])
    data = routed.to_dict()
    assert {"answer", "decision", "features", "passages", "calls", "timings_ms"} <= set(data)
    assert set(data["decision"]) == {"retrieve", "p_known", "threshold", "policy", "mode", "reason"}
    assert set(data["passages"][0]) == {"id", "title", "score", "rank"}
    assert set(data["calls"]) == {"lm", "retriever"}


def _probe_policy(lm, vector: str):
    import numpy as np

    from knowgate.policy import ProbePolicy, VectorScorer, fit_calibrator

    d = int(lm.model.config.hidden_size)
    coefficients = np.random.default_rng(0).normal(size=d) / np.sqrt(d)
    probe = VectorScorer(
        vector=vector,
        scaler_mean=(0.0,) * d,
        scaler_scale=(1.0,) * d,
        coefficients=tuple(coefficients),
        intercept=0.0,
    )
    calibrator = fit_calibrator("none", [0.0, 1.0], [0, 1])
    return ProbePolicy(probe, calibrator, threshold=0.5, model_id=lm.model_id), coefficients


def test_a_probe_routes_with_its_vector_computed_and_kept_out_of_the_trace(smollm, kb) -> None:
    import json

    import numpy as np
    from scipy.special import expit

    vector = "hidden_state_layer14_at_question_end"
    policy, coefficients = _probe_policy(smollm, vector)
    router = Router(smollm, policy, kb)
    routed = router.route(QUESTIONS[1])
    # independently: the question-located prefill, block 14's state at the question's end
    pre = smollm.prefill([smollm.format_prompt(QUESTIONS[1])], questions=[QUESTIONS[1]])
    state = pre.captures[0].at("question_end").hidden[smollm.layers.index(14)]
    smollm.decode(pre, rows=[])
    expected = float(expit(state.astype(np.float64) @ coefficients))
    assert routed.decision.p_known == pytest.approx(expected, rel=1e-4)
    assert routed.decision.retrieve == (expected < 0.5)
    assert routed.calls["lm"] == 1 + int(routed.decision.retrieve)
    # the vector never reaches the trace: only the configured scalar features do
    assert vector not in routed.features
    assert all(isinstance(v, float) for v in routed.features.values())
    assert len(json.dumps(routed.to_dict())) < 20_000
    gated = router.gate(QUESTIONS[1])
    assert gated.decision.p_known == pytest.approx(expected, rel=1e-4)
    assert vector not in gated.features


def test_signals_section_decides_what_every_request_computes(smollm, kb) -> None:
    config = RouterConfig(signals={"question": True, "sparsity_metrics": ["hoyer"]})
    router = Router(smollm, build_policy("never"), kb, config=config)
    routed = router.route_batch(
        [QUESTIONS[0]],
        policy=build_policy(
            "threshold", feature="next_token_max_prob", direction="higher_is_known", value=0.0
        ),
    )[0]
    assert routed.features["question_wh_what"] == 1.0
    assert {n for n in routed.features if n.startswith(("hidden_", "mlp_"))} == {
        f"{site}_hoyer_{agg}" for site in ("hidden", "mlp") for agg in ("last", "mid", "mean")
    }


def test_policies_that_need_extra_model_calls_are_refused(smollm, kb) -> None:
    for name in ("sampling-consistency", "self-routing"):
        with pytest.raises(ConfigError, match="extra model calls"):
            Router(smollm, build_policy(name), kb)
    targ = build_policy("targ", value=1.0, model_id=smollm.model_id)
    with pytest.raises(ConfigError, match="draft"):
        Router(smollm, targ, kb)
    drafted = Router(smollm, targ, kb, config=RouterConfig(gate={"mode": "draft"}))
    routed = drafted.route(QUESTIONS[0])
    assert "draft_mean_logit_margin" in routed.features
