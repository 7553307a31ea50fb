import json

import pytest
from typer.testing import CliRunner

from knowgate.cli import app
from knowgate.policy import FusedPolicy, load_policy

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calibration", "beta"], "--calibration must be one of"),
        (["--operating-point", "often:0.3"], "unknown operating point"),
        (["--data", "/nonexistent/file.jsonl"], "dataset file not found"),
    ],
)
def test_calibrate_rejects_bad_options_before_loading_a_model(tmp_path, args, message):
    base = ["calibrate", "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "p.json")]
    (tmp_path / "x.jsonl").write_text('{"id": "a", "question": "q?", "golden_answers": ["a"]}\n')
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.slow
def test_calibrate_end_to_end_on_shared_data(tmp_path, shared_data, smollm, monkeypatch):
    monkeypatch.setattr("knowgate.cli.calibrate.load_language_model", lambda _source: smollm)
    out, report = tmp_path / "policy.json", tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--data",
            str(shared_data / "qa" / "popqa_random.jsonl"),
            "--limit",
            "40",
            "--folds",
            "3",
            "--bootstrap",
            "50",
            "--features",
            "prefill",
            "--calibration",
            "sigmoid",
            "--operating-point",
            "budget:0.8",
            "--out",
            str(out),
            "--report",
            str(report),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    policy = load_policy(out, model_id=smollm.model_id)
    assert isinstance(policy, FusedPolicy)
    assert policy.calibration == "sigmoid"
    assert all(not n.startswith(("draft_", "question_")) for n in policy.required_features)
    assert policy.training["n_samples"] == 40
    assert policy.training["held_out_metrics"]["auroc"] is not None
    summary = json.loads((report / "report.json").read_text())
    assert summary["n_questions"] == 40
    assert summary["policy_id"] == policy.policy_id
    assert "uncertainty (prefill)" in summary["fused"]
    assert "question-only" in summary["fused"]
    assert set(summary["datasets"]) == {"popqa_random"}
    for name in ("report.md", "reliability.png", "roc.png"):
        assert (report / name).stat().st_size > 0
    # Decisions on the calibration rows retrieve for about the requested budget.
    assert policy.training["threshold_choice"]["retrieval_rate"] <= 0.8
