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

A model behind an OpenAI-compatible server has its own runner,
:class:`ServedClosedBookBranch`: one greedy draft with logprobs per question, recording the
features the server's response provides, keyed by the served model's identity
(:meth:`~knowgate.models.RemoteModel.identity`); the records have the same form, so the
calibration study and the benchmark read them alike.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knowgate.errors import ConfigError, DataError
from knowgate.evaluation.branches.cache import (
    ARRAYS_KEY,
    CACHE_FORMAT,
    BatchExecutor,
    BranchFactory,
    BranchRunner,
    load_arrays,
    load_cached_rows,
    read_cache,
)
from knowgate.evaluation.datasets import QADataset, QAExample
from knowgate.evaluation.scoring import AnswerScore, score_answer
from knowgate.models.remote import RemoteModel
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
        prefill_seconds: wall time of the batched prefill this question was part of (for a
            served model: of the batch's draft calls, the gate's whole cost).
        decode_seconds: wall time of the batched decode this question was part of (0 for a
            served model: its server cannot split a draft into prefill and decode).
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
    lm: LanguageModel | RemoteModel, dataset: QADataset, *, max_new_tokens: int | None = None
) -> dict[str, Any]:
    """Everything a closed-book record depends on, as a JSON-able dict (the cache header).

    The retrieval and peer branches start from this dict (dropping the signal-only entries),
    so the model's identity, prompts and generation settings key every branch alike.
    """
    if isinstance(lm, RemoteModel):
        return served_key_material(lm, dataset, max_new_tokens=max_new_tokens)
    from knowgate.models.fingerprint import model_fingerprint
    from knowgate.signals import feature_names, sparsity_table_names

    generation = lm.config.generation
    probe = lm.format_prompt(PROBE_QUESTION)
    selector = lm.demonstrations
    # Demonstrations key the caches only when they are chosen per question (by pool content,
    # not path), so caches of fixed-shot prompts keep the keys they had before selection existed.
    demonstrations = {"demonstrations": selector.key_material()} if selector is not None else {}
    return {
        "format": CACHE_FORMAT,
        "model_id": lm.model_id,
        "model_fingerprint": model_fingerprint(lm),
        "dtype": lm.config.dtype,
        "layers": list(lm.layers),
        # the self-report prompt keys the peer-signal cache, not the answers
        "prompt": lm.config.prompt.model_dump(
            mode="json", exclude={"self_report_template", "demonstrations"}
        ),
        **demonstrations,
        "prompt_probe_sha256": hashlib.sha256(probe.encode()).hexdigest(),
        "generation": {
            "max_new_tokens": max_new_tokens or generation.max_new_tokens,
            "stop_at_newline": generation.stop_at_newline,
        },
        "feature_names": sorted(
            feature_names(RUN_SIGNALS, family="sparsity", backend="local")
            + feature_names(RUN_SIGNALS, family="uncertainty", backend="local")
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


def served_key_material(
    model: RemoteModel, dataset: QADataset, *, max_new_tokens: int | None = None
) -> dict[str, Any]:
    """The closed-book key of a served model: its identity instead of a weights fingerprint.

    The identity (:meth:`~knowgate.models.RemoteModel.identity`) holds the base URL, the model
    name, the server's ``/models`` entry and the configured ``revision``; it contacts the
    server. A server that swaps weights behind the same name and entry is not detected unless
    ``remote.revision`` says so (docs/remote.md).
    """
    from knowgate.signals import feature_names

    generation = model.config.generation
    return {
        "format": CACHE_FORMAT,
        "model_id": model.model_id,
        "served": model.identity(),
        "prompt": model.config.prompt.model_dump(mode="json", exclude={"self_report_template"}),
        "prompt_probe_sha256": hashlib.sha256(
            model.format_prompt(PROBE_QUESTION).encode()
        ).hexdigest(),
        "generation": {
            "max_new_tokens": max_new_tokens or generation.max_new_tokens,
            "stop_at_newline": generation.stop_at_newline,
        },
        "feature_names": sorted(
            feature_names(family="uncertainty", backend="served")
            + feature_names(family="sparsity", backend="served")
        ),
        "dataset": {"name": dataset.name, "content_hash": dataset.content_hash},
    }


class ClosedBookBranch(BranchRunner[ClosedBookRecord]):
    """Greedy closed-book answers with every signal of the pass (the label of every gate).

    Rows also store, beside the cache, the hidden states of :func:`probe_layers` at every prompt
    position (for probes) and every sparsity metric at every layer (for the layer study).
    """

    folder = "closed_book"
    what = "closed-book"
    lm: LanguageModel

    def __init__(self, lm: LanguageModel, *, max_new_tokens: int | None = None) -> None:
        super().__init__(lm)
        self.max_new_tokens = max_new_tokens

    def key_material(self, dataset: QADataset) -> dict[str, Any]:
        """See :func:`cache_key_material`."""
        return cache_key_material(self.lm, dataset, max_new_tokens=self.max_new_tokens)

    def replica(self) -> BranchFactory:
        """The same branch around another copy of the model (same draft length)."""
        return partial(ClosedBookBranch, max_new_tokens=self.max_new_tokens)

    def answer_batch(self, chunk: Sequence[QAExample]) -> list[dict[str, Any]]:
        """One prefill with capture hooks (question positions too), then greedy drafts."""
        lm = self.lm
        stored = probe_layers(lm.layout.num_layers)
        questions = [ex.question for ex in chunk]
        prompts = lm.format_prompts(questions)
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


@dataclass(frozen=True)
class ClosedBookArrays:
    """The arrays stored beside a closed-book cache, one row per question (dataset order).

    Attributes:
        probe_hidden: hidden states of :attr:`probe_layers` at every position, float16,
            ``[n, len(probe_layers), len(positions), d]`` (for probes).
        probe_layers: the blocks stored (:func:`probe_layers`).
        positions: the prompt positions (:data:`~knowgate.signals.POSITIONS`).
        sparsity_by_layer: every sparsity metric at every captured block and position,
            ``[n, len(sparsity_rows), len(positions), len(sparsity_layers)]``.
        sparsity_rows: ``{site}_{metric}`` per row (:func:`~knowgate.signals.
            sparsity_table_names`).
        sparsity_layers: the captured blocks.
    """

    probe_hidden: np.ndarray
    probe_layers: tuple[int, ...]
    positions: tuple[str, ...]
    sparsity_by_layer: np.ndarray
    sparsity_rows: tuple[str, ...]
    sparsity_layers: tuple[int, ...]

    @staticmethod
    def concatenate(parts: Iterable[ClosedBookArrays]) -> ClosedBookArrays:
        """The arrays of several datasets stacked in order (same model, same layout).

        Raises:
            DataError: no parts, or parts stored with different layers or positions.
        """
        items = list(parts)
        if not items:
            raise DataError("no closed-book arrays to concatenate")
        first = items[0]
        for other in items[1:]:
            if (other.probe_layers, other.positions, other.sparsity_rows) != (
                first.probe_layers,
                first.positions,
                first.sparsity_rows,
            ) or other.sparsity_layers != first.sparsity_layers:
                raise DataError("closed-book arrays were stored with different layouts")
        return ClosedBookArrays(
            np.concatenate([a.probe_hidden for a in items]),
            first.probe_layers,
            first.positions,
            np.concatenate([a.sparsity_by_layer for a in items]),
            first.sparsity_rows,
            first.sparsity_layers,
        )


def load_closed_book_arrays(path: Path, dataset: QADataset) -> ClosedBookArrays:
    """The stored hidden states and per-layer sparsity of ``dataset``'s questions (no model).

    Raises:
        DataError: not a closed-book cache of this dataset, incomplete, without arrays, or
            arrays that disagree with the header.
    """
    header, _, _ = read_cache(Path(path), "closed-book")
    layout = header.get("arrays")
    if not isinstance(layout, Mapping) or set(ARRAY_NAMES) - set(layout):
        raise DataError(f"{path}: this closed-book cache stores no {', '.join(ARRAY_NAMES)}")
    rows = load_cached_rows(Path(path), dataset, what="closed-book")
    arrays = load_arrays(Path(path), [rows[ex.id] for ex in dataset], ARRAY_NAMES)
    probe, table = layout["probe_hidden"], layout["sparsity_by_layer"]
    out = ClosedBookArrays(
        probe_hidden=arrays["probe_hidden"],
        probe_layers=tuple(int(v) for v in probe["layers"]),
        positions=tuple(str(v) for v in probe["positions"]),
        sparsity_by_layer=arrays["sparsity_by_layer"],
        sparsity_rows=tuple(str(v) for v in table["rows"]),
        sparsity_layers=tuple(int(v) for v in table["layers"]),
    )
    expected = (len(dataset), len(out.probe_layers), len(out.positions))
    if out.probe_hidden.shape[:3] != expected or out.sparsity_by_layer.shape[1:] != (
        len(out.sparsity_rows),
        len(out.positions),
        len(out.sparsity_layers),
    ):
        raise DataError(f"{path}: stored arrays do not match the layout in its header")
    return out


def served_elsewhere_message(model: str) -> str:
    """Why a served model's branches do not run in parallel workers (``--ray``)."""
    return (
        f"{model} is a served model: its server runs the forward passes, so there is "
        "nothing local to spread over workers (drop --ray; remote.concurrency sets how many "
        "calls run at once)"
    )


class ServedClosedBookBranch(BranchRunner[ClosedBookRecord]):
    """Closed-book drafts of a served model: one greedy call with logprobs per question.

    Each row records the draft, the served features, and the batch's wall time as its
    ``prefill_seconds`` (the whole of a served gate's cost: a server cannot prefill without
    decoding, so ``decode_seconds`` is 0). Calls of a batch run concurrently
    (``remote.concurrency``). A draft the server ended at once (no scored token) has no
    features; its row records why (``missing_reason``).
    """

    folder = "closed_book"
    what = "closed-book"
    lm: RemoteModel

    def __init__(self, model: RemoteModel, *, max_new_tokens: int | None = None) -> None:
        super().__init__(model)
        self.max_new_tokens = max_new_tokens

    def key_material(self, dataset: QADataset) -> dict[str, Any]:
        """See :func:`served_key_material`."""
        return served_key_material(self.lm, dataset, max_new_tokens=self.max_new_tokens)

    def replica(self) -> BranchFactory:
        """Refused: the server answers, so there is no local forward pass to spread.

        Raises:
            ConfigError: always.
        """
        raise ConfigError(served_elsewhere_message(self.lm.model_id))

    def answer_batch(self, chunk: Sequence[QAExample]) -> list[dict[str, Any]]:
        """One greedy draft with logprobs per question (concurrently)."""
        start = time.perf_counter()
        drafts = self.lm.draft([ex.question for ex in chunk], max_new_tokens=self.max_new_tokens)
        seconds = time.perf_counter() - start
        return [
            {
                "answer": d.text,
                "stop_reason": d.stop_reason,
                "features": d.features,
                "prompt_tokens": d.prompt_tokens if d.prompt_tokens is not None else 0,
                "prefill_seconds": round(seconds, 6),
                "decode_seconds": 0.0,
                "batch_size": len(chunk),
                "served": {
                    "call_seconds": round(d.seconds, 6),
                    "retries": d.retries,
                    "tokens": list(d.tokens),
                    "missing_reason": d.missing_reason,
                },
            }
            for d in drafts
        ]

    @classmethod
    def parse_record(
        cls, row: Mapping[str, Any], example: QAExample, dataset: str
    ) -> ClosedBookRecord:
        """A cached row as a :class:`ClosedBookRecord`, scored now."""
        return ClosedBookBranch.parse_record(row, example, dataset)


def closed_book_branch(
    lm: LanguageModel | RemoteModel, *, max_new_tokens: int | None = None
) -> ClosedBookBranch | ServedClosedBookBranch:
    """The closed-book runner of ``lm``: a local model's pass, or a served model's draft."""
    if isinstance(lm, RemoteModel):
        return ServedClosedBookBranch(lm, max_new_tokens=max_new_tokens)
    return ClosedBookBranch(lm, max_new_tokens=max_new_tokens)


def closed_book_cache_path(
    lm: LanguageModel | RemoteModel,
    dataset: QADataset,
    cache_dir: Path | None = None,
    *,
    max_new_tokens: int | None = None,
) -> Path:
    """Where the closed-book records of ``lm`` on ``dataset`` live."""
    return closed_book_branch(lm, max_new_tokens=max_new_tokens).cache_path(dataset, cache_dir)


def run_closed_book(
    lm: LanguageModel | RemoteModel,
    dataset: QADataset,
    *,
    cache_dir: Path | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
    executor: BatchExecutor | None = None,
) -> list[ClosedBookRecord]:
    """Answer every question of ``dataset`` closed-book, reusing and extending the disk cache.

    Args:
        lm: the model runner (a local model, or a served one: see
            :class:`ServedClosedBookBranch`).
        dataset: the questions (a ``head(n)`` of a file shares the full file's cache).
        cache_dir: cache root (default ``runs/closed_book``, see
            :func:`~knowgate.evaluation.branches.cache.default_runs_dir`).
        batch_size: prompts per forward pass (default from the model config).
        max_new_tokens: draft length limit (default from the model config; part of the key).
        progress: show a tqdm bar over the questions still to run.
        executor: answer the uncached batches there (Ray actors, see
            :mod:`knowgate.integrations.ray.batch`); the cache written is the same.

    Returns:
        One record per question, in dataset order.
    """
    branch = closed_book_branch(lm, max_new_tokens=max_new_tokens)
    return branch.run(
        dataset, cache_dir=cache_dir, batch_size=batch_size, progress=progress, executor=executor
    )


def closed_book_arrays(
    lm: LanguageModel,
    dataset: QADataset,
    cache_dir: Path | None = None,
    *,
    max_new_tokens: int | None = None,
) -> ClosedBookArrays:
    """The arrays of a finished closed-book run of ``lm`` on ``dataset`` (see
    :func:`load_closed_book_arrays`).
    """  # noqa: D205
    path = closed_book_cache_path(lm, dataset, cache_dir, max_new_tokens=max_new_tokens)
    return load_closed_book_arrays(path, dataset)


def load_closed_book(path: Path, dataset: QADataset) -> list[ClosedBookRecord]:
    """Records of a finished cache file without loading the model (for analyses and benchmarks).

    Raises:
        DataError: the cache belongs to another dataset, or lacks some of its questions.
    """
    return ClosedBookBranch.load(path, dataset)
