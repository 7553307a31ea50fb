"""The taught-facts study's headline numbers, from its cached closed-book answers.

``knowgate study taught`` measures every signal (about 1,400 columns) in five comparisons with a
cluster bootstrap each, plus probes at ten layers; on the shared 2-core machine that analysis
takes hours after the answering. This script computes the study's *pre-chosen* headline subset
with the study's own functions on the same cached answers and the same seeds, so each number
here is the number the full analysis reports for it:

- closed-book accuracy per exposure bucket (bootstrap over people);
- the headline signals' separations (``analysis.headline_names``) in every comparison and, per
  exposure bucket, against the untaught facts;
- the point AUROCs of every per-layer sparsity signal (their range; no intervals);
- hidden-state probes at the middle and the last probe layer (not all ten);
- the incremental value of sparsity over uncertainty (cross-fitted, paired bootstrap).

It never answers a question: a phrasing whose cache is incomplete is refused, so it can run
beside the study that is still filling the caches.

Usage::

    python benchmarks/study_taught_headline.py --out benchmarks/out/study-taught \\
        --phrasings heldout-0 heldout-1 trained --base
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np


def _complete(lm: Any, dataset: Any, cache_dir: Path | None) -> bool:
    from knowgate.evaluation.branches.cache import read_cache
    from knowgate.evaluation.branches.closed_book import closed_book_cache_path

    path = closed_book_cache_path(lm, dataset, cache_dir)
    if not path.is_file():
        return False
    _, rows, _ = read_cache(path, "closed-book")
    return all(ex.id in rows for ex in dataset)


def main() -> None:
    """Compute the headline subset and write ``<out>/headline/headline.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the study's --out folder")
    parser.add_argument(
        "--phrasings", nargs="+", default=["heldout-0", "heldout-1"], help="cached phrasings"
    )
    parser.add_argument("--base", action="store_true", help="also the base-model control")
    parser.add_argument("--cache-dir", type=Path, default=None, help="closed-book cache root")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument(
        "--no-signals",
        action="store_true",
        help="skip the fine-tuned model's signals (accuracy, memorised and base control only)",
    )
    parser.add_argument("--name", default="headline", help="output file stem")
    args = parser.parse_args()

    from knowgate.evaluation.datasets import load_dataset
    from knowgate.models import LanguageModel, ModelConfig
    from knowgate.signals import POSITIONS, SignalConfig, feature_names
    from knowgate.studies import analysis
    from knowgate.studies.statistics import compare_feature_sets, mean_interval
    from knowgate.studies.taught import DATASETS, adapter_name, locate_adapter, packaged_adapter
    from knowgate.studies.taught_analysis import HELDOUT, _features, _merge_runs, _meta
    from knowgate.studies.taught_config import TaughtStudyConfig
    from knowgate.studies.taught_data import build_world

    started = time.perf_counter()
    config = TaughtStudyConfig.from_dict({"n_boot": args.bootstrap}, source="command line")
    seed, n_boot, folds = config.data.seed, config.n_boot, config.folds
    world = build_world(config.data)
    local = args.out / "adapter" / adapter_name(config.model)
    adapter = locate_adapter(config, world, [local, packaged_adapter()])
    datasets = {p: load_dataset(args.out / "data" / f"{DATASETS[p]}.jsonl") for p in DATASETS}
    metas = {p: _meta(ds) for p, ds in datasets.items()}

    def load(lm: Any, phrasing: str) -> Any:
        if not _complete(lm, datasets[phrasing], args.cache_dir):
            raise SystemExit(f"{lm.model_id}: the {phrasing} cache is incomplete")
        return analysis.run_study_dataset(
            lm, datasets[phrasing], cache_dir=args.cache_dir, progress=False
        )

    tuned = LanguageModel.load(ModelConfig(source=config.model, adapter=adapter))
    runs = {p: load(tuned, p) for p in args.phrasings}
    model_runs = [("fine-tuned", p, runs[p]) for p in args.phrasings]
    base_run = None
    if args.base:
        base_run = load(LanguageModel.load(config.model), "heldout-0")
        model_runs.append(("base", "heldout-0", base_run))

    accuracy = []
    for model, phrasing, run in model_runs:
        meta = metas[phrasing]
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
                    "accuracy": interval.to_dict(),
                }
            )
    memorised = []
    if "trained" in runs:
        trained_ok, heldout_ok = runs["trained"].correct, runs["heldout-0"].correct
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

    rows: list[dict[str, Any]] = []
    ranges: dict[str, Any] = {}
    probes: list[dict[str, Any]] = []
    incremental: dict[str, Any] = {}
    probe_args = {"folds": folds, "c": config.probe_c, "n_boot": n_boot, "seed": seed}
    num_layers = tuned.layout.num_layers
    headline_names = analysis.headline_names(num_layers)

    def columns(infos: list[Any]) -> tuple[list[int], list[int]]:
        names = [i.name for i in infos]
        headline = [names.index(n) for n in headline_names if n in names]
        per_layer = [
            j for j, i in enumerate(infos) if i.family == "sparsity" and i.layer is not None
        ]
        return headline, per_layer

    def spread(points: list[dict[str, Any]]) -> dict[str, Any]:
        aurocs = np.array([r["auroc"] for r in points])
        return {
            "signals": len(aurocs),
            "min": round(float(aurocs.min()), 4),
            "max": round(float(aurocs.max()), 4),
            "share_within_0.05_of_chance": round(float(np.mean(abs(aurocs - 0.5) <= 0.05)), 4),
            "share_beyond_0.1_of_chance": round(float(np.mean(abs(aurocs - 0.5) > 0.1)), 4),
        }

    def sliced(run: Any, chosen: tuple[int, int]) -> Any:
        index = [run.probe_layers.index(layer) for layer in chosen]
        return replace(run, probe_hidden=run.probe_hidden[:, index], probe_layers=chosen)

    def probe_layers(run: Any) -> tuple[int, int]:
        middle = min(run.probe_layers, key=lambda layer: abs(layer - num_layers // 2))
        return middle, run.probe_layers[-1]

    heldout_accuracy = None
    if not args.no_signals:
        matrices = [analysis.signal_matrix(runs[p]) for p in HELDOUT]
        infos = matrices[0][1]
        values = np.vstack([m[0] for m in matrices])
        person = np.concatenate([metas[p]["person"] for p in HELDOUT])
        exposures_all = np.concatenate([metas[p]["exposures"] for p in HELDOUT])
        known = np.concatenate([runs[p].correct for p in HELDOUT])
        heldout_accuracy = round(float(known.mean()), 4)
        taught = exposures_all > 0
        headline, per_layer = columns(infos)
        comparisons: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
            "taught_vs_untaught": (taught, None),
            "known_vs_unknown": (known, None),
            "taught_wrong_vs_untaught": (taught, (taught & ~known) | ~taught),
            "within_taught_known_vs_unknown": (known, taught),
        }
        for name, (labels, select) in comparisons.items():
            common = {"comparison": name, "select": select, "seed": seed}
            rows += analysis.separation_rows(
                values, infos, labels, person, columns=headline, n_boot=n_boot, **common
            )
            ranges[name] = spread(
                analysis.separation_rows(
                    values, infos, labels, person, columns=per_layer, n_boot=0, **common
                )
            )
        for exposures in config.data.exposures:
            if exposures == 0:
                continue
            rows += analysis.separation_rows(
                values,
                infos,
                exposures_all == exposures,
                person,
                comparison="dose",
                scope=f"exposures_{exposures}",
                select=(exposures_all == exposures) | ~taught,
                columns=headline,
                n_boot=n_boot,
                seed=seed,
            )
        merged = _merge_runs([runs[p] for p in HELDOUT])
        chosen = probe_layers(merged)
        for name, labels in (("taught_vs_untaught", taught), ("known_vs_unknown", known)):
            probes += analysis.probe_rows(
                sliced(merged, chosen), labels, person, comparison=name, **probe_args
            )
        signals = SignalConfig(positions=POSITIONS)
        sparse = feature_names(signals, family="sparsity")
        for target, labels in (("known_vs_unknown", known), ("taught_vs_untaught", taught)):
            incremental[target] = {}
            for label, base_features in (
                (
                    "prefill_uncertainty",
                    feature_names(signals, family="uncertainty", stage="prefill"),
                ),
                ("prefill_and_draft_uncertainty", feature_names(signals, family="uncertainty")),
            ):
                comparison = compare_feature_sets(
                    np.vstack([_features(runs[p], base_features) for p in HELDOUT]),
                    np.vstack([_features(runs[p], sparse) for p in HELDOUT]),
                    labels,
                    person,
                    folds=folds,
                    seed=seed,
                    n_boot=n_boot,
                )
                incremental[target][label] = {
                    "base_features": len(base_features),
                    "sparsity_features": len(sparse),
                    **comparison.to_dict(),
                }

    if base_run is not None:
        base_values, base_infos = analysis.signal_matrix(base_run)
        base_meta = metas["heldout-0"]
        base_labels = base_meta["exposures"] > 0
        headline, per_layer = columns(base_infos)
        common = {"comparison": "base_taught_vs_untaught", "seed": seed}
        rows += analysis.separation_rows(
            base_values,
            base_infos,
            base_labels,
            base_meta["person"],
            columns=headline,
            n_boot=n_boot,
            **common,
        )
        ranges["base_taught_vs_untaught"] = spread(
            analysis.separation_rows(
                base_values,
                base_infos,
                base_labels,
                base_meta["person"],
                columns=per_layer,
                n_boot=0,
                **common,
            )
        )
        probes += analysis.probe_rows(
            sliced(base_run, probe_layers(base_run)),
            base_labels,
            base_meta["person"],
            comparison="base_taught_vs_untaught",
            **probe_args,
        )

    results = {
        "model_id": tuned.model_id,
        "adapter": str(adapter),
        "phrasings": list(args.phrasings),
        "base_control": base_run is not None,
        "n_boot": n_boot,
        "folds": folds,
        "questions": {p: len(datasets[p]) for p in args.phrasings},
        "heldout_accuracy": heldout_accuracy,
        "accuracy": accuracy,
        "memorised_vs_known": memorised,
        "separations": rows,
        "per_layer_sparsity_auroc_range": ranges,
        "probes": probes,
        "incremental": incremental,
        "seconds": round(time.perf_counter() - started, 1),
    }
    target = args.out / "headline" / f"{args.name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {target} [{results['seconds']:.0f} s]")


if __name__ == "__main__":
    main()
