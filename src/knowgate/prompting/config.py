"""Configuration of demonstration selection: which worked examples a few-shot prompt shows.

The section sits under ``model.prompt.demonstrations`` of a router config. ``fixed`` (the
default) keeps today's behaviour: the prompt shows ``prompt.few_shot_examples``, and nothing else
is loaded or computed. Every other strategy picks ``k`` examples per question from a pool file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from knowgate.retrieval.config import DEFAULT_EMBEDDING_MODEL
from knowgate.schema import StrictModel

Strategy = Literal[
    "fixed", "random", "similarity", "shuffled", "sparse_to_dense", "dense_to_sparse", "sgicl"
]
"""How demonstrations are chosen and ordered (see :class:`DemonstrationConfig`)."""
STRATEGIES: tuple[Strategy, ...] = (
    "fixed",
    "random",
    "similarity",
    "shuffled",
    "sparse_to_dense",
    "dense_to_sparse",
    "sgicl",
)
Direction = Literal["easy_to_hard", "hard_to_easy"]
SparsityPrompt = Literal["zero_shot", "fixed_shots"]


class DemonstrationConfig(StrictModel):
    """How a few-shot prompt's demonstrations are chosen for each question.

    "Dense" and "sparse" refer to the model's last-layer activation density at the last prompt
    token (``l0_density``: the share of units above mean + 1 std of ``|h|``): dense reads as
    familiar (easy), sparse as unfamiliar (hard) - Jin et al. 2026, arXiv 2603.03415.

    Attributes:
        strategy: ``fixed`` - the configured ``few_shot_examples``, the same for every question
            (no pool, no extra computation); ``random`` - ``k`` pool examples drawn at random
            (seeded per question); ``similarity`` - the ``k`` most similar pool questions
            (MiniLM cosine), the most similar nearest to the question; ``shuffled`` - the same
            ``k`` in a random order (the random-order control); ``sparse_to_dense`` /
            ``dense_to_sparse`` - the same ``k`` ordered by their pool density (sparsest /
            densest first); ``sgicl`` - the level rule of Sparsity-Guided Curriculum In-Context
            Learning (see :func:`knowgate.prompting.selection.sgicl`).
        k: demonstrations per prompt (not used by ``fixed``).
        pool: JSON Lines file of ``{"question": ..., "answer": ...}`` examples (required unless
            ``fixed``). It must not contain questions you evaluate on.
        candidates: ``sgicl`` chooses among this many most similar pool examples (their code: 20).
        levels: ``sgicl`` cuts the pool into this many equal-count density levels (their code: 5).
        direction: ``sgicl`` order: ``easy_to_hard`` (densest first, what their code does) or
            ``hard_to_easy`` (sparsest first, what their paper's prose describes).
        seed: seed of ``random`` and ``shuffled`` (combined with the question text).
        sparsity_prompt: the prompt whose density places a question (and every pool example) on
            the difficulty scale, which must not depend on the demonstrations being chosen:
            ``zero_shot`` (``Q: <question>`` then ``A:``; one short extra prefill per question) or
            ``fixed_shots`` (the fixed few-shot prompt).
        embedding_model: sentence-transformers model for question similarity.
        cache_dir: where pool densities and embeddings are cached (default: the model's cache
            directory, under ``demonstrations/``).
    """

    strategy: Strategy = "fixed"
    k: int = Field(default=4, ge=1, le=64)
    pool: Path | None = None
    candidates: int = Field(default=20, ge=1, le=10_000)
    levels: int = Field(default=5, ge=2, le=100)
    direction: Direction = "easy_to_hard"
    seed: int = 0
    sparsity_prompt: SparsityPrompt = "zero_shot"
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DemonstrationConfig:
        if self.strategy != "fixed" and self.pool is None:
            raise ValueError(f"strategy {self.strategy!r} needs a pool file (pool: PATH)")
        if self.strategy == "sgicl" and self.candidates < self.k:
            raise ValueError(f"candidates ({self.candidates}) must be at least k ({self.k})")
        return self

    @property
    def selects(self) -> bool:
        """Whether demonstrations are chosen per question (every strategy but ``fixed``)."""
        return self.strategy != "fixed"
