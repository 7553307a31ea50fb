"""The SQLite decision log: schema, validation, immutable definitions, outcomes, atomic batches."""

from __future__ import annotations

import sqlite3

import pytest

from experiments_helpers import synthetic_row, two_arm_experiment
from knowgate.errors import ExperimentError
from knowgate.experiments import DecisionLog, Experiment, Outcome


@pytest.fixture
def log(tmp_path):
    with DecisionLog(tmp_path / "log.sqlite") as db:
        yield db


def test_the_log_is_in_wal_mode_with_the_documented_tables(tmp_path) -> None:
    path = tmp_path / "sub" / "log.sqlite"
    DecisionLog(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "experiments", "decisions", "outcomes"} <= tables
    conn.close()


def test_decisions_round_trip_with_every_column(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    row = synthetic_row(exp, "r1", "user-1", latency_ms=123.0)
    row = type(row)(**{**row.__dict__, "features": {"a": 0.5, "b": float("nan")}})
    assert log.record_rows([row]) == 1
    stored = log.request("r1")
    assert stored["experiment"] == exp.name and stored["arm"] == row.arm
    assert stored["unit_id"] == "user-1" and stored["unit_id_source"] == "given"
    assert stored["config_hash"] == exp.config_hash and stored["policy_id"] == row.policy_id
    assert stored["features"] == {"a": 0.5, "b": None}  # NaN is not JSON: stored as null
    assert stored["latency_ms"] == 123.0 and stored["timings_ms"]["total"] == 123.0
    assert stored["answer"] == "answer r1" and stored["query"] == "question r1?"
    assert stored["created_at"].endswith("Z")
    assert log.count() == log.count(exp.name) == 1


def test_store_text_false_keeps_no_query_or_answer(tmp_path) -> None:
    exp = two_arm_experiment()
    with DecisionLog(tmp_path / "log.sqlite", store_text=False) as db:
        db.register(exp)
        db.record_rows([synthetic_row(exp, "r1", "u")])
        stored = db.request("r1")
    assert stored["query"] is None and stored["answer"] is None


def test_definition_can_change_before_traffic_but_not_after(log) -> None:
    log.register(two_arm_experiment(weights=[0.5, 0.5]))
    log.register(two_arm_experiment(weights=[0.5, 0.5]))  # same definition: fine
    log.register(two_arm_experiment(weights=[0.3, 0.7]))  # no traffic yet: replaced
    exp = two_arm_experiment(weights=[0.3, 0.7])
    assert log.definition(exp.name)["config_hash"] == exp.config_hash
    log.record_rows([synthetic_row(exp, "r1", "u1")])
    with pytest.raises(ExperimentError, match="already has 1 logged decisions") as info:
        log.register(two_arm_experiment(weights=[0.5, 0.5]))
    assert "gate weight 0.7 -> 0.5" in str(info.value)
    swapped = Experiment(exp.name, {"control": exp.arms["gate"], "gate": exp.arms["gate"]}, [3, 7])
    with pytest.raises(ExperimentError, match="control policy always -> threshold"):
        log.register(swapped)
    # The stored definition is untouched, and the original still registers.
    assert log.definition(exp.name)["config_hash"] == exp.config_hash
    log.register(exp)


def test_rows_of_a_changed_definition_are_refused(tmp_path) -> None:
    # Another process re-registered the experiment: rows assigned under the old hash are refused.
    old = two_arm_experiment(weights=[0.5, 0.5])
    new = two_arm_experiment(weights=[0.2, 0.8])
    with DecisionLog(tmp_path / "l.sqlite") as a:
        a.register(old)
        a.register(new)
        with pytest.raises(ExperimentError, match="another process changed the experiment"):
            a.record_rows([synthetic_row(old, "r1", "u1")])
        with pytest.raises(ExperimentError, match="not registered"):
            a.record_rows([synthetic_row(two_arm_experiment(name="nope"), "r2", "u1")])
        assert a.count() == 0


def test_a_batch_is_all_or_nothing(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    log.record_rows([synthetic_row(exp, "r1", "u1")])
    batch = [synthetic_row(exp, "r2", "u2"), synthetic_row(exp, "r1", "u3")]  # r1 repeats
    with pytest.raises(ExperimentError, match="UNIQUE"):
        log.record_rows(batch)
    assert log.count() == 1
    bad_latency = type(batch[0])(**{**batch[0].__dict__, "latency_ms": float("nan")})
    with pytest.raises(ExperimentError, match="latency_ms"):
        log.record_rows([bad_latency])
    assert log.count() == 1


def test_outcomes_attach_to_logged_requests_and_the_latest_wins(log) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    log.record_rows([synthetic_row(exp, f"r{i}", f"u{i}") for i in range(3)])
    log.record_outcome("r0", correct=False, label_source="user")
    log.record_outcome("r0", correct=True, score=0.8, label_source="gold")
    log.record_outcomes([Outcome("r1", score=3.0, label_source="user")])
    rows = {d.request_id: d for d in log.decisions(exp.name)}
    assert (rows["r0"].correct, rows["r0"].score, rows["r0"].label_source) == (True, 0.8, "gold")
    assert (rows["r1"].correct, rows["r1"].score) == (None, 3.0)
    assert rows["r2"].correct is None and rows["r2"].label_source is None
    only_user = {d.request_id: d for d in log.decisions(exp.name, label_source="user")}
    assert only_user["r0"].correct is False
    assert log.outcome_count() == 3


@pytest.mark.parametrize(
    ("outcome", "match"),
    [
        (Outcome("missing", correct=True), "not in"),
        (Outcome("r0"), "correct and/or score"),
        (Outcome("r0", correct=1), "true/false"),  # type: ignore[arg-type]
        (Outcome("r0", score=float("inf")), "finite"),
        (Outcome("r0", correct=True, label_source=""), "label_source"),
        (Outcome("", correct=True), "request_id"),
    ],
)
def test_invalid_outcomes_are_refused_and_nothing_is_written(log, outcome, match) -> None:
    exp = two_arm_experiment()
    log.register(exp)
    log.record_rows([synthetic_row(exp, "r0", "u0")])
    with pytest.raises(ExperimentError, match=match):
        log.record_outcomes([Outcome("r0", correct=True), outcome])
    assert log.outcome_count() == 0


def test_missing_foreign_and_corrupt_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ExperimentError, match="not found"):
        DecisionLog(tmp_path / "absent.sqlite", create=False)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ExperimentError, match="not a usable decision log"):
        DecisionLog(junk)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(ExperimentError, match="not a knowgate decision log"):
        DecisionLog(other)
    newer = tmp_path / "newer.sqlite"
    DecisionLog(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ExperimentError, match="schema version 99"):
        DecisionLog(newer)
    with pytest.raises(ExperimentError, match="not a file"):
        DecisionLog(tmp_path)


def test_unknown_experiment_lists_the_known_ones(log) -> None:
    log.register(two_arm_experiment(name="exp-a"))
    with pytest.raises(ExperimentError, match="known: exp-a"):
        log.decisions("exp-b")
    listed = log.experiments()
    assert [e["name"] for e in listed] == ["exp-a"] and listed[0]["decisions"] == 0


def test_closed_log_refuses_use(tmp_path) -> None:
    db = DecisionLog(tmp_path / "l.sqlite")
    db.close()
    with pytest.raises(ExperimentError, match="closed"):
        db.count()


def test_from_routed_takes_the_assignment_and_checks_its_policy(tmp_path) -> None:
    from knowgate.experiments import DecisionRow
    from knowgate.routing import DecisionTrace, RoutedAnswer

    routed = RoutedAnswer(
        query="q",
        answer="a",
        decision=DecisionTrace(True, None, None, "always", "pre", "always retrieve"),
        features={"next_token_max_prob": 0.25},
        passages=[],
        calls={"lm": 2, "retriever": 1},
        timings_ms={"total": 5.0},
        model="m",
        request_id="abc",
    )
    exp = two_arm_experiment()  # control: always, gate: a threshold policy
    control_unit = next(f"u{i}" for i in range(100) if exp.assign(f"u{i}").arm == "control")
    gate_unit = next(f"u{i}" for i in range(100) if exp.assign(f"u{i}").arm == "gate")
    assignment = exp.assign(control_unit)
    row = DecisionRow.from_routed(routed, assignment)
    assert (row.request_id, row.experiment, row.arm, row.unit_id) == (
        "abc",
        "gate-vs-rag",
        "control",
        control_unit,
    )
    assert (row.bucket, row.config_hash, row.policy_id) == (
        assignment.bucket,
        exp.config_hash,
        "always",
    )
    assert (row.retrieve, row.retrieved, row.lm_calls, row.retriever_calls) == (True, False, 2, 1)
    assert row.latency_ms == 5.0 and row.features == {"next_token_max_prob": 0.25}
    # A request another policy decided cannot be logged under the arm.
    with pytest.raises(ExperimentError, match="not by the policy"):
        DecisionRow.from_routed(routed, exp.assign(gate_unit))
    with DecisionLog(tmp_path / "l.sqlite") as log:
        with pytest.raises(ExperimentError, match="1 routed"):
            log.record([routed], [])
        log.register(exp)
        assert log.record([routed], [assignment]) == 1
        assert log.request("abc")["arm"] == "control"
