"""Sparsity-guided demonstrations (SG-ICL) against fixed, random and similarity shots, measured.

Closed-book QA with a base model (Gemma-3-270M): every question of a seeded evaluation sample is
answered once per prompt condition - the fixed shots of today, and each demonstration strategy at
each ``k`` - with demonstrations drawn from a held-out pool of the same dataset (rows never
evaluated, by normalised question text across all datasets). Reports In-Accuracy / EM / F1 with
paired bootstrap CIs against fixed shots and against the random-order control (``shuffled``: the
same ``k`` most similar examples in a random order), the gate's AUROC under each prompt, and the
extra cost per query. Answers are cached (closed-book branch caches under ``runs/closed_book``),
so the run resumes; it proceeds in rounds over the questions so that an interrupted run still
has every condition on the same questions.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/sgicl.py \\
        --data popqa_random --data popqa_h2 --data nq_1000 --eval 80 --pool-size 400 \\
        --out benchmarks/out/sgicl

``--analyze-only --round N`` scores the first N evaluated questions of each dataset from the
caches (the model still loads, to key them) and reads the costs of the run from ``costs.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import PolicyError
from knowgate.evaluation.branches.cache import read_cache
from knowgate.evaluation.branches.closed_book import (
    ClosedBookRecord,
    closed_book_cache_path,
    load_closed_book,
    run_closed_book,
)
from knowgate.evaluation.cross_fitting import cross_fit, outer_splits
from knowgate.evaluation.datasets import QADataset, load_dataset
from knowgate.evaluation.demonstration_pools import (
    check_disjoint,
    evaluated_questions,
    evaluation_samples,
    held_out_pool,
)
from knowgate.evaluation.labelled import build_table, standard_feature_sets
from knowgate.evaluation.metrics import auroc, bootstrap_ci
from knowgate.models import LanguageModel, ModelConfig, PromptConfig
from knowgate.prompting import DemonstrationConfig, DemonstrationPool
from knowgate.retrieval.embedder import Embedder

SINGLE_FEATURES = ("next_token_max_prob", "next_token_entropy", "hidden_l0_density_last")
FUSED = "uncertainty (prefill)"


@dataclass(frozen=True)
class Condition:
    """One prompt: a strategy at a ``k`` (``fixed`` has neither pool nor ``k``)."""

    name: str
    strategy: str
    k: int | None = None
    direction: str = "easy_to_hard"

    def prompt(self, pool: Path, levels: int, candidates: int, seed: int) -> PromptConfig:
        if self.strategy == "fixed":
            return PromptConfig()
        return PromptConfig(
            demonstrations=DemonstrationConfig(
                strategy=self.strategy,  # type: ignore[arg-type]
                k=self.k or 2,
                pool=pool,
                candidates=candidates,
                levels=levels,
                direction=self.direction,  # type: ignore[arg-type]
                seed=seed,
            )
        )


def conditions(ks: Sequence[int], strategies: Sequence[str]) -> list[Condition]:
    out = [Condition("fixed", "fixed")]
    for k in ks:
        for s in strategies:
            if s == "sgicl":
                out.append(Condition(f"sgicl easy->hard k={k}", "sgicl", k, "easy_to_hard"))
                out.append(Condition(f"sgicl hard->easy k={k}", "sgicl", k, "hard_to_easy"))
            else:
                out.append(Condition(f"{s} k={k}", s, k))
    return out


def _ci(est: Any) -> dict[str, float]:
    return {"estimate": est.estimate, "low": est.low, "high": est.high}


def _mean_diff(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    return float(np.mean(a) - np.mean(b))


def _auroc_diff(
    y1: NDArray[np.int64], s1: NDArray[np.float64], y2: NDArray[np.int64], s2: NDArray[np.float64]
) -> float:
    return auroc(y1, s1) - auroc(y2, s2)


def fused_scores(records: Sequence[ClosedBookRecord], folds: int, seed: int) -> NDArray[np.float64]:
    """Held-out scores of the cross-fitted ``uncertainty (prefill)`` set (NaN if unfittable)."""
    table = build_table(records)
    names = standard_feature_sets(table)[FUSED]
    try:
        splits = outer_splits(table.y, table.groups, folds=folds, seed=seed)
        fit = cross_fit(
            table.matrix(names), table.y, table.groups, names, splits, calibration="sigmoid"
        )
    except PolicyError:
        return np.full(len(records), np.nan)
    return fit.score


def analyze(
    results: dict[str, list[ClosedBookRecord]],
    extra: dict[str, dict[str, float]],
    *,
    boot: int,
    folds: int,
    seed: int,
) -> dict[str, Any]:
    """Accuracy, paired CIs and gate AUROC per condition (all on the same questions)."""
    names = list(results)
    ids = [(r.dataset, r.id) for r in results["fixed"]]
    for name in names:
        assert [(r.dataset, r.id) for r in results[name]] == ids, name
    metrics = {
        name: {
            "in_acc": np.array([r.score.in_accuracy for r in recs], dtype=np.float64),
            "em": np.array([r.score.exact_match for r in recs], dtype=np.float64),
            "f1": np.array([r.score.f1 for r in recs], dtype=np.float64),
        }
        for name, recs in results.items()
    }
    datasets = sorted({d for d, _ in ids})
    ds_of = np.array([d for d, _ in ids])
    counts = {d: int((ds_of == d).sum()) for d in datasets}
    out: dict[str, Any] = {"n": len(ids), "datasets": counts}
    rows = {}
    for name in names:
        m = metrics[name]
        recs = results[name]
        k = name.split("k=")[-1] if "k=" in name else None
        control = f"shuffled k={k}" if k else None
        row: dict[str, Any] = {
            "in_acc": _ci(bootstrap_ci(np.mean, m["in_acc"], n_resamples=boot, seed=seed)),
            "em": float(m["em"].mean()),
            "f1": float(m["f1"].mean()),
            "per_dataset": {d: float(m["in_acc"][ds_of == d].mean()) for d in datasets},
            "prompt_tokens": float(np.mean([r.prompt_tokens for r in recs])),
            "prefill_s_per_q": float(np.mean([r.prefill_seconds / r.batch_size for r in recs])),
            "decode_s_per_q": float(np.mean([r.decode_seconds / r.batch_size for r in recs])),
            **extra.get(name, {}),
        }
        for ref_name, label in (("fixed", "vs_fixed"), (control, "vs_random_order")):
            if ref_name is None or ref_name == name or ref_name not in metrics:
                continue
            ref = metrics[ref_name]
            row[label] = {
                key: _ci(bootstrap_ci(_mean_diff, m[key], ref[key], n_resamples=boot, seed=seed))
                for key in ("in_acc", "em", "f1")
            }
        y = m["in_acc"].astype(np.int64)
        gate: dict[str, Any] = {"positives": int(y.sum())}
        for feature in SINGLE_FEATURES:
            score = np.array([r.features[feature] for r in recs])
            if feature == "next_token_entropy":
                score = -score  # low entropy reads as "knows"
            gate[feature] = _ci(bootstrap_ci(auroc, y, score, n_resamples=boot, seed=seed))
        fused = fused_scores(recs, folds, seed)
        gate[FUSED] = (
            _ci(bootstrap_ci(auroc, y, fused, n_resamples=boot, seed=seed))
            if np.all(np.isfinite(fused))
            else None
        )
        if name != "fixed":
            y0 = metrics["fixed"]["in_acc"].astype(np.int64)
            s0 = np.array([r.features["next_token_max_prob"] for r in results["fixed"]])
            s1 = np.array([r.features["next_token_max_prob"] for r in recs])
            gate["next_token_max_prob_vs_fixed"] = _ci(
                bootstrap_ci(_auroc_diff, y, s1, y0, s0, n_resamples=boot, seed=seed)
            )
        row["gate"] = gate
        rows[name] = row
    out["conditions"] = rows
    return out


def _fmt(ci: dict[str, float] | None, signed: bool = False) -> str:
    if ci is None or not math.isfinite(ci["estimate"]):
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(ci['estimate'])} [{f.format(ci['low'])}, {f.format(ci['high'])}]"


def summary_markdown(result: dict[str, Any]) -> str:
    conds = result["analysis"]["conditions"]
    datasets = list(result["analysis"]["datasets"])
    lines = [
        f"n = {result['analysis']['n']} questions ({result['analysis']['datasets']})",
        "",
        "| prompt | In-Acc [95% CI] | minus fixed [95% CI] | minus random order [95% CI] | EM "
        "| F1 | F1 minus fixed [95% CI] | " + " | ".join(datasets) + " | prompt tokens | CPU s/q |",
        "|---|---|---|---|---|---|---|" + "---|" * len(datasets) + "---|---|",
    ]
    for name, row in conds.items():
        vf = row.get("vs_fixed", {})
        vr = row.get("vs_random_order", {})
        per = " | ".join(f"{row['per_dataset'][d]:.3f}" for d in datasets)
        lines.append(
            f"| {name} | {_fmt(row['in_acc'])} | {_fmt(vf.get('in_acc'), True)} "
            f"| {_fmt(vr.get('in_acc'), True)} | {row['em']:.3f} | {row['f1']:.3f} "
            f"| {_fmt(vf.get('f1'), True)} | {per} | {row['prompt_tokens']:.0f} "
            f"| {row.get('cpu_s_per_q', float('nan')):.2f} |"
        )
    lines += [
        "",
        "| prompt | positives | AUROC next_token_max_prob | minus fixed [95% CI] "
        "| AUROC -next_token_entropy | AUROC hidden_l0_density_last | AUROC uncertainty (prefill),"
        " cross-fitted |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in conds.items():
        g = row["gate"]
        lines.append(
            f"| {name} | {g['positives']} | {_fmt(g['next_token_max_prob'])} "
            f"| {_fmt(g.get('next_token_max_prob_vs_fixed'), True)} "
            f"| {_fmt(g['next_token_entropy'])} | {_fmt(g['hidden_l0_density_last'])} "
            f"| {_fmt(g[FUSED])} |"
        )
    lines += [
        "",
        "| dataset | pool | pool scoring s (wall, this run) | level prefill CPU s/q (sgicl) "
        "| MiniLM embedding CPU s/q |",
        "|---|---|---|---|---|",
    ]
    for name, c in result.get("costs", {}).items():
        lines.append(
            f"| {name} | {c['pool_size']} | {c['pool_scoring_seconds_this_run']} "
            f"| {c.get('level_prefill_cpu_s_per_q', '-')} | {c.get('embedding_cpu_s_per_q', '-')} |"
        )
    return "\n".join(lines) + "\n"


def conds_first_sgicl(conds: Sequence[Condition]) -> str:
    """The name of the first SG-ICL condition (its selector scores the pool)."""
    return next(c.name for c in conds if c.strategy == "sgicl")


def measure_costs(
    base: LanguageModel,
    lms: dict[tuple[str, str], LanguageModel],
    evaluated: Sequence[QADataset],
    *,
    first_sgicl: str,
    sample: int,
) -> dict[str, Any]:
    """Pool scoring time, and the per-query extra work timed on questions not seen before.

    Timed before any condition runs, so the memo of query densities is empty: the level prefill
    of the zero-shot prompt (SG-ICL only) and the MiniLM embedding (every pool strategy) are
    measured on their own, on the first ``sample`` evaluated questions of each dataset.
    """
    costs: dict[str, Any] = {}
    for ds in evaluated:
        lm = lms[(first_sgicl, ds.name)]
        t = time.perf_counter()
        selector = lm.demonstrations
        assert selector is not None
        pool_seconds = time.perf_counter() - t
        questions = [ex.question for ex in ds][: min(len(ds), sample)]
        t, cpu = time.perf_counter(), time.process_time()
        base.sparsity_density(questions, "zero_shot")
        level = (time.perf_counter() - t) / len(questions)
        level_cpu = (time.process_time() - cpu) / len(questions)
        embedder = Embedder(lm.config.prompt.demonstrations.embedding_model)
        embedder.encode(questions[:2])
        t, cpu = time.perf_counter(), time.process_time()
        embedder.encode(questions)
        embed = (time.perf_counter() - t) / len(questions)
        embed_cpu = (time.process_time() - cpu) / len(questions)
        costs[ds.name] = {
            "pool_size": len(selector.pool),
            "questions_timed": len(questions),
            "pool_scoring_seconds_this_run": round(pool_seconds, 2),
            "level_prefill_s_per_q": round(level, 4),
            "level_prefill_cpu_s_per_q": round(level_cpu, 4),
            "embedding_s_per_q": round(embed, 4),
            "embedding_cpu_s_per_q": round(embed_cpu, 4),
        }
        print(ds.name, costs[ds.name], flush=True)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--eval", type=int, default=80, help="evaluated questions per dataset")
    parser.add_argument("--round", type=int, default=20, help="questions per dataset per round")
    parser.add_argument("--pool-size", type=int, default=400)
    parser.add_argument("--ks", default="2,4,8")
    parser.add_argument(
        "--strategies", default="random,similarity,shuffled,sparse_to_dense,dense_to_sparse,sgicl"
    )
    parser.add_argument("--levels", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/sgicl"))
    parser.add_argument("--cache", type=Path, default=Path("runs/closed_book"))
    parser.add_argument(
        "--cost-sample", type=int, default=64, help="questions per dataset the costs are timed on"
    )
    parser.add_argument("--analyze-only", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    names = args.data or ["popqa_random", "popqa_h2", "nq_1000"]
    full = [load_dataset(n) for n in names]
    evaluated = evaluation_samples(full, args.eval, seed=args.seed)
    keys = evaluated_questions(evaluated)
    pools: dict[str, Path] = {}
    for source in full:
        pool = held_out_pool(source, keys, size=args.pool_size, seed=args.seed)
        path = args.out / "pools" / f"{source.name}.jsonl"
        pool.save(path)
        check_disjoint(DemonstrationPool.load(path), keys)  # what the model will read
        pools[source.name] = path
    conds = conditions([int(k) for k in args.ks.split(",")], args.strategies.split(","))
    base = LanguageModel.load(ModelConfig(source=args.model))
    lms = {
        (c.name, ds.name): base.with_prompt(
            c.prompt(pools[ds.name], args.levels, args.candidates, args.seed)
        )
        for c in conds
        for ds in evaluated
    }
    extra: dict[str, dict[str, float]] = {}
    costs_path = args.out / "costs.json"
    if args.analyze_only:
        costs = json.loads(costs_path.read_text()) if costs_path.is_file() else {}
    else:
        costs = measure_costs(
            base, lms, evaluated, first_sgicl=conds_first_sgicl(conds), sample=args.cost_sample
        )
        args.out.mkdir(parents=True, exist_ok=True)
        costs_path.write_text(json.dumps(costs, indent=2))
    results: dict[str, list[ClosedBookRecord]] = {c.name: [] for c in conds}
    cpu_path = args.out / "cpu.json"
    cpu_log: dict[str, dict[str, float]] = (
        json.loads(cpu_path.read_text()) if cpu_path.is_file() else {}
    )
    rounds = max(1, math.ceil(args.eval / args.round))
    for r in range(1, rounds + 1):
        upto = min(args.eval, r * args.round)
        for c in conds:
            recs: list[ClosedBookRecord] = []
            t0 = time.perf_counter()
            for ds in evaluated:
                sub = QADataset(ds.name, ds.path, ds.examples[:upto], ds.content_hash)
                lm = lms[(c.name, ds.name)]
                if args.analyze_only:
                    recs += load_closed_book(closed_book_cache_path(lm, sub, args.cache), sub)
                    continue
                path = closed_book_cache_path(lm, sub, args.cache)
                done = set(read_cache(path, "closed-book")[1]) if path.is_file() else set()
                todo = sum(ex.id not in done for ex in sub)
                cpu = time.process_time()
                recs += run_closed_book(lm, sub, cache_dir=args.cache, progress=False)
                entry = cpu_log.setdefault(c.name, {"cpu_seconds": 0.0, "questions": 0})
                entry["cpu_seconds"] += time.process_time() - cpu
                entry["questions"] += todo
            results[c.name] = recs
            if not args.analyze_only:
                cpu_path.write_text(json.dumps(cpu_log, indent=2))
            acc = np.mean([x.correct for x in recs])
            print(
                f"round {r} upto {upto}: {c.name:28s} acc {acc:.3f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        if args.analyze_only:
            break
    # CPU seconds per question answered (choice of demonstrations, prefill, decode, signals),
    # summed over every process that filled the caches: unlike wall time, it hardly depends
    # on how loaded the shared machine was. (SG-ICL conditions share the memo of query
    # densities, so only the first pays the level prefill; the costs block times it alone.)
    for name, entry in cpu_log.items():
        if entry["questions"]:
            extra[name] = {"cpu_s_per_q": entry["cpu_seconds"] / entry["questions"]}
    analysis = analyze(results, extra, boot=args.bootstrap, folds=args.folds, seed=args.seed)
    result = {
        "command": "benchmarks/sgicl.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)
        ),
        "datasets": {ds.name: len(ds) for ds in evaluated},
        "pools": {n: str(p) for n, p in pools.items()},
        "costs": costs,
        "analysis": analysis,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "summary.md").write_text(summary_markdown(result))
    print(summary_markdown(result))


if __name__ == "__main__":
    main()
