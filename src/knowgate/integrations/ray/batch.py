"""Closed-book, retrieval and peer branches answered in parallel Ray actors, one model each.

``knowgate calibrate --ray`` and ``knowgate bench --ray`` hand a branch's *uncached* batches to
:class:`RayBatchRunner`, a :class:`~knowgate.evaluation.branches.cache.BatchExecutor`. Each actor
loads the language model once, from the driver's model configuration, and builds the branch
around it from the branch's own factory (:meth:`~knowgate.evaluation.branches.cache.
BranchRunner.replica`), so every batch is answered by the same ``answer_batch`` as on the local
path. The batches are the local path's batches (same questions, same order, same padding), and
the rows come back to the driver, which appends them to the cache in batch order through the
same writer, under the same lock: one process writes each file, the array files are named by
the same batch digests, and an interrupted run resumes from the cache whichever path wrote it.

Before the first batch of a branch, each actor computes the branch's cache key for the dataset
and the driver checks it against its own: an actor whose model, prompt or knowledge base differs
(another version installed on a node) is refused instead of writing answers under a wrong key.

Greedy answers, labels and stop reasons are those of the local path; float features and stored
hidden states agree to rounding (an actor runs ``cpus_per_worker`` torch threads, the driver all
of the machine's, and matrix products may sum in another order).
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import Field

from knowgate.errors import ConfigError, DataError, ModelLoadError
from knowgate.evaluation.branches.cache import BranchFactory, BranchRunner, cache_key
from knowgate.evaluation.branches.closed_book import served_elsewhere_message
from knowgate.evaluation.datasets import QADataset, QAExample
from knowgate.integrations.ray.runtime import RayRuntime, ray_runtime, require_ray
from knowgate.schema import StrictModel

if TYPE_CHECKING:
    from knowgate.models import ModelConfig

log = logging.getLogger(__name__)


class RayBatchConfig(StrictModel):
    """How a branch's batches are spread over actors.

    Attributes:
        workers: actors (each loads the language model once: about 1 GB of memory for
            SmolLM2-135M with its captures).
        cpus_per_worker: CPUs Ray reserves per actor, and the torch threads it runs.
        batches_ahead: batches queued on an actor beyond the one it runs, so it never waits
            for the driver; the driver holds at most ``workers * (1 + batches_ahead)``
            unwritten batches.
    """

    workers: int = Field(default=2, ge=1, le=4096)
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    batches_ahead: int = Field(default=1, ge=0, le=64)


@dataclass
class BatchStats:
    """What a :class:`RayBatchRunner` did (for the benchmark and the CLI summary).

    Attributes:
        workers: actors started.
        startup_seconds: from starting Ray (when the runner starts it) and creating the actors
            to every actor holding its model.
        questions: questions answered on the actors.
        batches: batches answered.
        seconds: wall time of answering (from the first batch sent to the last one received,
            summed over branches and datasets; the model loads excluded).
        actor_peak_rss_mib: each actor process's peak resident memory, read when the runner
            closes.
    """

    workers: int = 0
    startup_seconds: float = 0.0
    questions: int = 0
    batches: int = 0
    seconds: float = 0.0
    actor_peak_rss_mib: list[int] = field(default_factory=list)

    @property
    def questions_per_second(self) -> float:
        """Throughput of the actors, model loads excluded."""
        return self.questions / self.seconds if self.seconds > 0 else 0.0


class _BranchActor:
    """One Ray actor: the language model, loaded once, and the branches built around it."""

    def __init__(self, model: ModelConfig, threads: int) -> None:
        import torch

        from knowgate.models import LanguageModel

        torch.set_num_threads(max(1, threads))
        self.lm = LanguageModel.load(model)
        self.branches: dict[str, BranchRunner[Any]] = {}

    def prepare(self, token: str, factory: BranchFactory, dataset: QADataset) -> str:
        """Build the branch ``token`` names (once) and return its cache key for ``dataset``."""
        if token not in self.branches:
            self.branches[token] = factory(self.lm)
        return cache_key(self.branches[token].key_material(dataset))

    def answer(self, token: str, chunk: list[QAExample]) -> list[dict[str, Any]]:
        """The rows of one batch, from the branch's own ``answer_batch``."""
        return self.branches[token].answer_batch(chunk)

    def peak_rss_mib(self) -> int:
        """This actor process's peak resident memory (Linux reports KiB)."""
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) // 1024


class RayBatchRunner:
    """A batch executor over ``workers`` Ray actors, each holding one copy of the model.

    Use it as a context manager, which stops the actors (reading their peak memory first) and
    the Ray it started on exit. Ray and the actors start on the first batch, so a run whose
    questions are all cached starts nothing. A Ray already initialised in this process is used
    as it is (:func:`~knowgate.integrations.ray.ray_runtime`).

    Args:
        model: the driver's model configuration (``lm.config``); each actor loads it.
        settings: actors, CPUs, queue depth.
        stats: filled as batches are answered.
        runtime: the cluster to join, or a local instance (the default).

    Raises:
        ConfigError: ``model`` is served (nothing local to spread).
    """

    def __init__(
        self,
        model: ModelConfig,
        settings: RayBatchConfig | None = None,
        stats: BatchStats | None = None,
        *,
        runtime: RayRuntime | None = None,
    ) -> None:
        if model.remote is not None:
            raise ConfigError(served_elsewhere_message(model.source))
        self.model = model
        self.settings = settings or RayBatchConfig()
        self.stats = stats if stats is not None else BatchStats()
        self.runtime = runtime
        self._actors: list[Any] = []
        self._ray = ExitStack()

    def __enter__(self) -> RayBatchRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # After an error the actors may still be busy: stop them without waiting for a reply.
        self.close(read_memory=exc_type is None)

    def _start(self) -> list[Any]:
        if self._actors:
            return self._actors
        start = time.perf_counter()
        ray = self._ray.enter_context(ray_runtime(self.runtime))
        cpus = self.settings.cpus_per_worker
        actor_class = ray.remote(num_cpus=cpus)(_BranchActor)
        threads = max(1, round(cpus))
        self._actors = [
            actor_class.remote(self.model, threads) for _ in range(self.settings.workers)
        ]
        # The model loads in each actor's constructor; a trivial call waits for all of them.
        try:
            ray.get([a.peak_rss_mib.remote() for a in self._actors])
        except ray.exceptions.RayActorError as exc:
            raise ModelLoadError(
                f"a Ray actor could not load {self.model.source}; it must be installed where the "
                f"actors run: {exc}"
            ) from exc
        self.stats.workers = len(self._actors)
        self.stats.startup_seconds += time.perf_counter() - start
        log.info(
            "%d Ray actors loaded %s in %.1f s",
            len(self._actors),
            self.model.source,
            time.perf_counter() - start,
        )
        return self._actors

    def answer_batches(
        self,
        branch: BranchRunner[Any],
        dataset: QADataset,
        chunks: Sequence[Sequence[QAExample]],
    ) -> Iterator[list[dict[str, Any]]]:
        """Each chunk's rows, answered on the actors, yielded in chunk order.

        Raises:
            ConfigError: the branch cannot run elsewhere (a served model).
            DataError: an actor's cache key differs from the driver's.
        """
        if not chunks:
            return
        factory = branch.replica()
        ray = require_ray()
        actors = self._start()
        material = branch.key_material(dataset)
        expected = cache_key(material)
        token = cache_key({k: v for k, v in material.items() if k != "dataset"})
        stub = QADataset(dataset.name, dataset.path, (), dataset.content_hash)
        keys = ray.get([a.prepare.remote(token, factory, stub) for a in actors])
        for i, got in enumerate(keys):
            if got != expected:
                raise DataError(
                    f"Ray actor {i} keys {branch.what} answers of {dataset.name} as {got[:16]}, "
                    f"this process as {expected[:16]}: the model, prompt or knowledge base "
                    "differs where the actor runs (install the same ones on every node)"
                )
        start = time.perf_counter()
        yield from self._ordered(ray, actors, token, chunks)
        self.stats.seconds += time.perf_counter() - start
        self.stats.questions += sum(len(c) for c in chunks)
        self.stats.batches += len(chunks)

    def _ordered(
        self, ray: Any, actors: list[Any], token: str, chunks: Sequence[Sequence[QAExample]]
    ) -> Iterator[list[dict[str, Any]]]:
        """Keep every actor busy (least-loaded first), and yield the results in chunk order."""
        window = len(actors) * (1 + self.settings.batches_ahead)
        refs: dict[int, Any] = {}  # chunk index -> its result, sent and not yet yielded
        running: dict[Any, int] = {}  # result not known to be finished -> its actor
        load = [0] * len(actors)
        sent = 0
        for index in range(len(chunks)):
            if running:  # note what finished meanwhile, so the next batch goes to a free actor
                ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
                for ref in ready:
                    load[running.pop(ref)] -= 1
            while sent < len(chunks) and sent - index < window:
                actor = min(range(len(actors)), key=load.__getitem__)
                ref = actors[actor].answer.remote(token, list(chunks[sent]))
                refs[sent], running[ref] = ref, actor
                load[actor] += 1
                sent += 1
            target = refs.pop(index)
            while target in running:
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    load[running.pop(ref)] -= 1
            try:
                rows: list[dict[str, Any]] = ray.get(target)
            except ray.exceptions.RayActorError as exc:
                raise DataError(
                    f"a Ray actor died ({exc}); every batch written so far is in the cache, so "
                    "rerunning the command resumes from there"
                ) from exc
            yield rows

    def close(self, *, read_memory: bool = True) -> None:
        """Read each actor's peak memory, stop the actors, and the Ray this runner started."""
        try:
            if self._actors:
                ray = require_ray()
                if read_memory:
                    try:
                        self.stats.actor_peak_rss_mib = sorted(
                            ray.get([a.peak_rss_mib.remote() for a in self._actors], timeout=30)
                        )
                    except Exception as exc:  # a dead actor reports nothing; stop the rest
                        log.warning("could not read the Ray actors' memory: %s", exc)
                for actor in self._actors:
                    ray.kill(actor)
                self._actors = []
        finally:
            self._ray.close()
