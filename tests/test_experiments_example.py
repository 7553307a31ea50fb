"""examples/ab_test.py runs end to end and its report agrees with its decision log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from knowgate.experiments import DecisionLog

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_example_ab_test_runs_and_reports_what_it_logged(shared_data, tmp_path) -> None:
    # A small corpus keeps the knowledge-base build short; the run checks the mechanics.
    lines = (shared_data / "corpus" / "popqa_h2.jsonl").read_text(encoding="utf-8").splitlines()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines[:150]) + "\n", encoding="utf-8")
    log_path = tmp_path / "ab.sqlite"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "ab_test.py"),
            "--data",
            str(shared_data),
            "--requests",
            "10",
            "--users",
            "10",  # with the example's salt, 10 users put 5 units in one arm and 2 in the other
            "--calibration",
            "8",
            "--corpus",
            str(corpus),
            "--log",
            str(log_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("\n{") :])
    arms = {a["arm"]: a for a in report["arms"]}
    assert set(arms) == {"always", "gate"}
    assert sum(a["requests"] for a in arms.values()) == 10
    assert sum(a["labelled"] for a in arms.values()) == 10  # every answer was scored
    assert sum(a["units"] for a in arms.values()) <= 10
    # Both arms got traffic (the seeded example's assignment), so the checks below all run.
    assert arms["always"]["requests"] > 0 and arms["gate"]["requests"] > 0
    assert arms["always"]["units"] >= 2 and arms["gate"]["units"] >= 2
    assert arms["always"]["retrieval_rate"]["value"] == 1.0
    assert report["verdict"]
    with DecisionLog(log_path, create=False) as log:
        rows = log.decisions("always-vs-gate")
    assert len(rows) == 10 and all(r.label_source == "gold" for r in rows)
    for arm, summary in arms.items():
        mine = [r for r in rows if r.arm == arm]
        assert summary["requests"] == len(mine)
        assert summary["units"] == len({r.unit_id for r in mine})
        correct = sum(bool(r.correct) for r in mine) / len(mine)
        assert summary["accuracy"]["value"] == pytest.approx(correct)
        low, high = summary["accuracy"]["low"], summary["accuracy"]["high"]
        assert low is not None and low <= correct <= high  # an interval from >= 2 units
        retrieved = sum(r.retrieve for r in mine) / len(mine)
        assert summary["retrieval_rate"]["value"] == pytest.approx(retrieved)
        # LM calls per request, one definition: always-retrieve is plain RAG (one call); the
        # gate's prefill is one call and answering with passages a second.
        calls = [1 if arm == "always" else 1 + int(r.retrieved) for r in mine]
        assert [r.lm_calls for r in mine] == calls
        assert summary["lm_calls"] == pytest.approx(sum(calls) / len(calls))
