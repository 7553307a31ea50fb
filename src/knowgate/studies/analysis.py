"""From closed-book runs to signal tables, separations, probes and plots (shared by the studies).

A study answers its questions closed-book through :func:`run_closed_book`, which records every
named feature and, beside its cache, the per-layer sparsity table of every question (every
metric, layer and position) and its hidden states at ten layers and three positions. This
module turns one run into a matrix of signals - sparsity per metric, layer and position; the
uncertainty features; sparsity of the last layer's state after the final norm; the prompt's
token count as a baseline - and measures how each separates two groups of questions.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from knowgate.errors import DataError
from knowgate.signals import POSITIONS, sparsity, sparsity_table_names
from knowgate.studies.statistics import (
    Separation,
    cluster_bootstrap_weights,
    cross_fitted_scores,
    separation,
)

if TYPE_CHECKING:
    from knowgate.evaluation.branches.closed_book import ClosedBookRecord
    from knowgate.evaluation.datasets import QADataset
    from knowgate.models import LanguageModel

FloatArray = NDArray[np.float64]

HEADLINE_METRICS = (
    "hidden_hoyer",
    "hidden_gini",
    "hidden_top1_energy",
    "hidden_l0_density",
    "mlp_hoyer",
    "mlp_near_zero_fraction",
)
"""Sparsity metrics reported in the summary tables (chosen before any run, not by result)."""
HEADLINE_POSITIONS = ("prompt_end", "question_end")
HEADLINE_UNCERTAINTY = (
    "next_token_entropy",
    "next_token_max_prob",
    "next_token_logit_margin",
    "draft_mean_logprob",
    "draft_min_prob",
)
POST_NORM_METRICS: dict[str, Callable[[FloatArray], FloatArray]] = {
    "hoyer": sparsity.hoyer,
    "gini": sparsity.gini,
    "top1_energy": partial(sparsity.topk_energy, percent=1.0),
    "top5_energy": partial(sparsity.topk_energy, percent=5.0),
    "l0_density": sparsity.l0_density,
    "magnitude_evenness": sparsity.magnitude_evenness,
}
"""Hidden-state metrics compared before and after the final norm (scale-free ones: the norm's
effect is its learned per-unit gain)."""
TOKEN_BASELINE = "baseline_prompt_tokens"


@dataclass(frozen=True)
class SignalInfo:
    """What one column of a signal matrix is.

    Attributes:
        name: unique column name (``hidden_hoyer@question_end@L29`` for per-layer sparsity).
        family: ``sparsity``, ``sparsity_post_norm``, ``uncertainty`` or ``baseline``.
        stage: ``prefill`` (before generation) or ``draft`` (after the greedy draft).
        metric: ``{site}_{metric}`` for sparsity, the feature name otherwise.
        position: prompt position, for activation signals.
        layer: decoder block, for per-layer signals (``None`` for aggregates over layers).
    """

    name: str
    family: str
    stage: str
    metric: str
    position: str | None = None
    layer: int | None = None


@dataclass
class StudyRun:
    """One closed-book run of a model over a study dataset, with its arrays.

    Attributes:
        records: one closed-book record per question, in dataset order.
        sparsity_by_layer: ``[n, rows, positions, layers]`` (rows: ``sparsity_table_names()``).
        probe_hidden: ``[n, probe layers, positions, d]`` hidden states (float16 in the cache).
        layers: the captured layers (columns of ``sparsity_by_layer``).
        probe_layers: the layers of ``probe_hidden``.
        num_layers: decoder blocks of the model.
        post_norm_last: ``[n, positions, d]`` last-layer states after the final norm, or ``None``.
        model_id: the model that ran.
    """

    records: list[ClosedBookRecord]
    sparsity_by_layer: NDArray[np.float32]
    probe_hidden: NDArray[np.float16]
    layers: tuple[int, ...]
    probe_layers: tuple[int, ...]
    num_layers: int
    post_norm_last: NDArray[np.float32] | None
    model_id: str

    @property
    def correct(self) -> NDArray[np.bool_]:
        """Closed-book In-Accuracy per question."""
        return np.array([r.correct for r in self.records])


def final_norm(lm: LanguageModel) -> Any:
    """The model's final normalisation module (applied after the last block), or ``None``."""
    decoder = lm.model.get_decoder() if hasattr(lm.model, "get_decoder") else None
    for owner in (
        decoder,
        getattr(lm.model, "model", None),
        getattr(lm.model, "transformer", None),
    ):
        for name in ("norm", "final_layernorm", "ln_f"):
            module = getattr(owner, name, None) if owner is not None else None
            if module is not None:
                return module
    return None


def run_study_dataset(
    lm: LanguageModel,
    dataset: QADataset,
    *,
    cache_dir: Path | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> StudyRun:
    """Answer ``dataset`` closed-book (cached, resumable) and load its signal arrays."""
    import torch

    from knowgate.evaluation.branches.cache import load_arrays, load_cached_rows
    from knowgate.evaluation.branches.closed_book import (
        closed_book_cache_path,
        probe_layers,
        run_closed_book,
    )

    records = run_closed_book(
        lm, dataset, cache_dir=cache_dir, batch_size=batch_size, progress=progress
    )
    path = closed_book_cache_path(lm, dataset, cache_dir)
    rows = load_cached_rows(path, dataset, what="closed-book")
    arrays = load_arrays(path, [rows[ex.id] for ex in dataset])
    if "sparsity_by_layer" not in arrays or "probe_hidden" not in arrays:
        raise DataError(f"{path}: the cache has no per-layer arrays; delete it to rerun")
    probe = arrays["probe_hidden"]
    stored = probe_layers(lm.layout.num_layers)
    post: NDArray[np.float32] | None = None
    norm = final_norm(lm)
    if norm is not None and stored[-1] == lm.layout.num_layers - 1:
        with torch.inference_mode():
            states = torch.from_numpy(probe[:, -1].astype(np.float32))
            post = norm(states).float().numpy()
    return StudyRun(
        records=records,
        sparsity_by_layer=arrays["sparsity_by_layer"],
        probe_hidden=probe,
        layers=tuple(lm.layers),
        probe_layers=stored,
        num_layers=lm.layout.num_layers,
        post_norm_last=post,
        model_id=lm.model_id,
    )


def signal_matrix(run: StudyRun) -> tuple[FloatArray, list[SignalInfo]]:
    """Every signal of every question of ``run``: ``([n, S] values, S infos)``.

    Columns: each sparsity metric at each layer and position; the mean-over-layers sparsity
    aggregates and the question's effective rank (recorded features); every uncertainty feature;
    last-layer hidden sparsity before (from the float16 copy) and after the final norm; the
    prompt's token count (a baseline: a signal no better than it reads the tokenizer).
    """
    n = len(run.records)
    columns: list[FloatArray] = []
    infos: list[SignalInfo] = []
    rows = sparsity_table_names()
    table = np.asarray(run.sparsity_by_layer, dtype=np.float64)
    if table.shape[1:] != (len(rows), len(POSITIONS), len(run.layers)):
        raise DataError(
            f"sparsity table has shape {table.shape[1:]}, expected "
            f"{(len(rows), len(POSITIONS), len(run.layers))}"
        )
    for r, row in enumerate(rows):
        for p, position in enumerate(POSITIONS):
            for li, layer in enumerate(run.layers):
                columns.append(table[:, r, p, li])
                infos.append(
                    SignalInfo(
                        f"{row}@{position}@L{layer}", "sparsity", "prefill", row, position, layer
                    )
                )
    for name in sorted(run.records[0].features):
        base, _, at = name.partition("_at_")
        where = at or "prompt_end"
        if name.startswith(("next_token_", "draft_")):
            stage = "draft" if name.startswith("draft_") else "prefill"
            info = SignalInfo(name, "uncertainty", stage, name)
        elif name == "hidden_effective_rank_question":
            info = SignalInfo(name, "sparsity", "prefill", name, "question_mean", run.layers[-1])
        elif base.endswith("_mean"):  # mean over layers; last/mid duplicate per-layer columns
            info = SignalInfo(name, "sparsity", "prefill", base.removesuffix("_mean"), where)
        else:
            continue
        columns.append(np.array([r.features[name] for r in run.records], dtype=np.float64))
        infos.append(info)
    last = run.num_layers - 1
    if run.post_norm_last is not None:
        pre = np.asarray(run.probe_hidden[:, -1], dtype=np.float64)
        post = np.asarray(run.post_norm_last, dtype=np.float64)
        for p, position in enumerate(POSITIONS):
            for metric, fn in POST_NORM_METRICS.items():
                for label, states in (("pre_norm", pre), ("post_norm", post)):
                    columns.append(fn(states[:, p]))
                    infos.append(
                        SignalInfo(
                            f"{label}_hidden_{metric}@{position}@L{last}",
                            f"sparsity_{label}",
                            "prefill",
                            f"hidden_{metric}",
                            position,
                            last,
                        )
                    )
    columns.append(np.array([r.prompt_tokens for r in run.records], dtype=np.float64))
    infos.append(SignalInfo(TOKEN_BASELINE, "baseline", "prefill", "prompt_tokens"))
    values = np.stack(columns, axis=1)
    if values.shape[0] != n:
        raise DataError("signal matrix rows do not match the records")
    return values, infos


def separation_rows(
    values: FloatArray,
    infos: Sequence[SignalInfo],
    labels: NDArray[np.bool_],
    groups: NDArray[Any],
    *,
    comparison: str,
    scope: str = "pooled",
    select: NDArray[np.bool_] | None = None,
    columns: Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per signal: its separation of ``labels`` (True = familiar) on ``select``.

    Every signal is judged on the same cluster-bootstrap resamples.
    """
    mask = np.ones(labels.shape[0], dtype=bool) if select is None else select
    y, g = labels[mask], groups[mask]
    if y.all() or not y.any():
        return []
    weights = cluster_bootstrap_weights(g, int(mask.sum()), n_boot, seed) if n_boot else None
    out = []
    indices = range(len(infos)) if columns is None else columns
    for j in tqdm(indices, desc=f"{comparison} {scope}", unit="signal", disable=not progress):
        column = values[mask, j]
        if np.ptp(column) == 0:
            continue  # a constant signal separates nothing (e.g. one token count)
        sep: Separation = separation(column, y, weights=weights, n_boot=0)
        out.append({"comparison": comparison, "scope": scope, **asdict(infos[j]), **sep.to_dict()})
    return out


def fittable(labels: NDArray[np.bool_], groups: NDArray[Any], folds: int) -> bool:
    """Whether both classes occur in at least ``folds`` clusters (else grouped folds fail)."""
    return all(len(set(groups[labels == value])) >= folds for value in (True, False))


def probe_rows(
    run: StudyRun,
    labels: NDArray[np.bool_],
    groups: NDArray[Any],
    *,
    comparison: str,
    select: NDArray[np.bool_] | None = None,
    folds: int = 5,
    c: float = 0.1,
    n_boot: int = 1000,
    seed: int = 0,
    splitter: Any = None,
    split_groups: NDArray[Any] | None = None,
    variant: str = "grouped-kfold",
    scores_out: dict[tuple[str, int], FloatArray] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Cross-fitted hidden-state probe AUROC per probe layer and position (and post-norm).

    Args:
        run: the study run (hidden states at the probe layers).
        labels: True for the positive group.
        groups: bootstrap clusters.
        comparison: name of the comparison.
        select: rows to use.
        folds: cross-fitting folds.
        c: inverse regularisation of the logistic regression.
        n_boot: bootstrap resamples of the out-of-fold AUROC.
        seed: fold and bootstrap seed.
        splitter: a scikit-learn splitter (default: stratified group k-fold on ``groups``).
        split_groups: the groups the splitter splits on (default ``groups``).
        variant: name of the fold scheme, for the table.
        scores_out: filled with the out-of-fold scores per ``(position, layer)``.
        progress: show a progress bar.
    """
    mask = np.ones(labels.shape[0], dtype=bool) if select is None else select
    y, g = labels[mask], groups[mask]
    sg = g if split_groups is None else split_groups[mask]
    if splitter is None and not fittable(y, sg, folds):
        return []  # too few clusters of a class for grouped folds (tiny --limit runs)
    weights = cluster_bootstrap_weights(g, int(mask.sum()), n_boot, seed) if n_boot else None
    inputs: list[tuple[str, int, NDArray[Any]]] = []
    for li, layer in enumerate(run.probe_layers):
        for p, position in enumerate(POSITIONS):
            inputs.append((position, layer, run.probe_hidden[mask, li, p]))
    if run.post_norm_last is not None:
        for p, position in enumerate(POSITIONS):
            inputs.append(
                (f"{position}+post_norm", run.num_layers - 1, run.post_norm_last[mask, p])
            )
    out = []
    for position, layer, x in tqdm(inputs, desc=f"probes {comparison}", disable=not progress):
        scores = cross_fitted_scores(
            x.astype(np.float64), y, sg, folds=folds, seed=seed, c=c, splitter=splitter
        )
        if scores_out is not None:
            scores_out[(position, layer)] = scores
        sep = separation(scores, y, weights=weights, n_boot=0)
        out.append(
            {
                "comparison": comparison,
                "variant": variant,
                "position": position,
                "layer": layer,
                **sep.to_dict(),
            }
        )
    return out


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows (dicts with the same keys) as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        path.write_text("")
        return
    keys = list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def headline_names(num_layers: int) -> list[str]:
    """The pre-chosen summary signals: headline metrics at the middle and last layer."""
    layers = (num_layers // 2, num_layers - 1)
    names = [
        f"{metric}@{position}@L{layer}"
        for metric in HEADLINE_METRICS
        for position in HEADLINE_POSITIONS
        for layer in layers
    ]
    names += [f"post_norm_hidden_hoyer@{p}@L{num_layers - 1}" for p in HEADLINE_POSITIONS]
    return [*names, *HEADLINE_UNCERTAINTY, TOKEN_BASELINE]


def select_rows(
    rows: Sequence[Mapping[str, Any]], names: Sequence[str], **match: Any
) -> list[Mapping[str, Any]]:
    """The rows of ``names`` (in that order) whose fields equal ``match``."""
    by_name = {r["name"]: r for r in rows if all(r.get(k) == v for k, v in match.items())}
    return [by_name[n] for n in names if n in by_name]


def fmt_interval(row: Mapping[str, Any], key: str, digits: int = 3) -> str:
    """``0.612 [0.581, 0.640]`` from a separation row."""
    est, low, high = row[key], row.get(f"{key}_low"), row.get(f"{key}_high")
    if low is None or high is None or not np.isfinite(low):
        return f"{est:.{digits}f}"
    return f"{est:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_percent_interval(row: Mapping[str, Any], key: str) -> str:
    """A relative shift as ``+0.41% [+0.12%, +0.70%]``."""
    est, low, high = row[key], row.get(f"{key}_low"), row.get(f"{key}_high")
    if low is None or high is None or not np.isfinite(low):
        return f"{100 * est:+.2f}%"
    return f"{100 * est:+.2f}% [{100 * low:+.2f}%, {100 * high:+.2f}%]"


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def separation_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Headline separation rows as Markdown: AUROC, Cohen's d and relative shift with CIs."""
    body = [
        [
            f"`{r['name']}`",
            fmt_interval(r, "auroc"),
            fmt_interval(r, "cohens_d", 2),
            fmt_percent_interval(r, "relative_shift"),
        ]
        for r in rows
    ]
    return markdown_table(
        ["signal", "AUROC [95% CI]", "Cohen's d [95% CI]", "relative shift"], body
    )


# ------------------------------------------------------------------------------------- plots
def plot_auroc_by_layer(
    rows: Sequence[Mapping[str, Any]],
    probes: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    title: str,
    comparison: str,
    metrics: Sequence[str] = HEADLINE_METRICS,
    positions: Sequence[str] = HEADLINE_POSITIONS,
) -> None:
    """AUROC (with 95% bands) of each headline metric by layer, one panel per position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(positions), figsize=(6 * len(positions), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, position in zip(axes, positions, strict=True):
        for metric in metrics:
            sel = sorted(
                (
                    r
                    for r in rows
                    if r["comparison"] == comparison
                    and r["scope"] == "pooled"
                    and r["family"] == "sparsity"
                    and r["metric"] == metric
                    and r["position"] == position
                    and r["layer"] is not None
                ),
                key=lambda r: r["layer"],
            )
            if not sel:
                continue
            x = [r["layer"] for r in sel]
            ax.plot(x, [r["auroc"] for r in sel], label=metric, linewidth=1.2)
            ax.fill_between(
                x, [r["auroc_low"] for r in sel], [r["auroc_high"] for r in sel], alpha=0.12
            )
        probe = sorted(
            (
                p
                for p in probes
                if p["comparison"] == comparison
                and p["position"] == position
                and p["variant"] == "grouped-kfold"
            ),
            key=lambda p: p["layer"],
        )
        if probe:
            x = [p["layer"] for p in probe]
            ax.plot(x, [p["auroc"] for p in probe], "k-o", label="hidden-state probe", markersize=3)
            ax.fill_between(
                x,
                [p["auroc_low"] for p in probe],
                [p["auroc_high"] for p in probe],
                color="k",
                alpha=0.1,
            )
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(position)
        ax.set_xlabel("layer")
        ax.set_ylim(0.0, 1.0)
    axes[0].set_ylabel("AUROC (familiar > unfamiliar)")
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_distributions(
    values: FloatArray,
    infos: Sequence[SignalInfo],
    groups: Mapping[str, NDArray[np.bool_]],
    names: Sequence[str],
    path: Path,
    *,
    title: str,
) -> None:
    """Histograms of a few signals, one panel each, one colour per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {info.name: j for j, info in enumerate(infos)}
    names = [n for n in names if n in index]
    cols = min(3, len(names)) or 1
    rows_n = (len(names) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.2 * rows_n), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        column = values[:, index[name]]
        bins = np.histogram_bin_edges(column, bins=30)
        for label, mask in groups.items():
            ax.hist(column[mask], bins=bins, alpha=0.5, density=True, label=label)
        ax.set_title(name, fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
