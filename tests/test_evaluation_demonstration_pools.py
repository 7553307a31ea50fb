"""Held-out demonstration pools never contain an evaluated question (synthetic and real data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowgate.errors import DataError
from knowgate.evaluation.datasets import QADataset, load_dataset
from knowgate.evaluation.demonstration_pools import (
    check_disjoint,
    evaluated_questions,
    evaluation_samples,
    held_out_pool,
)
from knowgate.prompting import DemonstrationPool


def _dataset(path: Path, rows: list[tuple[str, str, list[str]]]) -> QADataset:
    path.write_text(
        "".join(
            json.dumps({"id": i, "question": q, "golden_answers": a}) + "\n" for i, q, a in rows
        )
    )
    return load_dataset(path)


def _key(question: str) -> str:
    """The test's own normal form: lower case, whitespace collapsed."""
    return " ".join(question.lower().split())


def test_pool_leaves_out_questions_evaluated_in_any_dataset(tmp_path) -> None:
    a = _dataset(tmp_path / "a.jsonl", [("a1", "Who wrote Hamlet?", ["Shakespeare"])])
    b = _dataset(
        tmp_path / "b.jsonl",
        [
            ("b1", "who  wrote hamlet?", ["William Shakespeare"]),  # a's question, other id
            ("b2", "Who painted Guernica?", ["Picasso", "Pablo Picasso"]),
            ("b3", "Who painted Guernica?", ["Picasso"]),  # repeated: kept once
            ("b4", "What is the capital of Peru?", ["Lima"]),
        ],
    )
    evaluated = [a, QADataset(b.name, b.path, (b[3],), b.content_hash)]
    pool = held_out_pool(b, evaluated_questions(evaluated))
    assert [(d.question, d.answer) for d in pool] == [("Who painted Guernica?", "Picasso")]
    with pytest.raises(DataError, match="fewer than 2"):
        held_out_pool(b, evaluated_questions(evaluated), size=2)


def test_check_disjoint_names_the_overlap(tmp_path) -> None:
    pool = DemonstrationPool.load(
        _write(tmp_path / "p.jsonl", [{"question": "Who wrote Hamlet?", "answer": "x"}])
    )
    with pytest.raises(DataError, match="1 evaluated question"):
        check_disjoint(pool, {"who wrote hamlet?"})
    check_disjoint(pool, {"who wrote faust?"})


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluation_samples_are_disjoint_by_question_text(tmp_path) -> None:
    a = _dataset(tmp_path / "a.jsonl", [(f"a{i}", f"Question {i}?", ["x"]) for i in range(6)])
    b = _dataset(tmp_path / "b.jsonl", [(f"b{i}", f"question  {i}?", ["x"]) for i in range(6)])
    first, second = evaluation_samples([a, b], 6)
    assert len(first) == 6 and len(second) == 0  # every b question is an a question


def test_real_popqa_pools_hold_none_of_the_shared_or_evaluated_questions(shared_data) -> None:
    names = ("popqa_random", "popqa_h2")
    raw = {
        n: [json.loads(line) for line in (shared_data / "qa" / f"{n}.jsonl").open()] for n in names
    }
    keys = {n: {_key(r["question"]) for r in rows} for n, rows in raw.items()}
    shared = keys["popqa_random"] & keys["popqa_h2"]
    assert len(shared) == 64  # the data README's count, found here without the library
    full = [load_dataset(n, data_dir=shared_data) for n in names]
    # evaluate a sample of popqa_random and every shared question of popqa_h2
    evaluated = evaluation_samples(full[:1], 100, seed=3)
    h2 = full[1]
    evaluated.append(
        QADataset(
            h2.name,
            h2.path,
            tuple(ex for ex in h2 if _key(ex.question) in shared),
            h2.content_hash,
        )
    )
    evaluated_keys = {_key(ex.question) for ds in evaluated for ex in ds}
    assert shared <= evaluated_keys
    for source in full:
        pool = held_out_pool(source, evaluated_questions(evaluated), size=300, seed=1)
        assert len(pool) == 300
        shown = {_key(d.question) for d in pool}
        assert shown.isdisjoint(evaluated_keys)
        assert shown <= keys[source.name]  # drawn from the same dataset
