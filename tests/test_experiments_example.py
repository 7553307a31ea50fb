"""examples/ab_test.py runs end to end and its report agrees with its decision log."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from experiments_helpers import expected_arm
from knowgate.experiments import DecisionLog

ROOT = Path(__file__).resolve().parents[1]
REQUESTS, USERS, SEED = 10, 10, 0


def example_traffic() -> list[tuple[str, str]]:
    """(user, arm) of each request the example sends, worked out from what it documents.

    Its users are drawn with ``random.Random(seed + 1).randrange(users)`` once per request, and
    its experiment splits "always" and "gate" evenly under the salt ``example-<seed>``.
    """
    rng = random.Random(SEED + 1)
    users = [f"user-{rng.randrange(USERS)}" for _ in range(REQUESTS)]
    split = [("always", 1.0), ("gate", 1.0)]
    return [(u, expected_arm(f"example-{SEED}", u, split)) for u in users]


@pytest.mark.slow
def test_example_ab_test_runs_and_reports_what_it_logged(shared_data, tmp_path) -> None:
    # Both arms get traffic, from at least two units each (an interval needs two), so every
    # per-arm check below runs: with this seed, 6 requests from 5 users go to "always" and 4
    # from 2 users to "gate".
    traffic = example_traffic()
    requests = Counter(arm for _, arm in traffic)
    units = {arm: len({u for u, a in traffic if a == arm}) for arm in requests}
    assert requests == {"always": 6, "gate": 4} and units == {"always": 5, "gate": 2}
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
            str(REQUESTS),
            "--users",
            str(USERS),
            "--seed",
            str(SEED),
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
    assert {a: (arms[a]["requests"], arms[a]["units"]) for a in arms} == {
        a: (requests[a], units[a]) for a in requests
    }
    assert {a: arms[a]["labelled"] for a in arms} == requests  # every answer was scored
    assert arms["always"]["retrieval_rate"]["value"] == 1.0
    assert report["verdict"]
    with DecisionLog(log_path, create=False) as log:
        rows = log.decisions("always-vs-gate")
    # one row per request, in order: the simulated user and the arm the documented rule gives
    assert [(r.unit_id, r.arm) for r in rows] == traffic
    assert all(r.label_source == "gold" for r in rows)
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
