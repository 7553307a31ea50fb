"""Real vs fabricated entities in identical templates (``knowgate study fabricated``).

Every real, popular PopQA subject is paired with an invented one in the same question template
(:mod:`knowgate.studies.fabricated_data`). Both questions run closed-book through the cached
runner, which records every signal; then, for each signal, the study reports how it separates
real from fabricated subjects - AUROC, Cohen's d and relative shift with cluster-bootstrap CIs
(pairs are the clusters) - pooled and per template, at every layer and prompt position, beside
cross-fitted hidden-state probes (folds grouped by pair, and leave-one-template-out).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from knowgate.models.config import DEFAULT_MODEL
from knowgate.schema import StrictModel
from knowgate.signals import POSITIONS, SignalConfig, feature_names
from knowgate.studies import analysis
from knowgate.studies.fabricated_data import (
    FabricatedDataConfig,
    PopQAVocabulary,
    build_pairs,
    load_popqa,
    pair_rows,
)
from knowgate.studies.statistics import (
    compare_feature_sets,
    cross_fitted_scores,
    separation,
    split_half_selection,
)
from knowgate.studies.taught_data import write_jsonl

if TYPE_CHECKING:
    from knowgate.models import LanguageModel

log = logging.getLogger(__name__)

DATASET_NAME = "fabricated_pairs"
COMPARISON = "real_vs_fabricated"


class FabricatedStudyConfig(StrictModel):
    """Everything the real-vs-fabricated study depends on.

    Attributes:
        model: the model (packaged name, hub id, local directory, adapter directory).
        data: which PopQA questions are paired and how names are drawn.
        folds: cross-fitting folds of the probes.
        n_boot: cluster-bootstrap resamples of every interval.
        probe_c: inverse regularisation of the hidden-state probes.
    """

    model: str = DEFAULT_MODEL
    data: FabricatedDataConfig = FabricatedDataConfig()
    folds: int = Field(default=5, ge=2)
    n_boot: int = Field(default=1000, ge=0)
    probe_c: float = Field(default=0.1, gt=0)


def run_fabricated_study(
    lm: LanguageModel,
    config: FabricatedStudyConfig,
    out: Path,
    *,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the pairs, answer them, measure every signal's separation, write the outputs.

    Args:
        lm: the loaded model (``config.model``).
        config: the study's settings.
        out: output folder (``data/``, ``results.json``, ``summary.md``, CSVs, plots).
        data_dir: root of the shared data (PopQA files).
        cache_dir: closed-book cache root (default ``runs/closed_book``).
        limit: at most this many pairs per template.
        batch_size: prompts per forward pass.
        progress: progress bars.

    Returns:
        The results (also written to ``results.json``).
    """
    from knowgate.evaluation.datasets import load_dataset

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    examples = load_popqa(config.data.datasets, data_dir)
    vocabulary = PopQAVocabulary(examples)
    pairs = build_pairs(
        examples,
        config.data,
        vocabulary=vocabulary,
        token_count=lambda q: lm.count_tokens(lm.format_prompt(q)),
        limit=limit,
    )
    data_path = out / "data" / f"{DATASET_NAME}.jsonl"
    data_path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(data_path, pair_rows(pairs))
    dataset = load_dataset(data_path)
    run = analysis.run_study_dataset(
        lm, dataset, cache_dir=cache_dir, batch_size=batch_size, progress=progress
    )
    answer_seconds = time.perf_counter() - started

    meta = [ex.metadata for ex in dataset]
    labels = np.array([bool(m["real"]) for m in meta])
    groups = np.array([int(m["pair"]) for m in meta])
    relations = np.array([str(m["relation"]) for m in meta])
    values, infos = analysis.signal_matrix(run)
    values, infos = _with_surface_baselines(lm, dataset, values, infos)

    rows = analysis.separation_rows(
        values,
        infos,
        labels,
        groups,
        comparison=COMPARISON,
        n_boot=config.n_boot,
        seed=config.data.seed,
        progress=progress,
    )
    for relation in config.data.relations:
        select = relations == relation
        if select.any():
            rows += analysis.separation_rows(
                values,
                infos,
                labels,
                groups,
                comparison=COMPARISON,
                scope=relation,
                select=select,
                n_boot=config.n_boot,
                seed=config.data.seed,
            )

    from sklearn.model_selection import LeaveOneGroupOut

    probe_scores: dict[tuple[str, int], np.ndarray] = {}
    probes = analysis.probe_rows(
        run,
        labels,
        groups,
        comparison=COMPARISON,
        folds=config.folds,
        c=config.probe_c,
        n_boot=config.n_boot,
        seed=config.data.seed,
        scores_out=probe_scores,
        progress=progress,
    )
    if len(set(relations)) > 1:
        probes += analysis.probe_rows(
            run,
            labels,
            groups,
            comparison=COMPARISON,
            c=config.probe_c,
            n_boot=config.n_boot,
            seed=config.data.seed,
            splitter=LeaveOneGroupOut(),
            split_groups=relations,
            variant="leave-one-template-out",
            progress=progress,
        )
    fixed_layer = min(run.probe_layers, key=lambda layer: abs(layer - run.num_layers // 2))
    per_template_probe = _per_template_probe(
        probe_scores, fixed_layer, labels, groups, relations, config
    )

    sparsity_columns = [j for j, i in enumerate(infos) if i.family.startswith("sparsity")]
    best = split_half_selection(
        values[:, sparsity_columns],
        labels,
        groups,
        [infos[j].name for j in sparsity_columns],
        seed=config.data.seed,
        n_boot=config.n_boot,
    )
    incremental = _incremental(run, labels, groups, config)
    embedding_probe = _embedding_probe(lm, dataset, labels, groups, relations, config)
    surface = [j for j, i in enumerate(infos) if i.family == "baseline"]
    surface_probe = separation(
        cross_fitted_scores(
            values[:, surface], labels, groups, folds=config.folds, seed=config.data.seed
        ),
        labels,
        groups=groups,
        n_boot=config.n_boot,
        seed=config.data.seed,
    )
    real = [r for r, m in zip(run.records, meta, strict=True) if m["real"]]
    by_relation: dict[str, list[bool]] = defaultdict(list)
    for r, m in zip(run.records, meta, strict=True):
        if m["real"]:
            by_relation[str(m["relation"])].append(r.correct)
    token_gaps = [p.token_difference for p in pairs if p.token_difference is not None]
    results: dict[str, Any] = {
        "study": "fabricated",
        "model_id": lm.model_id,
        "config": config.model_dump(mode="json"),
        "limit": limit,
        "pairs": len(pairs),
        "pairs_per_template": {r: int((relations == r).sum() // 2) for r in config.data.relations},
        "median_real_popularity": float(np.median([p.popularity for p in pairs])),
        "token_difference": {
            "mean": float(np.mean(token_gaps)) if token_gaps else None,
            "share_equal": float(np.mean(np.array(token_gaps) == 0)) if token_gaps else None,
        },
        "real_closed_book_accuracy": float(np.mean([r.correct for r in real])),
        "real_accuracy_by_template": {k: float(np.mean(v)) for k, v in by_relation.items()},
        "headline": analysis.select_rows(
            rows, analysis.headline_names(run.num_layers), scope="pooled"
        ),
        "baselines": [r for r in rows if r["family"] == "baseline" and r["scope"] == "pooled"],
        "split_half_best_sparsity_signal": best,
        "probe_best_by_position": _best_probes(probes),
        "probe_fixed_layer": fixed_layer,
        "probe_per_template": per_template_probe,
        "embedding_probe": embedding_probe,
        "surface_baseline_probe": {
            "features": [infos[j].name for j in surface],
            **surface_probe.to_dict(),
        },
        "incremental": incremental,
        "seconds": {
            "answering": round(answer_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "examples": [
            {"question": r.example.question, "answer": r.answer, "real": bool(m["real"])}
            for r, m in list(zip(run.records, meta, strict=True))[:12]
        ],
    }
    _write_outputs(out, results, rows, probes, values, infos, labels, run)
    return results


SURFACE_BASELINES = (
    "baseline_subject_tokens",
    "baseline_subject_mean_token_id",
    "baseline_subject_max_token_id",
)
"""Surface features of the subject's spelling: how many tokens, and how rare they are (BPE ids
grow roughly with merge order, so invented names that split into rare pieces have large ids)."""


def _with_surface_baselines(
    lm: LanguageModel,
    dataset: Any,
    values: np.ndarray,
    infos: list[analysis.SignalInfo],
) -> tuple[np.ndarray, list[analysis.SignalInfo]]:
    """Append the subject's token count and token-id statistics as baseline signals."""
    stats = []
    for ex in dataset:
        ids = lm.tokenizer(" " + str(ex.metadata["subject"]), add_special_tokens=False).input_ids
        stats.append([len(ids), float(np.mean(ids)), float(max(ids))])
    extra = np.asarray(stats, dtype=np.float64)
    infos = infos + [analysis.SignalInfo(n, "baseline", "prefill", n) for n in SURFACE_BASELINES]
    return np.hstack([values, extra]), infos


def _embedding_probe(
    lm: LanguageModel,
    dataset: Any,
    labels: np.ndarray,
    groups: np.ndarray,
    relations: np.ndarray,
    config: FabricatedStudyConfig,
) -> dict[str, Any]:
    """The probe's lexical control: the same probe on the subject's static input embeddings.

    The mean input-embedding row of the subject's tokens involves no forward pass at all; what
    a probe reads from it is the spelling, not anything the model computed about the entity.
    """
    from sklearn.model_selection import LeaveOneGroupOut

    table = lm.model.get_input_embeddings().weight.detach().float().numpy()
    x = np.stack(
        [
            table[
                lm.tokenizer(" " + str(ex.metadata["subject"]), add_special_tokens=False).input_ids
            ].mean(axis=0)
            for ex in dataset
        ]
    )
    out: dict[str, Any] = {}
    schemes: list[tuple[str, Any, np.ndarray]] = [("grouped-kfold", None, groups)]
    if len(set(relations)) > 1:
        schemes.append(("leave-one-template-out", LeaveOneGroupOut(), relations))
    for name, splitter, split_groups in schemes:
        scores = cross_fitted_scores(
            x,
            labels,
            split_groups,
            folds=config.folds,
            seed=config.data.seed,
            c=config.probe_c,
            splitter=splitter,
        )
        out[name] = separation(
            scores, labels, groups=groups, n_boot=config.n_boot, seed=config.data.seed
        ).to_dict()
    return out


def _per_template_probe(
    scores: dict[tuple[str, int], np.ndarray],
    layer: int,
    labels: np.ndarray,
    groups: np.ndarray,
    relations: np.ndarray,
    config: FabricatedStudyConfig,
) -> list[dict[str, Any]]:
    """AUROC of the pooled probe's out-of-fold scores within each template (fixed layer)."""
    out = []
    for position in analysis.HEADLINE_POSITIONS:
        if (position, layer) not in scores:
            continue
        for relation in sorted(set(relations)):
            mask = relations == relation
            sep = separation(
                scores[(position, layer)][mask],
                labels[mask],
                groups=groups[mask],
                n_boot=config.n_boot,
                seed=config.data.seed,
            )
            out.append({"position": position, "layer": layer, "scope": relation, **sep.to_dict()})
    return out


def _best_probes(probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best layer per position and fold scheme (descriptive: chosen on the same data)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for p in probes:
        key = (p["variant"], p["position"])
        if key not in best or p["auroc"] > best[key]["auroc"]:
            best[key] = p
    return list(best.values())


def _incremental(
    run: analysis.StudyRun, labels: np.ndarray, groups: np.ndarray, config: FabricatedStudyConfig
) -> dict[str, Any]:
    """Cross-fitted AUROC of uncertainty features alone and with the sparsity features."""
    signals = SignalConfig(positions=POSITIONS)
    sparse = feature_names(signals, family="sparsity")
    prefill = feature_names(signals, family="uncertainty", stage="prefill")
    every = feature_names(signals, family="uncertainty")

    def matrix(names: list[str]) -> np.ndarray:
        return np.array([[r.features[n] for n in names] for r in run.records])

    out = {}
    for label, base in (("prefill_uncertainty", prefill), ("prefill_and_draft_uncertainty", every)):
        comparison = compare_feature_sets(
            matrix(base),
            matrix(sparse),
            labels,
            groups,
            folds=config.folds,
            seed=config.data.seed,
            n_boot=config.n_boot,
        )
        out[label] = {"base_features": len(base), "sparsity_features": len(sparse)}
        out[label].update(comparison.to_dict())
    return out


def _write_outputs(
    out: Path,
    results: dict[str, Any],
    rows: list[dict[str, Any]],
    probes: list[dict[str, Any]],
    values: np.ndarray,
    infos: list[analysis.SignalInfo],
    labels: np.ndarray,
    run: analysis.StudyRun,
) -> None:
    from knowgate.jsonio import atomic_write_text

    analysis.write_csv(out / "separation.csv", rows)
    analysis.write_csv(out / "probes.csv", probes)
    analysis.plot_auroc_by_layer(
        rows,
        probes,
        out / "auroc_by_layer.png",
        comparison=COMPARISON,
        title=f"{run.model_id}: real vs fabricated subjects, AUROC by layer (95% CI)",
    )
    last = run.num_layers - 1
    analysis.plot_distributions(
        values,
        infos,
        {"real": labels, "fabricated": ~labels},
        [
            f"hidden_hoyer@prompt_end@L{last}",
            f"hidden_hoyer@question_end@L{last}",
            f"post_norm_hidden_hoyer@question_end@L{last}",
            f"mlp_near_zero_fraction@question_end@L{run.num_layers // 2}",
            "next_token_entropy",
            results["split_half_best_sparsity_signal"]["signal"],
        ],
        out / "distributions.png",
        title=f"{run.model_id}: real vs fabricated subjects",
    )
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    atomic_write_text(out / "summary.md", render_summary(results))


def render_summary(results: dict[str, Any]) -> str:
    """The study's Markdown report."""
    fmt = analysis.fmt_interval
    head = results["headline"]
    lines = [
        f"# Real vs fabricated subjects: {results['model_id']}",
        "",
        f"{results['pairs']} pairs over {len(results['pairs_per_template'])} templates "
        f"(median s_pop of the real subjects {results['median_real_popularity']:.0f}); "
        f"closed-book accuracy on the real questions {results['real_closed_book_accuracy']:.3f}. "
        f"Fabricated questions are as long as their real twins in tokens for "
        f"{100 * (results['token_difference']['share_equal'] or 0):.0f}% of pairs "
        f"(mean difference {results['token_difference']['mean'] or 0:+.2f} tokens).",
        "",
        "AUROC = P(signal of the real question > signal of its fabricated twin); below 0.5 the "
        "signal is lower for real subjects. Intervals: 95% cluster bootstrap over pairs.",
        "",
        "## Headline signals (pooled)",
        "",
        analysis.separation_table(head),
        "",
        "## Hidden-state probe (cross-fitted)",
        "",
        analysis.markdown_table(
            ["folds", "position", "best layer", "AUROC [95% CI]"],
            [
                [p["variant"], p["position"], str(p["layer"]), fmt(p, "auroc")]
                for p in results["probe_best_by_position"]
            ],
        ),
        "",
        "Best layer chosen on the same out-of-fold scores (descriptive); per-template AUROC of "
        f"the probe at the fixed middle layer {results['probe_fixed_layer']}:",
        "",
        analysis.markdown_table(
            ["template", "position", "AUROC [95% CI]"],
            [[p["scope"], p["position"], fmt(p, "auroc")] for p in results["probe_per_template"]],
        ),
        "",
        "## Surface baselines",
        "",
    ]
    surface = results["surface_baseline_probe"]
    lines += [
        analysis.separation_table(results["baselines"]),
        "",
        f"A cross-fitted logistic regression on these surface features alone: AUROC "
        f"{fmt(surface, 'auroc')}. A signal no better than this reads the spelling.",
        "",
        "The probe's lexical control - the same probe on the mean static input embedding of the "
        "subject's tokens (no forward pass): "
        + "; ".join(f"{k} AUROC {fmt(v, 'auroc')}" for k, v in results["embedding_probe"].items())
        + ".",
        "",
        "## Best sparsity signal, selected on half the pairs",
        "",
    ]
    best = results["split_half_best_sparsity_signal"]
    lines += [
        f"`{best['signal']}`: AUROC {best['selection_auroc']:.3f} on the selection half, "
        f"{fmt(best['held_out'], 'auroc')} on the held-out half.",
        "",
        "## Does sparsity add to uncertainty? (cross-fitted, real vs fabricated)",
        "",
    ]
    inc = results["incremental"]
    lines.append(
        analysis.markdown_table(
            ["uncertainty features", "alone", "+ sparsity", "gain"],
            [
                [
                    name,
                    _fmt_block(block["base"]),
                    _fmt_block(block["extended"]),
                    _fmt_block(block["gain"]),
                ]
                for name, block in inc.items()
            ],
        )
    )
    lines.append("")
    return "\n".join(lines)


def _fmt_block(block: dict[str, float]) -> str:
    if block.get("low") is None or not np.isfinite(block["low"]):
        return f"{block['estimate']:.3f}"
    return f"{block['estimate']:.3f} [{block['low']:.3f}, {block['high']:.3f}]"
