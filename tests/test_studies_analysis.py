"""Signal tables, separations and probes of the studies, on a synthetic closed-book run."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pytest

from knowgate.evaluation.branches.closed_book import ClosedBookRecord
from knowgate.evaluation.datasets import QAExample
from knowgate.evaluation.scoring import score_answer
from knowgate.signals import POSITIONS, sparsity_table_names
from knowgate.studies import analysis

LAYERS = (0, 1, 2, 3)
D = 16


def _run(n: int, seed: int = 0) -> tuple[analysis.StudyRun, np.ndarray]:
    """A fake run: the label lives in one cell of the sparsity table and in the hidden states."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2 == 0
    rows = len(sparsity_table_names())
    table = rng.normal(size=(n, rows, len(POSITIONS), len(LAYERS))).astype(np.float32)
    table[:, 5, 1, 2] += 3.0 * labels  # hidden_hoyer, question_end, layer 2
    probe = rng.normal(size=(n, 2, len(POSITIONS), D)).astype(np.float16)
    probe[:, 0, 0, 0] += 4.0 * labels  # probe layer 1, prompt_end
    records = []
    for i in range(n):
        example = QAExample(f"q{i}", f"Question {i}?", ("yes",), MappingProxyType({}))
        answer = "yes" if labels[i] else "no"
        records.append(
            ClosedBookRecord(
                example=example,
                dataset="synthetic",
                answer=answer,
                stop_reason="eos",
                score=score_answer(answer, example.golden_answers, example.question),
                features={
                    "next_token_entropy": float(rng.normal()),
                    "draft_min_prob": float(rng.random()),
                    "hidden_hoyer_mean": float(rng.normal()),
                    "hidden_hoyer_last": 0.0,  # duplicates a per-layer column: left out
                },
                prompt_tokens=10 + int(labels[i]),
                prefill_seconds=0.1,
                decode_seconds=0.1,
                batch_size=1,
            )
        )
    post = rng.normal(size=(n, len(POSITIONS), D)).astype(np.float32) + 0.5
    run = analysis.StudyRun(
        records=records,
        sparsity_by_layer=table,
        probe_hidden=probe,
        layers=LAYERS,
        probe_layers=(1, 3),
        num_layers=4,
        post_norm_last=post,
        model_id="synthetic",
    )
    return run, labels


def test_signal_matrix_names_every_column() -> None:
    run, _ = _run(20)
    values, infos = analysis.signal_matrix(run)
    names = [i.name for i in infos]
    assert len(names) == len(set(names)) == values.shape[1]
    assert values.shape[0] == 20
    per_layer = len(sparsity_table_names()) * len(POSITIONS) * len(LAYERS)
    assert sum(i.family == "sparsity" and i.layer is not None for i in infos) == per_layer
    j = names.index("hidden_hoyer@question_end@L2")
    np.testing.assert_allclose(values[:, j], run.sparsity_by_layer[:, 5, 1, 2])
    assert "hidden_hoyer_last" not in names and "hidden_hoyer_mean" in names
    assert {"next_token_entropy", "draft_min_prob", analysis.TOKEN_BASELINE} <= set(names)
    stage = {i.name: i.stage for i in infos}
    assert stage["draft_min_prob"] == "draft" and stage["next_token_entropy"] == "prefill"
    assert sum(i.family == "sparsity_post_norm" for i in infos) == len(POSITIONS) * len(
        analysis.POST_NORM_METRICS
    )


def test_separation_rows_find_the_planted_signal() -> None:
    run, labels = _run(200)
    values, infos = analysis.signal_matrix(run)
    groups = np.arange(200) // 2
    rows = analysis.separation_rows(
        values, infos, labels, groups, comparison="planted", n_boot=100, seed=0
    )
    by_name = {r["name"]: r for r in rows}
    planted = by_name["hidden_hoyer@question_end@L2"]
    assert planted["auroc"] > 0.95 and planted["auroc_low"] > 0.9
    assert by_name[analysis.TOKEN_BASELINE]["auroc"] == 1.0  # labels add one prompt token
    others = [r["auroc"] for n, r in by_name.items() if n.startswith("mlp_")]
    assert abs(float(np.median(others)) - 0.5) < 0.05
    # a selection keeps its rows only; a one-class selection yields nothing
    sub = analysis.separation_rows(
        values, infos, labels, groups, comparison="planted", select=labels, n_boot=0
    )
    assert sub == []


def test_probe_rows_cross_fit_per_layer_and_position() -> None:
    run, labels = _run(200)
    groups = np.arange(200) // 2
    scores: dict[tuple[str, int], np.ndarray] = {}
    rows = analysis.probe_rows(
        run, labels, groups, comparison="planted", folds=4, n_boot=100, scores_out=scores
    )
    assert len(rows) == 2 * len(POSITIONS) + len(POSITIONS)  # probe layers, plus post-norm
    best = {(r["position"], r["layer"]): r["auroc"] for r in rows}
    assert best[("prompt_end", 1)] > 0.95
    assert best[("question_end", 3)] < 0.75
    assert scores[("prompt_end", 1)].shape == (200,)
    # too few clusters of a class for the folds: skipped, not crashed
    assert analysis.probe_rows(run, labels, np.arange(200) % 3, comparison="x", folds=5) == []


def test_fittable() -> None:
    labels = np.array([True, True, False, False])
    assert analysis.fittable(labels, np.array([0, 1, 2, 3]), 2)
    assert not analysis.fittable(labels, np.array([0, 0, 2, 3]), 2)


@pytest.mark.parametrize("digits", [2, 3])
def test_interval_formatting(digits: int) -> None:
    row = {"auroc": 0.61234, "auroc_low": 0.5, "auroc_high": 0.7}
    assert analysis.fmt_interval(row, "auroc", digits).startswith(f"{0.61234:.{digits}f} [")
    assert (
        analysis.fmt_percent_interval(
            {"relative_shift": 0.0077, "relative_shift_low": 0.0028, "relative_shift_high": 0.0133},
            "relative_shift",
        )
        == "+0.77% [+0.28%, +1.33%]"
    )
