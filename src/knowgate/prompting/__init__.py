"""Demonstrations for few-shot prompts, chosen per question (fixed, similar, sparsity-guided).

A base model answers from a few-shot prompt. By default the shots are fixed
(``prompt.few_shot_examples``); a :class:`DemonstrationConfig` under
``model.prompt.demonstrations`` picks them per question from a pool instead - at random, by
similarity, ordered by the model's own activation density, or by the SG-ICL level rule (Jin et
al. 2026, arXiv 2603.03415). This room holds the pure parts: configuration, the pool, the
selection rules and the cached pool scores; :class:`knowgate.models.LanguageModel` supplies the
model's densities and formats the prompts (docs/prompting.md).
"""

from __future__ import annotations

from knowgate.prompting.config import STRATEGIES, DemonstrationConfig, Direction, Strategy
from knowgate.prompting.pool import Demonstration, DemonstrationPool
from knowgate.prompting.scores import PoolScores, load_scores, save_scores, scores_path
from knowgate.prompting.selection import difficulty_levels, select, sgicl
from knowgate.prompting.selector import SPARSITY_METHOD, DemonstrationSelector

__all__ = [
    "SPARSITY_METHOD",
    "STRATEGIES",
    "Demonstration",
    "DemonstrationConfig",
    "DemonstrationPool",
    "DemonstrationSelector",
    "Direction",
    "PoolScores",
    "Strategy",
    "difficulty_levels",
    "load_scores",
    "save_scores",
    "scores_path",
    "select",
    "sgicl",
]
