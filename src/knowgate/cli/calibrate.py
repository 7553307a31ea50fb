"""``knowgate calibrate``: fit a fused, calibrated gating policy on labelled closed-book runs."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from knowgate.cli.app import app
from knowgate.cli.common import (
    MODEL_HELP,
    RAY_ADDRESS_OPTION,
    RAY_OPTION,
    WORKERS_OPTION,
    check_calibration,
    console,
    dataset_names,
    load_language_model,
    ray_batches,
    user_errors,
)
from knowgate.models.config import DEFAULT_MODEL


@app.command()
def calibrate(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    data: list[str] = typer.Option(
        ...,
        "--data",
        "-d",
        help="FlashRAG-style JSONL file, or a name under <data dir>/qa (popqa_random); repeat "
        "or comma-separate for several.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the policy JSON."),
    features: list[str] = typer.Option(
        [],
        "--features",
        "-f",
        help="Feature names or groups (prefill, draft, sparsity, uncertainty, question, model, "
        "all); repeat or comma-separate. Default: prefill = every model signal available "
        "before generation; for a served model, model = every signal its draft gives.",
    ),
    policy_kind: str = typer.Option(
        "fused",
        "--policy",
        help="fused: calibrated logistic regression on --features; probe: on one hidden-state "
        "vector (layer and position chosen by inner CV; needs the closed-book cache's stored "
        "hidden states); probe-fused: the probe stacked with --features.",
    ),
    select: bool = typer.Option(
        True,
        "--select/--no-select",
        help="Choose feature group (or one feature) and regularisation by inner CV on the "
        "calibration data, as the benchmark scores it (--no-select: every feature, C=1).",
    ),
    calibration: str = typer.Option(
        "isotonic", "--calibration", help="isotonic | sigmoid | temperature | none"
    ),
    operating_point: str = typer.Option(
        "probability:0.5",
        "--operating-point",
        help="probability:P | budget:RATE | accuracy:TARGET[:DELTA] | cost:C_RETRIEVE:C_WRONG",
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Directory for report.md/.json and reliability/ROC PNGs."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Use only the first N questions of each file."
    ),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Closed-book cache root (default runs/closed_book)."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Root of the shared data for bare names ($KNOWGATE_DATA_DIR)."
    ),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds."),
    seed: int = typer.Option(0, "--seed", help="Split seed."),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", min=0, help="Bootstrap resamples for AUROC intervals (0 = off)."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Prompts per pass."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    use_ray: bool = RAY_OPTION,
    workers: int = WORKERS_OPTION,
    ray_address: str | None = RAY_ADDRESS_OPTION,
) -> None:
    """Run the data closed-book (cached), cross-validate the signals, fit and save a policy."""
    import numpy as np

    from knowgate.errors import ConfigError
    from knowgate.evaluation.branches.closed_book import (
        ClosedBookArrays,
        closed_book_arrays,
        run_closed_book,
    )
    from knowgate.evaluation.calibration.report import write_report
    from knowgate.evaluation.calibration.study import fused_set_result, run_study
    from knowgate.evaluation.cross_fitting import cross_fit, outer_splits
    from knowgate.evaluation.datasets import load_dataset
    from knowgate.evaluation.labelled import build_table, resolve_features
    from knowgate.evaluation.reporting import fmt, to_jsonable
    from knowgate.models import RemoteModel
    from knowgate.policy import (
        FeatureGroups,
        HiddenStateProbe,
        Logistic,
        Recipe,
        StackedProbe,
        fit_policy,
        parse_operating_point,
    )
    from knowgate.signals import vector_signal_name

    with user_errors():
        check_calibration(calibration)
        op = parse_operating_point(operating_point)
        if policy_kind not in ("fused", "probe", "probe-fused"):
            raise ConfigError(f"--policy must be fused, probe or probe-fused, not {policy_kind!r}")
        if use_ray:
            from knowgate.integrations.ray import require_ray

            require_ray()
        names = dataset_names(data)
        datasets = [load_dataset(n, limit=limit, data_dir=data_dir) for n in names]
        started = time.perf_counter()
        lm = load_language_model(model)
        records = []
        with ray_batches(use_ray, lm, workers=workers, address=ray_address) as executor:
            for ds in datasets:
                records.extend(
                    run_closed_book(
                        lm,
                        ds,
                        cache_dir=cache_dir,
                        batch_size=batch_size,
                        progress=progress,
                        executor=executor,
                    )
                )
        if policy_kind != "fused" and isinstance(lm, RemoteModel):
            raise ConfigError(
                f"--policy {policy_kind} reads hidden states a served model does not return; "
                "use --policy fused"
            )
        table = build_table(records)
        if not features:  # a served model gates on its draft: every draft signal is free
            features = ["model"] if isinstance(lm, RemoteModel) else ["prefill"]
        selected = resolve_features(table, features)
        fused_recipe: Recipe = FeatureGroups() if select else Logistic()
        result = run_study(
            table,
            selected,
            calibration=calibration,
            n_splits=folds,
            seed=seed,
            bootstrap_resamples=bootstrap,
            progress=progress,
            learner=fused_recipe,
        )
        sel = result.summary.selected
        x, columns, recipe = table.matrix(selected), list(selected), fused_recipe
        if policy_kind != "fused":
            assert not isinstance(lm, RemoteModel)  # refused above
            arrays = ClosedBookArrays.concatenate(
                closed_book_arrays(lm, ds, cache_dir) for ds in datasets
            )
            sites = [
                vector_signal_name(layer, position)
                for layer in arrays.probe_layers
                for position in arrays.positions
            ]
            hidden = arrays.probe_hidden.reshape(len(table.y), -1)
            if policy_kind == "probe":
                x, columns, recipe = hidden, sites, HiddenStateProbe()
            else:
                x = np.concatenate([hidden.astype(np.float32), x.astype(np.float32)], axis=1)
                columns, recipe = [*sites, *selected], StackedProbe()
            cf = cross_fit(
                x,
                table.y,
                table.groups,
                columns,
                outer_splits(table.y, table.groups, folds=folds, seed=seed),
                calibration=calibration,
                inner_folds=folds,
                seed=seed,
                learner=recipe,
            )
            sel = fused_set_result(table, columns, cf, n_boot=bootstrap, seed=seed)
            result.summary.fused[policy_kind] = sel
        generation = lm.config.generation
        prompt_config = {
            "prompt": lm.config.prompt.model_dump(mode="json"),
            "style": lm.formatter.style,
            "max_new_tokens": generation.max_new_tokens,
            "stop_at_newline": generation.stop_at_newline,
        }
        training = {
            "label": "closed-book In-Accuracy (echo-guarded), see knowgate.evaluation.scoring",
            "options": {
                "model": model,
                "data": names,
                "features": list(features),
                "policy": policy_kind,
                "select": select,
                "calibration": calibration,
                "operating_point": operating_point,
                "limit": limit,
                "folds": folds,
                "seed": seed,
            },
            "datasets": [
                {"name": ds.name, "content_hash": ds.content_hash, "n": len(ds)} for ds in datasets
            ],
            "held_out_metrics": {k: v for k, v in to_jsonable(sel).items() if k != "features"},
            "best_single_selected_feature": to_jsonable(
                result.summary.best_single_selected_feature
            ),
        }
        fitted = fit_policy(
            x,
            table.y,
            columns,
            recipe=recipe,
            calibration=calibration,
            operating_point=op,
            groups=table.groups,
            n_splits=folds,
            seed=seed,
            model_id=lm.model_id,
            prompt_config=prompt_config,
            training=training,
        )
        fitted.policy.save(out)
        if report is not None:
            extra = {
                "model_id": lm.model_id,
                "policy_id": fitted.policy.policy_id,
                "policy_path": str(out),
                "operating_point": operating_point,
                "threshold": fitted.policy.threshold,
                "threshold_choice": fitted.policy.training["threshold_choice"]
                if fitted.policy.training
                else None,
            }
            write_report(table, result, report, extra=extra)
    seconds = time.perf_counter() - started
    choice = fitted.threshold_choice
    best = result.summary.best_single_selected_feature
    best_text = f"{best.feature} {best.auroc_held_out:.3f}" if best else "-"
    console.print(
        f"[bold]{fitted.policy.policy_id}[/] -> {out}\n"
        f"  {len(table.y)} questions, closed-book accuracy {table.y.mean():.3f}; "
        f"{policy_kind} on {len(fitted.policy.required_features)} features"
        + (f" and {fitted.policy.required_vectors[0]}" if fitted.policy.required_vectors else "")
        + (f" (chosen: {fitted.choice.label})" if fitted.choice else "")
        + f"; held-out AUROC {fmt(sel.auroc)} "
        f"(best single selected feature: {best_text}), "
        f"ECE {fmt(sel.ece_before)} -> {fmt(sel.ece_after)} ({calibration})\n"
        f"  threshold {fitted.policy.threshold:.4f} ({operating_point}): retrieves "
        f"{choice.retrieval_rate:.1%} of calibration questions"
        + (f"; report in {report}" if report is not None else "")
        + f" [{seconds:.0f} s]",
        highlight=False,
    )
