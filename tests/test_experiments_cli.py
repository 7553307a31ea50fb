"""``knowgate ab report`` and ``knowgate ab feedback``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from experiments_helpers import synthetic_row, two_arm_experiment
from knowgate.cli import app
from knowgate.experiments import DecisionLog

runner = CliRunner()


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "ab.sqlite"
    exp = two_arm_experiment()
    with DecisionLog(path) as log:
        log.register(exp)
        log.record_rows([synthetic_row(exp, f"r{i}", f"user-{i}") for i in range(60)])
    return path


def test_feedback_one_request_then_a_file(db_path, tmp_path) -> None:
    ok = runner.invoke(
        app, ["ab", "feedback", "--log", str(db_path), "--request-id", "r0", "--correct"]
    )
    assert ok.exit_code == 0 and "recorded 1 outcome" in ok.output
    wrong = runner.invoke(
        app,
        [
            "ab",
            "feedback",
            "--log",
            str(db_path),
            "--request-id",
            "r1",
            "--wrong",
            "--score",
            "0.25",
            "--source",
            "user",
        ],
    )
    assert wrong.exit_code == 0, wrong.output
    lines = [{"request_id": f"r{i}", "correct": i % 3 == 0, "score": 1.0} for i in range(2, 60)]
    lines[0]["label_source"] = "judge"
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    many = runner.invoke(
        app, ["ab", "feedback", "--log", str(db_path), "--file", str(outcomes), "--source", "gold"]
    )
    assert many.exit_code == 0 and "recorded 58 outcome" in many.output
    with DecisionLog(db_path, create=False) as log:
        rows = {d.request_id: d for d in log.decisions("gate-vs-rag")}
    assert rows["r0"].correct is True and rows["r0"].label_source == "feedback"
    assert (rows["r1"].correct, rows["r1"].score, rows["r1"].label_source) == (False, 0.25, "user")
    assert rows["r2"].label_source == "judge" and rows["r3"].label_source == "gold"
    assert all(d.correct is not None for d in rows.values())


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--request-id", "nope", "--correct"], "not in"),
        (["--request-id", "r0"], "correct and/or score"),
        ([], "either --request-id"),
        (["--file", "missing.jsonl"], "not found"),
    ],
)
def test_feedback_errors_exit_2_with_a_message(db_path, args, match) -> None:
    result = runner.invoke(app, ["ab", "feedback", "--log", str(db_path), *args])
    assert result.exit_code == 2 and match in result.output


def test_feedback_file_with_unknown_keys_is_refused(db_path, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"request_id": "r0", "correct": True, "verdict": "ok"}) + "\n")
    result = runner.invoke(app, ["ab", "feedback", "--log", str(db_path), "--file", str(bad)])
    assert result.exit_code == 2 and "unknown key(s) ['verdict']" in result.output


def test_report_text_and_json(db_path) -> None:
    with DecisionLog(db_path, create=False) as log:
        for d in log.decisions("gate-vs-rag"):
            log.record_outcome(d.request_id, correct=d.arm == "control", label_source="gold")
    text = runner.invoke(app, ["ab", "report", "--log", str(db_path)])  # one experiment: implied
    assert text.exit_code == 0, text.output
    assert "Experiment 'gate-vs-rag'" in text.output and "Verdict:" in text.output
    assert "control wins on accuracy over gate" in text.output.replace("\n", " ")
    js = runner.invoke(
        app, ["ab", "report", "--log", str(db_path), "--experiment", "gate-vs-rag", "--json"]
    )
    data = json.loads(js.output)
    assert sum(a["requests"] for a in data["arms"]) == 60
    assert data["arms"][0]["accuracy"]["value"] == 1.0
    assert data["verdict"].startswith("control wins on accuracy")


def test_report_errors(db_path, tmp_path) -> None:
    missing = runner.invoke(app, ["ab", "report", "--log", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 2 and "decision log not found" in missing.output
    assert not (tmp_path / "none.sqlite").exists()  # a report never creates a log
    unknown = runner.invoke(app, ["ab", "report", "--log", str(db_path), "-e", "other"])
    assert unknown.exit_code == 2 and "known: gate-vs-rag" in unknown.output
    with DecisionLog(db_path) as log:
        log.register(two_arm_experiment(name="second"))
    ambiguous = runner.invoke(app, ["ab", "report", "--log", str(db_path)])
    assert ambiguous.exit_code == 2 and "name one with --experiment" in ambiguous.output
