"""The benchmark's scoring on synthetic both-branch data whose answers are known (no model).

Questions have a latent "knowledge" value; closed-book correctness follows it, two registry
features carry it (plus noise) and ten other features are pure noise. Retrieval is right for 40%
of the questions the model does not know and for 75% of those it knows (passages can distract),
so skipping retrieval where the model knows is worth accuracy. One question in ten occurs in
both datasets (like the 64 questions PopQA's two files share): same text, same answer, same
features. The scoring must recover the exact baselines, rank with the informative features,
keep question groups on one side of every split, choose cuts on out-of-fold probabilities of
training rows only, and write a replay cache that ``knowgate ab replay`` reproduces.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from bench_helpers import (
    INFORMATIVE,
    N_QUESTIONS,
    NOISE,
    RELATIONS,
    SHARED_EVERY,
    synthetic_records,
)
from knowgate.cli import app
from knowgate.evaluation.bench.policies import HEADLINE, PolicyCandidate, held_out_policies
from knowgate.evaluation.bench.report import write_report
from knowgate.evaluation.bench.runner import evaluate_benchmark
from knowgate.evaluation.bench.table import BenchTable, build_bench_table
from knowgate.evaluation.both_branches import CACHE_FILE, read_both_branches, write_both_branches
from knowgate.evaluation.branches.timing import ClosedBookTiming
from knowgate.evaluation.cross_fitting import Learner
from knowgate.experiments import replay
from knowgate.policy import build_policy, fit_fused
from knowgate.policy.selection import Logistic


@pytest.fixture(scope="module")
def table() -> BenchTable:
    closed, retrieval = synthetic_records()
    return build_bench_table(closed, retrieval, model_id="smollm2-135m")


@pytest.fixture(scope="module")
def result(table):
    return evaluate_benchmark(table, folds=3, bootstrap=100, singles=True)


def test_table_aligns_branches_and_stage_times(table) -> None:
    assert table.n == N_QUESTIONS + N_QUESTIONS // SHARED_EVERY
    assert table.cb_correct.sum() > 100 and table.rag_correct.mean() > table.cb_correct.mean()
    seconds = table.branches.seconds
    # prefill 0.8 s and decode 1.6 s shared by a batch of 8; no re-timing: no signal time
    assert seconds["prefill"][0] == pytest.approx(0.1)
    assert seconds["decode"][0] == pytest.approx(0.2)
    assert seconds["signals"][0] == 0.0
    assert seconds["retrieve"][0] == pytest.approx(0.01)
    assert seconds["answer_with_passages"][0] == pytest.approx(0.9)


def test_retiming_rescales_cached_stage_times_per_dataset() -> None:
    closed, retrieval = synthetic_records(n=20)
    timing = ClosedBookTiming("popqa_like", 8, 0.1, 0.05, 0.5, 0.2, 0.3, 1.5, 0.004, 1.0, 3.0)
    scaled = build_bench_table(closed, retrieval, model_id="m", timings={"popqa_like": timing})
    popqa, nq = 0, 1  # row 0 is popqa_like, row 1 nq_like (no re-timing)
    assert scaled.datasets[popqa] == "popqa_like" and scaled.datasets[nq] == "nq_like"
    s = scaled.branches.seconds
    assert s["prefill"][popqa] == pytest.approx(0.1 * 0.5)
    assert s["decode"][popqa] == pytest.approx(0.2 * 1.5)
    assert s["signals"][popqa] == pytest.approx(0.004)
    assert (s["prefill"][nq], s["decode"][nq], s["signals"][nq]) == pytest.approx((0.1, 0.2, 0))


def test_misaligned_branches_are_refused() -> None:
    from knowgate.errors import DataError

    closed, retrieval = synthetic_records(n=20)
    with pytest.raises(DataError, match="different questions"):
        build_bench_table(closed, retrieval[:-1], model_id="m")
    with pytest.raises(DataError, match="no questions"):
        build_bench_table([], [], model_id="m")


def test_baselines_are_exact(result, table) -> None:
    p = result.summary.policies
    cb, rag = table.cb_correct, table.rag_correct
    assert p["never"].accuracy.estimate == pytest.approx(cb.mean())
    assert p["never"].retrieval_rate == 0 and p["never"].skip_recall.estimate == 1
    assert p["always"].accuracy.estimate == pytest.approx(rag.mean())
    assert p["always"].retrieval_rate == 1
    assert p["always"].skip_recall.estimate == 0 and p["always"].skip_precision is None
    assert p["oracle"].accuracy.estimate == pytest.approx(np.maximum(cb, rag).mean())
    assert p["oracle"].retrieval_rate == pytest.approx(1 - cb.mean())
    assert p["oracle"].skip_recall.estimate == 1 and p["oracle"].skip_precision.estimate == 1
    # never: prefill + decode; always: plain RAG, no gate; both one LM call per question.
    assert p["never"].mean_seconds == pytest.approx(0.1 + 0.2)
    assert p["always"].mean_seconds == pytest.approx(0.01 + 0.9)
    assert p["never"].lm_calls_per_question == 1 and p["always"].lm_calls_per_question == 1
    # The oracle is served as a gate: prefill, then decode or retrieval + answer.
    assert p["oracle"].lm_calls_per_question == pytest.approx(1 + (1 - cb.mean()))
    low, high = p["always"].accuracy.low, p["always"].accuracy.high
    assert low < rag.mean() < high


def test_fused_policy_ranks_with_the_informative_features(result, table) -> None:
    # Population AUROCs of the generating process (Monte Carlo over 2M draws of it, outside the
    # code under test): the first informative feature 0.832, the best linear combination of
    # both 0.843, noise 0.5. With ~200 correct answers an AUROC's standard error is ~0.016; the
    # bounds below sit about four of them under the population values.
    p = result.summary.policies
    head = p[HEADLINE]
    assert head.ranking.auroc > 0.78
    assert p["question-only"].ranking.auroc < 0.6  # questions carry no signal here
    assert p[INFORMATIVE[0]].ranking.auroc > 0.77
    noise = [k for k, v in p.items() if v.family == "single" and k not in INFORMATIVE]
    assert len(noise) == len(NOISE)
    assert np.median([p[k].ranking.auroc for k in noise]) < 0.56
    # The default rule (expected accuracy within 1 pt of always) skips, and a gate that ranks
    # well skips the right questions: more correct closed-book answers among the skipped ones
    # than random gating (whose skip precision is the closed-book accuracy).
    assert 0 < head.retrieval_rate < 1
    assert head.skip_precision.low > table.cb_correct.mean()
    assert head.accuracy_minus_random.low > 0
    # Held-out accuracy is consistent with the one-point budget (its interval reaches it).
    assert head.accuracy_minus_always.high >= -0.01
    assert head.lm_calls_per_question == pytest.approx(1 + head.retrieval_rate)
    cuts = result.summary.suggested_default_operating_point.cuts_by_rule
    assert set(cuts) == set(result.summary.operating_points)
    # The budget may give up accuracy, so it skips at least as much as the break-even cut.
    assert cuts["expected accuracy within 1 pt of always"] <= cuts["break-even"] + 1e-9
    curves = result.summary.curves
    assert curves.vs_random[HEADLINE].mean_difference > 0.01
    assert curves.headline_vs["question-only"].mean_difference > 0
    targets = result.summary.targets
    assert targets.curve.above_question_only_on_average is True
    assert targets.curve_high_rates.rates_from == 0.8
    assert targets.policy == HEADLINE and targets.above_random_at_same_rate
    assert targets.skip_precision_above_random


def test_random_at_the_headline_rate_is_an_expected_signal_free_outcome(result, table) -> None:
    p = result.summary.policies
    rate = p[HEADLINE].retrieval_rate
    rnd = p["random (at the fused rate)"]
    cb, rag = table.cb_correct.mean(), table.rag_correct.mean()
    assert rnd.retrieval_rate == pytest.approx(rate)
    assert rnd.accuracy.estimate == pytest.approx(rate * rag + (1 - rate) * cb)
    assert rnd.skip_recall.estimate == pytest.approx(1 - rate)
    assert rnd.skip_precision.estimate == pytest.approx(cb)
    # signal-free: one LM call; retrieval + answer or prefill + decode, no gate prefill on top
    assert rnd.lm_calls_per_question == 1
    assert rnd.mean_seconds == pytest.approx(rate * 0.91 + (1 - rate) * 0.3)


def test_popularity_policy_is_cross_fitted_on_popqa_rows_only(result, table) -> None:
    pop = result.summary.policies["popularity (s_pop)"]
    assert pop.n == int(np.isfinite(table.labelled.popularity).sum())
    # log s_pop = 2 + latent + N(0, 1): population AUROC 0.761; ~90 correct PopQA answers.
    assert pop.ranking.auroc > 0.65
    held = result.held_out.policies["popularity (s_pop)"]
    assert held.fitted and not np.isfinite(held.score[~held.rows]).any()
    assert "popularity (s_pop)" in result.popqa_curves
    assert "popularity (s_pop)" not in result.curves


def question_numbers(table: BenchTable) -> NDArray[np.int64]:
    """Each row's question, read from its example id (``<dataset>-<i>``), not from the groups."""
    return np.array([int(r.example.id.rsplit("-", 1)[1]) for r in table.labelled.records])


#: One learner call: the rows (table row numbers) the model was fitted on, the rows it scored.
Call = tuple[frozenset[int], frozenset[int]]

MEMORY_LOGIT = 4.0  # sigmoid(4) = 0.982, sigmoid(-4) = 0.018


def memorising_learner(calls: list[Call]) -> Learner:
    """A learner that knows the label of every question it was fitted on and nothing else.

    Columns: the row number, then the question number. On a question it saw, it is sure of the
    label (logit +-4); on any other it says its training rows' base rate (the logit of their
    mean label). So a probability shows whether the model behind it saw the row's question:
    with no calibration, a question it did not see gets exactly its training rows' mean label.
    Every scoring call is recorded in ``calls`` with the rows its model was fitted on.
    """

    def learner(x, y, names):
        trained = frozenset(int(v) for v in x[:, 0])
        sure = np.where(y == 1, MEMORY_LOGIT, -MEMORY_LOGIT)
        known = {int(q): float(v) for q, v in zip(x[:, 1], sure, strict=True)}
        base = float(logit(y.mean()))

        class Memorised:
            def logits(self, xs):
                calls.append((trained, frozenset(int(v) for v in xs[:, 0])))
                return np.array([known.get(int(q), base) for q in xs[:, 1]])

        return Memorised()

    return learner


@pytest.fixture(scope="module")
def memorised(table):
    """The memorising learner cross-fitted like every benchmark policy (3 outer, 3 inner folds)."""
    calls: list[Call] = []
    x = np.column_stack([np.arange(table.n), question_numbers(table)]).astype(np.float64)
    candidate = PolicyCandidate(
        "memoriser",
        "test",
        "prefill",
        ("row", "question"),
        x,
        np.ones(table.n, dtype=bool),
        learner=memorising_learner(calls),
    )
    held = held_out_policies(table, folds=3, calibration="none", jobs=[candidate])
    return held, held.policies["memoriser"], list(calls), x


def test_question_groups_never_straddle_a_split(table, memorised) -> None:
    held, _, calls, _ = memorised
    question = question_numbers(table)
    _, counts = np.unique(question, return_counts=True)
    # Precondition: 90 questions occur in both datasets, so a grouping bug has rows to split.
    assert (counts == 2).sum() == N_QUESTIONS // SHARED_EVERY and counts.max() == 2
    covered = np.zeros(table.n, dtype=int)
    for train, test in held.splits:
        covered[test] += 1
        assert not set(question[train]) & set(question[test])
    assert (covered == 1).all()  # every row is held out exactly once
    # Every model the cross-fit actually fitted and used - the three inner models and the
    # training-fold model of each of the three outer folds - scored only questions it never saw.
    assert len(calls) == 3 * (3 + 1)
    for trained, scored in calls:
        assert trained and scored
        assert not set(question[list(trained)]) & set(question[list(scored)])


def test_training_fold_probabilities_come_from_inner_models(table, memorised) -> None:
    """Each training row's p(known) is the base rate of an inner model that did not see it."""
    _, policy, calls, x = memorised
    y = table.cb_correct
    assert len(policy.folds) == 3
    for fold in policy.folds:
        train = [int(i) for i in fold.train]
        inner = [(t, s) for t, s in calls if t | s == set(train) and not t & s]
        # three inner models whose held-out parts cover the training rows once
        assert len(inner) == 3 and sorted(i for _, s in inner for i in s) == sorted(train)
        expected = {i: y[list(t)].mean() for t, s in inner for i in s}
        np.testing.assert_allclose(fold.p_train, [expected[i] for i in train], rtol=0, atol=1e-12)
        # The held-out rows: the training-fold model's base rate (their questions are unseen).
        np.testing.assert_allclose(fold.p_test, y[train].mean(), rtol=0, atol=1e-12)
        # A model fitted on the whole training fold has seen every training row: it would give
        # 0.982 or 0.018 instead, so a leak could not pass the check above.
        leaked = expit(fold.model.logits(x[fold.train]))
        assert np.all(np.abs(leaked - fold.p_train) > 0.15)


def test_logistic_out_of_fold_probabilities_match_scikit_learn(table, memorised) -> None:
    """The fused policies' learner and Platt calibration, recomputed with scikit-learn."""
    _, memo, calls, _ = memorised
    names = list(INFORMATIVE)
    candidate = PolicyCandidate(
        "logistic",
        "test",
        "prefill",
        tuple(names),
        table.labelled.matrix(names),
        np.ones(table.n, dtype=bool),
        learner=Logistic(c=1.0),  # the fused policies' inner cross-validation, on fixed inputs
    )
    held = held_out_policies(table, folds=3, calibration="sigmoid", jobs=[candidate])
    x, y = table.labelled.matrix(names), table.cb_correct

    def regression(rows: list[int]):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        return model.fit(x[rows], y[rows])

    for fold, memo_fold in zip(held.policies["logistic"].folds, memo.folds, strict=True):
        assert np.array_equal(fold.train, memo_fold.train)  # the same folds for every policy
        train = [int(i) for i in fold.train]
        position = {row: k for k, row in enumerate(train)}
        oof = np.full(len(train), np.nan)
        # the inner parts the memorising learner was fitted and scored on: shared by all policies
        for trained, scored in calls:
            if trained | scored == set(train) and not trained & scored:
                rows = sorted(scored)
                oof[[position[i] for i in rows]] = regression(sorted(trained)).decision_function(
                    x[rows]
                )
        assert np.isfinite(oof).all()
        # Platt scaling fitted on the out-of-fold logits of the training rows
        platt = LogisticRegression(C=np.inf).fit(oof[:, None], y[train])
        np.testing.assert_allclose(fold.p_train, platt.predict_proba(oof[:, None])[:, 1], atol=1e-6)
        # the held-out rows: the regression on all training rows, calibrated the same way
        full = regression(train).decision_function(x[fold.test])
        np.testing.assert_allclose(fold.p_test, platt.predict_proba(full[:, None])[:, 1], atol=1e-6)
        # in-sample logits (a leak) differ from the out-of-fold ones the cuts are chosen on
        in_sample = regression(train).decision_function(x[train])
        assert np.abs(in_sample - oof).max() > 1e-3


def test_cuts_are_chosen_on_training_rows_only(table) -> None:
    held = held_out_policies(table, folds=3, families=["fused"])
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
    pq = result.summary.popqa
    assert set(pq.per_relation["always"]) == set(RELATIONS)
    buckets = pq.per_popularity_bucket["never"]
    assert sum(b.n for b in buckets.values()) == N_QUESTIONS // 2
    assert all(b.retrieval_rate == 1 for b in pq.per_popularity_bucket["always"].values())
    corr = result.summary.sparsity_vs_log_popularity
    # hidden_hoyer_last is built from -latent, and s_pop from +latent: negative correlation.
    assert corr["hidden_hoyer_last"].spearman < -0.3
    assert corr["hidden_hoyer_last"].spearman_within_relation < -0.3
    assert corr["hidden_hoyer_last"].relations == 3


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
    assert data["policies"][HEADLINE]["skip_recall"]["estimate"] is not None
    assert "savings" not in json.dumps(data)
    text = (tmp_path / "summary.md").read_text()
    for section in ("## Targets", "## Null check", "leave one dataset out", "**Latency**"):
        assert section in text
    assert HEADLINE in text and "skip recall" in text
    lines = (tmp_path / "curves.csv").read_text().splitlines()
    assert lines[0] == "subset,policy,retrieval_rate,accuracy"
    assert any(line.startswith(f"all,{HEADLINE},0.50,") for line in lines)


def test_replay_cache_round_trip(result, table, tmp_path) -> None:
    written = write_both_branches(table.to_records(), tmp_path)
    assert written[0] == tmp_path / CACHE_FILE
    assert {p.parent.name for p in written[1:]} == {"popqa_like", "nq_like"}
    records = read_both_branches(tmp_path)
    assert len(records) == table.n and records[0].id == "popqa_like/popqa_like-0"
    assert "s_pop" in records[0].features and "s_pop" not in records[1].features
    report = replay(
        records,
        {
            "always": build_policy("always"),
            "never": build_policy("never"),
            "oracle": build_policy("oracle"),
        },
    )
    by = {p.label: p for p in report.policies}
    policies = result.summary.policies
    for name in ("always", "never", "oracle"):
        # the replay and the benchmark share one outcome rule: same accuracy, same latency
        assert by[name].accuracy.value == pytest.approx(policies[name].accuracy.estimate)
        assert by[name].wall_time_s.value == pytest.approx(policies[name].mean_seconds, abs=1e-5)
    # A fused policy fitted on the table's own features replays on the cache (names match),
    # through the CLI as a user would run it.
    names = [*INFORMATIVE, *NOISE[:4]]
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


def test_a_new_policy_family_is_one_function_and_one_entry(table, monkeypatch) -> None:
    """A peer method reading its own per-row data, at its own cost, joins the benchmark."""
    import dataclasses

    from knowgate.evaluation.bench.policies import POLICY_FAMILIES, PolicyCandidate
    from knowgate.evaluation.bench.policy_results import evaluate_decisions
    from knowgate.evaluation.operating_rules import RULES

    def sampled_agreement(t):
        yield PolicyCandidate(
            "sample agreement",
            "peers",
            "draft",
            ("agreement",),
            t.extra["agreement"][:, None],
            np.ones(t.n, dtype=bool),
            extra_lm_calls=5.0,
            extra_seconds=0.5,
        )

    monkeypatch.setitem(POLICY_FAMILIES, "peers", sampled_agreement)
    informative = table.labelled.features[INFORMATIVE[0]]
    with_peers = dataclasses.replace(table, extra={"agreement": informative})
    held = held_out_policies(with_peers, folds=3, families=["peers"])
    policy = held.policies["sample agreement"]
    retrieve, _ = policy.decide(RULES["probability:0.5"], with_peers)
    result = evaluate_decisions(policy, retrieve, with_peers, n_boot=0)
    rate = retrieve.mean()
    assert result.family == "peers" and result.ranking.auroc > 0.77
    # a draft-stage gate: prefill 0.1 + decode 0.2, then retrieval 0.01 + answer 0.9 when it
    # retrieves, plus the 0.5 s and 5 calls its samples cost
    assert result.mean_seconds == pytest.approx(0.1 + 0.2 + 0.91 * rate + 0.5)
    assert result.lm_calls_per_question == pytest.approx(1 + rate + 5)
