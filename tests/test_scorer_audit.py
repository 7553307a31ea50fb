"""The scorer against human judgement: 300 closed-book answers judged by reading them.

``tests/data/scorer_audit.jsonl`` holds a seeded random sample of cached closed-book answers
(``benchmarks/scorer_audit.py draft``), 37-38 per (model, dataset) cell, each judged by a person
(``human_correct``, with a short ``reason``). The judgement is the expected value here; the scorer
must agree with it on at least 97% of the rows (issue 11). See docs/benchmark.md, "Scorer audit".
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from knowgate.evaluation.scoring import score_answer

FIXTURE = Path(__file__).resolve().parent / "data" / "scorer_audit.jsonl"
FIELDS = {
    "id",
    "model",
    "dataset",
    "question",
    "answer",
    "golden_answers",
    "human_correct",
    "reason",
}
MODELS = {"smollm2-135m", "gemma3-270m"}
DATASETS = {"popqa_random", "popqa_h2", "nq_1000", "squad_dev"}
TARGET = 0.97


@pytest.fixture(scope="module")
def audited() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


def test_fixture_is_the_stratified_judged_sample(audited):
    assert len(audited) == 300
    for row in audited:
        assert set(row) == FIELDS
        assert isinstance(row["human_correct"], bool)
        assert row["reason"].strip()
        assert row["golden_answers"] and all(isinstance(a, str) for a in row["golden_answers"])
    cells = Counter((row["model"], row["dataset"]) for row in audited)
    assert set(cells) == {(m, d) for m in MODELS for d in DATASETS}
    assert sorted(cells.values()) == [37] * 4 + [38] * 4
    assert len({(row["model"], row["id"]) for row in audited}) == 300


def test_scorer_agrees_with_human_judgement(audited):
    disagreements = []
    for row in audited:
        auto = score_answer(row["answer"], row["golden_answers"], row["question"]).in_accuracy
        if auto != row["human_correct"]:
            kind = "false positive" if auto else "false negative"
            disagreements.append(
                f"{kind}: {row['model']}/{row['dataset']} {row['id']} "
                f"Q={row['question']!r} A={row['answer']!r} gold={row['golden_answers'][:4]!r}"
                f" ({row['reason']})"
            )
    agreement = 1 - len(disagreements) / len(audited)
    assert agreement >= TARGET, (
        f"agreement {agreement:.3f} < {TARGET}; {len(disagreements)} disagreements:\n"
        + "\n".join(disagreements)
    )
