"""The closed-book cache, exercised with a fake model runner (no torch, fast)."""

import json
from dataclasses import dataclass, field

import pytest

from knowgate.errors import DataError
from knowgate.evaluation.answer_cache import read_cache
from knowgate.evaluation.closed_book import (
    closed_book_cache_path,
    load_closed_book,
    run_closed_book,
)
from knowgate.evaluation.datasets import load_dataset
from knowgate.models.config import ModelConfig, PromptConfig


@dataclass
class _Draft:
    text: str
    stop_reason: str = "eos"
    seconds: float = 0.01


@dataclass
class _Out:
    answer: str
    prompt_tokens: int
    feats: dict
    prefill_seconds: float = 0.02
    draft: _Draft = field(default_factory=lambda: _Draft(""))

    def features(self):
        return self.feats


class _Model:
    def state_dict(self):
        return {}


class FakeLM:
    """Answers correctly for even question numbers; counts the prompts it runs."""

    def __init__(self, model_id="fake-lm", system_prompt="Answer briefly."):
        self.model_id = model_id
        self.config = ModelConfig(source=model_id, prompt=PromptConfig(system_prompt=system_prompt))
        self.layers = (0, 1)
        self.model = _Model()
        self.prompts_run: list[str] = []

    def format_prompt(self, question, passages=None):
        return f"{self.config.prompt.system_prompt}\nQ: {question}\nA:"

    def run(self, prompts, *, batch_size=None, max_new_tokens=None, progress=False):
        self.prompts_run.extend(prompts)
        outs = []
        for p in prompts:
            number = int(p.split("number ")[1].split("?")[0])
            answer = f"answer {number}" if number % 2 == 0 else "no idea"
            outs.append(
                _Out(
                    answer,
                    len(p.split()),
                    {"next_token_entropy": float(number), "hidden_hoyer_last": 0.5},
                    draft=_Draft(answer),
                )
            )
        return outs


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
    def run(self, prompts, **kwargs):
        outs = super().run(prompts, **kwargs)
        for out, prompt in zip(outs, prompts, strict=True):
            out.answer = prompt.split("Q: ")[1].split("\nA:")[0]  # repeats the question
        return outs


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
