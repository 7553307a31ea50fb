"""The closed-book cache, exercised with a fake model runner (no torch, fast)."""

import json

import numpy as np
import pytest

from branch_helpers import N_LAYERS, FakeLM, _capture
from knowgate.errors import DataError
from knowgate.evaluation.branches.cache import read_cache
from knowgate.evaluation.branches.closed_book import (
    closed_book_cache_path,
    load_closed_book,
    run_closed_book,
)
from knowgate.evaluation.datasets import load_dataset


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "toy.jsonl"
    rows = [
        {"id": f"q{i}", "question": f"What is number {i}?", "golden_answers": [f"answer {i}"]}
        for i in range(20)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_dataset(path)


def test_run_scores_and_caches(tmp_path, dataset):
    lm = FakeLM()
    records = run_closed_book(
        lm, dataset, cache_dir=tmp_path / "cache", batch_size=6, progress=False
    )
    assert [r.id for r in records] == [e.id for e in dataset]
    assert [r.correct for r in records] == [i % 2 == 0 for i in range(20)]
    assert records[3].features["next_token_entropy"] == 3.0
    assert records[0].batch_size == 6 and records[-1].batch_size == 2
    assert len(lm.prompts_run) == 20
    again = run_closed_book(lm, dataset, cache_dir=tmp_path / "cache", progress=False)
    assert len(lm.prompts_run) == 20  # nothing re-run
    assert [r.answer for r in again] == [r.answer for r in records]
    path = closed_book_cache_path(lm, dataset, tmp_path / "cache")
    header, rows, _ = read_cache(path)
    assert header["model_id"] == "fake-lm" and header["dataset"]["name"] == "toy"
    assert len(rows) == 20
    assert load_closed_book(path, dataset)[4].answer == "answer 4"
    assert lm.questions_seen[:3] == ["What is number 0?", "What is number 1?", "What is number 2?"]


def test_records_every_position_and_stores_probe_arrays(tmp_path, dataset):
    from knowgate.evaluation.branches.cache import load_arrays
    from knowgate.evaluation.branches.closed_book import probe_layers
    from knowgate.signals import sparsity_table_names
    from knowgate.signals.sparsity import hoyer

    lm = FakeLM()
    records = run_closed_book(lm, dataset, cache_dir=tmp_path, batch_size=6, progress=False)
    assert "hidden_hoyer_last_at_question_end" in records[0].features
    assert "draft_mean_logit_margin" in records[0].features
    path = closed_book_cache_path(lm, dataset, tmp_path)
    _, rows, _ = read_cache(path)
    arrays = load_arrays(path, [rows[ex.id] for ex in dataset])
    stored = probe_layers(N_LAYERS)
    assert arrays["probe_hidden"].shape == (20, len(stored), 3, 8)
    assert arrays["probe_hidden"].dtype == np.float16
    # question 7's prompt-end state carries the offset 700 the fake put there
    expected = _capture(7).hidden[list(stored)]
    np.testing.assert_allclose(arrays["probe_hidden"][7, :, 0], expected, rtol=1e-3, atol=0.5)
    table = arrays["sparsity_by_layer"]
    assert table.shape == (20, len(sparsity_table_names()), 3, N_LAYERS)
    row = sparsity_table_names().index("hidden_hoyer")
    np.testing.assert_allclose(table[5, row, 1], hoyer(_capture(5).at("question_end").hidden))


def test_probe_layers_spread_evenly_and_include_the_last():
    from knowgate.evaluation.branches.closed_book import probe_layers

    assert probe_layers(30) == (2, 5, 8, 11, 14, 17, 20, 23, 26, 29)
    assert probe_layers(4) == (0, 1, 2, 3)
    assert probe_layers(18)[-1] == 17 and len(probe_layers(18)) == 10


def test_resume_after_interruption(tmp_path, dataset):
    lm = FakeLM()
    cache = tmp_path / "cache"
    run_closed_book(lm, dataset, cache_dir=cache, batch_size=5, progress=False)
    path = closed_book_cache_path(lm, dataset, cache)
    lines = path.read_bytes().splitlines(keepends=True)
    # Keep the header and 12 records, then half of the 13th: a write torn by a crash.
    path.write_bytes(b"".join(lines[:13]) + lines[13][: len(lines[13]) // 2])
    resumed = FakeLM()
    records = run_closed_book(resumed, dataset, cache_dir=cache, batch_size=5, progress=False)
    assert len(resumed.prompts_run) == 8  # only the lost questions
    assert [r.correct for r in records] == [i % 2 == 0 for i in range(20)]
    _, rows, end = read_cache(path)
    assert len(rows) == 20 and end == path.stat().st_size


def test_limited_run_shares_the_full_cache(tmp_path, dataset):
    lm = FakeLM()
    run_closed_book(lm, dataset.head(7), cache_dir=tmp_path, progress=False)
    assert len(lm.prompts_run) == 7
    run_closed_book(lm, dataset, cache_dir=tmp_path, progress=False)
    assert len(lm.prompts_run) == 20


def test_key_changes_with_model_prompt_and_dataset(tmp_path, dataset):
    base = closed_book_cache_path(FakeLM(), dataset, tmp_path)
    assert closed_book_cache_path(FakeLM("other-lm"), dataset, tmp_path) != base
    assert closed_book_cache_path(FakeLM(system_prompt="Be terse."), dataset, tmp_path) != base
    assert closed_book_cache_path(FakeLM(), dataset, tmp_path, max_new_tokens=4) != base
    other = tmp_path / "other.jsonl"
    other.write_text(dataset.path.read_text().replace("number 3?", "number 3 ?"))
    assert closed_book_cache_path(FakeLM(), load_dataset(other), tmp_path).name != base.name


def test_corrupt_cache_is_reported(tmp_path, dataset):
    lm = FakeLM()
    run_closed_book(lm, dataset, cache_dir=tmp_path, progress=False)
    path = closed_book_cache_path(lm, dataset, tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    lines[5] = "garbage\n"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r":6: corrupt line"):
        run_closed_book(lm, dataset, cache_dir=tmp_path, progress=False)
    path.write_text('{"kind": "record"}\n')
    with pytest.raises(DataError, match="not a closed-book cache"):
        read_cache(path, "closed-book")


def test_load_closed_book_needs_a_complete_cache(tmp_path, dataset):
    lm = FakeLM()
    run_closed_book(lm, dataset.head(5), cache_dir=tmp_path, progress=False)
    path = closed_book_cache_path(lm, dataset, tmp_path)
    with pytest.raises(DataError, match="15 question"):
        load_closed_book(path, dataset)
    assert len(load_closed_book(path, dataset.head(5))) == 5


class EchoLM(FakeLM):
    def prefill(self, prompts, *, questions=None):
        pre = super().prefill(prompts, questions=questions)
        pre.answers = list(questions)  # repeats the question
        return pre


def test_echo_guard_applies_to_cached_answers(tmp_path):
    path = tmp_path / "echo.jsonl"
    row = {"id": "e0", "question": "What is number 0?", "golden_answers": ["number 0"]}
    path.write_text(json.dumps(row) + "\n")
    records = run_closed_book(EchoLM(), load_dataset(path), cache_dir=tmp_path, progress=False)
    assert records[0].answer == "What is number 0?"
    assert not records[0].correct
    assert records[0].score.echo_rejected


def test_second_writer_is_refused(tmp_path, dataset):
    fcntl = pytest.importorskip("fcntl")
    lm = FakeLM()
    path = closed_book_cache_path(lm, dataset, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DataError, match="another process"):
            run_closed_book(lm, dataset, cache_dir=tmp_path, progress=False)
    assert len(run_closed_book(lm, dataset, cache_dir=tmp_path, progress=False)) == 20
