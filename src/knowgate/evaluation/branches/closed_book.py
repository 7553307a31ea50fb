"""Cached, resumable closed-book runs: per question the draft answer, its score and every signal.

A closed-book run is the label source of every gating policy (*knows* = the closed-book answer is
correct) and the expensive half of the benchmark, so it runs once per model, prompt and dataset and
is kept on disk:

- **Key.** The cache file is named by a SHA-256 over the model id, a fingerprint of the weights
  (GGUF checksum for packaged/GGUF models, weight-file digests for local checkpoints, the revision
  for hub ids), the prompt config and a rendered probe prompt (so chat templates count), the
  generation settings that change outputs, the captured layers and feature names, and the
  dataset's content hash. Change any of them and a new file is written; nothing stale is reused.
- **Append-only, resumable**: a :class:`~knowgate.evaluation.branches.cache.BranchRunner` (a header
  line with the key material, then one line per question, fsync'ed per batch; a rerun skips ids
  already on disk).
- **Scores are recomputed on read** from the stored answer, so fixing the scorer never requires
  re-running the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knowgate.errors import DataError
from knowgate.evaluation.branches.cache import ARRAYS_KEY, CACHE_FORMAT, BranchRunner
from knowgate.evaluation.datasets import QADataset, QAExample
from knowgate.evaluation.scoring import AnswerScore, score_answer
from knowgate.signals import (
    POSITIONS,
    SignalConfig,
    compute_features,
    sparsity_by_layer,
)

if TYPE_CHECKING:
    from knowgate.models import LanguageModel

PROBE_QUESTION = "What is the capital of France?"
"""Rendered into the prompt whose hash keys the caches, so chat templates count."""


@dataclass(frozen=True)
class ClosedBookRecord:
    """One question answered closed-book.

    Attributes:
        example: the labelled question (metadata included).
        dataset: the dataset's name.
        answer: the greedy draft answer.
        stop_reason: why decoding stopped (``eos``, ``newline``, ``length``).
        score: In-Accuracy / EM / F1 of ``answer`` (recomputed from the answer on every read).
        features: every named model signal of the pass (prefill and draft stages).
        prompt_tokens: length of the closed-book prompt.
        prefill_seconds: wall time of the batched prefill this question was part of.
        decode_seconds: wall time of the batched decode this question was part of.
        batch_size: rows in that batch (per-question cost is roughly seconds / batch_size).
    """

    example: QAExample
    dataset: str
    answer: str
    stop_reason: str
    score: AnswerScore
    features: Mapping[str, float]
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    batch_size: int

    @property
    def id(self) -> str:
        """The question's id."""
        return self.example.id

    @property
    def correct(self) -> bool:
        """The label of every gating policy: In-Accuracy of the closed-book answer."""
        return self.score.in_accuracy


RUN_SIGNALS = SignalConfig(positions=POSITIONS)
"""Closed-book runs record every feature at every prompt position (the router reads a subset)."""
PROBE_LAYER_COUNT = 10
ARRAY_NAMES = ("probe_hidden", "sparsity_by_layer")


def probe_layers(num_layers: int, count: int = PROBE_LAYER_COUNT) -> tuple[int, ...]:
    """Evenly spaced blocks, the last included, whose hidden states are stored for probes.

    Storing every layer at three positions would cost ~100 KB per question for SmolLM2; ten
    layers keep the probe's layer search meaningful at a third of that.
    """
    count = max(1, min(count, num_layers))
    return tuple(sorted({round((i + 1) * num_layers / count) - 1 for i in range(count)}))


def cache_key_material(
    lm: LanguageModel, dataset: QADataset, *, max_new_tokens: int | None = None
) -> dict[str, Any]:
    """Everything a closed-book record depends on, as a JSON-able dict (the cache header).

    The retrieval and peer branches start from this dict (dropping the signal-only entries),
    so the model's identity, prompts and generation settings key every branch alike.
    """
    from knowgate.models.fingerprint import model_fingerprint
    from knowgate.signals import feature_names, sparsity_table_names

    generation = lm.config.generation
    probe = lm.format_prompt(PROBE_QUESTION)
    return {
        "format": CACHE_FORMAT,
        "model_id": lm.model_id,
        "model_fingerprint": model_fingerprint(lm),
        "dtype": lm.config.dtype,
        "layers": list(lm.layers),
        # the self-report prompt keys the peer-signal cache, not the answers
        "prompt": lm.config.prompt.model_dump(mode="json", exclude={"self_report_template"}),
        "prompt_probe_sha256": hashlib.sha256(probe.encode()).hexdigest(),
        "generation": {
            "max_new_tokens": max_new_tokens or generation.max_new_tokens,
            "stop_at_newline": generation.stop_at_newline,
        },
        "feature_names": sorted(
            feature_names(RUN_SIGNALS, family="sparsity")
            + feature_names(RUN_SIGNALS, family="uncertainty")
        ),
        "arrays": {
            "probe_hidden": {
                "layers": list(probe_layers(lm.layout.num_layers)),
                "positions": list(POSITIONS),
                "dtype": "float16",
            },
            "sparsity_by_layer": {
                "rows": sparsity_table_names(),
                "positions": list(POSITIONS),
                "layers": list(lm.layers),
            },
        },
        "dataset": {"name": dataset.name, "content_hash": dataset.content_hash},
    }


SIGNAL_ONLY_KEYS = ("layers", "feature_names", "arrays")
"""Entries of the closed-book key that other branches' answers do not depend on."""


class ClosedBookBranch(BranchRunner[ClosedBookRecord]):
    """Greedy closed-book answers with every signal of the pass (the label of every gate).

    Rows also store, beside the cache, the hidden states of :func:`probe_layers` at every prompt
    position (for probes) and every sparsity metric at every layer (for the layer study).
    """

    folder = "closed_book"
    what = "closed-book"

    def __init__(self, lm: LanguageModel, *, max_new_tokens: int | None = None) -> None:
        super().__init__(lm)
        self.max_new_tokens = max_new_tokens

    def key_material(self, dataset: QADataset) -> dict[str, Any]:
        """See :func:`cache_key_material`."""
        return cache_key_material(self.lm, dataset, max_new_tokens=self.max_new_tokens)

    def answer_batch(self, chunk: Sequence[QAExample]) -> list[dict[str, Any]]:
        """One prefill with capture hooks (question positions too), then greedy drafts."""
        lm = self.lm
        stored = probe_layers(lm.layout.num_layers)
        questions = [ex.question for ex in chunk]
        prompts = [lm.format_prompt(q) for q in questions]
        pre = lm.prefill(prompts, questions=questions)
        drafts = lm.decode(pre, max_new_tokens=self.max_new_tokens)
        rows = []
        for i, draft in enumerate(drafts):
            capture = pre.captures[i].with_draft(draft.stats)
            states = np.stack([capture.at(p).hidden for p in POSITIONS], axis=1)  # [L, P, d]
            rows.append(
                {
                    "answer": draft.text,
                    "stop_reason": draft.stop_reason,
                    "features": compute_features(capture, RUN_SIGNALS),
                    "prompt_tokens": pre.prompt_tokens[i],
                    "prefill_seconds": round(pre.seconds, 6),
                    "decode_seconds": round(draft.seconds, 6),
                    "batch_size": len(chunk),
                    ARRAYS_KEY: {
                        "probe_hidden": states[[lm.layers.index(j) for j in stored]].astype(
                            np.float16
                        ),
                        "sparsity_by_layer": sparsity_by_layer(capture, RUN_SIGNALS).astype(
                            np.float32
                        ),
                    },
                }
            )
        return rows

    @classmethod
    def parse_record(
        cls, row: Mapping[str, Any], example: QAExample, dataset: str
    ) -> ClosedBookRecord:
        """A cached row as a :class:`ClosedBookRecord`, scored now."""
        try:
            features = {str(k): float(v) for k, v in row["features"].items()}
            answer = str(row["answer"])
            return ClosedBookRecord(
                example=example,
                dataset=dataset,
                answer=answer,
                stop_reason=str(row["stop_reason"]),
                score=score_answer(answer, example.golden_answers, example.question),
                features=features,
                prompt_tokens=int(row["prompt_tokens"]),
                prefill_seconds=float(row["prefill_seconds"]),
                decode_seconds=float(row["decode_seconds"]),
                batch_size=int(row["batch_size"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"malformed closed-book record for {example.id!r}: {exc!r}") from exc


def closed_book_cache_path(
    lm: LanguageModel,
    dataset: QADataset,
    cache_dir: Path | None = None,
    *,
    max_new_tokens: int | None = None,
) -> Path:
    """Where the closed-book records of ``lm`` on ``dataset`` live."""
    return ClosedBookBranch(lm, max_new_tokens=max_new_tokens).cache_path(dataset, cache_dir)


def run_closed_book(
    lm: LanguageModel,
    dataset: QADataset,
    *,
    cache_dir: Path | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> list[ClosedBookRecord]:
    """Answer every question of ``dataset`` closed-book, reusing and extending the disk cache.

    Args:
        lm: the model runner.
        dataset: the questions (a ``head(n)`` of a file shares the full file's cache).
        cache_dir: cache root (default ``runs/closed_book``, see
            :func:`~knowgate.evaluation.branches.cache.default_runs_dir`).
        batch_size: prompts per forward pass (default from the model config).
        max_new_tokens: draft length limit (default from the model config; part of the key).
        progress: show a tqdm bar over the questions still to run.

    Returns:
        One record per question, in dataset order.
    """
    branch = ClosedBookBranch(lm, max_new_tokens=max_new_tokens)
    return branch.run(dataset, cache_dir=cache_dir, batch_size=batch_size, progress=progress)


def load_closed_book(path: Path, dataset: QADataset) -> list[ClosedBookRecord]:
    """Records of a finished cache file without loading the model (for analyses and benchmarks).

    Raises:
        DataError: the cache belongs to another dataset, or lacks some of its questions.
    """
    return ClosedBookBranch.load(path, dataset)
