"""Named features: a registry from feature names to the functions that compute them.

Feature names say what a value is: ``{site}_{metric}_{aggregate}`` for sparsity at the last
prompt token (``hidden_hoyer_last``, ``mlp_near_zero_fraction_mean``,
``hidden_top5_energy_layer12``), with ``_at_{position}`` appended at another prompt position
(``hidden_hoyer_last_at_question_end``); ``next_token_*`` / ``draft_*`` for uncertainty;
``question_*`` for the question-only features. Policies and configs refer to features by these
names only, so new metrics plug in with :func:`register_sparsity_metric` /
:func:`register_uncertainty_feature` without touching the policies.

*Vector signals* (``hidden_state_layer14_at_question_end``) name one captured hidden-state
vector, for probes: :func:`compute_vectors` reads them from the capture when a policy needs
them; they are too big for traces and logs, so they never appear among the features.

Which signals a router computes is configuration (:class:`SignalConfig`, the ``signals`` section
of a router config); :meth:`SignalConfig.covering` extends a configuration by what a policy
reads, and :func:`compute_features` computes every configured scalar feature of one pass, the
question-only ones included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field, field_validator

from knowgate.errors import SignalError
from knowgate.schema import StrictModel
from knowgate.signals import question, sparsity, topk, uncertainty
from knowgate.signals.capture import ForwardCapture, TokenStats, TopKStats

Site = Literal["hidden", "mlp"]
Stage = Literal["prefill", "draft", "sampling", "self_report"]
"""When a feature is available: ``prefill`` (before generation, free with the answer's prefill),
``draft`` (after the greedy closed-book draft), ``sampling`` (after extra sampled answers) and
``self_report`` (after one extra prompt asking the model whether it knows)."""
Family = Literal["sparsity", "uncertainty", "question", "consistency", "self_report"]
Aggregate = Literal["last", "mid", "mean"]
Position = Literal["prompt_end", "question_end", "question_mean"]
Backend = Literal["local", "served"]
"""Who computes a feature: ``local`` - a model loaded in this process, from its captured
activations and full next-token distributions (:func:`compute_features`); ``served`` - a model
behind an OpenAI-compatible server, from the top-k log-probabilities (and, where the server
returns one, the last-layer hidden state) of its draft (:func:`compute_served_features`)."""
Reads = Literal["full", "top2", "topk"]
"""What an uncertainty feature reads of each next-token distribution: ``full`` - the whole
distribution (entropy; local models only); ``top2`` - the chosen token and the top two
(probabilities, margins; exact from a server's top-k too); ``topk`` - the top-k list a server
returns (served models only)."""
POSITIONS: tuple[Position, ...] = ("prompt_end", "question_end", "question_mean")
"""Where in the prompt activations are read: the last prompt token (a template token for chat
prompts), the question's last token, and the mean over the question's tokens."""
QUESTION_EFFECTIVE_RANK = "hidden_effective_rank_question"

SparsityFn = Callable[[NDArray[np.floating], "SignalConfig"], NDArray[np.float64]]
UncertaintyFn = Callable[[Any], float]
"""Maps per-position stats to a float: :class:`~knowgate.signals.capture.TokenStats` for
``full`` features, :class:`~knowgate.signals.capture.TopKStats` for ``topk`` ones, either (a
:class:`~knowgate.signals.capture.TokenProbabilities`) for ``top2`` ones."""
SERVED_HIDDEN_PREFIX = "served_hidden_"


class SignalConfig(StrictModel):
    """Which signals to compute: the ``signals`` section of a router config.

    Attributes:
        sparsity_metrics: the sparsity metrics computed (registered names, e.g. ``hoyer``);
            ``None``: every registered metric.
        aggregates: how per-layer sparsity values become one number: the last captured layer,
            the captured layer nearest the model's middle, and the mean over captured layers.
        per_layer: decoder-block indices (negative counts from the end) that also get one feature
            per layer, e.g. ``[-1, -2]``; they must be captured (``model.layers``).
        near_zero_eps: threshold for ``mlp_near_zero_fraction``.
        positions: prompt positions whose sparsity is computed (``prompt_end`` features have no
            suffix, others end in ``_at_{position}``). Question positions also add
            ``hidden_effective_rank_question``; they need the runner to know the question text.
        question: also compute the question-only features (``question_*``) from the query text.
        vectors: vector signals (``hidden_state_layer{L}_at_{position}``) read for probes; kept
            out of traces and logs.
    """

    sparsity_metrics: tuple[str, ...] | None = None
    aggregates: tuple[Aggregate, ...] = ("last", "mid", "mean")
    per_layer: tuple[int, ...] = ()
    near_zero_eps: float = Field(default=1e-2, gt=0)
    positions: tuple[Position, ...] = ("prompt_end",)
    question: bool = False
    vectors: tuple[str, ...] = ()

    @field_validator("positions")
    @classmethod
    def _unique_positions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError("positions must be non-empty and unique")
        return v

    @field_validator("aggregates", "per_layer")
    @classmethod
    def _unique(cls, v: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(set(v)) != len(v):
            raise ValueError("values must be unique")
        return v

    @field_validator("sparsity_metrics")
    @classmethod
    def _known_metrics(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        unknown = [m for m in v if m not in _SPARSITY]
        if unknown or len(set(v)) != len(v):
            raise ValueError(
                f"unknown or repeated sparsity metric(s) {unknown or list(v)}; known: "
                f"{', '.join(_SPARSITY)}"
            )
        return v

    @field_validator("vectors")
    @classmethod
    def _vector_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            parse_vector_signal(name)
        if len(set(v)) != len(v):
            raise ValueError("vectors must be unique")
        return v

    @property
    def question_positions(self) -> bool:
        """Whether any configured position lies inside the question (sparsity features)."""
        return any(p != "prompt_end" for p in self.positions)

    @property
    def needs_question_text(self) -> bool:
        """Whether the runner must locate the question in the prompt (positions or vectors)."""
        return self.question_positions or any(
            parse_vector_signal(v).position != "prompt_end" for v in self.vectors
        )

    @property
    def metrics(self) -> tuple[str, ...]:
        """The sparsity metrics computed, in registry order."""
        if self.sparsity_metrics is None:
            return tuple(_SPARSITY)
        return tuple(m for m in _SPARSITY if m in self.sparsity_metrics)

    def covering(self, names: Iterable[str]) -> SignalConfig:
        """This configuration extended so that it also computes ``names``.

        A router computes what its configuration says plus what its policy reads: a policy
        fitted on question-end sparsity adds that position, one on question-only features turns
        ``question`` on, a probe adds its vector signal.

        Raises:
            SignalError: a name no configuration can compute from one forward pass (an unknown
                name, or a feature that needs extra model calls, such as sampled answers).
        """
        positions = list(self.positions)
        per_layer = list(self.per_layer)
        metrics = None if self.sparsity_metrics is None else list(self.sparsity_metrics)
        aggregates = list(self.aggregates)
        vectors = list(self.vectors)
        question = self.question
        for name in names:
            need = requirement(name)
            if need.vector:
                if name not in vectors:
                    vectors.append(name)
                continue
            question = question or need.question
            if need.position is not None and need.position not in positions:
                positions.append(need.position)
            if need.metric is not None and metrics is not None and need.metric not in metrics:
                metrics.append(need.metric)
            if need.aggregate is not None and need.aggregate not in aggregates:
                aggregates.append(need.aggregate)
            if need.layer is not None and need.layer not in per_layer:
                per_layer.append(need.layer)
        return self.model_copy(
            update={
                "positions": tuple(positions),
                "per_layer": tuple(per_layer),
                "sparsity_metrics": None if metrics is None else tuple(metrics),
                "aggregates": tuple(aggregates),
                "vectors": tuple(vectors),
                "question": question,
            }
        )


_BOTH: frozenset[Backend] = frozenset(("local", "served"))
_LOCAL: frozenset[Backend] = frozenset(("local",))
_SERVED: frozenset[Backend] = frozenset(("served",))


@dataclass(frozen=True)
class FeatureSpec:
    """What a named feature is: where it comes from and when it is available.

    Attributes:
        name: the feature's name.
        family: its signal family.
        stage: when it is available to a local model's router (a served model has every feature
            only after its draft).
        description: one line.
        backends: who computes it (see :data:`Backend`).
    """

    name: str
    family: Family
    stage: Stage
    description: str
    backends: frozenset[Backend] = _LOCAL


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
    reads: Reads

    @property
    def backends(self) -> frozenset[Backend]:
        return {"full": _LOCAL, "top2": _BOTH, "topk": _SERVED}[self.reads]


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
    name: str, fn: UncertaintyFn, stage: Stage, description: str, *, reads: Reads = "full"
) -> None:
    """Add an uncertainty feature computed from the prompt-end (prefill) or draft token stats.

    Args:
        name: the feature name.
        fn: stats -> float (see :data:`UncertaintyFn`).
        stage: ``prefill`` (read from the prompt-end distribution) or ``draft``.
        description: one line.
        reads: what ``fn`` reads of each distribution (see :data:`Reads`); it decides which
            backends compute the feature.
    """
    if name in _UNCERTAINTY:
        raise SignalError(f"uncertainty feature {name!r} is already registered")
    _UNCERTAINTY[name] = _UncertaintyFeature(fn, stage, description, reads)


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
    "magnitude_evenness",
    _metric(sparsity.magnitude_evenness),
    "exp(entropy of |h|/sum|h|)/d, the evenness of unit magnitudes (higher = denser)",
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
    "next_token_max_prob",
    uncertainty.first_prob,
    "prefill",
    "max probability at end of prompt",
    reads="top2",
)
register_uncertainty_feature(
    "next_token_margin",
    uncertainty.first_margin,
    "prefill",
    "top1-top2 prob at end of prompt",
    reads="top2",
)
register_uncertainty_feature(
    "draft_mean_entropy", uncertainty.mean_entropy, "draft", "mean token entropy of the draft"
)
register_uncertainty_feature(
    "draft_max_entropy", uncertainty.max_entropy, "draft", "max token entropy of the draft"
)
register_uncertainty_feature(
    "draft_min_prob",
    uncertainty.min_prob,
    "draft",
    "min token probability of the draft",
    reads="top2",
)
register_uncertainty_feature(
    "draft_mean_prob",
    uncertainty.mean_prob,
    "draft",
    "mean token probability of the draft",
    reads="top2",
)
register_uncertainty_feature(
    "draft_mean_logprob",
    uncertainty.mean_logprob,
    "draft",
    "mean token log-prob of the draft",
    reads="top2",
)
register_uncertainty_feature(
    "draft_perplexity",
    uncertainty.perplexity,
    "draft",
    "perplexity of the draft",
    reads="top2",
)
register_uncertainty_feature(
    "next_token_logit_margin",
    uncertainty.first_logit_margin,
    "prefill",
    "top1-top2 logit at end of prompt",
    reads="top2",
)
register_uncertainty_feature(
    "draft_mean_logit_margin",
    uncertainty.mean_logit_margin,
    "draft",
    "mean top1-top2 logit over the draft (TARG)",
    reads="top2",
)
register_uncertainty_feature(
    "draft_min_logit_margin",
    uncertainty.min_logit_margin,
    "draft",
    "smallest top1-top2 logit over the draft",
    reads="top2",
)
register_uncertainty_feature(
    "next_token_topk_entropy",
    topk.first_topk_entropy,
    "prefill",
    "entropy of the top-k probabilities at the end of the prompt, renormalised (served models)",
    reads="topk",
)
register_uncertainty_feature(
    "draft_mean_topk_entropy",
    topk.mean_topk_entropy,
    "draft",
    "mean renormalised top-k entropy over the draft (served models)",
    reads="topk",
)
register_uncertainty_feature(
    "draft_max_topk_entropy",
    topk.max_topk_entropy,
    "draft",
    "largest renormalised top-k entropy over the draft (served models)",
    reads="topk",
)
# The draft's first token is chosen from the prefill's own next-token distribution, so any
# "first draft token" statistic duplicates the next_token_* feature; none is registered.

_EXTERNAL: dict[str, FeatureSpec] = {}


def register_external_feature(name: str, family: Family, stage: Stage, description: str) -> None:
    """Name a feature computed outside :func:`compute_features` (from extra model calls).

    Consistency features come from sampled answers, self-report features from one extra
    prompt; registering them lets policies, configs and reports refer to them like the rest.
    """
    if name in _EXTERNAL:
        raise SignalError(f"feature {name!r} is already registered")
    _EXTERNAL[name] = FeatureSpec(name, family, stage, description)


VECTOR_PREFIX = "hidden_state_layer"
_VECTOR = re.compile(r"^hidden_state_layer(\d+)_at_(prompt_end|question_end|question_mean)$")


@dataclass(frozen=True)
class VectorSignal:
    """A vector signal: the residual-stream output of one decoder block at one prompt position.

    Attributes:
        layer: the block index (0-based, counted from the input).
        position: the prompt position (:data:`POSITIONS`).
    """

    layer: int
    position: Position

    @property
    def name(self) -> str:
        """``hidden_state_layer{layer}_at_{position}``."""
        return vector_signal_name(self.layer, self.position)


def vector_signal_name(layer: int, position: str) -> str:
    """The name of a vector signal: ``hidden_state_layer14_at_question_end``.

    Raises:
        SignalError: a negative layer or an unknown position.
    """
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer) or layer < 0:
        raise SignalError(f"a vector signal's layer must be a block index >= 0, got {layer!r}")
    if position not in POSITIONS:
        raise SignalError(f"unknown position {position!r}; known: {', '.join(POSITIONS)}")
    return f"{VECTOR_PREFIX}{int(layer)}_at_{position}"


def is_vector_signal(name: str) -> bool:
    """Whether ``name`` names a vector signal (see :func:`parse_vector_signal`)."""
    return isinstance(name, str) and _VECTOR.match(name) is not None


def parse_vector_signal(name: str) -> VectorSignal:
    """The layer and position a vector signal's name stands for.

    Raises:
        SignalError: the name is not ``hidden_state_layer{L}_at_{position}``.
    """
    match = _VECTOR.match(name) if isinstance(name, str) else None
    if match is None:
        raise SignalError(
            f"{name!r} is not a vector signal; expected hidden_state_layer<L>_at_<position> "
            f"with position one of {', '.join(POSITIONS)}"
        )
    return VectorSignal(int(match.group(1)), match.group(2))  # type: ignore[arg-type]


def compute_vectors(
    capture: ForwardCapture, names: Iterable[str]
) -> dict[str, NDArray[np.float64]]:
    """The named vector signals of one capture (float64 copies).

    Raises:
        SignalError: a bad name, a layer that was not captured, or a position that was not.
    """
    out: dict[str, NDArray[np.float64]] = {}
    for name in names:
        signal = parse_vector_signal(name)
        if signal.layer not in capture.layers:
            raise SignalError(
                f"{name} needs block {signal.layer}, but only blocks {list(capture.layers)} were "
                "captured (model.layers)"
            )
        states = capture.at(signal.position).hidden
        out[name] = np.asarray(states[capture.layers.index(signal.layer)], dtype=np.float64)
    return out


@dataclass(frozen=True)
class Requirement:
    """What a configuration must include to compute one feature (see :func:`requirement`)."""

    position: Position | None = None
    metric: str | None = None
    aggregate: Aggregate | None = None
    layer: int | None = None
    question: bool = False
    vector: bool = False


_LAYER_SUFFIX = re.compile(r"^layer(_minus)?(\d+)$")


def requirement(name: str) -> Requirement:
    """What computing ``name`` from one forward pass needs of a :class:`SignalConfig`.

    Raises:
        SignalError: the name is unknown, or it needs extra model calls (consistency and
            self-report features).
    """
    if is_vector_signal(name):
        return Requirement(position=parse_vector_signal(name).position, vector=True)
    if name in question.QUESTION_FEATURES:
        return Requirement(question=True)
    if name in _UNCERTAINTY:
        return Requirement()
    if name == QUESTION_EFFECTIVE_RANK:
        return Requirement(position="question_end")
    if name in _EXTERNAL:
        spec = _EXTERNAL[name]
        raise SignalError(
            f"{name} is a {spec.stage} feature: it needs extra model calls that a router does not "
            "make (an evaluation-only signal; knowgate bench runs them in its peers branch)"
        )
    body, position = name, "prompt_end"
    for p in POSITIONS[1:]:
        if name.endswith(f"_at_{p}"):
            body, position = name[: -len(f"_at_{p}")], p
    for site in ("hidden", "mlp"):
        for metric, m in _SPARSITY.items():
            prefix = f"{site}_{metric}_"
            if site not in m.sites or not body.startswith(prefix):
                continue
            suffix = body[len(prefix) :]
            if suffix in ("last", "mid", "mean"):
                return Requirement(position, metric, suffix)  # type: ignore[arg-type]
            layer = _LAYER_SUFFIX.match(suffix)
            if layer is not None:
                index = int(layer.group(2)) * (-1 if layer.group(1) else 1)
                return Requirement(position, metric, layer=index)  # type: ignore[arg-type]
    raise SignalError(f"unknown feature {name!r}: no registered signal computes it")


def _layer_suffixes(config: SignalConfig) -> list[str]:
    return list(config.aggregates) + [
        f"layer{i}" if i >= 0 else f"layer_minus{-i}" for i in config.per_layer
    ]


def _position_suffix(position: str) -> str:
    return "" if position == "prompt_end" else f"_at_{position}"


def feature_specs(config: SignalConfig | None = None) -> dict[str, FeatureSpec]:
    """Every feature name the given config produces, in a stable order."""
    config = config or SignalConfig()
    specs: dict[str, FeatureSpec] = {}
    for position in config.positions:
        at = _position_suffix(position)
        for site in ("hidden", "mlp"):
            for metric in config.metrics:
                m = _SPARSITY[metric]
                if site not in m.sites:
                    continue
                for suffix in _layer_suffixes(config):
                    name = f"{site}_{metric}_{suffix}{at}"
                    specs[name] = FeatureSpec(
                        name, "sparsity", "prefill", f"{m.description}; {suffix}; {position}"
                    )
    if config.question_positions:
        specs[QUESTION_EFFECTIVE_RANK] = FeatureSpec(
            QUESTION_EFFECTIVE_RANK,
            "sparsity",
            "prefill",
            "effective rank (Roy & Vetterli 2007) of the last captured layer's states over the "
            "question's tokens (higher = more directions used)",
        )
    for name, u in _UNCERTAINTY.items():
        specs[name] = FeatureSpec(name, "uncertainty", u.stage, u.description, u.backends)
    for name in served_hidden_feature_names():
        metric = name.removeprefix(SERVED_HIDDEN_PREFIX)
        specs[name] = FeatureSpec(
            name,
            "sparsity",
            "draft",
            f"{_SPARSITY[metric].description}; the last-layer hidden state a server returns with "
            "the draft (SGLang return_hidden_states)",
            _SERVED,
        )
    specs.update(_EXTERNAL)
    # Question-only features need no forward pass (available before generation); compute_features
    # computes them from the question text when the configuration says ``question``.
    for name, description in question.QUESTION_FEATURES.items():
        specs[name] = FeatureSpec(name, "question", "prefill", description, _BOTH)
    return specs


def feature_names(
    config: SignalConfig | None = None,
    *,
    family: Family | None = None,
    stage: Stage | None = None,
    backend: Backend | Literal["any"] = "local",
) -> list[str]:
    """Feature names, optionally restricted to a family and/or a stage, of one backend.

    ``stage="prefill"`` gives the features available to a local pre-generation gate. By default
    the names are those a local model provides (what :func:`compute_features` and the peer
    runs compute); ``backend="served"`` gives those a model behind an OpenAI-compatible server
    provides, ``backend="any"`` every registered name.
    """
    return [
        s.name
        for s in feature_specs(config).values()
        if (family is None or s.family == family)
        and (stage is None or s.stage == stage)
        and (backend == "any" or backend in s.backends)
    ]


def served_hidden_feature_names() -> list[str]:
    """``served_hidden_{metric}`` for every sparsity metric of hidden states."""
    return [f"{SERVED_HIDDEN_PREFIX}{m}" for m, spec in _SPARSITY.items() if "hidden" in spec.sites]


def compute_served_features(
    draft: TopKStats,
    *,
    next_token: TopKStats | None = None,
    hidden: ArrayLike | None = None,
    config: SignalConfig | None = None,
) -> dict[str, float]:
    """The features a served model's draft provides (``backend="served"``).

    Args:
        draft: top-k log-probabilities of the draft's answer tokens (stop token excluded; when
            the answer is empty, the stop token, as a local draft does).
        next_token: the first generated position (the end of the prompt); default the first
            position of ``draft``.
        hidden: the last-layer hidden state the server returned (``[d]``), if any; it adds the
            ``served_hidden_*`` sparsity features.
        config: signal settings (``near_zero_eps``).

    Raises:
        SignalError: an empty draft, or non-finite values.
    """
    config = config or SignalConfig()
    first = next_token if next_token is not None else draft.slice(0, 1)
    if len(draft) == 0 or len(first) == 0:
        raise SignalError("a served draft needs at least one scored token")
    out: dict[str, float] = {}
    for name, u in _UNCERTAINTY.items():
        if u.reads == "full":
            continue
        out[name] = u.fn(first if u.stage == "prefill" else draft)
    if hidden is not None:
        vector = np.asarray(hidden, dtype=np.float64)
        if vector.ndim != 1 or vector.size < 2:
            raise SignalError(f"a served hidden state must be a vector, got shape {vector.shape}")
        for name in served_hidden_feature_names():
            metric = _SPARSITY[name.removeprefix(SERVED_HIDDEN_PREFIX)]
            out[name] = float(metric.fn(vector[None, :], config)[0])
    bad = [k for k, v in out.items() if not np.isfinite(v)]
    if bad:
        raise SignalError(f"non-finite feature values: {bad}")
    return out


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
    capture: ForwardCapture,
    config: SignalConfig | None = None,
    *,
    question_text: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Compute every configured scalar feature of one capture.

    Draft features are present only when the capture has a draft; the question-only features
    when ``config.question`` (from ``question_text`` and ``metadata``). Consistency and
    self-report features come from extra model calls and are not computed here, nor are vector
    signals (:func:`compute_vectors`). Raises :class:`SignalError` on non-finite or degenerate
    input instead of returning NaN.

    Raises:
        SignalError: non-finite values, a position or layer that was not captured, or question
            features configured without the question text.
    """
    config = config or SignalConfig()
    rows = _layer_rows(capture, config)
    out: dict[str, float] = {}
    for position in config.positions:
        states = capture.at(position)
        at = _position_suffix(position)
        arrays: dict[str, NDArray[np.floating]] = {"hidden": states.hidden, "mlp": states.mlp}
        for site, arr in arrays.items():
            for metric in config.metrics:
                m = _SPARSITY[metric]
                if site not in m.sites:
                    continue
                per_layer = m.fn(arr, config)
                for suffix in _layer_suffixes(config):
                    key = f"{site}_{metric}_{suffix}{at}"
                    value = per_layer.mean() if suffix == "mean" else per_layer[rows[suffix]]
                    out[key] = float(value)
    if config.question_positions:
        if capture.question_states is None:
            raise SignalError(
                f"{QUESTION_EFFECTIVE_RANK} needs the question's token states; the runner "
                "captures them when it knows the question text"
            )
        out[QUESTION_EFFECTIVE_RANK] = sparsity.effective_rank(capture.question_states)
    for name, u in _UNCERTAINTY.items():
        if u.reads == "topk":  # a local pass keeps full distributions, not top-k lists
            continue
        if u.stage == "prefill":
            out[name] = u.fn(capture.next_token)
        elif capture.draft is not None:
            out[name] = u.fn(capture.draft)
    if config.question:
        if question_text is None:
            raise SignalError(
                "the signal configuration asks for question-only features, but no question text "
                "was given"
            )
        out.update(question.compute_question_features(question_text, metadata))
    bad = [k for k, v in out.items() if not np.isfinite(v)]
    if bad:
        raise SignalError(f"non-finite feature values: {bad}")
    return out


def draft_features(draft: TokenStats) -> dict[str, float]:
    """The draft-stage features alone (what a draft gate adds to the prefill's features).

    Raises:
        SignalError: an empty or non-finite draft.
    """
    out = {
        name: u.fn(draft)
        for name, u in _UNCERTAINTY.items()
        if u.stage == "draft" and u.reads != "topk"  # top-k features are a served model's
    }
    bad = [k for k, v in out.items() if not np.isfinite(v)]
    if bad:
        raise SignalError(f"non-finite feature values: {bad}")
    return out


def sparsity_table_names() -> list[str]:
    """Row names of :func:`sparsity_by_layer`: ``{site}_{metric}`` for every registered metric."""
    return [
        f"{site}_{metric}"
        for site in ("hidden", "mlp")
        for metric, m in _SPARSITY.items()
        if site in m.sites
    ]


def sparsity_by_layer(
    capture: ForwardCapture, config: SignalConfig | None = None
) -> NDArray[np.float64]:
    """Every sparsity metric at every captured layer and configured position.

    The study of *where* the signal lives (by layer and position) needs the per-layer values,
    not only the aggregates the policies read.

    Returns:
        ``[len(sparsity_table_names()), len(config.positions), len(capture.layers)]``.
    """
    config = config or SignalConfig()
    table = np.empty((len(sparsity_table_names()), len(config.positions), len(capture.layers)))
    for p, position in enumerate(config.positions):
        states = capture.at(position)
        arrays = {"hidden": states.hidden, "mlp": states.mlp}
        row = 0
        for site in ("hidden", "mlp"):
            for m in _SPARSITY.values():
                if site in m.sites:
                    table[row, p] = m.fn(arrays[site], config)
                    row += 1
    return table
