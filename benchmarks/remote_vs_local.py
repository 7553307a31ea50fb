"""Remote gating against local gating of the same model on the same questions, in one run.

Local: SmolLM2-135M-Instruct in transformers, the packaged Q4_1 GGUF dequantized to fp32
(``LanguageModel``): one pass with capture hooks and a greedy draft, every local feature.
Remote: the same GGUF served by llama.cpp (``python -m llama_cpp.server``, llama-cpp-python) on
loopback, gated by ``RemoteModel``: one greedy chat call with logprobs and top_logprobs=20.

Per question, in alternating order (so both see the same machine load): the local gate (prefill
+ draft + features) and the remote gate (one call + features), each timed; then, untimed, the
local model's top-20 log-probabilities along its own draft (``LanguageModel.topk_logprobs``),
which give the local model the features a server gives (``compute_served_features``). So the
comparison separates the two causes of disagreement:

- top-k truncation: local full-distribution features against local top-k features;
- kernels and quantized activations: local top-k (fp32 dequantized weights) against remote
  top-k (llama.cpp's Q4_1 kernels, which also quantize activations to 8 bits).

Rows are written as they are measured (``rows.jsonl``; a rerun resumes); the summary
(``results.json``, ``summary.md``) is rebuilt from all rows.

Usage:
    python benchmarks/remote_vs_local.py --data popqa_random --n 200 \\
        --out benchmarks/out/remote_vs_local
    # llama-cpp-python in another environment:
    KNOWGATE_LLAMA_CPP_PYTHON=/path/to/venv/bin/python python benchmarks/remote_vs_local.py ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

NATURAL_LOWER_IS_KNOWN = ("entropy", "perplexity")
SERVED_SAME_QUANTITY = (
    "next_token_max_prob",
    "next_token_margin",
    "next_token_logit_margin",
    "draft_min_prob",
    "draft_mean_prob",
    "draft_mean_logprob",
    "draft_perplexity",
    "draft_mean_logit_margin",
    "draft_min_logit_margin",
)
TOPK_ENTROPY = ("next_token_topk_entropy", "draft_mean_topk_entropy", "draft_max_topk_entropy")
FULL_ENTROPY = {
    "next_token_topk_entropy": "next_token_entropy",
    "draft_mean_topk_entropy": "draft_mean_entropy",
    "draft_max_topk_entropy": "draft_max_entropy",
}


def _oriented(name: str, values: np.ndarray) -> np.ndarray:
    return -values if any(w in name for w in NATURAL_LOWER_IS_KNOWN) else values


def _auroc_ci(y: np.ndarray, s: np.ndarray, rng: np.random.Generator, n_boot: int) -> list[float]:
    from knowgate.evaluation.metrics import auroc

    point = auroc(y, s)
    boots = []
    n = len(y)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if 0 < y[idx].sum() < n:
            boots.append(auroc(y[idx], s[idx]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return [round(float(point), 3), round(float(lo), 3), round(float(hi), 3)]


def _paired_auroc_difference(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_boot: int
) -> list[float]:
    """AUROC(a) - AUROC(b) on the same questions and labels, with a paired bootstrap CI."""
    from knowgate.evaluation.metrics import auroc

    point = auroc(y, a) - auroc(y, b)
    n = len(y)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if 0 < y[idx].sum() < n:
            boots.append(auroc(y[idx], a[idx]) - auroc(y[idx], b[idx]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return [round(float(point), 3), round(float(lo), 3), round(float(hi), 3)]


def _agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    return {
        "pearson": round(float(pearsonr(a, b)[0]), 4),
        "spearman": round(float(spearmanr(a, b)[0]), 4),
        "mean_abs_diff": round(float(np.mean(np.abs(a - b))), 4),
        "mean_a": round(float(np.mean(a)), 4),
        "mean_b": round(float(np.mean(b)), 4),
    }


def measure(args: argparse.Namespace) -> None:
    import torch

    from knowgate.evaluation.datasets import load_dataset
    from knowgate.evaluation.sampling import sample_dataset
    from knowgate.evaluation.scoring import score_answer
    from knowgate.models import LanguageModel, ModelConfig, RemoteModel
    from knowgate.models.llamacpp import GREEDY_BODY, llama_cpp_server
    from knowgate.signals import compute_features, compute_served_features

    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = set()
    if rows_path.exists():
        done = {json.loads(line)["id"] for line in rows_path.read_text().splitlines() if line}
    dataset = load_dataset(args.data, data_dir=args.data_dir)
    dataset = sample_dataset(dataset, args.n, seed=args.seed)
    todo = [ex for ex in dataset if ex.id not in done]
    print(f"{len(dataset)} questions, {len(done)} done, {len(todo)} to run")
    if not todo:
        return
    lm = LanguageModel.load("smollm2-135m")
    with llama_cpp_server(
        "smollm2-135m", n_threads=args.threads, log_path=out / "llama-server.log"
    ) as server:
        remote = RemoteModel(
            ModelConfig(
                remote={
                    "base_url": server.base_url,
                    "model": server.model,
                    "top_logprobs": args.k,
                    "extra_body": GREEDY_BODY,
                    "concurrency": 1,
                    "timeout_s": 600,
                }
            )
        )
        identity = remote.identity()
        warm = "What is the capital of France?"
        lm.run([lm.format_prompt(warm)])
        remote.draft([warm])
        with rows_path.open("a", encoding="utf-8") as fh:
            for i, ex in enumerate(todo):
                prompt = lm.format_prompt(ex.question)

                def local(prompt: str = prompt) -> tuple[Any, dict[str, float], float]:
                    t = time.perf_counter()
                    run = lm.run([prompt])[0]
                    features = compute_features(run.capture)
                    return run, features, time.perf_counter() - t

                def served(question: str = ex.question) -> tuple[Any, float]:
                    t = time.perf_counter()
                    draft = remote.draft([question])[0]
                    return draft, time.perf_counter() - t

                if i % 2 == 0:
                    (run, local_features, local_s), (draft, remote_s) = local(), served()
                else:
                    (draft, remote_s), (run, local_features, local_s) = served(), local()
                ids = run.draft.token_ids
                keep = max(len(ids) - (run.draft.stop_reason != "length"), 1)
                # position 0 is the next-token distribution at the end of the prompt
                local_topk = compute_served_features(lm.topk_logprobs(prompt, ids[:keep], k=args.k))
                local_tokens = [lm.tokenizer.decode([t]) for t in ids]
                row = {
                    "id": ex.id,
                    "question": ex.question,
                    "local_answer": run.answer,
                    "remote_answer": draft.text,
                    "local_correct": score_answer(
                        run.answer, ex.golden_answers, ex.question
                    ).in_accuracy,
                    "remote_correct": score_answer(
                        draft.text, ex.golden_answers, ex.question
                    ).in_accuracy,
                    "local_tokens": local_tokens,
                    "remote_tokens": list(draft.tokens),
                    "local_stop": run.draft.stop_reason,
                    "remote_stop": draft.stop_reason,
                    "local_prompt_tokens": run.prompt_tokens,
                    "remote_prompt_tokens": draft.prompt_tokens,
                    "local_seconds": round(local_s, 4),
                    "remote_seconds": round(remote_s, 4),
                    "local_features": local_features,
                    "local_topk_features": local_topk,
                    "remote_features": draft.features,
                    "remote_missing": draft.missing_reason,
                }
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                print(
                    f"[{i + 1}/{len(todo)}] local {local_s:.2f} s remote {remote_s:.2f} s "
                    f"{run.answer!r} | {draft.text!r}",
                    flush=True,
                )
    meta = {
        "identity": identity,
        "command": "python benchmarks/remote_vs_local.py "
        + f"--data {args.data} --n {args.n} --seed {args.seed} --k {args.k} "
        + f"--threads {args.threads} --out {args.out}",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "server_threads": args.threads,
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    rows = [json.loads(line) for line in (args.out / "rows.jsonl").read_text().splitlines() if line]
    rng = np.random.default_rng(0)
    n = len(rows)
    both = [r for r in rows if r["remote_features"]]
    summary: dict[str, Any] = {"n": n, "n_with_remote_features": len(both)}
    y_local = np.array([int(r["local_correct"]) for r in both])
    y_remote = np.array([int(r["remote_correct"]) for r in both])
    same_answer = [r["local_answer"] == r["remote_answer"] for r in rows]
    same_tokens = [
        r["local_tokens"][: len(r["remote_tokens"])] == r["remote_tokens"]
        or r["remote_tokens"][: len(r["local_tokens"])] == r["local_tokens"]
        for r in rows
    ]
    summary["answers"] = {
        "identical_text": round(float(np.mean(same_answer)), 4),
        "one_token_sequence_a_prefix_of_the_other": round(float(np.mean(same_tokens)), 4),
        "same_first_token": round(
            float(np.mean([r["local_tokens"][:1] == r["remote_tokens"][:1] for r in rows])), 4
        ),
        "same_label": round(
            float(np.mean([r["local_correct"] == r["remote_correct"] for r in rows])), 4
        ),
        "local_accuracy": round(float(np.mean([r["local_correct"] for r in rows])), 4),
        "remote_accuracy": round(float(np.mean([r["remote_correct"] for r in rows])), 4),
        "same_prompt_tokens": round(
            float(np.mean([r["local_prompt_tokens"] == r["remote_prompt_tokens"] for r in rows])),
            4,
        ),
    }
    names = list(SERVED_SAME_QUANTITY) + list(TOPK_ENTROPY)
    agree: dict[str, Any] = {}
    same_rows = [r for r in both if r["local_answer"] == r["remote_answer"]]
    for name in names:
        a = np.array([r["local_topk_features"][name] for r in both])
        b = np.array([r["remote_features"][name] for r in both])
        entry = {"all": _agreement(a, b)}
        if len(same_rows) > 2:
            a2 = np.array([r["local_topk_features"][name] for r in same_rows])
            b2 = np.array([r["remote_features"][name] for r in same_rows])
            entry["identical_answers"] = _agreement(a2, b2)
        agree[name] = entry
    summary["feature_agreement_local_topk_vs_remote"] = agree
    truncation: dict[str, Any] = {}
    for name in SERVED_SAME_QUANTITY:  # the same quantity both ways: a consistency check
        a = np.array([r["local_features"][name] for r in rows])
        b = np.array([r["local_topk_features"][name] for r in rows])
        truncation[name] = {"max_abs_diff": float(np.max(np.abs(a - b)))}
    for name, full in FULL_ENTROPY.items():
        a = np.array([r["local_features"][full] for r in rows])
        b = np.array([r["local_topk_features"][name] for r in rows])
        truncation[f"{full} vs {name}"] = _agreement(a, b)
    summary["local_full_vs_local_topk"] = truncation
    auroc: dict[str, Any] = {}
    for name in names:
        local_topk = _oriented(name, np.array([r["local_topk_features"][name] for r in both]))
        remote = _oriented(name, np.array([r["remote_features"][name] for r in both]))
        entry = {
            "local_topk": _auroc_ci(y_local, local_topk, rng, args.bootstrap),
            "remote": _auroc_ci(y_remote, remote, rng, args.bootstrap),
        }
        if name in FULL_ENTROPY:
            full = FULL_ENTROPY[name]
            local_full = _oriented(full, np.array([r["local_features"][full] for r in both]))
            entry["local_full_entropy"] = _auroc_ci(y_local, local_full, rng, args.bootstrap)
            entry["topk_minus_full_local"] = _paired_auroc_difference(
                y_local, local_topk, local_full, rng, args.bootstrap
            )
        if np.array_equal(y_local, y_remote):
            entry["remote_minus_local_topk"] = _paired_auroc_difference(
                y_local, remote, local_topk, rng, args.bootstrap
            )
        auroc[name] = entry
    summary["auroc"] = auroc
    summary["labels_identical"] = bool(np.array_equal(y_local, y_remote))
    summary["positives"] = {"local": int(y_local.sum()), "remote": int(y_remote.sum())}
    lat: dict[str, Any] = {}
    for side in ("local", "remote"):
        s = np.array([r[f"{side}_seconds"] for r in rows])
        lat[side] = {
            "mean": round(float(s.mean()), 3),
            "median": round(float(np.median(s)), 3),
            "p95": round(float(np.percentile(s, 95)), 3),
        }
    ratio = np.array([r["remote_seconds"] / r["local_seconds"] for r in rows])
    lat["remote_over_local_median_ratio"] = round(float(np.median(ratio)), 3)
    lat["decode_tokens_mean"] = {
        "local": round(float(np.mean([len(r["local_tokens"]) for r in rows])), 2),
        "remote": round(float(np.mean([len(r["remote_tokens"]) for r in rows])), 2),
    }
    summary["latency_seconds"] = lat
    summary["remote_without_features"] = [r["id"] for r in rows if not r["remote_features"]]
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="popqa_random")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/remote_vs_local"))
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if not args.summary_only:
        measure(args)
    print(json.dumps(summarize(args), indent=2))


if __name__ == "__main__":
    main()
