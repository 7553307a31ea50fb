"""Audit the closed-book scorer against human judgement (issue 11, section 1).

Two steps:

``draft``
    Draws a seeded random sample of closed-book answers from the cached closed-book branches,
    stratified evenly over every (model, dataset) cell (300 rows over 2 models x 4 datasets:
    37 or 38 per cell), re-scores every row with the current ``score_answer`` (a label stored
    by an older scorer is never read) and writes a draft JSONL of ``id, model, dataset,
    question, answer, golden_answers, scorer_correct``. A person then adds ``human_correct``
    (true/false) and a short ``reason`` to every row; the judged rows are the fixture
    ``tests/data/scorer_audit.jsonl``.

``report``
    Re-scores a judged file with the current scorer and prints the agreement overall and per
    cell, the base rates (share judged correct) and every disagreement, as Markdown.

Usage:
    PYTHONPATH=src python benchmarks/scorer_audit.py draft --runs ../main/runs \
        --out benchmarks/out/scorer_audit_draft.jsonl [--n 300] [--seed 11]
    PYTHONPATH=src python benchmarks/scorer_audit.py report tests/data/scorer_audit.jsonl

Questions and gold aliases come from ``<data dir>/qa/<dataset>.jsonl`` (the cache rows hold only
the id and the answer); a cache whose header names another dataset or content hash is refused.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from knowgate.errors import DataError
from knowgate.evaluation.branches.cache import read_cache
from knowgate.evaluation.datasets import QADataset, default_data_dir, load_dataset
from knowgate.evaluation.scoring import score_answer

MODELS = ("smollm2-135m", "gemma3-270m")
DATASETS = ("popqa_random", "popqa_h2", "nq_1000", "squad_dev")
DEFAULT_N = 300
DEFAULT_SEED = 11
#: The fields a judged row keeps (the fixture's schema).
FIXTURE_FIELDS = (
    "id",
    "model",
    "dataset",
    "question",
    "answer",
    "golden_answers",
    "human_correct",
    "reason",
)


@dataclass(frozen=True)
class DraftRow:
    """One sampled closed-book answer, scored by the current scorer.

    Attributes:
        id: the question's id in its dataset.
        model: the model that answered.
        dataset: the dataset's name.
        question: the question text.
        answer: the closed-book answer as generated.
        golden_answers: the gold aliases.
        scorer_correct: In-Accuracy of the answer under the current ``score_answer``.
    """

    id: str
    model: str
    dataset: str
    question: str
    answer: str
    golden_answers: list[str]
    scorer_correct: bool


def cell_sizes(n: int, cells: int) -> list[int]:
    """Split ``n`` rows over ``cells`` cells as evenly as possible (larger cells first).

    Args:
        n: rows in all.
        cells: number of cells.

    Returns:
        The size of every cell, summing to ``n``.
    """
    base, extra = divmod(n, cells)
    return [base + (1 if i < extra else 0) for i in range(cells)]


def find_cache(runs_dir: Path, model: str, dataset: QADataset) -> Path:
    """The closed-book cache of ``model`` on ``dataset`` under ``runs_dir``.

    Args:
        runs_dir: the runs root (it holds ``closed_book/<model>/<dataset>-<key>.jsonl``).
        model: the model id.
        dataset: the loaded dataset (its name and content hash select the file).

    Returns:
        The one matching cache file.

    Raises:
        DataError: no cache, or several, match.
    """
    matches = []
    for path in sorted((runs_dir / "closed_book" / model).glob(f"{dataset.name}-*.jsonl")):
        header, _, _ = read_cache(path, "closed-book")
        meta = header.get("dataset", {})
        if (
            header.get("model_id") == model
            and meta.get("name") == dataset.name
            and meta.get("content_hash") == dataset.content_hash
        ):
            matches.append(path)
    if len(matches) != 1:
        raise DataError(
            f"expected one closed-book cache of {model} on {dataset.name} under {runs_dir}, "
            f"found {len(matches)}: {[str(p) for p in matches]}"
        )
    return matches[0]


def draw_sample(
    runs_dir: Path,
    data_dir: Path,
    *,
    n: int = DEFAULT_N,
    seed: int = DEFAULT_SEED,
    models: Sequence[str] = MODELS,
    datasets: Sequence[str] = DATASETS,
) -> list[DraftRow]:
    """Draw ``n`` answered questions, stratified evenly over the (model, dataset) cells.

    Each cell draws with its own ``random.Random(f"{seed}:{model}:{dataset}")`` from the sorted
    ids its cache answered, so a cell's draw does not depend on the other cells.

    Args:
        runs_dir: the runs root holding the closed-book caches.
        data_dir: the shared data root (``qa/<dataset>.jsonl``).
        n: rows in all.
        seed: the sampling seed.
        models: model ids (cells are models x datasets, in this order).
        datasets: dataset names.

    Returns:
        The sampled rows, cell by cell, each cell in sampled order.

    Raises:
        DataError: a cache is missing or ambiguous, or holds fewer answers than its cell needs.
    """
    cells = [(model, name) for model in models for name in datasets]
    loaded = {name: load_dataset(name, data_dir=data_dir) for name in datasets}
    rows: list[DraftRow] = []
    for (model, name), size in zip(cells, cell_sizes(n, len(cells)), strict=True):
        dataset = loaded[name]
        examples = {example.id: example for example in dataset}
        _, records, _ = read_cache(find_cache(runs_dir, model, dataset), "closed-book")
        ids = sorted(row_id for row_id in records if row_id in examples)
        if len(ids) < size:
            raise DataError(f"{model} on {name}: {len(ids)} cached answers, need {size}")
        for row_id in random.Random(f"{seed}:{model}:{name}").sample(ids, size):
            example, answer = examples[row_id], str(records[row_id]["answer"])
            score = score_answer(answer, example.golden_answers, example.question)
            rows.append(
                DraftRow(
                    id=row_id,
                    model=model,
                    dataset=name,
                    question=example.question,
                    answer=answer,
                    golden_answers=list(example.golden_answers),
                    scorer_correct=score.in_accuracy,
                )
            )
    return rows


def load_judged(path: Path) -> list[dict[str, Any]]:
    """Read a judged audit file (one row per line with ``human_correct`` and ``reason``).

    Args:
        path: the JSONL file.

    Returns:
        Its rows.

    Raises:
        DataError: a row lacks a fixture field or has no boolean judgement.
    """
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [key for key in FIXTURE_FIELDS if key not in row]
            if missing or not isinstance(row["human_correct"], bool):
                raise DataError(f"{path}:{lineno}: missing {missing} or non-boolean judgement")
            rows.append(row)
    return rows


def rescore(rows: Sequence[dict[str, Any]]) -> list[bool]:
    """The current scorer's In-Accuracy of every judged row."""
    return [
        score_answer(row["answer"], row["golden_answers"], row["question"]).in_accuracy
        for row in rows
    ]


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def report(rows: Sequence[dict[str, Any]]) -> str:
    """Agreement of the current scorer with the judgement, as Markdown.

    Args:
        rows: judged rows (see :func:`load_judged`).

    Returns:
        A table per (model, dataset) cell with the total, the scorer's precision and recall
        against the judgement, then every disagreement.
    """
    scored = rescore(rows)
    cells: dict[tuple[str, str], Counter[str]] = {}
    for row, auto in zip(rows, scored, strict=True):
        counts = cells.setdefault((row["model"], row["dataset"]), Counter())
        human = row["human_correct"]
        counts["n"] += 1
        counts["agree"] += auto == human
        counts["human"] += human
        counts["scorer"] += auto
        counts["fp"] += auto and not human
        counts["fn"] += human and not auto
    total: Counter[str] = sum(cells.values(), Counter())
    lines = [
        "| model | dataset | n | agreement | correct (human) | correct (scorer) | FP | FN |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, dataset), c in [*cells.items(), (("all", "all"), total)]:
        lines.append(
            f"| {model} | {dataset} | {c['n']} | {_pct(c['agree'], c['n'])} "
            f"| {_pct(c['human'], c['n'])} | {_pct(c['scorer'], c['n'])} | {c['fp']} | {c['fn']} |"
        )
    lines += [
        "",
        f"Scorer precision (judged correct among scored correct): "
        f"{_pct(total['scorer'] - total['fp'], total['scorer'])}; recall (scored correct among "
        f"judged correct): {_pct(total['human'] - total['fn'], total['human'])}.",
        "",
        "Disagreements:",
        "",
    ]
    for row, auto in zip(rows, scored, strict=True):
        if auto != row["human_correct"]:
            kind = "FP" if auto else "FN"
            lines.append(
                f"- {kind} {row['model']}/{row['dataset']} {row['id']}: "
                f"Q {row['question']!r} A {row['answer']!r} gold {row['golden_answers'][:5]!r}"
                f" - {row['reason']}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``draft`` a sample, or ``report`` on a judged file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    draft = sub.add_parser("draft", help="draw and score a sample")
    draft.add_argument("--runs", type=Path, default=Path("runs"), help="runs root")
    draft.add_argument("--data", type=Path, default=None, help="shared data root")
    draft.add_argument("--n", type=int, default=DEFAULT_N)
    draft.add_argument("--seed", type=int, default=DEFAULT_SEED)
    draft.add_argument("--out", type=Path, default=None, help="draft JSONL (default stdout)")
    rep = sub.add_parser("report", help="agreement of the current scorer with a judged file")
    rep.add_argument("judged", type=Path)
    args = parser.parse_args(argv)
    if args.command == "report":
        print(report(load_judged(args.judged)))
        return
    rows = draw_sample(args.runs, args.data or default_data_dir(), n=args.n, seed=args.seed)
    text = "".join(json.dumps(asdict(row), ensure_ascii=False) + "\n" for row in rows)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        correct = sum(row.scorer_correct for row in rows)
        print(f"{len(rows)} rows ({correct} scored correct) -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
