"""Cached runs of the peers' extra model calls: sampled answers and the self-report prompt.

The field's reference gates cost more than knowgate's single pass, and the benchmark scores them
on the same questions:

- **sampling consistency** needs ``K`` answers sampled at temperature 1 from the closed-book
  prompt (one shared prefill, ``K`` decodes; see :meth:`LanguageModel.sample`);
- **self-routing** needs P(yes) / P(no) after asking the model whether it can answer from memory
  (one extra short prompt, no decoding).

Both run once per model, prompt and dataset and are kept in a resumable cache like the closed-book
one (a :class:`~knowgate.evaluation.branches.cache.BranchRunner`); the features are computed on read
(:mod:`knowgate.signals.consistency`), so fixing a feature never needs the model. Each row keeps
the wall time of its batch's calls, so the benchmark can report what each peer costs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowgate.errors import DataError
from knowgate.evaluation.branches.cache import BatchExecutor, BranchFactory, BranchRunner
from knowgate.evaluation.branches.closed_book import (
    PROBE_QUESTION,
    SIGNAL_ONLY_KEYS,
    cache_key_material,
)
from knowgate.evaluation.datasets import QADataset, QAExample

if TYPE_CHECKING:
    from knowgate.models import LanguageModel

BRANCH = "peers"
DEFAULT_SAMPLES = 5
DEFAULT_TEMPERATURE = 1.0
SELF_REPORT_WORDS = ("yes", "no")


@dataclass(frozen=True)
class PeerRecord:
    """The peers' extra calls for one question.

    Attributes:
        example: the labelled question.
        dataset: the dataset's name.
        samples: the sampled answers (temperature ``temperature``), in sampling order.
        p_yes: P(next token spells "yes") after the self-report prompt.
        p_no: P(next token spells "no") after it.
        sample_seconds: wall time of the batch's sampling call (shared by its rows).
        self_report_seconds: wall time of the batch's self-report prefill.
        batch_size: rows in that batch.
    """

    example: QAExample
    dataset: str
    samples: tuple[str, ...]
    p_yes: float
    p_no: float
    sample_seconds: float
    self_report_seconds: float
    batch_size: int

    @property
    def id(self) -> str:
        """The question's id."""
        return self.example.id


def peer_key_material(
    lm: LanguageModel,
    dataset: QADataset,
    *,
    samples: int,
    temperature: float,
    seed: int,
) -> dict[str, Any]:
    """What the peer calls depend on: the closed-book key plus sampling and self-report settings."""
    material = cache_key_material(lm, dataset)
    for signal_only in SIGNAL_ONLY_KEYS:
        material.pop(signal_only, None)
    probe = lm.formatter.self_report(PROBE_QUESTION)
    material.update(
        branch=BRANCH,
        samples=samples,
        temperature=temperature,
        seed=seed,
        self_report_words=list(SELF_REPORT_WORDS),
        self_report_probe_sha256=hashlib.sha256(probe.encode()).hexdigest(),
    )
    return material


def _batch_seed(seed: int, chunk: Sequence[QAExample]) -> int:
    """A sampling seed fixed by the batch's questions, so a resumed run samples the same."""
    digest = hashlib.sha256("\n".join(ex.id for ex in chunk).encode()).digest()
    return (int.from_bytes(digest[:4], "big") + seed) % (2**31)


class PeerBranch(BranchRunner[PeerRecord]):
    """``K`` sampled answers and the self-report probabilities of every question.

    Args:
        lm: the model.
        samples: answers sampled per question (``K``).
        temperature: sampling temperature.
        seed: base seed (each batch's seed also depends on its question ids).
    """

    folder = BRANCH
    what = "peer-signals"
    branch = BRANCH
    lm: LanguageModel

    def __init__(
        self,
        lm: LanguageModel,
        *,
        samples: int = DEFAULT_SAMPLES,
        temperature: float = DEFAULT_TEMPERATURE,
        seed: int = 0,
    ) -> None:
        super().__init__(lm)
        self.samples = samples
        self.temperature = temperature
        self.seed = seed

    def key_material(self, dataset: QADataset) -> dict[str, Any]:
        """See :func:`peer_key_material`."""
        return peer_key_material(
            self.lm, dataset, samples=self.samples, temperature=self.temperature, seed=self.seed
        )

    def replica(self) -> BranchFactory:
        """The same branch around another copy of the model (a batch's seed is its own)."""
        return partial(
            PeerBranch, samples=self.samples, temperature=self.temperature, seed=self.seed
        )

    def answer_batch(self, chunk: Sequence[QAExample]) -> list[dict[str, Any]]:
        """Sample ``K`` answers from one shared prefill, then one self-report prefill."""
        lm = self.lm
        prompts = lm.format_prompts([ex.question for ex in chunk])
        sampled = lm.sample(
            prompts,
            k=self.samples,
            temperature=self.temperature,
            seed=_batch_seed(self.seed, chunk),
        )
        sample_seconds = sampled[0][0].seconds
        start = time.perf_counter()
        probs = lm.next_token_probability(
            [lm.formatter.self_report(ex.question) for ex in chunk], SELF_REPORT_WORDS
        )
        report_seconds = time.perf_counter() - start
        return [
            {
                "samples": [d.text for d in drafts],
                "p_yes": float(p[0]),
                "p_no": float(p[1]),
                "sample_seconds": round(sample_seconds, 6),
                "self_report_seconds": round(report_seconds, 6),
                "batch_size": len(chunk),
            }
            for drafts, p in zip(sampled, probs, strict=True)
        ]

    @classmethod
    def parse_record(cls, row: Mapping[str, Any], example: QAExample, dataset: str) -> PeerRecord:
        """A cached row as a :class:`PeerRecord`."""
        try:
            return PeerRecord(
                example=example,
                dataset=dataset,
                samples=tuple(str(s) for s in row["samples"]),
                p_yes=float(row["p_yes"]),
                p_no=float(row["p_no"]),
                sample_seconds=float(row["sample_seconds"]),
                self_report_seconds=float(row["self_report_seconds"]),
                batch_size=int(row["batch_size"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed peer-signal record for {example.id!r}: {exc!r}") from exc


def run_peer_signals(
    lm: LanguageModel,
    dataset: QADataset,
    *,
    samples: int = DEFAULT_SAMPLES,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    cache_dir: Path | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    executor: BatchExecutor | None = None,
) -> list[PeerRecord]:
    """Sample answers and ask the self-report question for every question (cached, resumable).

    Args:
        lm: the model.
        dataset: the questions.
        samples: answers sampled per question (``K``).
        temperature: sampling temperature.
        seed: base seed (each batch's seed also depends on its question ids).
        cache_dir: cache root (default ``runs/peers``).
        batch_size: questions per call (default from the model config).
        progress: show a progress bar.
        executor: answer the uncached batches there (Ray actors); the cache written is the same.

    Returns:
        One record per question, in dataset order.
    """
    branch = PeerBranch(lm, samples=samples, temperature=temperature, seed=seed)
    return branch.run(
        dataset, cache_dir=cache_dir, batch_size=batch_size, progress=progress, executor=executor
    )


def load_peer_signals(path: Path, dataset: QADataset) -> list[PeerRecord]:
    """Records of a finished peer-signal cache, without a model.

    Raises:
        DataError: not a peer cache, written for another dataset, or incomplete.
    """
    return PeerBranch.load(path, dataset)
