"""The router's configuration: one validated document for model, policy, gate and retrieval.

Loadable from YAML (see ``configs/default.yaml``); unknown keys anywhere are rejected, so a typo
is an error rather than a silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from knowgate.errors import InputError
from knowgate.models.config import ModelConfig
from knowgate.policy.spec import PolicySpec
from knowgate.schema import StrictModel, load_yaml
from knowgate.signals import SignalConfig

GateMode = Literal["pre", "draft"]

__all__ = [
    "ArmSpec",
    "ExperimentSpec",
    "GateConfig",
    "GateMode",
    "LimitsConfig",
    "PolicySpec",
    "RetrievalConfig",
    "RouterConfig",
    "SignalConfig",
    "load_config",
]


class GateConfig(StrictModel):
    """When the gate decides.

    Attributes:
        mode: ``pre`` decides from the prefill signals alone (a retrieving request spends no
            decode steps on a closed-book draft); ``draft`` decides after a short greedy draft,
            using its token probabilities too (when the model knows, the draft is the answer).
    """

    mode: GateMode = "pre"


class RetrievalConfig(StrictModel):
    """Where passages come from when the gate says retrieve.

    Attributes:
        knowledge_base: a knowledge-base directory (``knowgate index build``); ``None`` when a
            retriever object is passed to the router in code, or when none is available (then
            retrieving requests are answered closed-book and the trace says why).
        k: passages per retrieving request.
        mode: search mode override (``dense``, ``bm25``, ``hybrid``); ``None`` keeps the base's.
        embedding_model: the embedding model the base must have been built with; a base built
            with another one is rejected (its vectors would not match the queries). ``None``
            accepts the base's own model.
    """

    knowledge_base: Path | None = None
    embedding_model: str | None = None
    k: int = Field(default=3, ge=1, le=50)
    mode: Literal["dense", "bm25", "hybrid"] | None = None


class LimitsConfig(StrictModel):
    """Input limits.

    Attributes:
        max_query_chars: longer queries are rejected with an InputError (the prompt must also
            fit the model's context; passages are dropped from the end until it does).
    """

    max_query_chars: int = Field(default=4000, ge=1)

    def check_queries(self, queries: Sequence[str]) -> None:
        """Refuse unusable queries: not a list of strings, empty, blank, or too long.

        The router checks every request with it; the CLI calls it before it loads a model, so
        a bad query fails in a moment.

        Raises:
            InputError: naming the query and what is wrong with it.
        """
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise InputError("route_batch takes a list of query strings")
        if not queries:
            raise InputError("no queries given")
        for i, q in enumerate(queries):
            where = f"query {i}" if len(queries) > 1 else "query"
            if not isinstance(q, str):
                raise InputError(f"{where} must be a string, got {type(q).__name__}")
            if not q.strip():
                raise InputError(f"{where} is empty")
            if len(q) > self.max_query_chars:
                raise InputError(
                    f"{where} is {len(q)} characters; the limit is {self.max_query_chars} "
                    f"(limits.max_query_chars)"
                )


class ArmSpec(StrictModel):
    """One arm of an A/B experiment.

    Attributes:
        policy: the arm's gating policy (``path`` or ``name``; ``threshold`` overrides its cut).
        weight: relative share of units (any positive numbers; they are normalised).
    """

    policy: PolicySpec
    weight: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)


class ExperimentSpec(StrictModel):
    """An A/B test of gating policies (see docs/experiments.md).

    Attributes:
        name: the experiment's name; its definition cannot change once it has logged traffic.
        salt: hashing salt (default: the name); a new salt reshuffles every unit.
        arms: arm name -> arm, at least two; the first is the control.
        decision_log: SQLite decision log to record every routed request in; ``None`` assigns
            arms without logging.
    """

    name: str = Field(min_length=1)
    salt: str | None = None
    arms: dict[str, ArmSpec] = Field(min_length=2)
    decision_log: Path | None = None


class RouterConfig(StrictModel):
    """Everything a :class:`~knowgate.Router` is made of.

    ``signals`` says which signals the router computes for every request (and shows in its
    traces); it computes, in addition, whatever its policy reads (see
    :meth:`~knowgate.signals.SignalConfig.covering`).
    """

    model: ModelConfig = ModelConfig()
    policy: PolicySpec = PolicySpec()
    signals: SignalConfig = SignalConfig()
    gate: GateConfig = GateConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    limits: LimitsConfig = LimitsConfig()
    experiment: ExperimentSpec | None = None


def load_config(path: str | Path | None = None) -> RouterConfig:
    """Load a router config from YAML; ``None`` gives the defaults.

    Relative paths inside the file (``policy.path``, ``retrieval.knowledge_base``) are resolved
    against the file's directory, so a config works from any working directory.
    """
    if path is None:
        return RouterConfig()
    path = Path(path)
    data = load_yaml(path)
    for section, key in (("policy", "path"), ("retrieval", "knowledge_base")):
        block = data.get(section)
        if isinstance(block, dict) and isinstance(block.get(key), str):
            value = Path(block[key]).expanduser()
            if not value.is_absolute():
                block[key] = str((path.parent / value).resolve())
    _resolve_experiment_paths(data.get("experiment"), path.parent)
    return RouterConfig.from_dict(data, source=str(path))


def _resolve_experiment_paths(block: Any, base: Path) -> None:
    """Resolve ``experiment.decision_log`` and each arm's ``policy.path`` against ``base``."""
    if not isinstance(block, dict):
        return
    targets: list[tuple[dict[str, Any], str]] = [(block, "decision_log")]
    arms = block.get("arms")
    if isinstance(arms, dict):
        for arm in arms.values():
            if isinstance(arm, dict) and isinstance(arm.get("policy"), dict):
                targets.append((arm["policy"], "path"))
    for holder, key in targets:
        if isinstance(holder.get(key), str):
            value = Path(holder[key]).expanduser()
            if not value.is_absolute():
                holder[key] = str((base / value).resolve())
