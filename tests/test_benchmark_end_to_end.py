"""``knowgate bench`` end to end: a real model, real questions, a tiny real knowledge base.

40 PopQA questions (relations the 135M model sometimes knows, each with gold evidence in the
Wikipedia corpus) and a knowledge base built from those questions' evidence passages. Checks
that both branches and the peers' extra calls are run and cached, that policies - the field's
methods and the hidden-state probe included - are scored, that a rerun uses only the caches,
and that ``knowgate ab replay`` judges the shipped policy on the written cache.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knowgate.cli import app
from knowgate.errors import DataError

runner = CliRunner()
RELATIONS = {"capital", "country", "sport", "capital of", "religion"}
N_QUESTIONS = 40
SHIPPED = Path(__file__).resolve().parents[1] / "configs" / "policies" / "smollm2-135m.json"


@pytest.fixture(scope="module")
def bench_inputs(tmp_path_factory, shared_data):
    """(questions file, knowledge-base dir) built from the shared data."""
    from knowgate.retrieval import KnowledgeBase

    root = tmp_path_factory.mktemp("bench-inputs")
    rows = []
    with (shared_data / "qa" / "popqa_random.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            meta = row["metadata"]
            if meta.get("prop") in RELATIONS and meta.get("evidence_ids"):
                rows.append(row)
            if len(rows) == N_QUESTIONS:
                break
    questions = root / "popqa_bench40.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    wanted = {e for r in rows for e in r["metadata"]["evidence_ids"]}
    passages = []
    with gzip.open(shared_data / "corpus" / "wiki18.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            if doc["id"] in wanted:
                passages.append(line)
    corpus = root / "evidence.jsonl"
    corpus.write_text("".join(passages), encoding="utf-8")
    kb_dir = root / "kb"
    KnowledgeBase.build([corpus], progress=False).save(kb_dir)
    return questions, kb_dir, len(passages)


def _bench(args: list[str]):
    return runner.invoke(app, ["bench", *args], catch_exceptions=False)


@pytest.mark.slow
def test_bench_end_to_end_with_cache_reuse_and_replay(
    bench_inputs, tmp_path, smollm, monkeypatch
) -> None:
    questions, kb_dir, n_passages = bench_inputs
    assert n_passages >= N_QUESTIONS  # every question has at least one evidence passage
    monkeypatch.setattr("knowgate.cli.bench.load_language_model", lambda _source: smollm)
    common = [
        "--data",
        str(questions),
        "--kb",
        str(kb_dir),
        "--folds",
        "3",
        "--bootstrap",
        "50",
        "--closed-book-cache",
        str(tmp_path / "closed_book"),
        "--retrieval-cache",
        str(tmp_path / "retrieval"),
        "--peer-cache",
        str(tmp_path / "peers"),
        "--no-progress",
    ]
    out = tmp_path / "out"
    result = _bench([*common, "--out", str(out), "--timing-sample", "8"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["n_questions"] == N_QUESTIONS
    branch = summary["branches"]["popqa_bench40"]
    # The base holds every question's evidence: hybrid search puts it in (almost) every prompt,
    # and the passages make the model right more often than it is from memory.
    assert branch["evidence_in_prompt"] >= 0.9
    assert branch["retrieval_accuracy"] > branch["closed_book_accuracy"]
    policies = summary["policies"]
    assert policies["always"]["retrieval_rate"] == 1 and policies["never"]["retrieval_rate"] == 0
    assert policies["oracle"]["accuracy"]["estimate"] == branch["oracle_accuracy"]
    # always is plain RAG (no gate prefill, one LM call); a gate pays its prefill
    assert policies["always"]["lm_calls_per_question"] == 1
    assert policies["always"]["mean_seconds"] == pytest.approx(branch["mean_plain_rag_seconds"])
    assert branch["mean_gated_retrieval_seconds"] > branch["mean_plain_rag_seconds"]
    head = policies["uncertainty+sparsity (prefill)"]
    assert 0 <= head["skip_recall"]["estimate"] <= 1
    assert summary["null_check"]["policies"]  # the leakage guard ran
    # one dataset: nothing to leave out, and the report says so
    assert summary["leave_one_dataset_out"]["skipped"] == {
        "popqa_bench40": "one dataset only: nothing to leave out"
    }
    fitted = [k for k, v in policies.items() if v["family"] in ("fused", "single")]
    assert "uncertainty+sparsity (prefill)" in fitted and len(fitted) > 40
    # the field's methods and the probe, each at its own cost
    from knowgate.evaluation.bench import policies as families

    peers = {
        families.TARG,
        families.FLARE_FIXED,
        families.FLARE_CUT,
        families.SAMPLING,
        families.SAMPLING_LEXICAL,
        families.SELF_ROUTING_FIXED,
        families.SELF_ROUTING_CUT,
    }
    assert peers <= set(policies) | set(summary["skipped_policies"])
    assert {families.PROBE, families.SAMPLING, families.SELF_ROUTING_FIXED} <= set(policies)
    sampling = policies[families.SAMPLING]
    assert sampling["n"] == N_QUESTIONS and sampling["extra_seconds"] > 0
    assert sampling["lm_calls_per_question"] == pytest.approx(6 + sampling["retrieval_rate"])
    assert policies[families.SELF_ROUTING_FIXED]["lm_calls_per_question"] == pytest.approx(2)
    assert policies[families.PROBE]["lm_calls_per_question"] == pytest.approx(
        1 + policies[families.PROBE]["retrieval_rate"]
    )
    assert len(policies[families.PROBE]["choices_per_fold"]) == 3
    field = summary["field_comparison"]
    assert field["n"] == N_QUESTIONS and families.SAMPLING in field["rows"]
    assert field["rows"]["always"]["lm_calls"] == 1
    layers = summary["layers"]
    assert layers["positions"] == ["prompt_end", "question_end", "question_mean"]
    assert len(layers["sparsity_layers"]) == 30 and len(layers["probe_layers"]) == 10
    assert summary["run"]["peers"] == {"popqa_bench40": N_QUESTIONS}
    assert len(list((tmp_path / "peers").rglob("*.jsonl"))) == 1
    retiming = summary["run"]["closed_book_retiming"]["popqa_bench40"]
    assert retiming["questions"] == 8 and retiming["answers_agree"] >= 0.75
    assert retiming["signals_seconds"] > 0 and retiming["prefill_factor"] > 0
    assert "knowgate bench --model smollm2-135m" in summary["run"]["command"]
    for name in (
        "summary.md",
        "curves.csv",
        "curves.png",
        "curves_field.png",
        "layers.png",
        "reliability.png",
    ):
        assert (out / name).is_file()
    assert len((out / "both_branches.jsonl").read_text().splitlines()) == N_QUESTIONS

    # A rerun touches no model: both branches come from the caches, results are identical.
    def refuse(*_args, **_kwargs):
        raise AssertionError("the rerun should use the caches")

    monkeypatch.setattr("knowgate.routing.router.Router.route_batch", refuse)
    monkeypatch.setattr(smollm, "run", refuse)
    monkeypatch.setattr(smollm, "sample", refuse)
    monkeypatch.setattr(smollm, "next_token_probability", refuse)
    again = tmp_path / "again"
    result = _bench([*common, "--out", str(again), "--timing-sample", "0"])
    assert result.exit_code == 0, result.output
    rerun = json.loads((again / "results.json").read_text())
    for name in ("always", "never", "oracle", "uncertainty+sparsity (prefill)", families.SAMPLING):
        assert rerun["policies"][name]["accuracy"] == policies[name]["accuracy"]
        assert rerun["policies"][name]["retrieval_rate"] == policies[name]["retrieval_rate"]

    # The replay cache round trip: the shipped policy and always, judged on the written cache.
    replayed = runner.invoke(
        app,
        ["ab", "replay", "--cache", str(out), "--policy", "always", "--policy", str(SHIPPED)],
    )
    assert replayed.exit_code == 0, replayed.output
    replayed = runner.invoke(
        app,
        [
            "ab",
            "replay",
            "--cache",
            str(out),
            "--policy",
            "always",
            "--policy",
            str(SHIPPED),
            "--json",
        ],
    )
    by = {p["label"]: p for p in json.loads(replayed.output)["policies"]}
    assert by["always"]["accuracy"]["value"] == pytest.approx(
        policies["always"]["accuracy"]["estimate"]
    )
    # the replay and the benchmark share one outcome rule, latency included
    assert by["always"]["wall_time_s"]["value"] == pytest.approx(
        policies["always"]["mean_seconds"], abs=1e-5
    )
    from knowgate.experiments import read_both_branches
    from knowgate.policy import load_policy

    shipped = load_policy(SHIPPED, model_id=smollm.model_id)
    records = read_both_branches(out)
    rate = sum(d.retrieve for d in shipped.decide_batch([r.gate_features() for r in records]))
    assert by["smollm2-135m"]["retrieval_rate"]["value"] == pytest.approx(rate / len(records))


@pytest.mark.slow
def test_retrieval_branch_resumes_after_a_torn_write(bench_inputs, tmp_path, smollm) -> None:
    from knowgate.evaluation.branches.retrieval import (
        load_retrieval_branch,
        run_retrieval_branch,
    )
    from knowgate.evaluation.datasets import load_dataset
    from knowgate.retrieval import KnowledgeBase

    questions, kb_dir, _ = bench_inputs
    ds = load_dataset(questions, limit=6)
    kb = KnowledgeBase.load(kb_dir)
    cache = tmp_path / "retrieval"
    first = run_retrieval_branch(
        smollm, ds, kb, knowledge_base_dir=kb_dir, cache_dir=cache, batch_size=3, progress=False
    )
    (path,) = list(cache.rglob("*.jsonl"))
    assert len(path.read_text().splitlines()) == 1 + 6
    assert all(len(r.passage_ids) == 3 for r in first)
    assert all(r.answer_seconds > 0 and r.retrieve_seconds > 0 for r in first)
    # Tear the last line (an interrupted write): the run drops it and redoes one batch.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(DataError, match="not in the cache"):
        load_retrieval_branch(path, ds)
    calls = []
    original = smollm.run

    def counting(prompts, **kwargs):
        calls.append(len(prompts))
        return original(prompts, **kwargs)

    smollm.run = counting
    try:
        again = run_retrieval_branch(
            smollm, ds, kb, knowledge_base_dir=kb_dir, cache_dir=cache, batch_size=3
        )
    finally:
        del smollm.run
    assert calls == [1]  # only the torn question is answered again
    assert [r.answer for r in again][:5] == [r.answer for r in first][:5]
    assert [r.id for r in load_retrieval_branch(path, ds)] == [r.id for r in first]
    # Another k is another cache file.
    run_retrieval_branch(
        smollm,
        ds.head(2),
        kb,
        knowledge_base_dir=kb_dir,
        k=1,
        cache_dir=cache,
        progress=False,
    )
    assert len(list(cache.rglob("*.jsonl"))) == 2


def test_bench_rejects_bad_options_before_loading_a_model(tmp_path, monkeypatch) -> None:
    def refuse(_source):
        raise AssertionError("no model should be loaded")

    monkeypatch.setattr("knowgate.cli.bench.load_language_model", refuse)
    data = tmp_path / "q.jsonl"
    data.write_text('{"id": "a", "question": "q?", "golden_answers": ["a"]}\n')
    base = ["bench", "--data", str(data), "--kb", str(tmp_path / "kb"), "--out", str(tmp_path)]
    cases = [
        (["--sample", "q=zero"], "expected NAME=N"),
        (["--sample", "other=5"], "not in --data"),
        (["--sample", "q=5/0"], "expected NAME=N"),
        (["--peer-sample", "q=4/2"], "expected NAME=N"),
        (["--calibration", "beta"], "--calibration must be one of"),
        ([], "knowledge base not found"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 2, result.output
        assert message in result.output


def test_bench_nested_sample_draws_from_the_outer_sample(tmp_path, monkeypatch) -> None:
    """``--sample q=4/2`` is a seeded 2 of the seeded 4, the questions a staged cache holds."""
    import numpy as np

    import knowgate.evaluation.bench.runner as bench_runner
    import knowgate.retrieval as retrieval

    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            f'{{"id": "r{i}", "question": "q{i}?", "golden_answers": ["a"]}}\n' for i in range(10)
        )
    )
    seen: list[list[str]] = []

    class Stop(Exception):
        pass

    def capture(_lm, datasets, *args, **kwargs):
        seen.extend([ex.id for ex in ds] for ds in datasets)
        raise Stop

    monkeypatch.setattr("knowgate.cli.bench.load_language_model", lambda _source: object())
    monkeypatch.setattr(retrieval.KnowledgeBase, "load", classmethod(lambda cls, path: object()))
    monkeypatch.setattr(bench_runner, "run_branches", capture)
    args = ["bench", "--data", str(data), "--kb", str(tmp_path), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--sample", "q=4/2"])
    assert isinstance(result.exception, Stop), result.output
    # the definition, by hand: seeded indices without replacement, kept in file order, twice
    outer = np.sort(np.random.default_rng(0).choice(10, size=4, replace=False))
    inner = np.sort(np.random.default_rng(0).choice(4, size=2, replace=False))
    assert seen == [[f"r{outer[i]}" for i in inner]]
