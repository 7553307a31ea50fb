"""The ExperimentRouter on top of a real router: arms, logging, config, and the integrations.

Expected arms are computed from the rule docs/experiments.md documents - bucket =
SHA-256(salt + "." + unit id), first 8 bytes big-endian, modulo 10,000; each arm owns a
contiguous range of buckets proportional to its weight, in arm order - written out in
``experiments_helpers.expected_arm``, not with the code under test.
"""

from __future__ import annotations

import pytest
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from experiments_helpers import expected_arm
from knowgate.config import RouterConfig, load_config
from knowgate.errors import ConfigError, ExperimentError, InputError
from knowgate.experiments import DecisionLog, Experiment, ExperimentRouter, router_from_config
from knowgate.integrations.langchain import GatedRetriever, KnowgateRunnable
from knowgate.policy import build_policy
from knowgate.routing import QueryRouter, Router

Q = ["What is the capital of France?", "Who wrote Hamlet?", "What is 2 + 2?"]


SPLIT = [("rag", 1.0), ("closed", 1.0)]


def experiment() -> Experiment:
    return Experiment(
        "always-vs-never", {"rag": build_policy("always"), "closed": build_policy("never")}
    )


def units_by_arm(count: int = 3) -> dict[str, list[str]]:
    """``count`` units of each arm, found with the independent rule."""
    found: dict[str, list[str]] = {"rag": [], "closed": []}
    i = 0
    while min(len(v) for v in found.values()) < count:
        unit = f"user-{i}"
        found[expected_arm("always-vs-never", unit, SPLIT)].append(unit)
        i += 1
    return found


def test_each_request_uses_its_units_arm_and_every_request_is_logged(smollm, tmp_path) -> None:
    exp = experiment()
    units = units_by_arm()
    ids = [units["rag"][0], units["closed"][0], units["rag"][1]]
    with DecisionLog(tmp_path / "ab.sqlite") as log:
        ab = ExperimentRouter(Router(smollm, build_policy("never")), exp, log)
        assert isinstance(ab, QueryRouter)
        routed = ab.route_batch(Q, unit_ids=ids)
        single = ab.route(Q[0], unit_id=units["closed"][1])
        anonymous = ab.route(Q[1])

        for r, unit, query in zip(routed, ids, Q, strict=True):
            arm = expected_arm("always-vs-never", unit, SPLIT)
            assert r.query == query
            assert r.extra["experiment"]["arm"] == arm
            assert r.extra["experiment"]["unit_id"] == unit
            assert r.extra["experiment"]["unit_id_source"] == "given"
            # The arm's policy decided: always retrieves, never does not.
            assert r.decision.policy == ("always" if arm == "rag" else "never")
            assert r.decision.retrieve is (arm == "rag")
        assert [r.extra["experiment"]["arm"] for r in routed] == ["rag", "closed", "rag"]
        # The arm changes the decision only: a closed-book answer is the plain router's answer,
        # which is the model's own greedy answer to the question.
        assert single.extra["experiment"]["arm"] == "closed" and not single.decision.retrieve
        assert single.answer == Router(smollm, build_policy("never")).route(Q[0]).answer
        assert single.answer == smollm.ask(Q[0]).answer
        assert "paris" in single.answer.lower()  # not an empty or error answer
        # A request without a unit gets a random one, assigned by the same rule.
        anon = anonymous.extra["experiment"]
        assert anon["unit_id_source"] == "random" and anon["unit_id"].startswith("anon-")
        assert anon["arm"] == expected_arm("always-vs-never", anon["unit_id"], SPLIT)

        # One logged row per request, in order, each equal to what the request returned.
        requests = [*routed, single, anonymous]
        logged = log.decisions(exp.name)
        assert [row.request_id for row in logged] == [r.request_id for r in requests]
        for r in requests:
            row = log.request(r.request_id)
            meta = r.extra["experiment"]
            assert (row["experiment"], row["arm"], row["unit_id"], row["unit_id_source"]) == (
                "always-vs-never",
                meta["arm"],
                meta["unit_id"],
                meta["unit_id_source"],
            )
            assert row["policy_id"] == exp.arms[meta["arm"]].policy_id == r.decision.policy
            assert row["config_hash"] == exp.config_hash
            assert (row["retrieve"], row["answer"], row["query"]) == (
                r.decision.retrieve,
                r.answer,
                r.query,
            )
            assert row["lm_calls"] == r.calls["lm"] and row["calls"] == r.calls
            assert row["latency_ms"] == r.timings_ms["total"]

        # Sticky: the same unit, asked again, lands in the same arm.
        assert ab.route(Q[2], unit_id=units["rag"][0]).extra["experiment"]["arm"] == "rag"
        assert log.count(exp.name) == 6

        # Refused requests log nothing.
        with pytest.raises(InputError, match="threshold override"):
            ab.route(Q[0], threshold=0.5, unit_id="u")
        with pytest.raises(InputError, match="one entry per query"):
            ab.route_batch(Q, unit_ids=["u"])
        with pytest.raises(ExperimentError, match="unit id"):
            ab.route(Q[0], unit_id=3.5)  # type: ignore[arg-type]
        with pytest.raises(InputError, match="empty"):
            ab.route("  ", unit_id="u")
        assert log.count() == 6

        # The definition cannot change now that it has traffic.
        changed = Experiment(exp.name, dict(exp.arms), [1, 3])
        with pytest.raises(ExperimentError, match="already has 6 logged decisions"):
            ExperimentRouter(Router(smollm, build_policy("never")), changed, log)


def test_arms_are_checked_against_the_router_and_the_router_ignores_units(smollm) -> None:
    draft = Experiment(
        "draft",
        {
            "a": build_policy("never"),
            "b": build_policy(
                "threshold", feature="draft_mean_prob", direction="higher_is_known", value=0.5
            ),
        },
    )
    with pytest.raises(ConfigError, match="draft features"):
        ExperimentRouter(Router(smollm, build_policy("never")), draft)
    with pytest.raises(ConfigError, match="must be a knowgate Router"):
        ExperimentRouter(object(), experiment())  # type: ignore[arg-type]
    # A plain router answers everyone alike: unit ids are accepted and ignored.
    plain = Router(smollm, build_policy("never")).route(Q[0], unit_id="user-1")
    assert "experiment" not in plain.extra and plain.decision.policy == "never"


def test_experiment_section_of_the_router_config(smollm, tmp_path) -> None:
    gate = tmp_path / "policies" / "gate.json"
    build_policy(
        "threshold", feature="next_token_max_prob", direction="higher_is_known", value=0.3
    ).save(gate)
    config_file = tmp_path / "router.yaml"
    config_file.write_text(
        "experiment:\n"
        "  name: yaml-exp\n"
        "  decision_log: logs/ab.sqlite\n"
        "  arms:\n"
        "    control: {policy: {name: always}}\n"
        "    gate: {policy: {path: policies/gate.json, threshold: 0.5}, weight: 3}\n"
    )
    config = load_config(config_file)
    assert config.experiment.decision_log == (tmp_path / "logs" / "ab.sqlite").resolve()
    with pytest.raises(ConfigError, match="ExperimentRouter.from_config"):
        Router.from_config(config, model=smollm)
    ab = router_from_config(config, model=smollm)
    assert isinstance(ab, ExperimentRouter)
    try:
        assert dict(ab.experiment.weights) == {"control": 0.25, "gate": 0.75}
        assert ab.experiment.arms["gate"].threshold == 0.5
        split = [("control", 1.0), ("gate", 3.0)]
        units = [f"u{i}" for i in range(6)]
        routed = ab.route_batch([Q[0]] * len(units), unit_ids=units)
        for unit, r in zip(units, routed, strict=True):
            arm = expected_arm("yaml-exp", unit, split)
            assert r.extra["experiment"]["arm"] == arm
            assert r.decision.policy == ab.experiment.arms[arm].policy_id
        row = ab.decision_log.request(routed[0].request_id)
        assert row["experiment"] == "yaml-exp"
    finally:
        ab.close()
    plain = router_from_config(RouterConfig(policy={"name": "never"}), model=smollm)
    assert isinstance(plain, Router)
    with pytest.raises(ConfigError, match="no experiment section"):
        ExperimentRouter.from_config(RouterConfig(), model=smollm)
    with pytest.raises(ConfigError, match="arms"):
        RouterConfig.from_dict({"experiment": {"name": "x", "arms": {"a": {"policy": {}}}}})
    with pytest.raises(ConfigError, match="unknown key"):
        RouterConfig.from_dict({"experiment": {"name": "x", "salt": "s", "colour": 1, "arms": {}}})
    with pytest.raises(ExperimentError, match="arm 'a': give policy.path or policy.name"):
        Experiment.from_spec(
            RouterConfig.from_dict(
                {"experiment": {"name": "x", "arms": {"a": {"policy": {}}, "b": {"policy": {}}}}}
            ).experiment
        )


class FixedRetriever(BaseRetriever):
    """Returns the same document for every query, counting calls."""

    calls: int = 0

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        self.calls += 1
        return [Document(page_content="Paris is the capital of France.", metadata={"id": "p"})]


class Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[dict] = []

    def on_custom_event(self, name, data, **kwargs) -> None:
        self.events.append(data)


def test_langchain_runnable_takes_the_unit_from_the_run_config(smollm, tmp_path) -> None:
    units = units_by_arm()
    with DecisionLog(tmp_path / "lc.sqlite") as log:
        ab = ExperimentRouter(Router(smollm, build_policy("never")), experiment(), log)
        runnable = KnowgateRunnable.configurable_for(ab, output="routed")
        by_meta = runnable.invoke(Q[0], config={"metadata": {"unit_id": units["rag"][0]}})
        by_conf = runnable.invoke(Q[0], config={"configurable": {"unit_id": units["closed"][0]}})
        assert by_meta.extra["experiment"]["unit_id"] == units["rag"][0]
        assert by_meta.extra["experiment"]["arm"] == "rag" and by_meta.decision.retrieve
        assert by_conf.extra["experiment"]["arm"] == "closed" and not by_conf.decision.retrieve
        batch = runnable.batch(
            [Q[1], Q[1]],
            config=[
                {"metadata": {"unit_id": units["rag"][1]}},
                {"metadata": {"unit_id": units["closed"][1]}},
            ],
        )
        assert [b.extra["experiment"]["arm"] for b in batch] == ["rag", "closed"]
        no_unit = runnable.invoke(Q[1])
        assert no_unit.extra["experiment"]["unit_id_source"] == "random"
        assert [row.request_id for row in log.decisions("always-vs-never")] == [
            r.request_id for r in (by_meta, by_conf, *batch, no_unit)
        ]


def test_gated_retriever_respects_the_units_arm(smollm, tmp_path) -> None:
    units = units_by_arm(2)
    inner = FixedRetriever()
    with DecisionLog(tmp_path / "gate.sqlite") as log:
        ab = ExperimentRouter(Router(smollm, build_policy("never")), experiment(), log)
        gated = GatedRetriever(router=ab, retriever=inner)
        events = Events()
        # The rag arm's policy (always) retrieves; the closed arm's (never) does not.
        rag_docs = gated.invoke(
            Q[0], config={"metadata": {"unit_id": units["rag"][0]}, "callbacks": [events]}
        )
        closed_docs = gated.invoke(Q[0], config={"configurable": {"unit_id": units["closed"][0]}})
        assert [d.page_content for d in rag_docs] == ["Paris is the capital of France."]
        assert rag_docs[0].metadata["knowgate_policy"] == "always"
        assert closed_docs == [] and inner.calls == 1
        assert events.events[0]["experiment"]["arm"] == "rag"
        assert events.events[0]["experiment"]["unit_id"] == units["rag"][0]
        # Gate-only decisions have no answer to log (the chain's LLM writes it).
        assert log.count() == 0
        with pytest.raises(InputError, match="threshold override"):
            ab.gate(Q[0], threshold=0.2, unit_id="u")
    # The plain router's gate decides with its own policy whatever the unit.
    plain = GatedRetriever(router=Router(smollm, build_policy("never")), retriever=inner)
    assert plain.invoke(Q[0], config={"metadata": {"unit_id": units["rag"][0]}}) == []
