"""Signal overhead: is reading every signal really free on top of the pass the answer needs?

Compares, in one process with alternating order, the wall time of ``LanguageModel.run`` (prefill
with capture hooks on every layer + greedy decode with per-token distribution summaries) followed
by ``compute_features``, against plain ``model.generate`` with the same prompt, the same greedy
settings and the same stop tokens. Also reports batched vs one-by-one throughput, peak RSS, and
cold (GGUF dequantization) vs cached load time.

Usage:
    python benchmarks/signal_overhead.py [--model smollm2-135m] [--n 50] [--rounds 2]

The last line printed is the overhead ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from knowgate.models import LanguageModel, ModelConfig
from knowgate.signals import compute_features

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_questions(path: Path, n: int) -> list[str]:
    with path.open() as fh:
        return [json.loads(line)["question"] for _, line in zip(range(n), fh, strict=False)]


def time_load(model: str, cache_dir: Path | None) -> tuple[LanguageModel, float]:
    start = time.perf_counter()
    lm = LanguageModel.load(ModelConfig(source=model, cache_dir=cache_dir))
    return lm, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA / "qa" / "popqa_random.jsonl")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold GGUF load")
    args = parser.parse_args()

    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}, python {platform.python_version()}"
    )
    cold = None
    if not args.skip_cold:
        with tempfile.TemporaryDirectory() as tmp:
            _, cold = time_load(args.model, Path(tmp))
    time_load(args.model, None)  # make sure the default cache is warm
    lm, cached = time_load(args.model, None)
    print(f"load: cold (GGUF dequantize) {cold and round(cold, 2)} s, cached {cached:.2f} s")

    questions = load_questions(args.data, args.n)
    prompts = [lm.format_prompt(q) for q in questions]
    stop_ids = lm.stop_token_ids().tolist()
    tok = lm.tokenizer

    def ours(prompt: str) -> list[int]:
        out = lm.run([prompt], max_new_tokens=args.max_new_tokens)[0]
        compute_features(out.capture)
        return out.draft.token_ids

    def plain(prompt: str) -> list[int]:
        enc = tok([prompt], return_tensors="pt", add_special_tokens=lm._add_special(prompt))
        with torch.inference_mode():
            gen = lm.model.generate(
                **enc,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tok.pad_token_id,
            )
        return gen[0, enc.input_ids.shape[1] :].tolist()

    for p in prompts[:3]:  # warm-up both paths
        ours(p)
        plain(p)

    t_ours: list[float] = []
    t_plain: list[float] = []
    same = 0
    for r in range(args.rounds):
        for i, p in enumerate(prompts):
            order = (ours, plain) if (i + r) % 2 == 0 else (plain, ours)
            res = {}
            for fn in order:
                start = time.perf_counter()
                res[fn.__name__] = fn(p)
                elapsed = time.perf_counter() - start
                (t_ours if fn is ours else t_plain).append(elapsed)
            same += res["ours"] == res["plain"]
    n_runs = args.rounds * len(prompts)
    total_ours, total_plain = sum(t_ours), sum(t_plain)
    paired = [a / b for a, b in zip(t_ours, t_plain, strict=True)]
    print(
        f"one-by-one, {n_runs} runs: run+features {total_ours:.2f} s, generate {total_plain:.2f} s"
    )
    print(
        f"median per-question ratio {statistics.median(paired):.3f}; "
        f"identical greedy tokens in {same}/{n_runs} runs"
    )

    # Batched vs one-by-one throughput of run + features.
    for bs in (1, 8):
        start = time.perf_counter()
        outs = lm.run(prompts, batch_size=bs, max_new_tokens=args.max_new_tokens)
        for o in outs:
            compute_features(o.capture)
        elapsed = time.perf_counter() - start
        print(f"throughput batch {bs}: {len(prompts) / elapsed:.2f} questions/s ({elapsed:.2f} s)")

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mib:.0f} MiB")
    print(f"overhead ratio (run+features / generate): {total_ours / total_plain:.3f}")


if __name__ == "__main__":
    main()
