"""Taught vs untaught facts: fine-tune a model on some fictional facts, then read its signals.

The study (``knowgate study taught``):

1. builds a fictional world (:mod:`knowgate.studies.taught_data`) from a seed: people in
   exposure buckets, training text for the taught ones, evaluation questions in held-out and
   trained phrasings, and one knowledge-base passage per fact;
2. fine-tunes the model with a LoRA adapter on the training text (:mod:`.finetune`), or reuses an
   adapter trained on exactly this data (the packaged one, or one in the output folder);
3. answers every evaluation question closed-book with the fine-tuned model - and the held-out
   questions with the base model too, a negative control in which buckets must not separate -
   through the cached closed-book runner, which records every signal;
4. measures accuracy per bucket and how each signal separates taught from untaught and known
   from unknown facts (:mod:`.analysis`), and builds the knowledge base for ``knowgate bench``.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowgate.errors import ConfigError
from knowgate.studies.finetune import (
    TrainingReport,
    read_training_record,
    tokenize_items,
    train_adapter,
)
from knowgate.studies.taught_config import TaughtStudyConfig
from knowgate.studies.taught_data import World, build_world

if TYPE_CHECKING:
    from knowgate.models import LanguageModel

log = logging.getLogger(__name__)

PACKAGED_ADAPTER_NAME = "smollm2-135m-taught"
"""The adapter committed with knowgate (SmolLM2-135M taught the default world, seed 0)."""


def packaged_adapter() -> Path:
    """Where the committed adapter lives inside the installed package."""
    return Path(
        str(resources.files("knowgate").joinpath(f"resources/adapters/{PACKAGED_ADAPTER_NAME}"))
    )


def adapter_fits(adapter: Path, model: str, world: World) -> str | None:
    """Why ``adapter`` was not trained on this world and base model, or ``None`` if it was."""
    record = read_training_record(adapter)
    if not record:
        return f"{adapter} has no readable training record"
    if record.get("data_sha256") != world.digest:
        return f"{adapter} was trained on other data (another seed, size or generator)"
    if record.get("base_model") != model:
        return f"{adapter} was trained on {record.get('base_model')!r}, not {model!r}"
    return None


def train(
    config: TaughtStudyConfig,
    world: World,
    adapter_dir: Path,
    *,
    lm: LanguageModel | None = None,
    progress: bool = True,
) -> TrainingReport:
    """Fine-tune a fresh copy of the base model on the world's training text."""
    from knowgate.models import LanguageModel

    lm = lm or LanguageModel.load(config.model)
    sequences = tokenize_items(lm, world.items)
    record = {
        "base_model": config.model,
        "data": config.data.model_dump(mode="json"),
        "data_sha256": world.digest,
        "training_items": len(world.items),
    }
    return train_adapter(
        lm,
        sequences,
        config.training,
        adapter_dir,
        base_source=config.model,
        record=record,
        progress=progress,
    )


def locate_adapter(config: TaughtStudyConfig, world: World, candidates: list[Path]) -> Path:
    """The first candidate adapter trained on this world, or an error saying how to get one."""
    reasons = []
    for path in candidates:
        if not (path / "adapter_config.json").is_file():
            reasons.append(f"{path}: no adapter")
            continue
        problem = adapter_fits(path, config.model, world)
        if problem is None:
            return path
        reasons.append(problem)
    raise ConfigError(
        "no adapter trained on this study's data: "
        + "; ".join(reasons)
        + ". Run with --train (the fine-tune takes up to the --minutes budget)."
    )


def training_summary(adapter: Path) -> dict[str, Any]:
    """The training facts of an adapter (steps, time, loss curve, size) for the report."""
    record = read_training_record(adapter)
    report = dict(record.get("report", {}))
    return {"adapter": str(adapter), "training": record.get("training", {}), "report": report}


# --------------------------------------------------------------------------------- the study
DATASETS = {
    "heldout-0": "taught_heldout_a",
    "heldout-1": "taught_heldout_b",
    "trained": "taught_trained",
}
"""Evaluation files per phrasing (written to ``<out>/data/``)."""
PASSAGES = "taught_passages.jsonl"


def adapter_name(model: str) -> str:
    """Folder name of the adapter trained on ``model`` (part of the fine-tuned model's id)."""
    from knowgate.evaluation.branches.cache import slug

    return f"{slug(model)}-taught"


def write_data(world: World, out: Path, seed: int) -> dict[str, Path]:
    """The evaluation questions per phrasing and the knowledge-base passages, as JSONL."""
    from knowgate.studies.taught_data import knowledge_passages, question_rows, write_jsonl

    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for phrasing, name in DATASETS.items():
        paths[phrasing] = folder / f"{name}.jsonl"
        write_jsonl(paths[phrasing], question_rows(world.people, phrasing, seed=seed))
    paths["passages"] = folder / PASSAGES
    write_jsonl(paths["passages"], knowledge_passages(world.people))
    return paths


def run_taught_study(
    config: TaughtStudyConfig,
    out: Path,
    *,
    train_adapter_first: bool,
    adapter: Path | None = None,
    cache_dir: Path | None = None,
    batch_size: int | None = None,
    build_kb: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the world, train or find the adapter, answer, analyse, and write every output.

    Args:
        config: the study's settings (``data.entities_per_bucket`` already limited if wanted).
        out: output folder.
        train_adapter_first: fine-tune now (else reuse ``adapter``, the one in ``out``, or the
            packaged one - whichever was trained on exactly this world).
        adapter: an adapter directory to reuse.
        cache_dir: closed-book cache root (default ``runs/closed_book``).
        batch_size: prompts per forward pass.
        build_kb: also build the knowledge base (one passage per fact) for ``knowgate bench``.
        progress: progress bars.
    """
    import time

    from knowgate.evaluation.datasets import load_dataset
    from knowgate.models import LanguageModel, ModelConfig
    from knowgate.studies import taught_analysis
    from knowgate.studies.analysis import run_study_dataset

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    world = build_world(config.data)
    local = out / "adapter" / adapter_name(config.model)
    if not train_adapter_first:
        candidates = [adapter] if adapter is not None else [local, packaged_adapter()]
        adapter_dir = locate_adapter(config, world, candidates)
    paths = write_data(world, out, config.data.seed)
    if train_adapter_first:
        train(config, world, local, progress=progress)
        adapter_dir = local
    trained_at = time.perf_counter()

    datasets = {p: load_dataset(paths[p]) for p in DATASETS}
    tuned = LanguageModel.load(ModelConfig(source=config.model, adapter=adapter_dir))
    runs = {
        p: run_study_dataset(
            tuned, ds, cache_dir=cache_dir, batch_size=batch_size, progress=progress
        )
        for p, ds in datasets.items()
    }
    tuned_id = tuned.model_id
    del tuned
    base_run = None
    if config.base_control:
        base = LanguageModel.load(config.model)
        base_run = run_study_dataset(
            base,
            datasets["heldout-0"],
            cache_dir=cache_dir,
            batch_size=batch_size,
            progress=progress,
        )
        del base
    answered_at = time.perf_counter()

    kb_dir = out / "kb"
    if build_kb:
        from knowgate.retrieval import KnowledgeBase

        KnowledgeBase.build([paths["passages"]], progress=progress).save(kb_dir)
    results = taught_analysis.analyse(
        config,
        world,
        datasets,
        runs,
        base_run,
        out,
        adapter_summary=training_summary(adapter_dir),
        progress=progress,
    )
    results.update(
        {
            "study": "taught",
            "model_id": tuned_id,
            "base_model": config.model,
            "config": config.model_dump(mode="json"),
            "adapter_trained_in_this_run": train_adapter_first,
            "data_sha256": world.digest,
            "files": {k: str(v) for k, v in paths.items()},
            "knowledge_base": str(kb_dir) if build_kb else None,
            "bench_command": bench_command(adapter_dir, paths["heldout-0"], kb_dir, out, cache_dir),
            "seconds": {
                "training_or_lookup": round(trained_at - started, 1),
                "answering": round(answered_at - trained_at, 1),
                "total": round(time.perf_counter() - started, 1),
            },
        }
    )
    taught_analysis.write_outputs(out, results)
    return results


def bench_command(adapter: Path, data: Path, kb: Path, out: Path, cache_dir: Path | None) -> str:
    """The ``knowgate bench`` command that measures the gate on the taught model."""
    import shlex

    command = ["knowgate", "bench", "--model", str(adapter), "--data", str(data), "--kb", str(kb)]
    command += ["--out", str(out / "bench")]
    if cache_dir is not None:
        command += ["--closed-book-cache", str(cache_dir)]
    return shlex.join(command)
