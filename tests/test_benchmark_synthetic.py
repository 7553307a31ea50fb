"""The benchmark's scoring on synthetic both-branch data whose answers are known (no model).

Questions have a latent "knowledge" value; closed-book correctness follows it, two registry
features carry it (plus noise) and every other feature is noise. Retrieval is right for 40% of
the questions the model does not know, and for 75% of those it knows (passages can distract), so
skipping retrieval where the model knows is worth accuracy. The scoring must recover the exact
baselines, rank with the informative features, choose cuts on training folds only, and write a
replay cache that ``knowgate ab replay`` reproduces.
"""

from __future__ import annotations

import json
from types import MappingProxyType

import numpy as np
import pytest
from scipy.special import expit
from typer.testing import CliRunner

from knowgate.cli import app
from knowgate.evaluation.bench.both_branches import (
    CACHE_FILE,
    BenchTable,
    build_bench_table,
    write_both_branches,
)
from knowgate.evaluation.bench.held_out import HEADLINE, held_out_policies
from knowgate.evaluation.bench.report import write_report
from knowgate.evaluation.bench.retrieval_branch import RetrievalRecord
from knowgate.evaluation.bench.runner import evaluate_benchmark
from knowgate.evaluation.closed_book import ClosedBookRecord
from knowgate.evaluation.datasets import QAExample
from knowgate.evaluation.scoring import AnswerScore
from knowgate.experiments import read_both_branches, replay
from knowgate.policy import build_policy, fit_fused
from knowgate.signals import feature_names

INFORMATIVE = ("next_token_max_prob", "hidden_hoyer_last")
RELATIONS = ("capital", "occupation", "sport")


def _score(correct: bool) -> AnswerScore:
    return AnswerScore(correct, correct, float(correct))


def synthetic_records(
    n: int = 360, seed: int = 0
) -> tuple[list[ClosedBookRecord], list[RetrievalRecord]]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    cb = rng.random(n) < expit(-2.2 + 2.0 * latent)
    rag = np.where(cb, rng.random(n) < 0.75, rng.random(n) < 0.4)
    names = feature_names(family="sparsity") + feature_names(family="uncertainty")
    closed, retrieval = [], []
    for i in range(n):
        popqa = i % 2 == 0
        relation = RELATIONS[i % 3]
        meta = (
            {"prop": relation, "s_pop": float(10 ** (2 + latent[i] + rng.normal()))}
            if popqa
            else {}
        )
        example = QAExample(
            id=str(i),
            question=f"What is the {relation} of entity number {i}?",
            golden_answers=("x",),
            metadata=MappingProxyType(meta),
        )
        features = {name: float(rng.normal()) for name in names}
        features[INFORMATIVE[0]] = float(latent[i] + 0.5 * rng.normal())
        features[INFORMATIVE[1]] = float(-latent[i] + 0.7 * rng.normal())
        dataset = "popqa_like" if popqa else "nq_like"
        closed.append(
            ClosedBookRecord(
                example=example,
                dataset=dataset,
                answer="x" if cb[i] else "y",
                stop_reason="newline",
                score=_score(bool(cb[i])),
                features=features,
                prompt_tokens=20,
                prefill_seconds=0.8,
                decode_seconds=1.6,
                batch_size=8,
            )
        )
        retrieval.append(
            RetrievalRecord(
                example=example,
                dataset=dataset,
                answer="x" if rag[i] else "z",
                score=_score(bool(rag[i])),
                passage_ids=("p1", "p2", "p3"),
                evidence_hit=None,
                retrieval_error=None,
                gate_seconds=0.05,
                retrieve_seconds=0.01,
                answer_seconds=0.9,
                batch_size=8,
            )
        )
    return closed, retrieval


@pytest.fixture(scope="module")
def table() -> BenchTable:
    closed, retrieval = synthetic_records()
    return build_bench_table(closed, retrieval, model_id="smollm2-135m")


@pytest.fixture(scope="module")
def result(table):
    return evaluate_benchmark(table, folds=3, bootstrap=50, singles=True)


def test_table_aligns_branches_and_costs(table) -> None:
    assert table.n == 360
    assert table.cb_correct.sum() > 30 and table.rag_correct.mean() > table.cb_correct.mean()
    # decode 1.6 s shared by a batch of 8; the gate 0.05 s
    assert table.closed_book_seconds()[0] == pytest.approx(0.05 + 0.2)
    assert table.retrieval_seconds()[0] == pytest.approx(0.05 + 0.01 + 0.9)
    assert table.retrieval_seconds(draft_gate=True)[0] == pytest.approx(0.05 + 0.2 + 0.91)
    assert table.plain_rag_seconds()[0] == pytest.approx(0.91)


def test_decode_factor_rescales_cached_decode_times() -> None:
    closed, retrieval = synthetic_records(n=20)
    scaled = build_bench_table(closed, retrieval, model_id="m", decode_factor={"popqa_like": 0.5})
    assert scaled.decode_seconds[0] == pytest.approx(0.1)  # popqa_like row, halved
    assert scaled.decode_seconds[1] == pytest.approx(0.2)  # nq_like row, unchanged


def test_misaligned_branches_are_refused() -> None:
    from knowgate.errors import DataError

    closed, retrieval = synthetic_records(n=20)
    with pytest.raises(DataError, match="different questions"):
        build_bench_table(closed, retrieval[:-1], model_id="m")
    with pytest.raises(DataError, match="no questions"):
        build_bench_table([], [], model_id="m")


def test_baselines_are_exact(result, table) -> None:
    p = result.summary["policies"]
    cb, rag = table.cb_correct, table.rag_correct
    assert p["never"]["accuracy"][0] == pytest.approx(cb.mean(), abs=1e-4)
    assert p["never"]["retrieval_rate"] == 0
    assert p["always"]["accuracy"][0] == pytest.approx(rag.mean(), abs=1e-4)
    assert p["always"]["retrieval_rate"] == 1
    assert p["oracle"]["accuracy"][0] == pytest.approx(np.maximum(cb, rag).mean(), abs=1e-4)
    assert p["oracle"]["retrieval_rate"] == pytest.approx(1 - cb.mean(), abs=1e-4)
    assert p["oracle"]["savings_efficiency"] == pytest.approx(1.0)
    assert p["always"]["mean_seconds_per_question"] == pytest.approx(0.91)
    assert p["never"]["mean_seconds_per_question"] == pytest.approx(0.25)
    low, high = p["always"]["accuracy"][1:]
    assert low < rag.mean() < high


def test_fused_policy_ranks_with_the_informative_features(result) -> None:
    p = result.summary["policies"]
    head = p[HEADLINE]
    assert head["auroc"] > 0.7  # two informative features among 48 (overfits a little)
    assert p["question-only"]["auroc"] < 0.65  # questions carry no signal here
    assert p[INFORMATIVE[0]]["auroc"] > 0.75
    noise = [k for k, v in p.items() if v["family"] == "single" and k not in INFORMATIVE]
    assert np.median([p[k]["auroc"] for k in noise]) < 0.6
    # The default cut (expected accuracy within 1 point of always) skips retrievals and holds
    # accuracy on held-out folds (with a little slack for fold-to-fold noise).
    assert 0 < head["retrieval_rate"] < 1
    assert head["accuracy"][0] >= p["always"]["accuracy"][0] - 0.02
    cuts = result.summary["suggested_default_operating_point"]["cuts_by_rule"]
    assert set(cuts) == set(result.summary["operating_points"])
    # The budget may give up accuracy, so it skips at least as much as the break-even cut.
    assert cuts["expected accuracy within 1 pt of always"] <= cuts["break-even"] + 1e-9
    assert head["lm_calls_per_question"] == pytest.approx(1 + head["retrieval_rate"])
    curves = result.summary["curves"]
    assert curves["vs_random"][HEADLINE]["mean_difference"] > 0.01
    assert curves["headline_vs"]["question-only"]["mean_difference"] > 0
    targets = result.summary["targets"]
    assert targets["curve"]["above_question_only_on_average"] is True
    assert targets["curve_high_rates"]["rates_from"] == 0.8
    assert targets["policy"] == HEADLINE


def test_popularity_policy_is_scored_on_popqa_rows_only(result, table) -> None:
    pop = result.summary["policies"]["popularity (s_pop)"]
    assert pop["n"] == int(np.isfinite(table.labelled.popularity).sum())
    assert pop["auroc"] > 0.6  # s_pop follows the latent knowledge, with noise
    assert "popularity (s_pop)" in result.popqa_curves
    assert "popularity (s_pop)" not in result.curves


def test_cuts_are_chosen_on_training_rows_only(table) -> None:
    held = held_out_policies(table, folds=3, singles=False)
    head = held.policies[HEADLINE]
    seen: list[int] = []

    def rule(p, cb, rag):
        seen.append(p.size)
        return 0.3

    retrieve, cuts = head.decide(rule, table)
    assert cuts == [0.3, 0.3, 0.3]
    assert seen == [f.train.size for f in head.folds]
    for fold in head.folds:
        assert not set(fold.train) & set(fold.test)
        assert np.array_equal(retrieve[fold.test], fold.p_test < 0.3)
    # A cut of 1 retrieves always, even at p = 1 (the FusedPolicy convention).
    retrieve, _ = head.decide(lambda p, cb, rag: 1.0, table)
    assert retrieve.all()


def test_popqa_breakdowns_and_correlations(result) -> None:
    pq = result.summary["popqa"]
    assert set(pq["per_relation"]["always"]) == set(RELATIONS)
    buckets = pq["per_popularity_bucket"]["never"]
    assert sum(b["n"] for b in buckets.values()) == 180
    assert all(b["retrieval_rate"] == 1 for b in pq["per_popularity_bucket"]["always"].values())
    corr = result.summary["sparsity_vs_log_popularity"]
    # hidden_hoyer_last is built from -latent, and s_pop from +latent: negative correlation.
    assert corr["hidden_hoyer_last"]["spearman"] < -0.3
    assert corr["hidden_hoyer_last"]["spearman_within_relation"] < -0.3
    assert corr["hidden_hoyer_last"]["relations"] == 3


def test_report_files(result, tmp_path) -> None:
    written = write_report(result, tmp_path)
    assert {p.name for p in written} >= {
        "results.json",
        "summary.md",
        "curves.csv",
        "curves.png",
        "reliability.png",
        "popqa_buckets.png",
    }
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["policies"]["always"]["retrieval_rate"] == 1
    text = (tmp_path / "summary.md").read_text()
    assert "## Targets" in text and HEADLINE in text
    lines = (tmp_path / "curves.csv").read_text().splitlines()
    assert lines[0] == "subset,policy,retrieval_rate,accuracy"
    assert any(line.startswith(f"all,{HEADLINE},0.50,") for line in lines)


def test_replay_cache_round_trip(result, table, tmp_path) -> None:
    written = write_both_branches(table, tmp_path)
    assert written[0] == tmp_path / CACHE_FILE
    assert {p.parent.name for p in written[1:]} == {"popqa_like", "nq_like"}
    records = read_both_branches(tmp_path)
    assert len(records) == table.n and records[0].id == "popqa_like/0"
    assert "s_pop" in records[0].features and "s_pop" not in records[1].features
    report = replay(
        records,
        {"always": build_policy("always"), "never": build_policy("never")},
    )
    by = {p.label: p for p in report.policies}
    policies = result.summary["policies"]
    assert by["always"].accuracy.value == pytest.approx(policies["always"]["accuracy"][0], abs=1e-4)
    assert by["never"].accuracy.value == pytest.approx(policies["never"]["accuracy"][0], abs=1e-4)
    assert report.references["oracle"]["accuracy"] == pytest.approx(
        policies["oracle"]["accuracy"][0], abs=1e-4
    )
    # A fused policy fitted on the table's own features replays on the cache (names match),
    # through the CLI as a user would run it.
    names = list(feature_names(family="sparsity", stage="prefill"))
    fit = fit_fused(table.labelled.matrix(names), table.cb_correct, names, model_id="smollm2-135m")
    fit.policy.save(tmp_path / "fused.json")
    result_cli = CliRunner().invoke(
        app,
        [
            "ab",
            "replay",
            "--cache",
            str(tmp_path / "datasets" / "nq_like"),
            "--policy",
            "always",
            "--policy",
            str(tmp_path / "fused.json"),
            "--json",
        ],
    )
    assert result_cli.exit_code == 0, result_cli.output
    out = json.loads(result_cli.output)
    assert out["questions"] == int((table.labelled.datasets == "nq_like").sum())
    assert [p["label"] for p in out["policies"]] == ["always", "fused"]
