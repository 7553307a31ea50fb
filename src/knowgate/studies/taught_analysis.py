"""Analysis and report of the taught-facts study (see :mod:`knowgate.studies.taught`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knowgate.signals import POSITIONS, SignalConfig, feature_names
from knowgate.studies import analysis
from knowgate.studies.statistics import (
    compare_feature_sets,
    mean_interval,
    separation,
    split_half_selection,
)
from knowgate.studies.taught_data import ATTRIBUTE_NAMES

if TYPE_CHECKING:
    from knowgate.evaluation.datasets import QADataset
    from knowgate.studies.analysis import StudyRun
    from knowgate.studies.taught_config import TaughtStudyConfig
    from knowgate.studies.taught_data import World

HELDOUT = ("heldout-0", "heldout-1")


def _meta(dataset: QADataset) -> dict[str, np.ndarray]:
    meta = [ex.metadata for ex in dataset]
    return {
        "person": np.array([str(m["person"]) for m in meta]),
        "exposures": np.array([int(m["exposures"]) for m in meta]),
        "attribute": np.array([str(m["attribute"]) for m in meta]),
    }


def _features(run: StudyRun, names: list[str]) -> np.ndarray:
    return np.array([[r.features[n] for n in names] for r in run.records])


def analyse(
    config: TaughtStudyConfig,
    world: World,
    datasets: Mapping[str, QADataset],
    runs: Mapping[str, StudyRun],
    base_run: StudyRun | None,
    out: Path,
    *,
    adapter_summary: dict[str, Any],
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy per bucket and every signal's separations; writes CSVs and plots to ``out``."""
    seed, n_boot = config.data.seed, config.n_boot
    metas = {p: _meta(ds) for p, ds in datasets.items()}
    correct = {p: run.correct for p, run in runs.items()}

    # ------------------------------------------------------------------ accuracy per bucket
    accuracy = []
    model_runs: list[tuple[str, str, StudyRun, dict[str, np.ndarray]]] = [
        ("fine-tuned", p, runs[p], metas[p]) for p in runs
    ]
    if base_run is not None:
        model_runs.append(("base", "heldout-0", base_run, metas["heldout-0"]))
    for model, phrasing, run, meta in model_runs:
        for exposures in config.data.exposures:
            mask = meta["exposures"] == exposures
            interval = mean_interval(
                run.correct[mask], groups=meta["person"][mask], n_boot=n_boot, seed=seed
            )
            accuracy.append(
                {
                    "model": model,
                    "phrasing": phrasing,
                    "exposures": exposures,
                    "n": int(mask.sum()),
                    **{f"accuracy{k}": v for k, v in _suffix(interval.to_dict()).items()},
                }
            )
    by_attribute = []
    for attribute in ATTRIBUTE_NAMES:
        for exposures in config.data.exposures:
            mask = (metas["heldout-0"]["attribute"] == attribute) & (
                metas["heldout-0"]["exposures"] == exposures
            )
            by_attribute.append(
                {
                    "attribute": attribute,
                    "exposures": exposures,
                    "accuracy": round(float(correct["heldout-0"][mask].mean()), 4),
                }
            )
    memorised = []
    trained_ok, heldout_ok = correct["trained"], correct["heldout-0"]
    for exposures in config.data.exposures:
        mask = metas["trained"]["exposures"] == exposures
        memorised.append(
            {
                "exposures": exposures,
                "both": int((trained_ok & heldout_ok)[mask].sum()),
                "trained_phrasing_only": int((trained_ok & ~heldout_ok)[mask].sum()),
                "heldout_phrasing_only": int((~trained_ok & heldout_ok)[mask].sum()),
                "neither": int((~trained_ok & ~heldout_ok)[mask].sum()),
            }
        )

    # ------------------------------------------------------------------ signal separations
    matrices = [analysis.signal_matrix(runs[p]) for p in HELDOUT]
    infos = matrices[0][1]
    if [i.name for i in matrices[1][1]] != [i.name for i in infos]:
        raise RuntimeError("the two held-out runs produced different signal columns")
    values = np.vstack([m[0] for m in matrices])
    person = np.concatenate([metas[p]["person"] for p in HELDOUT])
    exposures_all = np.concatenate([metas[p]["exposures"] for p in HELDOUT])
    attributes = np.concatenate([metas[p]["attribute"] for p in HELDOUT])
    known = np.concatenate([correct[p] for p in HELDOUT])
    taught = exposures_all > 0
    names = [i.name for i in infos]
    headline = [
        names.index(n) for n in analysis.headline_names(runs["heldout-0"].num_layers) if n in names
    ]

    comparisons: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
        "taught_vs_untaught": (taught, None),
        "known_vs_unknown": (known, None),
        "taught_wrong_vs_untaught": (taught, (taught & ~known) | ~taught),
        "within_taught_known_vs_unknown": (known, taught),
    }
    rows: list[dict[str, Any]] = []
    for name, (labels, select) in comparisons.items():
        rows += analysis.separation_rows(
            values,
            infos,
            labels,
            person,
            comparison=name,
            select=select,
            n_boot=n_boot,
            seed=seed,
            progress=progress,
        )
    for name in ("taught_vs_untaught", "known_vs_unknown"):
        labels, _ = comparisons[name]
        for attr in ATTRIBUTE_NAMES:
            rows += analysis.separation_rows(
                values,
                infos,
                labels,
                person,
                comparison=name,
                scope=attr,
                select=attributes == attr,
                columns=headline,
                n_boot=n_boot,
                seed=seed,
            )
    for exposures in config.data.exposures:
        if exposures == 0:
            continue
        select = (exposures_all == exposures) | ~taught
        rows += analysis.separation_rows(
            values,
            infos,
            exposures_all == exposures,
            person,
            comparison="dose",
            scope=f"exposures_{exposures}",
            select=select,
            columns=headline,
            n_boot=n_boot,
            seed=seed,
        )
    base_values = None
    if base_run is not None:
        base_values, base_infos = analysis.signal_matrix(base_run)
        base_meta = metas["heldout-0"]
        rows += analysis.separation_rows(
            base_values,
            base_infos,
            base_meta["exposures"] > 0,
            base_meta["person"],
            comparison="base_taught_vs_untaught",
            n_boot=n_boot,
            seed=seed,
            progress=progress,
        )

    # ------------------------------------------------------------------ probes
    merged = _merge_runs([runs[p] for p in HELDOUT])
    probe_scores: dict[tuple[str, int], np.ndarray] = {}
    probes = analysis.probe_rows(
        merged,
        taught,
        person,
        comparison="taught_vs_untaught",
        folds=config.folds,
        c=config.probe_c,
        n_boot=n_boot,
        seed=seed,
        scores_out=probe_scores,
        progress=progress,
    )
    probes += analysis.probe_rows(
        merged,
        known,
        person,
        comparison="known_vs_unknown",
        folds=config.folds,
        c=config.probe_c,
        n_boot=n_boot,
        seed=seed,
        progress=progress,
    )
    if base_run is not None:
        base_meta = metas["heldout-0"]
        probes += analysis.probe_rows(
            base_run,
            base_meta["exposures"] > 0,
            base_meta["person"],
            comparison="base_taught_vs_untaught",
            folds=config.folds,
            c=config.probe_c,
            n_boot=n_boot,
            seed=seed,
            progress=progress,
        )
    fixed_layer = min(merged.probe_layers, key=lambda layer: abs(layer - merged.num_layers // 2))
    dose_probe = []
    for exposures in config.data.exposures:
        if exposures == 0:
            continue
        select = (exposures_all == exposures) | ~taught
        for position in analysis.HEADLINE_POSITIONS:
            for layer in (fixed_layer, merged.probe_layers[-1]):
                scores = probe_scores.get((position, layer))
                if scores is None:
                    continue
                sep = separation(
                    scores[select],
                    taught[select],
                    groups=person[select],
                    n_boot=n_boot,
                    seed=seed,
                )
                dose_probe.append(
                    {"exposures": exposures, "position": position, "layer": layer, **sep.to_dict()}
                )

    # ------------------------------------------------------------------ incremental value
    signals = SignalConfig(positions=POSITIONS)
    sparse = feature_names(signals, family="sparsity")
    prefill = feature_names(signals, family="uncertainty", stage="prefill")
    every = feature_names(signals, family="uncertainty")
    incremental: dict[str, Any] = {}
    for target, labels in (("known_vs_unknown", known), ("taught_vs_untaught", taught)):
        if not analysis.fittable(labels, person, config.folds):
            incremental[target] = {"skipped": "too few people of a class for grouped folds"}
            continue
        incremental[target] = {}
        for label, base_names in (
            ("prefill_uncertainty", prefill),
            ("prefill_and_draft_uncertainty", every),
        ):
            base_x = np.vstack([_features(runs[p], base_names) for p in HELDOUT])
            extra_x = np.vstack([_features(runs[p], sparse) for p in HELDOUT])
            comparison = compare_feature_sets(
                base_x, extra_x, labels, person, folds=config.folds, seed=seed, n_boot=n_boot
            )
            incremental[target][label] = {
                "base_features": len(base_names),
                "sparsity_features": len(sparse),
                **comparison.to_dict(),
            }

    sparsity_columns = [j for j, i in enumerate(infos) if i.family.startswith("sparsity")]
    split_half = {
        name: split_half_selection(
            values[:, sparsity_columns],
            labels,
            person,
            [names[j] for j in sparsity_columns],
            seed=seed,
            n_boot=n_boot,
        )
        for name, labels in (("taught_vs_untaught", taught), ("known_vs_unknown", known))
        if analysis.fittable(labels, person, 4)
    }

    num_layers = runs["heldout-0"].num_layers
    results: dict[str, Any] = {
        "adapter": adapter_summary,
        "people": len(world.people),
        "facts": len(world.people) * len(ATTRIBUTE_NAMES),
        "exposures": list(config.data.exposures),
        "training_items": len(world.items),
        "questions": {p: len(ds) for p, ds in datasets.items()},
        "comparisons": {k: v for k, v in _comparison_docs().items()},
        "heldout_accuracy": round(float(known.mean()), 4),
        "accuracy": accuracy,
        "accuracy_by_attribute": by_attribute,
        "memorised_vs_known": memorised,
        "headline": {
            c: analysis.select_rows(
                rows, analysis.headline_names(num_layers), comparison=c, scope="pooled"
            )
            for c in (*comparisons, "base_taught_vs_untaught")
        },
        "pre_post_norm": {
            c: [
                r
                for r in rows
                if r["comparison"] == c
                and r["scope"] == "pooled"
                and r["family"] in ("sparsity_pre_norm", "sparsity_post_norm")
            ]
            for c in ("taught_vs_untaught", "known_vs_unknown")
        },
        "dose_response": [r for r in rows if r["comparison"] == "dose"],
        "dose_response_probe": dose_probe,
        "probe_best_by_position": _best(probes),
        "probe_fixed_layer": fixed_layer,
        "incremental": incremental,
        "split_half_best_sparsity_signal": split_half,
    }
    analysis.write_csv(out / "separation.csv", rows)
    analysis.write_csv(out / "probes.csv", probes)
    analysis.write_csv(out / "accuracy.csv", accuracy)
    _plots(out, results, rows, probes, values, infos, exposures_all, num_layers)
    return results


def _suffix(d: dict[str, float]) -> dict[str, float]:
    return {"" if k == "estimate" else f"_{k}": v for k, v in d.items()}


def _comparison_docs() -> dict[str, str]:
    from knowgate.studies.taught_config import COMPARISONS

    return dict(COMPARISONS)


def _merge_runs(runs: list[StudyRun]) -> StudyRun:
    """Stack the rows of runs of one model (same layers) into one run."""
    first = runs[0]
    post = (
        np.concatenate([r.post_norm_last for r in runs if r.post_norm_last is not None])
        if all(r.post_norm_last is not None for r in runs)
        else None
    )
    return analysis.StudyRun(
        records=[rec for r in runs for rec in r.records],
        sparsity_by_layer=np.concatenate([r.sparsity_by_layer for r in runs]),
        probe_hidden=np.concatenate([r.probe_hidden for r in runs]),
        layers=first.layers,
        probe_layers=first.probe_layers,
        num_layers=first.num_layers,
        post_norm_last=post,
        model_id=first.model_id,
    )


def _best(probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for p in probes:
        key = (p["comparison"], p["position"])
        if key not in best or p["auroc"] > best[key]["auroc"]:
            best[key] = p
    return list(best.values())


def _plots(
    out: Path,
    results: dict[str, Any],
    rows: list[dict[str, Any]],
    probes: list[dict[str, Any]],
    values: np.ndarray,
    infos: list[analysis.SignalInfo],
    exposures: np.ndarray,
    num_layers: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for comparison, file in (
        ("taught_vs_untaught", "auroc_by_layer_taught.png"),
        ("known_vs_unknown", "auroc_by_layer_known.png"),
    ):
        analysis.plot_auroc_by_layer(
            rows,
            probes,
            out / file,
            comparison=comparison,
            title=f"{comparison.replace('_', ' ')}: AUROC by layer (95% CI)",
        )
    last = num_layers - 1
    analysis.plot_distributions(
        values,
        infos,
        {f"taught {k}x": exposures == k for k in results["exposures"]},
        [
            f"hidden_hoyer@prompt_end@L{last}",
            f"hidden_hoyer@question_end@L{last}",
            f"post_norm_hidden_hoyer@question_end@L{last}",
            f"mlp_near_zero_fraction@question_end@L{num_layers // 2}",
            "next_token_entropy",
            "draft_mean_logprob",
        ],
        out / "distributions.png",
        title="signals by exposure bucket (held-out phrasings, fine-tuned model)",
    )
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    series = sorted({(a["model"], a["phrasing"]) for a in results["accuracy"]})
    width = 0.8 / max(len(series), 1)
    buckets = results["exposures"]
    for s, (model, phrasing) in enumerate(series):
        sel = [a for a in results["accuracy"] if a["model"] == model and a["phrasing"] == phrasing]
        sel.sort(key=lambda a: a["exposures"])
        x = np.arange(len(sel)) + s * width
        y = [a["accuracy"] for a in sel]
        err = [
            [a["accuracy"] - a["accuracy_low"] for a in sel],
            [a["accuracy_high"] - a["accuracy"] for a in sel],
        ]
        ax.bar(x, y, width, yerr=err, label=f"{model}, {phrasing}", capsize=2)
    ax.set_xticks(np.arange(len(buckets)) + 0.4 - width / 2, [f"taught {b}x" for b in buckets])
    ax.set_ylabel("closed-book accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_by_bucket.png", dpi=90)
    plt.close(fig)
    curve = results.get("adapter", {}).get("report", {}).get("loss_curve") or []
    if curve:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(curve, linewidth=0.6, alpha=0.5, label="step loss")
        window = max(1, len(curve) // 25)
        smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window // 2, smooth, label=f"mean of {window} steps")
        ax.set_xlabel("step")
        ax.set_ylabel("loss on target tokens")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "loss_curve.png", dpi=90)
        plt.close(fig)


def write_outputs(out: Path, results: dict[str, Any]) -> None:
    """``results.json`` and ``summary.md``."""
    from knowgate.jsonio import atomic_write_text

    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    atomic_write_text(out / "summary.md", render_summary(results))


def render_summary(results: dict[str, Any]) -> str:
    """The study's Markdown report."""
    fmt = analysis.fmt_interval
    report = results["adapter"]["report"]
    lines = [
        f"# Taught vs untaught facts: {results['model_id']}",
        "",
        f"{results['people']} fictional people ({results['facts']} facts) in exposure buckets "
        f"{results['exposures']}; {results['training_items']} training texts. Adapter "
        f"`{results['adapter']['adapter']}`: {report.get('steps')} steps, "
        f"{report.get('seconds', 0) / 60:.1f} min wall ({report.get('cpu_seconds', 0) / 60:.1f} "
        f"min CPU), {report.get('adapter_bytes', 0) / 1e6:.2f} MB; stopped early: "
        f"{report.get('stopped_early')}.",
        "",
        "## Closed-book accuracy (95% CI, bootstrap over people)",
        "",
    ]
    body = []
    for a in results["accuracy"]:
        body.append(
            [
                a["model"],
                a["phrasing"],
                str(a["exposures"]),
                str(a["n"]),
                f"{a['accuracy']:.3f} [{a['accuracy_low']:.3f}, {a['accuracy_high']:.3f}]",
            ]
        )
    lines += [
        analysis.markdown_table(["model", "phrasing", "taught", "questions", "accuracy"], body),
        "",
        "Memorised wording vs known fact (trained phrasing vs held-out phrasing 0, per fact):",
        "",
        analysis.markdown_table(
            ["taught", "both right", "trained only", "held-out only", "neither"],
            [
                [
                    str(m["exposures"]),
                    str(m["both"]),
                    str(m["trained_phrasing_only"]),
                    str(m["heldout_phrasing_only"]),
                    str(m["neither"]),
                ]
                for m in results["memorised_vs_known"]
            ],
        ),
        "",
    ]
    for comparison, rows in results["headline"].items():
        if not rows:
            continue
        lines += [
            f"## {comparison.replace('_', ' ')}",
            "",
            results["comparisons"].get(comparison, ""),
            "",
            analysis.separation_table(rows),
            "",
        ]
    lines += ["## Hidden-state probes (cross-fitted, folds grouped by person)", ""]
    lines.append(
        analysis.markdown_table(
            ["comparison", "position", "best layer", "AUROC [95% CI]"],
            [
                [p["comparison"], p["position"], str(p["layer"]), fmt(p, "auroc")]
                for p in results["probe_best_by_position"]
            ],
        )
    )
    lines += ["", "## Does sparsity add to uncertainty? (cross-fitted AUROC)", ""]
    body = []
    for target, blocks in results["incremental"].items():
        if "skipped" in blocks:
            body.append([target, blocks["skipped"], "", "", ""])
            continue
        for name, block in blocks.items():
            body.append(
                [target, name, _fmt(block["base"]), _fmt(block["extended"]), _fmt(block["gain"])]
            )
    lines.append(
        analysis.markdown_table(
            ["label", "uncertainty features", "alone", "+ sparsity", "gain"], body
        )
    )
    lines += ["", "## Best sparsity signal, selected on half the people", ""]
    for name, best in results["split_half_best_sparsity_signal"].items():
        lines.append(
            f"- {name}: `{best['signal']}`, AUROC {best['selection_auroc']:.3f} when selected, "
            f"{fmt(best['held_out'], 'auroc')} on the held-out half."
        )
    lines.append("")
    if results.get("bench_command"):
        lines += ["## The gate on this model", "", "```bash", results["bench_command"], "```", ""]
    return "\n".join(lines)


def _fmt(block: dict[str, float]) -> str:
    low = block.get("low")
    if low is None or not np.isfinite(low):
        return f"{block['estimate']:.3f}"
    return f"{block['estimate']:.3f} [{low:.3f}, {block['high']:.3f}]"
