"""The demonstration selector: a pool, its cached scores, a strategy, and per-question choices.

For each question it computes what its strategy needs - the question's embedding (every strategy
but ``random``) and, for ``sgicl`` only, the model's density on the question's sparsity prompt -
and returns the demonstrations in prompt order (:func:`knowgate.prompting.selection.select`).
A pool example whose normalised question equals the query's is never shown. Choices are
memoised per question, so formatting the same question again (a retrieval prompt after the
closed-book one, several passage counts) costs nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from knowgate.errors import ConfigError
from knowgate.prompting.config import DemonstrationConfig
from knowgate.prompting.pool import Demonstration, DemonstrationPool
from knowgate.prompting.scores import (
    DensityFn,
    EmbedFn,
    PoolScores,
    load_or_score,
    material_key,
)
from knowgate.prompting.selection import IntArray, difficulty_levels, select
from knowgate.text import normalize_question

MEMO_SIZE = 8192
RULES_VERSION = 1
"""Bumped whenever a selection rule changes, so cached answers of the old rule are not reused."""
SPARSITY_METHOD = {
    "metric": "l0_density",
    "state": "final_norm(last block output)",
    "position": "prompt_end",
}
"""How density is read: ``knowgate.signals.sparsity.l0_density`` of the last hidden state after
the final norm (transformers' ``hidden_states[-1]``) at the last token of the sparsity prompt."""


class DemonstrationSelector:
    """Chooses each question's demonstrations from a scored pool.

    Args:
        config: the strategy and its settings (not ``fixed``).
        pool: the examples.
        scores: their densities and embeddings (row ``i`` is ``pool[i]``).
        density_fn: the model's density on questions' sparsity prompts (``sgicl`` reads it for
            queries; it scored the pool).
        embed_fn: question embeddings (unit vectors, the embedder that embedded the pool).
        score_material: the key material of ``scores`` (recorded in :meth:`key_material`).

    Raises:
        ConfigError: ``fixed``, a pool not larger than ``k``, or scores of another length.
    """

    def __init__(
        self,
        config: DemonstrationConfig,
        pool: DemonstrationPool,
        scores: PoolScores,
        *,
        density_fn: DensityFn,
        embed_fn: EmbedFn,
        score_material: Mapping[str, Any],
    ) -> None:
        """Validate the pieces and cut the pool into difficulty levels."""
        if not config.selects:
            raise ConfigError("the fixed strategy has no selector; it uses few_shot_examples")
        if len(pool) <= config.k:
            raise ConfigError(
                f"the demonstration pool {pool.source} has {len(pool)} examples; it needs more "
                f"than k = {config.k} (one may be the question itself, which is never shown)"
            )
        if scores.density.shape != (len(pool),) or scores.embeddings.shape[0] != len(pool):
            raise ConfigError("pool scores do not match the pool")
        self.config = config
        self.pool = pool
        self.scores = scores
        self.levels = difficulty_levels(scores.density, scores.density, config.levels)
        self._density_fn = density_fn
        self._embed_fn = embed_fn
        self._score_material = dict(score_material)
        self._memo: OrderedDict[str, IntArray] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls,
        config: DemonstrationConfig,
        *,
        identity: Mapping[str, Any],
        cache_dir: Path,
        density_fn: DensityFn,
        embed_fn: EmbedFn,
        embedding_model_id: str,
    ) -> DemonstrationSelector:
        """Load the pool and its scores (from the cache, or computed once and cached).

        Args:
            config: the strategy and its settings (not ``fixed``).
            identity: what the model's densities depend on (model id, weights fingerprint,
                dtype, layer, sparsity prompt and its rendered probe).
            cache_dir: the score cache directory (``config.cache_dir`` wins).
            density_fn: the model's density on questions' sparsity prompts.
            embed_fn: question embeddings.
            embedding_model_id: the embedding model's identifier (part of the key).
        """
        if config.pool is None:
            raise ConfigError(f"strategy {config.strategy!r} needs a pool file")
        pool = DemonstrationPool.load(config.pool)
        material = {
            "format": 1,
            "model": dict(identity),
            "sparsity": SPARSITY_METHOD,
            "embedding_model": embedding_model_id,
            "pool": {"sha256": pool.content_hash, "size": len(pool)},
        }
        scores, _ = load_or_score(
            [ex.question for ex in pool],
            material,
            config.cache_dir or cache_dir,
            density_fn=density_fn,
            embed_fn=embed_fn,
        )
        return cls(
            config,
            pool,
            scores,
            density_fn=density_fn,
            embed_fn=embed_fn,
            score_material=material,
        )

    def key_material(self) -> dict[str, Any]:
        """What the chosen demonstrations depend on (caches of model outputs include it)."""
        settings = self.config.model_dump(mode="json", exclude={"pool", "cache_dir"})
        return {
            **settings,
            "rules_version": RULES_VERSION,
            "pool_sha256": self.pool.content_hash,
            "pool_size": len(self.pool),
            "scores_key": material_key(self._score_material),
        }

    def indices(self, questions: Sequence[str]) -> list[IntArray]:
        """Pool indices of each question's demonstrations, in prompt order."""
        texts = [" ".join(q.split()) for q in questions]
        with self._lock:
            known = {t: self._memo[t] for t in texts if t in self._memo}
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            known.update(zip(missing, self._choose(missing), strict=True))
            with self._lock:
                for t in missing:
                    self._memo[t] = known[t]
                while len(self._memo) > MEMO_SIZE:
                    self._memo.popitem(last=False)
        return [known[t] for t in texts]

    def select(self, questions: Sequence[str]) -> list[tuple[Demonstration, ...]]:
        """Each question's demonstrations, in prompt order."""
        return [tuple(self.pool[int(i)] for i in idx) for idx in self.indices(questions)]

    def _choose(self, texts: Sequence[str]) -> list[IntArray]:
        strategy = self.config.strategy
        n = len(self.pool)
        if strategy == "random":
            similarity = np.zeros((len(texts), n))
        else:
            similarity = self._embed_fn(texts).astype(np.float64) @ self.scores.embeddings.T
        if strategy == "sgicl":
            query_levels = difficulty_levels(
                self._density_fn(texts), self.scores.density, self.config.levels
            )
        else:
            query_levels = np.ones(len(texts), dtype=np.int64)
        out = []
        for row, text in enumerate(texts):
            usable = np.ones(n, dtype=bool)
            same = self.pool.index_of(text)
            if same is not None:
                usable[same] = False
            out.append(
                select(
                    self.config,
                    similarity=similarity[row],
                    density=self.scores.density,
                    pool_levels=self.levels,
                    query_level=int(query_levels[row]),
                    query_key=normalize_question(text),
                    usable=usable,
                )
            )
        return out
