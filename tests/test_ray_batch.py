"""The Ray batch runner's scheduling, without Ray: a scripted cluster with a slow and a fast actor.

The runs on a real local Ray instance (caches equal to the local path's, resume, calibrate
--ray) are in ``test_ray.py``; here the order of the rows, the spreading of batches over actors
and the bound on unwritten batches are checked against a cluster whose timing is scripted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from knowgate.errors import ConfigError
from knowgate.integrations.ray.batch import RayBatchConfig, RayBatchRunner
from knowgate.models import ModelConfig


@dataclass(eq=False)
class Ref:
    actor: int
    chunk: list[str]
    done: bool = False


@dataclass
class ScriptedRay:
    """Each blocking wait finishes one task: the fast actor's oldest if it has one."""

    fast: int
    tasks: list[Ref] = field(default_factory=list)
    fetched: list[Ref] = field(default_factory=list)

    def wait(self, refs: list[Ref], num_returns: int, timeout: float | None = None) -> Any:
        if timeout is None and not any(r.done for r in refs):
            pending = [r for r in self.tasks if not r.done and r in refs]
            fast = [r for r in pending if r.actor == self.fast]
            (fast or pending)[0].done = True
        ready = [r for r in refs if r.done]
        return ready, [r for r in refs if not r.done]

    def get(self, ref: Ref) -> list[dict[str, Any]]:
        assert ref.done, "the runner fetched a result before it was ready"
        self.fetched.append(ref)
        return [{"answer": f"{q}!"} for q in ref.chunk]


class Actor:
    def __init__(self, cluster: ScriptedRay, index: int) -> None:
        self.answer = self
        self.cluster, self.index = cluster, index

    def remote(self, token: str, chunk: list[str]) -> Ref:
        ref = Ref(self.index, chunk)
        self.cluster.tasks.append(ref)
        return ref


def run(batches_ahead: int, chunks: list[list[str]]) -> tuple[list[Any], ScriptedRay, list[int]]:
    runner = RayBatchRunner(
        ModelConfig(source="m"), RayBatchConfig(workers=2, batches_ahead=batches_ahead)
    )
    cluster = ScriptedRay(fast=1)
    actors = [Actor(cluster, 0), Actor(cluster, 1)]
    out, unwritten = [], []
    for rows in runner._ordered(cluster, actors, "token", chunks):  # type: ignore[arg-type]
        out.append(rows)
        unwritten.append(len(cluster.tasks) - len(out))
    return out, cluster, unwritten


def test_rows_come_back_in_batch_order_and_the_fast_actor_takes_more() -> None:
    chunks = [[f"q{i}"] for i in range(12)]
    out, cluster, unwritten = run(1, chunks)
    assert out == [[{"answer": f"q{i}!"}] for i in range(12)]
    assert [r.chunk for r in cluster.fetched] == chunks
    per_actor = [sum(r.actor == a for r in cluster.tasks) for a in (0, 1)]
    # rows are written in order, so the fast actor runs ahead only as far as the window allows
    assert sum(per_actor) == 12 and per_actor[1] > per_actor[0]
    # at most workers * (1 + batches_ahead) = 4 batches sent and not yet written
    assert max(unwritten) <= 3  # counted after each write: 4 before it


def test_without_batches_ahead_each_actor_holds_one_batch() -> None:
    out, _, unwritten = run(0, [[f"q{i}"] for i in range(5)])
    assert len(out) == 5 and max(unwritten) <= 1


def test_a_served_model_is_refused_before_ray_starts() -> None:
    served = ModelConfig(source="openai:http://127.0.0.1:9/v1#tiny")
    with pytest.raises(ConfigError, match="is a served model"):
        RayBatchRunner(served)
