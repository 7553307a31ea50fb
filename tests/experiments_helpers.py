"""Builders shared by the experiments tests: experiments, synthetic decision rows, caches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from knowgate.experiments import DecisionRow, Experiment
from knowgate.policy import build_policy

GATE = {"feature": "next_token_max_prob", "direction": "higher_is_known"}


def expected_arm(salt: str, unit: str, arms_and_weights: Sequence[tuple[str, float]]) -> str:
    """The assignment rule docs/experiments.md documents, written out independently of the code.

    bucket = SHA-256(salt + "." + unit id), first 8 bytes big-endian, modulo 10,000; each arm owns
    a contiguous range of buckets proportional to its weight, in arm order.
    """
    bucket = int.from_bytes(hashlib.sha256(f"{salt}.{unit}".encode()).digest()[:8], "big") % 10_000
    total = sum(w for _, w in arms_and_weights)
    cumulative = 0.0
    for arm, weight in arms_and_weights:
        cumulative += weight
        if bucket < round(cumulative / total * 10_000):
            return arm
    return arms_and_weights[-1][0]


def gate_policy(value: float = 0.4):
    return build_policy("threshold", value=value, **GATE)


def two_arm_experiment(name: str = "gate-vs-rag", weights=None, salt=None, value: float = 0.4):
    return Experiment(
        name,
        {"control": build_policy("always"), "gate": gate_policy(value)},
        weights,
        salt,
    )


def synthetic_row(
    experiment: Experiment,
    request_id: str,
    unit_id: str,
    *,
    retrieve: bool | None = None,
    latency_ms: float = 100.0,
    arm: str | None = None,
) -> DecisionRow:
    """A decision row as the router would log it (arm from the real assignment unless given)."""
    a = experiment.assign(unit_id)
    arm = arm or a.arm
    retrieve = (arm == experiment.control) if retrieve is None else retrieve
    # as the router counts: a policy that reads no signal is one LM call (plain RAG or the
    # closed-book answer); a gate that retrieves spends its prefill and the answer, two calls
    gated = bool(experiment.arms[arm].required_features)
    lm_calls = 2 if (gated and retrieve) else 1
    return DecisionRow(
        request_id=request_id,
        experiment=experiment.name,
        arm=arm,
        unit_id=a.unit_id,
        unit_id_source=a.unit_id_source,
        bucket=a.bucket,
        policy_id=experiment.arms[arm].policy_id,
        config_hash=experiment.config_hash,
        retrieve=retrieve,
        retrieved=retrieve,
        lm_calls=lm_calls,
        retriever_calls=int(retrieve),
        latency_ms=latency_ms,
        features={"next_token_max_prob": 0.5},
        p_known=None,
        threshold=0.4,
        calls={"lm": lm_calls, "retriever": int(retrieve)},
        timings_ms={"prefill": latency_ms / 2, "total": latency_ms},
        query=f"question {request_id}?",
        answer=f"answer {request_id}",
        model="smollm2-135m",
    )


def write_both_branches(path: Path, rows: Iterable[dict]) -> Path:
    """Write a both-branch file (the schema of knowgate.evaluation.both_branches) as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def both_branch_row(
    i: int,
    *,
    p: float,
    cb: bool,
    rag: bool,
    cb_s: float = 0.1,
    rag_s: float = 0.3,
    model_id: str | None = "smollm2-135m",
    scores: bool = True,
) -> dict:
    """One row whose gate costs ``cb_s`` when it answers closed-book and ``rag_s`` when it
    retrieves: half of ``cb_s`` is the gate's prefill, half the decode, so plain RAG (always)
    costs ``rag_s - cb_s / 2`` and the closed-book LLM (never) ``cb_s``.
    """
    prefill = cb_s / 2
    row = {
        "id": f"q{i}",
        "dataset": "synthetic",
        "model_id": model_id,
        "closed_book_correct": cb,
        "retrieval_correct": rag,
        "seconds": {
            "prefill": prefill,
            "signals": 0.0,
            "decode": cb_s - prefill,
            "retrieve": 0.0,
            "answer_with_passages": rag_s - prefill,
        },
        "features": {"next_token_max_prob": p, "hidden_hoyer_last": None},
    }
    if scores:
        row["closed_book_score"] = float(cb)
        row["retrieval_score"] = float(rag)
    return row
