"""``knowgate study``: controlled familiarity experiments (does sparsity track familiarity?)."""

from __future__ import annotations

from pathlib import Path

import typer

from knowgate.cli.app import app
from knowgate.cli.common import console, load_language_model, user_errors
from knowgate.models.config import DEFAULT_MODEL

study_app = typer.Typer(
    help="Controlled familiarity studies: real vs fabricated entities, taught vs untaught facts.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")

ModelOpt = typer.Option(
    DEFAULT_MODEL, "--model", "-m", help="Packaged name, hub id, local dir or adapter dir."
)
SeedOpt = typer.Option(0, "--seed", help="Seed of the generated data, folds and bootstrap.")
BootOpt = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples (0 = no CIs).")
FoldsOpt = typer.Option(5, "--folds", min=2, help="Cross-fitting folds of the probes.")
CacheOpt = typer.Option(
    None, "--cache-dir", help="Closed-book cache root (default runs/closed_book)."
)
BatchOpt = typer.Option(None, "--batch-size", min=1, help="Prompts per forward pass.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


@study_app.command()
def fabricated(
    model: str = ModelOpt,
    out: Path = typer.Option(Path("runs/study/fabricated"), "--out", "-o", help="Output folder."),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="At most N pairs per template (CI-sized runs)."
    ),
    seed: int = SeedOpt,
    min_popularity: int = typer.Option(
        1000, "--min-popularity", min=0, help="Smallest s_pop of a real subject."
    ),
    per_template: int = typer.Option(80, "--per-template", min=1, help="Pairs per template."),
    names: str = typer.Option(
        "invented",
        "--names",
        help="invented (syllables, word lists) or recombined (real first name + another real "
        "person's surname; person templates only).",
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Root of the shared data ($KNOWGATE_DATA_DIR)."
    ),
    cache_dir: Path | None = CacheOpt,
    batch_size: int | None = BatchOpt,
    bootstrap: int = BootOpt,
    folds: int = FoldsOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Real vs fabricated entities in identical PopQA templates: every signal's separation."""
    from knowgate.errors import ConfigError
    from knowgate.models import LanguageModel
    from knowgate.studies.fabricated import FabricatedStudyConfig, run_fabricated_study
    from knowgate.studies.fabricated_data import PERSON_RELATIONS

    with user_errors():
        data: dict[str, object] = {
            "seed": seed,
            "min_popularity": min_popularity,
            "per_template": per_template,
            "names": names,
        }
        if names == "recombined":
            data["relations"] = list(PERSON_RELATIONS)
        config = FabricatedStudyConfig.from_dict(
            {"model": model, "data": data, "folds": folds, "n_boot": bootstrap},
            source="command line",
        )
        lm = load_language_model(model)
        if not isinstance(lm, LanguageModel):
            raise ConfigError(
                "the familiarity studies read a local model's activations; a served model "
                "returns none"
            )
        results = run_fabricated_study(
            lm,
            config,
            out,
            data_dir=data_dir,
            cache_dir=cache_dir,
            limit=limit,
            batch_size=batch_size,
            progress=progress,
        )
    best = results["split_half_best_sparsity_signal"]
    console.print(
        f"[bold]{results['model_id']}[/]: {results['pairs']} pairs; best sparsity signal "
        f"{best['signal']} held-out AUROC {best['held_out']['auroc']:.3f}; results in {out} "
        f"[{results['seconds']['total']:.0f} s]",
        highlight=False,
    )


@study_app.command()
def taught(
    model: str = ModelOpt,
    out: Path = typer.Option(Path("runs/study/taught"), "--out", "-o", help="Output folder."),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="People per exposure bucket (CI-sized runs; default 75)."
    ),
    seed: int = SeedOpt,
    train: bool = typer.Option(
        False,
        "--train/--no-train",
        help="Fine-tune now, or reuse an adapter trained on exactly this data (--adapter, the "
        "one in --out, or the packaged one).",
    ),
    adapter: Path | None = typer.Option(None, "--adapter", help="Adapter directory to reuse."),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Stop training after N steps (default: all the text)."
    ),
    minutes: float = typer.Option(
        60.0, "--minutes", min=0.1, help="Training wall-time budget; stops early when spent."
    ),
    base_control: bool = typer.Option(
        True, "--base-control/--no-base-control", help="Also run the base model (control)."
    ),
    kb: bool = typer.Option(
        True, "--kb/--no-kb", help="Build the knowledge base (one passage per fact) for bench."
    ),
    cache_dir: Path | None = CacheOpt,
    batch_size: int | None = BatchOpt,
    bootstrap: int = BootOpt,
    folds: int = FoldsOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Taught vs untaught facts: LoRA-teach fictional facts, then measure every signal."""
    from knowgate.studies.taught import run_taught_study
    from knowgate.studies.taught_config import TaughtStudyConfig

    with user_errors():
        data = {"seed": seed} | ({"entities_per_bucket": limit} if limit else {})
        training = {"seed": seed, "max_minutes": minutes} | ({"max_steps": steps} if steps else {})
        config = TaughtStudyConfig.from_dict(
            {
                "model": model,
                "data": data,
                "training": training,
                "folds": folds,
                "n_boot": bootstrap,
                "base_control": base_control,
            },
            source="command line",
        )
        results = run_taught_study(
            config,
            out,
            train_adapter_first=train,
            adapter=adapter,
            cache_dir=cache_dir,
            batch_size=batch_size,
            build_kb=kb,
            progress=progress,
        )
    console.print(
        f"[bold]{results['model_id']}[/]: held-out accuracy {results['heldout_accuracy']:.3f} "
        f"over {results['facts']} facts; results in {out} [{results['seconds']['total']:.0f} s]",
        highlight=False,
    )
    if kb:
        console.print(f"measure the gate: {results['bench_command']}", highlight=False)
