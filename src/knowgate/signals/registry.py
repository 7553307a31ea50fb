"""Named features: a registry from feature names to the functions that compute them.

Feature names say what a value is: ``{site}_{metric}_{aggregate}`` for sparsity
(``hidden_hoyer_last``, ``mlp_near_zero_fraction_mean``, ``hidden_top5_energy_layer12``) and
``next_token_*`` / ``draft_*`` for uncertainty. Policies and configs refer to features by these
names only, so new metrics plug in with :func:`register_sparsity_metric` /
:func:`register_uncertainty_feature` without touching the policies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, field_validator

from knowgate.errors import SignalError
from knowgate.schema import StrictModel
from knowgate.signals import question, sparsity, uncertainty
from knowgate.signals.capture import ForwardCapture, TokenStats

Site = Literal["hidden", "mlp"]
Stage = Literal["prefill", "draft"]
Family = Literal["sparsity", "uncertainty", "question"]
Aggregate = Literal["last", "mid", "mean"]

SparsityFn = Callable[[NDArray[np.floating], "SignalConfig"], NDArray[np.float64]]
UncertaintyFn = Callable[[TokenStats], float]


class SignalConfig(StrictModel):
    """Which features to compute.

    Attributes:
        aggregates: how per-layer sparsity values become one number: the last captured layer,
            the captured layer nearest the model's middle, and the mean over captured layers.
        per_layer: decoder-block indices (negative counts from the end) that also get one feature
            per layer, e.g. ``[-1, -2]``; they must be captured by the runner.
        near_zero_eps: threshold for ``mlp_near_zero_fraction``.
    """

    aggregates: tuple[Aggregate, ...] = ("last", "mid", "mean")
    per_layer: tuple[int, ...] = ()
    near_zero_eps: float = Field(default=1e-2, gt=0)

    @field_validator("aggregates")
    @classmethod
    def _unique_aggregates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("aggregates must be unique")
        return v


@dataclass(frozen=True)
class FeatureSpec:
    """What a named feature is: where it comes from and when it is available."""

    name: str
    family: Family
    stage: Stage
    description: str


@dataclass(frozen=True)
class _SparsityMetric:
    fn: SparsityFn
    sites: tuple[Site, ...]
    description: str


@dataclass(frozen=True)
class _UncertaintyFeature:
    fn: UncertaintyFn
    stage: Stage
    description: str


_SPARSITY: dict[str, _SparsityMetric] = {}
_UNCERTAINTY: dict[str, _UncertaintyFeature] = {}


def register_sparsity_metric(
    name: str, fn: SparsityFn, description: str, sites: tuple[Site, ...] = ("hidden", "mlp")
) -> None:
    """Add a sparsity metric; it becomes ``{site}_{name}_{aggregate}`` features."""
    if name in _SPARSITY:
        raise SignalError(f"sparsity metric {name!r} is already registered")
    _SPARSITY[name] = _SparsityMetric(fn, sites, description)


def register_uncertainty_feature(
    name: str, fn: UncertaintyFn, stage: Stage, description: str
) -> None:
    """Add an uncertainty feature computed from the prompt-end (prefill) or draft token stats."""
    if name in _UNCERTAINTY:
        raise SignalError(f"uncertainty feature {name!r} is already registered")
    _UNCERTAINTY[name] = _UncertaintyFeature(fn, stage, description)


def _metric(fn: Callable[[NDArray[np.floating]], NDArray[np.float64]]) -> SparsityFn:
    return lambda h, _cfg: fn(h)


for _pct in (1, 5, 10):
    register_sparsity_metric(
        f"top{_pct}_energy",
        _metric(partial(sparsity.topk_energy, percent=float(_pct))),
        f"share of sum(h^2) in the largest {_pct}% of units (higher = sparser)",
    )
register_sparsity_metric(
    "l0_density",
    _metric(sparsity.l0_density),
    "fraction of |h| above mean+std (higher = denser)",
)
register_sparsity_metric(
    "effective_rank",
    _metric(sparsity.effective_rank),
    "exp(entropy of |h|/sum|h|)/d (higher = denser)",
)
register_sparsity_metric(
    "hoyer", _metric(sparsity.hoyer), "Hoyer sparsity, 0 dense .. 1 one-hot (higher = sparser)"
)
register_sparsity_metric("gini", _metric(sparsity.gini), "Gini of |h| (higher = sparser)")
register_sparsity_metric(
    "near_zero_fraction",
    lambda h, cfg: sparsity.near_zero_fraction(h, cfg.near_zero_eps),
    "fraction of MLP activations with |a| < eps (higher = sparser)",
    sites=("mlp",),
)

register_uncertainty_feature(
    "next_token_entropy", uncertainty.first_entropy, "prefill", "entropy at the end of the prompt"
)
register_uncertainty_feature(
    "next_token_max_prob", uncertainty.first_prob, "prefill", "max probability at end of prompt"
)
register_uncertainty_feature(
    "next_token_margin", uncertainty.first_margin, "prefill", "top1-top2 prob at end of prompt"
)
register_uncertainty_feature(
    "draft_mean_entropy", uncertainty.mean_entropy, "draft", "mean token entropy of the draft"
)
register_uncertainty_feature(
    "draft_max_entropy", uncertainty.max_entropy, "draft", "max token entropy of the draft"
)
register_uncertainty_feature(
    "draft_min_prob", uncertainty.min_prob, "draft", "min token probability of the draft"
)
register_uncertainty_feature(
    "draft_mean_prob", uncertainty.mean_prob, "draft", "mean token probability of the draft"
)
register_uncertainty_feature(
    "draft_mean_logprob", uncertainty.mean_logprob, "draft", "mean token log-prob of the draft"
)
register_uncertainty_feature(
    "draft_perplexity", uncertainty.perplexity, "draft", "perplexity of the draft"
)
register_uncertainty_feature(
    "draft_first_margin", uncertainty.first_margin, "draft", "top1-top2 prob, first draft token"
)


def _layer_suffixes(config: SignalConfig) -> list[str]:
    return list(config.aggregates) + [
        f"layer{i}" if i >= 0 else f"layer_minus{-i}" for i in config.per_layer
    ]


def feature_specs(config: SignalConfig | None = None) -> dict[str, FeatureSpec]:
    """Every feature name the given config produces, in a stable order."""
    config = config or SignalConfig()
    specs: dict[str, FeatureSpec] = {}
    for site in ("hidden", "mlp"):
        for metric, m in _SPARSITY.items():
            if site not in m.sites:
                continue
            for suffix in _layer_suffixes(config):
                name = f"{site}_{metric}_{suffix}"
                specs[name] = FeatureSpec(name, "sparsity", "prefill", f"{m.description}; {suffix}")
    for name, u in _UNCERTAINTY.items():
        specs[name] = FeatureSpec(name, "uncertainty", u.stage, u.description)
    # Question-only features need no forward pass (available before generation); they are
    # computed from the question by signals.question.compute_question_features, not by
    # compute_features(capture).
    for name, description in question.QUESTION_FEATURES.items():
        specs[name] = FeatureSpec(name, "question", "prefill", description)
    return specs


def feature_names(
    config: SignalConfig | None = None,
    *,
    family: Family | None = None,
    stage: Stage | None = None,
) -> list[str]:
    """Feature names, optionally restricted to a family and/or a stage.

    ``stage="prefill"`` gives the features available to a pre-generation gate.
    """
    return [
        s.name
        for s in feature_specs(config).values()
        if (family is None or s.family == family) and (stage is None or s.stage == stage)
    ]


def _layer_rows(capture: ForwardCapture, config: SignalConfig) -> dict[str, int]:
    """Map each layer suffix to a row of the capture arrays."""
    layers = list(capture.layers)
    rows: dict[str, int] = {}
    for agg in config.aggregates:
        if agg == "last":
            rows["last"] = len(layers) - 1
        elif agg == "mid":
            middle = capture.num_layers // 2
            rows["mid"] = int(np.argmin([abs(layer - middle) for layer in layers]))
    for i in config.per_layer:
        absolute = i if i >= 0 else capture.num_layers + i
        if absolute not in layers:
            raise SignalError(
                f"per-layer feature for layer {i} requested, but only layers {layers} were captured"
            )
        rows[f"layer{i}" if i >= 0 else f"layer_minus{-i}"] = layers.index(absolute)
    return rows


def compute_features(
    capture: ForwardCapture, config: SignalConfig | None = None
) -> dict[str, float]:
    """Compute every named feature of one capture.

    Draft features are present only when the capture has a draft. Raises :class:`SignalError` on
    non-finite or degenerate input instead of returning NaN.
    """
    config = config or SignalConfig()
    rows = _layer_rows(capture, config)
    out: dict[str, float] = {}
    arrays: dict[str, NDArray[np.floating]] = {"hidden": capture.hidden, "mlp": capture.mlp}
    for site, arr in arrays.items():
        for metric, m in _SPARSITY.items():
            if site not in m.sites:
                continue
            per_layer = m.fn(arr, config)
            for suffix in _layer_suffixes(config):
                key = f"{site}_{metric}_{suffix}"
                out[key] = float(per_layer.mean() if suffix == "mean" else per_layer[rows[suffix]])
    for name, u in _UNCERTAINTY.items():
        if u.stage == "prefill":
            out[name] = u.fn(capture.next_token)
        elif capture.draft is not None:
            out[name] = u.fn(capture.draft)
    bad = [k for k, v in out.items() if not np.isfinite(v)]
    if bad:
        raise SignalError(f"non-finite feature values: {bad}")
    return out
