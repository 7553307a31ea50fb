"""Print the cache keys of the three branch caches for packaged models and datasets, as JSON.

A refactor of the branch runners must keep every cache key, or the caches filled by long runs
are silently ignored. Run this script against two checkouts and compare the outputs (no
question is answered; each model is loaded once to render its prompts):

    PYTHONPATH=/path/to/old/src .venv/bin/python benchmarks/cache_keys.py > old.json
    PYTHONPATH=src .venv/bin/python benchmarks/cache_keys.py > new.json
    diff old.json new.json

It also runs against checkouts from before the evaluation room was regrouped (the runners were
then ``evaluation.closed_book``, ``evaluation.bench.retrieval_branch`` and
``evaluation.peer_signals``); a branch a checkout does not have prints ``null``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODELS = ("smollm2-135m", "gemma3-270m")
DATASETS = ("popqa_random", "popqa_h2", "nq_1000", "squad_dev")


def _key_functions() -> dict[str, Callable[..., dict[str, Any]] | None]:
    try:  # the regrouped layout
        from knowgate.evaluation.branches.closed_book import cache_key_material
        from knowgate.evaluation.branches.peers import peer_key_material
        from knowgate.evaluation.branches.retrieval import retrieval_key_material

        return {
            "closed_book": cache_key_material,
            "retrieval": retrieval_key_material,
            "peers": peer_key_material,
        }
    except ImportError:
        pass
    from knowgate.evaluation.bench.retrieval_branch import retrieval_key_material as rkm
    from knowgate.evaluation.closed_book import cache_key_material as ckm

    try:
        from knowgate.evaluation.peer_signals import peer_key_material as pkm
    except ImportError:
        pkm = None  # type: ignore[assignment]
    return {"closed_book": ckm, "retrieval": rkm, "peers": pkm}


def _knowledge_base_fingerprint(kb: Path) -> dict[str, Any]:
    try:
        from knowgate.evaluation.branches.retrieval import knowledge_base_fingerprint
    except ImportError:
        from knowgate.evaluation.bench.retrieval_branch import knowledge_base_fingerprint
    return knowledge_base_fingerprint(kb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kb", type=Path, required=True, help="the benchmark's knowledge base")
    parser.add_argument("--mode", default=None, help="search mode (default: the base's own)")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--data", action="append", default=None)
    args = parser.parse_args()

    try:
        from knowgate.evaluation.branches.cache import cache_key
    except ImportError:
        from knowgate.evaluation.answer_cache import cache_key
    from knowgate.evaluation.datasets import load_dataset
    from knowgate.models import LanguageModel

    manifest = json.loads((args.kb / "manifest.json").read_text())
    mode = args.mode or manifest["config"]["mode"]
    kb = _knowledge_base_fingerprint(args.kb)
    functions = _key_functions()
    out: dict[str, dict[str, dict[str, str | None]]] = {}
    datasets = [load_dataset(name) for name in (args.data or DATASETS)]
    for model in args.model or MODELS:
        lm = LanguageModel.load(model)
        out[model] = {}
        for ds in datasets:
            materials: dict[str, dict[str, Any] | None] = {
                "closed_book": functions["closed_book"](lm, ds),  # type: ignore[misc]
                "retrieval": functions["retrieval"](  # type: ignore[misc]
                    lm, ds, knowledge_base=kb, k=args.k, mode=mode
                ),
                "peers": None
                if functions["peers"] is None
                else functions["peers"](lm, ds, samples=5, temperature=1.0, seed=0),
            }
            out[model][ds.name] = {
                branch: None if m is None else cache_key(m) for branch, m in materials.items()
            }
    print(json.dumps(out, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
