"""Cached, resumable retrieval-branch runs: every question answered with top-k passages.

The benchmark needs each question answered twice. The closed-book half comes from
:mod:`knowgate.evaluation.branches.closed_book`; this is the other half. Answers go through the
product's request path - :class:`~knowgate.routing.Router` with the ``always`` policy - so the
benchmark measures the prompts, passage fitting and per-stage timings users get. ``always`` reads
no signal, so the router serves it as plain RAG: retrieval, then the answer with passages, and no
gate prefill (``timings_ms`` holds ``retrieve`` and ``answer_with_passages``; caches written
before that change also hold a gate's ``prefill``/``signals``, which are ignored).

A :class:`~knowgate.evaluation.branches.cache.BranchRunner` like the closed-book one: one
append-only JSONL file per model, prompt, knowledge base, ``k`` and dataset, named by a SHA-256
over all of them, fsync'ed per batch, so an interrupted run resumes where it stopped. Scores are
recomputed on read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowgate.errors import ConfigError, DataError
from knowgate.evaluation.branches.cache import BatchExecutor, BranchFactory, BranchRunner
from knowgate.evaluation.branches.closed_book import (
    PROBE_QUESTION,
    SIGNAL_ONLY_KEYS,
    cache_key_material,
    served_elsewhere_message,
)
from knowgate.evaluation.datasets import QADataset, QAExample
from knowgate.evaluation.scoring import AnswerScore, score_answer

if TYPE_CHECKING:
    from knowgate.models import LanguageModel, RemoteModel

BRANCH = "retrieval"


@dataclass(frozen=True)
class _ProbePassage:
    title: str
    text: str


@dataclass(frozen=True)
class RetrievalRecord:
    """One question answered with retrieved passages, as the router serves it.

    Attributes:
        example: the labelled question.
        dataset: the dataset's name.
        answer: the answer generated with the passages in the prompt.
        score: In-Accuracy / EM / F1 of ``answer`` (recomputed on every read).
        passage_ids: ids of the passages that went into the prompt, best first.
        evidence_hit: some passage is one of the row's ``evidence_ids`` (``None`` when the row
            lists no evidence).
        retrieval_error: why the router fell back to closed-book, if it did.
        retrieve_seconds: the retriever's share of the batch.
        answer_seconds: the share of the retrieval-augmented forward pass (prefill + decode; for
            a question the router had to answer closed-book, that answer's pass).
        batch_size: questions routed together.
    """

    example: QAExample
    dataset: str
    answer: str
    score: AnswerScore
    passage_ids: tuple[str, ...]
    evidence_hit: bool | None
    retrieval_error: str | None
    retrieve_seconds: float
    answer_seconds: float
    batch_size: int

    @property
    def id(self) -> str:
        """The question's id."""
        return self.example.id

    @property
    def correct(self) -> bool:
        """In-Accuracy of the answer with retrieval."""
        return self.score.in_accuracy


ADDED_LATER: dict[tuple[str, ...], Any] = {
    ("embedding_backend",): "torch",
    ("index", "ivf_nlist"): None,
    ("index", "pq_m"): None,
    ("index", "pq_nbits"): None,
}
"""Manifest fields added after retrieval caches were keyed, with the value every older base had.

A field at that value is left out of the fingerprint, so existing caches keep their keys; any
other value makes another base with another fingerprint."""


def knowledge_base_fingerprint(directory: Path) -> dict[str, Any]:
    """What identifies a saved knowledge base: its manifest minus the timestamps.

    The manifest holds the SHA-256 of every file, the embedding model and the build settings, so
    any change to the base changes this.
    """
    from knowgate.retrieval.manifest import MANIFEST_NAME, read_manifest

    manifest = read_manifest(Path(directory)).model_dump(mode="json")
    for stamp in ("created_at", "updated_at", "knowgate_version"):
        manifest.pop(stamp, None)
    for (*parents, name), implied in ADDED_LATER.items():
        section: Any = manifest
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict) and name in section and section[name] == implied:
            del section[name]
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return {
        "manifest": MANIFEST_NAME,
        "sha256": digest,
        "documents": manifest.get("document_count"),
        "embedding_model": manifest.get("embedding_model_id"),
    }


def retrieval_key_material(
    lm: LanguageModel | RemoteModel,
    dataset: QADataset,
    *,
    knowledge_base: Mapping[str, Any],
    k: int,
    mode: str,
) -> dict[str, Any]:
    """What a retrieval-branch answer depends on: model, prompts, generation, base, ``k``, data.

    Unlike the closed-book key it leaves out the captured layers and feature names: the answer
    with passages does not depend on which signals a gate would read.
    """
    material = cache_key_material(lm, dataset)
    for signal_only in SIGNAL_ONLY_KEYS:
        material.pop(signal_only, None)
    probe = lm.format_prompt(PROBE_QUESTION, [_ProbePassage("Paris", "Paris is the capital.")])
    material.update(
        branch=BRANCH,
        knowledge_base=dict(knowledge_base),
        k=k,
        search_mode=mode,
        rag_prompt_probe_sha256=hashlib.sha256(probe.encode()).hexdigest(),
    )
    return material


class RetrievalBranch(BranchRunner[RetrievalRecord]):
    """Every question answered with the knowledge base's top-``k`` passages, as the router serves.

    Args:
        lm: the model runner.
        knowledge_base: the loaded base (:class:`~knowgate.retrieval.KnowledgeBase`).
        knowledge_base_dir: the directory it was loaded from (its manifest keys the cache).
        k: passages per question (default ``RouterConfig().retrieval.k``).
    """

    folder = BRANCH
    what = "retrieval-branch"
    branch = BRANCH
    lm: LanguageModel | RemoteModel

    def __init__(
        self,
        lm: LanguageModel | RemoteModel,
        knowledge_base: Any,
        *,
        knowledge_base_dir: Path,
        k: int | None = None,
    ) -> None:
        from knowgate.config import RetrievalConfig, RouterConfig
        from knowgate.policy import build_policy
        from knowgate.routing import Router

        super().__init__(lm)
        retrieval = RetrievalConfig() if k is None else RetrievalConfig(k=k)
        self.k = retrieval.k
        self.knowledge_base = knowledge_base
        self.knowledge_base_dir = Path(knowledge_base_dir)
        self.fingerprint = knowledge_base_fingerprint(knowledge_base_dir)
        self.mode = str(getattr(getattr(knowledge_base, "config", None), "mode", "unknown"))
        config = RouterConfig(model=lm.config, retrieval=retrieval)
        self.router = Router(lm, build_policy("always"), knowledge_base, config=config)

    def key_material(self, dataset: QADataset) -> dict[str, Any]:
        """See :func:`retrieval_key_material`."""
        return retrieval_key_material(
            self.lm, dataset, knowledge_base=self.fingerprint, k=self.k, mode=self.mode
        )

    def replica(self) -> BranchFactory:
        """The same branch around another copy of the model, with the base loaded there.

        The base is reloaded from its directory with this one's runtime settings (search mode,
        fusion), so it must be readable where the factory runs (a shared path on a cluster).

        Raises:
            ConfigError: the model is served (no local pass to spread).
        """
        from knowgate.models.remote import RemoteModel

        if isinstance(self.lm, RemoteModel):
            raise ConfigError(served_elsewhere_message(self.lm.model_id))
        return partial(
            _retrieval_replica,
            knowledge_base_dir=self.knowledge_base_dir,
            knowledge_base_config=getattr(self.knowledge_base, "config", None),
            k=self.k,
        )

    def answer_batch(self, chunk: Sequence[QAExample]) -> list[dict[str, Any]]:
        """Route the batch through the router with the ``always`` policy."""
        routed = self.router.route_batch([ex.question for ex in chunk])
        return [
            {
                "answer": out.answer,
                "in_accuracy": score_answer(out.answer, ex.golden_answers, ex.question).in_accuracy,
                "passage_ids": [p.id for p in out.passages],
                "retrieval_error": out.retrieval_error,
                "timings_ms": out.timings_ms,
                "calls": out.calls,
                "batch_size": len(chunk),
            }
            for ex, out in zip(chunk, routed, strict=True)
        ]

    @classmethod
    def parse_record(
        cls, row: Mapping[str, Any], example: QAExample, dataset: str
    ) -> RetrievalRecord:
        """A cached row as a :class:`RetrievalRecord`, scored now."""
        try:
            answer = str(row["answer"])
            passage_ids = tuple(str(p) for p in row["passage_ids"])
            timings = {str(k): float(v) for k, v in row["timings_ms"].items()}
            evidence = {str(e) for e in example.metadata.get("evidence_ids") or ()}
            return RetrievalRecord(
                example=example,
                dataset=dataset,
                answer=answer,
                score=score_answer(answer, example.golden_answers, example.question),
                passage_ids=passage_ids,
                evidence_hit=bool(evidence & set(passage_ids)) if evidence else None,
                retrieval_error=row.get("retrieval_error"),
                retrieve_seconds=timings.get("retrieve", 0.0) / 1000.0,
                # A request the router had to answer closed-book (no passages) spent decode time
                # (a served model: a draft call).
                answer_seconds=(
                    timings.get("answer_with_passages", 0.0)
                    + timings.get("decode", 0.0)
                    + timings.get("draft", 0.0)
                )
                / 1000.0,
                batch_size=int(row["batch_size"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(
                f"malformed retrieval-branch record for {example.id!r}: {exc!r}"
            ) from exc


def _retrieval_replica(
    lm: LanguageModel, *, knowledge_base_dir: Path, knowledge_base_config: Any, k: int
) -> RetrievalBranch:
    """A :class:`RetrievalBranch` built where a :meth:`RetrievalBranch.replica` factory runs."""
    from knowgate.retrieval import KnowledgeBase

    knowledge_base = KnowledgeBase.load(knowledge_base_dir, knowledge_base_config)
    return RetrievalBranch(lm, knowledge_base, knowledge_base_dir=knowledge_base_dir, k=k)


def run_retrieval_branch(
    lm: LanguageModel | RemoteModel,
    dataset: QADataset,
    knowledge_base: Any,
    *,
    knowledge_base_dir: Path,
    k: int | None = None,
    cache_dir: Path | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    executor: BatchExecutor | None = None,
) -> list[RetrievalRecord]:
    """Answer every question of ``dataset`` with retrieval, reusing and extending the disk cache.

    Args:
        lm: the model runner.
        dataset: the questions (a ``head`` or sample of a file shares the full file's cache).
        knowledge_base: the loaded base (:class:`~knowgate.retrieval.KnowledgeBase`).
        knowledge_base_dir: the directory it was loaded from (its manifest keys the cache).
        k: passages per question (default ``RouterConfig().retrieval.k``).
        cache_dir: cache root (default ``runs/retrieval``).
        batch_size: questions routed together (default from the model config).
        progress: show a tqdm bar over the questions still to run.
        executor: answer the uncached batches there (Ray actors); the cache written is the same.

    Returns:
        One record per question, in dataset order.
    """
    branch = RetrievalBranch(lm, knowledge_base, knowledge_base_dir=knowledge_base_dir, k=k)
    return branch.run(
        dataset, cache_dir=cache_dir, batch_size=batch_size, progress=progress, executor=executor
    )


def load_retrieval_branch(path: Path, dataset: QADataset) -> list[RetrievalRecord]:
    """Records of a finished retrieval-branch cache, without a model or knowledge base.

    Raises:
        DataError: not a retrieval cache, written for another dataset, or incomplete.
    """
    return RetrievalBranch.load(path, dataset)
