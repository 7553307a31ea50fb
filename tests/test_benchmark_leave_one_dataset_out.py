"""The shipped recipe left out of each dataset in turn: the fit never sees the left-out one."""

from __future__ import annotations

import numpy as np
import pytest

from bench_helpers import N_QUESTIONS, SHARED_EVERY, synthetic_records
from knowgate.evaluation.bench.leave_one_dataset_out import (
    Recipe,
    RecipeFit,
    TrainingData,
    fit_recipe,
    leave_one_dataset_out,
    recipe_for,
    shipped_features,
)
from knowgate.evaluation.bench.table import BenchTable, build_bench_table


@pytest.fixture(scope="module")
def table() -> BenchTable:
    closed, retrieval = synthetic_records()
    return build_bench_table(closed, retrieval, model_id="m")


class RecordingFitter:
    """Fits the recipe and keeps what each fit was given and what it returned."""

    def __init__(self) -> None:
        self.calls: list[tuple[TrainingData, RecipeFit]] = []

    def __call__(self, data: TrainingData, recipe: Recipe) -> RecipeFit:
        fit = fit_recipe(data, recipe)
        self.calls.append((data, fit))
        return fit


@pytest.fixture(scope="module")
def run(table):
    fitter = RecordingFitter()
    recipe = recipe_for(table.labelled, calibration="sigmoid", seed=0)
    return recipe, fitter, leave_one_dataset_out(table, recipe, folds=3, n_boot=50, fitter=fitter)


def test_the_recipe_reads_the_router_prefill_signals(table) -> None:
    # the synthetic table records two draft features; a prefill gate cannot read them
    names = shipped_features(table.labelled)
    assert "draft_min_prob" not in names and "draft_mean_entropy" not in names
    assert {"next_token_max_prob", "hidden_hoyer_last"} <= set(names) and len(names) == 10


def test_the_fit_never_sees_the_left_out_dataset(run, table) -> None:
    _, fitter, result = run
    assert set(result.datasets) == {"popqa_like", "nq_like"} and not result.skipped
    assert len(fitter.calls) == 2
    groups_of = {d: set(table.labelled.groups[table.datasets == d]) for d in result.datasets}
    for (data, _), (left_out, entry) in zip(fitter.calls, result.datasets.items(), strict=True):
        assert not [i for i in data.ids if i.startswith(f"{left_out}/")]
        # a question the left-out dataset shares with the training one is dropped from training
        assert not set(data.groups) & groups_of[left_out]
        assert entry.training_questions == len(data.ids)
    # by construction: 450 popqa_like and 540 nq_like questions, 90 of them shared
    shared = N_QUESTIONS // SHARED_EVERY
    assert result.datasets["popqa_like"].training_questions == 540 - shared
    assert result.datasets["nq_like"].training_questions == 450 - shared


def test_unseen_decisions_are_the_left_out_fit_applied_to_the_dataset(run, table) -> None:
    recipe, fitter, result = run
    x = table.labelled.matrix(list(recipe.features))
    for (_, fit), (name, entry) in zip(fitter.calls, result.datasets.items(), strict=True):
        rows = table.datasets == name
        p = fit.p_known(x[rows])
        retrieve = (p < fit.threshold) | (fit.threshold >= 1.0)
        served = np.where(retrieve, table.rag_correct[rows], table.cb_correct[rows])
        assert entry.unseen.n == rows.sum()
        assert entry.unseen.accuracy.estimate == pytest.approx(served.mean())
        assert entry.unseen.retrieval_rate == pytest.approx(retrieve.mean())
        assert entry.threshold == fit.threshold
        assert entry.always.accuracy.estimate == pytest.approx(table.rag_correct[rows].mean())
        assert entry.always.lm_calls_per_question == 1
        assert entry.unseen.lm_calls_per_question == pytest.approx(1 + retrieve.mean())
        assert entry.in_distribution.n == entry.unseen.n


def test_pooled_rows_gather_every_left_out_decision(run, table) -> None:
    _, _, result = run
    pooled = result.pooled_unseen
    assert pooled is not None and pooled.n == table.n
    by_dataset = {name: e.unseen for name, e in result.datasets.items()}
    expected = sum(r.accuracy.estimate * r.n for r in by_dataset.values()) / table.n
    assert pooled.accuracy.estimate == pytest.approx(expected)
    assert result.pooled_always.accuracy.estimate == pytest.approx(table.rag_correct.mean())


def test_one_dataset_cannot_be_left_out(table) -> None:
    closed, retrieval = synthetic_records(n=200)
    keep = [i for i, r in enumerate(closed) if r.dataset == "nq_like"]
    single = build_bench_table(
        [closed[i] for i in keep], [retrieval[i] for i in keep], model_id="m"
    )
    result = leave_one_dataset_out(
        single, recipe_for(single.labelled, calibration="sigmoid", seed=0)
    )
    assert result.datasets == {} and result.pooled_unseen is None
    assert result.skipped == {"nq_like": "one dataset only: nothing to leave out"}
