"""The router and the LangChain runnable under an experiment (real default model)."""

from __future__ import annotations

import pytest

from experiments_helpers import two_arm_experiment
from knowgate.config import RouterConfig, load_config
from knowgate.errors import ConfigError, ExperimentError, InputError
from knowgate.experiments import DecisionLog, Experiment
from knowgate.integrations.langchain import KnowgateRunnable
from knowgate.policy import build_policy
from knowgate.routing import Router

Q = ["What is the capital of France?", "Who wrote Hamlet?", "What is 2 + 2?"]


def experiment() -> Experiment:
    return Experiment(
        "always-vs-never", {"rag": build_policy("always"), "closed": build_policy("never")}
    )


def units_by_arm(exp: Experiment) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {arm: [] for arm in exp.arms}
    i = 0
    while min(len(v) for v in found.values()) < 3:
        found[exp.assign(f"user-{i}").arm].append(f"user-{i}")
        i += 1
    return found


def test_routes_use_the_arm_policy_and_every_request_is_logged(smollm, tmp_path) -> None:
    exp = experiment()
    units = units_by_arm(exp)
    with DecisionLog(tmp_path / "ab.sqlite") as log:
        router = Router(smollm, build_policy("never"), experiment=exp, decision_log=log)
        ids = [units["rag"][0], units["closed"][0], units["rag"][1]]
        routed = router.route_batch(Q, unit_ids=ids)
        single = router.route(Q[0], unit_id=units["closed"][1])
        anonymous = router.route(Q[1])
        for r, unit in zip(routed, ids, strict=True):
            meta = r.extra["experiment"]
            assert meta["unit_id"] == unit and meta["unit_id_source"] == "given"
            assert meta["arm"] == exp.assign(unit).arm
            assert r.decision.retrieve is (meta["arm"] == "rag")
            assert r.decision.policy == exp.arms[meta["arm"]].policy_id
        assert single.extra["experiment"]["arm"] == "closed" and not single.decision.retrieve
        # Closed-book answers equal the arm-free answer: the arm only changes the decision.
        assert single.answer == routed[1].answer if Q[0] == Q[1] else True
        assert anonymous.extra["experiment"]["unit_id_source"] == "random"
        assert log.count(exp.name) == 5
        for r in [*routed, single, anonymous]:
            row = log.request(r.request_id)
            assert (row["arm"], row["unit_id"]) == (
                r.extra["experiment"]["arm"],
                r.extra["experiment"]["unit_id"],
            )
            assert row["answer"] == r.answer and row["retrieve"] == r.decision.retrieve
            assert row["features"]["next_token_max_prob"] == pytest.approx(
                r.features["next_token_max_prob"]
            )
            assert row["latency_ms"] == r.timings_ms["total"]
            assert row["lm_calls"] == r.calls["lm"]
        # Sticky: the same unit, asked again, lands in the same arm.
        again = router.route(Q[2], unit_id=units["rag"][0])
        assert again.extra["experiment"]["arm"] == "rag"

        # An explicit policy bypasses the experiment: no arm, nothing logged.
        bypass = router.route(Q[0], policy=build_policy("always"))
        assert "experiment" not in bypass.extra and log.count() == 6
        with pytest.raises(InputError, match="threshold override"):
            router.route(Q[0], threshold=0.5, unit_id="u")
        with pytest.raises(InputError, match="one entry per query"):
            router.route_batch(Q, unit_ids=["u"])
        with pytest.raises(ExperimentError, match="unit id"):
            router.route(Q[0], unit_id=3.5)  # type: ignore[arg-type]
        assert log.count() == 6

        # The definition cannot change now that it has traffic.
        changed = Experiment(exp.name, dict(exp.arms), [1, 3])
        with pytest.raises(ExperimentError, match="already has 6 logged decisions"):
            Router(smollm, build_policy("never"), experiment=changed, decision_log=log)


def test_router_checks_experiment_wiring(smollm, tmp_path) -> None:
    with DecisionLog(tmp_path / "x.sqlite") as log, pytest.raises(ConfigError, match="needs an"):
        Router(smollm, build_policy("never"), decision_log=log)
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
        Router(smollm, build_policy("never"), experiment=draft)
    # Without an experiment, unit ids are accepted and ignored.
    plain = Router(smollm, build_policy("never")).route(Q[0], unit_id="user-1")
    assert "experiment" not in plain.extra


def test_langchain_runnable_takes_the_unit_from_the_run_config(smollm, tmp_path) -> None:
    exp = experiment()
    units = units_by_arm(exp)
    with DecisionLog(tmp_path / "lc.sqlite") as log:
        router = Router(smollm, build_policy("never"), experiment=exp, decision_log=log)
        runnable = KnowgateRunnable.configurable_for(router, output="routed")
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
        assert log.count() == 5


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
    router = Router.from_config(config, model=smollm)
    try:
        assert dict(router.experiment.weights) == {"control": 0.25, "gate": 0.75}
        assert router.experiment.arms["gate"].threshold == 0.5
        routed = router.route(Q[0], unit_id="user-1")
        assert router.decision_log.request(routed.request_id)["experiment"] == "yaml-exp"
    finally:
        router.decision_log.close()
    with pytest.raises(ConfigError, match="arms"):
        RouterConfig.from_dict({"experiment": {"name": "x", "arms": {"a": {"policy": {}}}}})
    with pytest.raises(ConfigError, match="unknown key"):
        RouterConfig.from_dict({"experiment": {"name": "x", "salt": "s", "colour": 1, "arms": {}}})
    with pytest.raises(ExperimentError, match="policy.path or policy.name"):
        Experiment.from_spec(
            RouterConfig.from_dict(
                {"experiment": {"name": "x", "arms": {"a": {"policy": {}}, "b": {"policy": {}}}}}
            ).experiment
        )
    assert two_arm_experiment().control == "control"
