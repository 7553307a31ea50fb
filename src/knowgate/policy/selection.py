"""Recipes: how a score model is fitted on training rows, its inputs chosen by inner CV.

A *recipe* fits a score model on some rows, given inner splits of those rows, and returns the
model fitted on all of them, every row's *out-of-fold* logit (from an inner model that did not
see the row: the calibrator's input) and what it chose. Choices are made on those rows alone:

- :class:`Logistic`: standardise + L2 logistic regression on every column at one ``C``.
- :class:`FeatureGroups`: the fused recipe. Candidates are the feature groups (every union of
  the signal families present: uncertainty, sparsity, question, ...) at each regularisation
  strength, and each feature alone; the one with the best out-of-fold AUROC on the training
  rows wins. A fused policy of 45 sparsity and 3 uncertainty features fitted on 100-200 positive
  examples overfits; choosing groups and ``C`` this way keeps it from losing to its own parts.
- :class:`HiddenStateProbe`: a probe on one hidden-state vector; the vector signal (layer and
  position) is chosen first at a moderate ``C``, then ``C`` for that vector.
- :class:`StackedProbe`: the probe's out-of-fold logit stacked with scalar signals, the
  combiner's groups and ``C`` chosen like :class:`FeatureGroups`.

The same recipe is what ``knowgate calibrate`` fits on all its data (:func:`knowgate.policy.
fitting.fit_policy`) and what the benchmark's cross-fitting fits on each outer fold's training
rows (:mod:`knowgate.evaluation.cross_fitting`), so the shipped recipe is the benchmarked one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from knowgate.errors import PolicyError
from knowgate.policy.base import Policy
from knowgate.policy.calibration import Calibrator
from knowgate.policy.fused import FusedPolicy, LinearScorer
from knowgate.policy.linear import Splits, fit_linear, fit_scorer, linear_logits
from knowgate.policy.probe import PROBE_LOGIT, ProbePolicy, VectorScorer
from knowgate.signals import feature_specs, is_vector_signal

DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0)
"""Inverse L2 strengths tried for fused feature groups (scikit-learn's ``C``)."""
PROBE_CS: tuple[float, ...] = (0.001, 0.01, 0.1)
"""Inverse L2 strengths tried for a probe's vector (hundreds of units: stronger shrinkage)."""
PROBE_SITE_C = 0.01
"""``C`` while the probe's vector signal (layer and position) is chosen."""


class ScoreModel(Protocol):
    """A fitted scorer: higher logits = more likely known."""

    def logits(self, x: NDArray[Any]) -> NDArray[np.float64]:
        """Raw scores of the rows of ``x``."""
        ...


@dataclass(frozen=True)
class Choice:
    """What a recipe chose on its training rows.

    Attributes:
        label: the chosen candidate (``sparsity+uncertainty, C=0.1``; a feature name; a vector
            signal with its ``C``).
        inner_auroc: its out-of-fold AUROC on the training rows.
        scores: every candidate's out-of-fold AUROC on the training rows.
    """

    label: str
    inner_auroc: float | None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RecipeFit:
    """A recipe fitted on some rows.

    Attributes:
        model: the score model fitted on all the rows.
        oof_logits: each row's logit from an inner model that did not see it.
        choice: what the recipe chose (``None`` for recipes without a choice).
    """

    model: ScoreModel
    oof_logits: NDArray[np.float64]
    choice: Choice | None = None


@runtime_checkable
class Recipe(Protocol):
    """Fits a score model on rows ``x`` (columns named ``names``) with inner splits."""

    def fit(
        self, x: NDArray[Any], y: NDArray[np.int64], names: Sequence[str], inner: Splits
    ) -> RecipeFit:
        """The model on all rows, the out-of-fold logits, and the choice."""
        ...

    def describe(self) -> str:
        """One line for reports."""
        ...


def _auroc(y: NDArray[np.int64], scores: NDArray[np.float64]) -> float:
    if np.unique(y).size < 2:
        raise PolicyError("choosing by inner AUROC needs both correct and wrong answers")
    return float(roc_auc_score(y, scores))


def _check_inner(inner: Splits, n: int) -> None:
    covered = np.zeros(n, dtype=np.int64)
    for _, test in inner:
        covered[test] += 1
    if not np.all(covered == 1):
        raise PolicyError("the inner splits do not cover every training row once")


# --------------------------------------------------------------------------- fitted models
@dataclass(frozen=True)
class ColumnScorer:
    """A :class:`LinearScorer` reading some columns of the full input matrix."""

    columns: tuple[int, ...]
    scorer: LinearScorer

    def logits(self, x: NDArray[Any]) -> NDArray[np.float64]:
        """Logits of the rows of the full matrix ``x``."""
        return self.scorer.logits(np.asarray(x[:, list(self.columns)], dtype=np.float64))

    def reads(self) -> tuple[str, ...]:
        """The signals a policy built from it reads."""
        return self.scorer.feature_names

    def as_policy(self, calibrator: Calibrator, **records: Any) -> Policy:
        """The fitted model as a shippable fused policy."""
        return FusedPolicy(self.scorer, calibrator, **records)


@dataclass(frozen=True)
class ProbeScorer:
    """A :class:`VectorScorer` on one block of columns (one vector signal)."""

    start: int
    stop: int
    probe: VectorScorer

    def logits(self, x: NDArray[Any]) -> NDArray[np.float64]:
        """Logits of the rows of the full matrix ``x``."""
        return self.probe.logits(np.asarray(x[:, self.start : self.stop], dtype=np.float64))

    def reads(self) -> tuple[str, ...]:
        """The signals a policy built from it reads."""
        return (self.probe.vector,)

    def as_policy(self, calibrator: Calibrator, **records: Any) -> Policy:
        """The fitted probe as a shippable policy."""
        return ProbePolicy(self.probe, calibrator, **records)


@dataclass(frozen=True)
class StackedScorer:
    """A probe's logit and scalar columns, combined by a fitted combiner."""

    probe: ProbeScorer
    scalar_start: int
    combiner: ColumnScorer

    def logits(self, x: NDArray[Any]) -> NDArray[np.float64]:
        """Logits of the rows of the full matrix ``x`` (vectors first, then scalars)."""
        z = np.column_stack(
            [self.probe.logits(x), np.asarray(x[:, self.scalar_start :], dtype=np.float64)]
        )
        return self.combiner.logits(z)

    def reads(self) -> tuple[str, ...]:
        """The signals a policy built from it reads."""
        names = [n for n in self.combiner.scorer.feature_names if n != PROBE_LOGIT]
        if PROBE_LOGIT in self.combiner.scorer.feature_names:
            names.append(self.probe.probe.vector)
        return tuple(names)

    def as_policy(self, calibrator: Calibrator, **records: Any) -> Policy:
        """A probe policy with its combiner (a fused policy when the probe was not chosen)."""
        scorer = self.combiner.scorer
        if PROBE_LOGIT not in scorer.feature_names:
            return FusedPolicy(scorer, calibrator, **records)
        return ProbePolicy(self.probe.probe, calibrator, scorer, **records)


def as_policy(model: ScoreModel, calibrator: Calibrator, **records: Any) -> Policy:
    """A fitted model as a shippable policy.

    Raises:
        PolicyError: the model is not one a policy can be built from (a custom learner's).
    """
    build: Callable[..., Policy] | None = getattr(model, "as_policy", None)
    if build is None:
        if isinstance(model, LinearScorer):
            return FusedPolicy(model, calibrator, **records)
        raise PolicyError(f"a {type(model).__name__} cannot be saved as a policy")
    return build(calibrator, **records)


# -------------------------------------------------------------------------------- recipes
def _oof_linear(
    x: NDArray[Any], y: NDArray[np.int64], inner: Splits, c: float
) -> NDArray[np.float64]:
    """Out-of-fold logits of standardise + logistic regression on all columns of ``x``."""
    oof = np.full(y.size, np.nan)
    for train, test in inner:
        params = fit_linear(x[train], y[train], c=c)
        oof[test] = linear_logits(x[test], *params)
    return oof


@dataclass(frozen=True)
class LearnerRecipe:
    """Any ``(x, y, names) -> ScoreModel`` function as a recipe (nothing to choose)."""

    learner: Callable[[NDArray[Any], NDArray[np.int64], Sequence[str]], ScoreModel]

    def fit(
        self, x: NDArray[Any], y: NDArray[np.int64], names: Sequence[str], inner: Splits
    ) -> RecipeFit:
        """Inner models for the out-of-fold logits, then one model on all rows."""
        _check_inner(inner, y.size)
        oof = np.full(y.size, np.nan)
        try:
            for train, test in inner:
                oof[test] = self.learner(x[train], y[train], names).logits(x[test])
            model = self.learner(x, y, names)
        except ValueError as exc:  # scikit-learn: a class missing from an inner fold, etc.
            raise PolicyError(f"cannot fit on these rows: {exc}") from exc
        return RecipeFit(model, oof)

    def describe(self) -> str:  # noqa: D102
        return getattr(self.learner, "__name__", "custom learner")


@dataclass(frozen=True)
class Logistic:
    """Standardise + L2 logistic regression on every column at one ``c``."""

    c: float = 1.0

    def fit(
        self, x: NDArray[Any], y: NDArray[np.int64], names: Sequence[str], inner: Splits
    ) -> RecipeFit:
        """Out-of-fold logits and the model on all rows."""
        _check_inner(inner, y.size)
        xa = np.asarray(x, dtype=np.float64)
        oof = _oof_linear(xa, y, inner, self.c)
        model = ColumnScorer(tuple(range(xa.shape[1])), fit_scorer(xa, y, names, c=self.c))
        return RecipeFit(model, oof)

    def describe(self) -> str:  # noqa: D102
        return f"standardised L2 logistic regression, C={self.c:g}"


def signal_family(name: str, specs: dict[str, Any] | None = None) -> str:
    """The family a column belongs to for grouping (``sparsity``, ``uncertainty``, ...)."""
    if name == PROBE_LOGIT:
        return "probe"
    spec = (specs if specs is not None else feature_specs()).get(name)
    return spec.family if spec is not None else "other"


@dataclass(frozen=True)
class Candidate:
    """One input set and strength a recipe may choose.

    Attributes:
        label: how reports name it.
        columns: the columns it reads.
        c: its inverse L2 strength.
    """

    label: str
    columns: tuple[int, ...]
    c: float


@dataclass(frozen=True)
class FeatureGroups:
    """Choose feature group and ``C`` by out-of-fold AUROC on the training rows.

    Attributes:
        cs: inverse L2 strengths tried for each group.
        singles: also try each feature alone (so a fused policy cannot lose to its best feature
            beyond the noise of the choice).
        groups: explicit groups ``(label, feature names)``; default: every union of the signal
            families present.
    """

    cs: tuple[float, ...] = DEFAULT_CS
    singles: bool = True
    groups: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    def candidates(self, names: Sequence[str]) -> list[Candidate]:
        """Groups (smaller first, stronger regularisation first), then single features."""
        index = {n: j for j, n in enumerate(names)}
        if self.groups is not None:
            groups = [(label, tuple(index[n] for n in members)) for label, members in self.groups]
        else:
            specs = feature_specs()
            families: dict[str, list[int]] = {}
            for j, n in enumerate(names):
                families.setdefault(signal_family(n, specs), []).append(j)
            keys = sorted(families)
            groups = []
            for size in range(1, len(keys) + 1):
                for combo in itertools.combinations(keys, size):
                    cols = tuple(sorted(j for k in combo for j in families[k]))
                    groups.append(("+".join(combo), cols))
        out: list[Candidate] = []
        seen: set[tuple[tuple[int, ...], float]] = set()
        for (label, cols), c in itertools.product(groups, sorted(self.cs)):
            if cols and (cols, c) not in seen:
                seen.add((cols, c))
                out.append(Candidate(f"{label}, C={c:g}", cols, c))
        if self.singles and len(names) > 1:
            c = max(self.cs)
            for j, n in enumerate(names):
                if ((j,), c) not in seen:
                    seen.add(((j,), c))
                    out.append(Candidate(n, (j,), c))
        return out

    def fit(
        self, x: NDArray[Any], y: NDArray[np.int64], names: Sequence[str], inner: Splits
    ) -> RecipeFit:
        """Every candidate's out-of-fold logits; the best one's, and its model on all rows."""
        _check_inner(inner, y.size)
        xa = np.asarray(x, dtype=np.float64)
        best: tuple[float, Candidate, NDArray[np.float64]] | None = None
        scores: dict[str, float] = {}
        for cand in self.candidates(names):
            oof = _oof_linear(xa[:, list(cand.columns)], y, inner, cand.c)
            score = _auroc(y, oof)
            scores[cand.label] = round(score, 5)
            if best is None or score > best[0]:
                best = (score, cand, oof)
        if best is None:
            raise PolicyError("no features to choose from")
        score, cand, oof = best
        chosen = [names[j] for j in cand.columns]
        model = ColumnScorer(
            cand.columns, fit_scorer(xa[:, list(cand.columns)], y, chosen, c=cand.c)
        )
        return RecipeFit(model, oof, Choice(cand.label, round(score, 5), scores))

    def describe(self) -> str:  # noqa: D102
        what = "feature group" + (" or single feature" if self.singles else "")
        cs = ", ".join(f"{c:g}" for c in sorted(self.cs))
        return (
            f"standardised L2 logistic regression; {what} and C in {{{cs}}} chosen by "
            "out-of-fold AUROC on the training rows"
        )


def _fit_vector(v: NDArray[Any], y: NDArray[np.int64], name: str, c: float) -> VectorScorer:
    mean, scale, coef, intercept = fit_linear(v, y, c=c)
    return VectorScorer(
        vector=name,
        scaler_mean=tuple(float(a) for a in mean),
        scaler_scale=tuple(float(a) for a in scale),
        coefficients=tuple(float(a) for a in coef),
        intercept=intercept,
    )


@dataclass(frozen=True)
class HiddenStateProbe:
    """A probe on one vector signal; which one, then ``C``, chosen by out-of-fold AUROC.

    The input matrix holds one block of columns per vector signal, in ``names`` order (each a
    ``hidden_state_layer{L}_at_{position}`` of equal length).

    Attributes:
        cs: inverse L2 strengths tried for the chosen vector.
        site_c: the strength while the vector is chosen.
    """

    cs: tuple[float, ...] = PROBE_CS
    site_c: float = PROBE_SITE_C

    def _width(self, x: NDArray[Any], names: Sequence[str]) -> int:
        if not names or x.shape[1] % len(names):
            raise PolicyError(
                f"{x.shape[1]} columns do not split into {len(names)} equal vector blocks"
            )
        return int(x.shape[1] // len(names))

    def fit(
        self, x: NDArray[Any], y: NDArray[np.int64], names: Sequence[str], inner: Splits
    ) -> RecipeFit:
        """Choose the vector at ``site_c``, then ``C``; fit the probe on all rows."""
        _check_inner(inner, y.size)
        d = self._width(x, names)
        scores: dict[str, float] = {}
        by_site: list[tuple[float, int, NDArray[np.float64]]] = []
        for j, name in enumerate(names):
            block = np.asarray(x[:, j * d : (j + 1) * d], dtype=np.float64)
            oof = _oof_linear(block, y, inner, self.site_c)
            score = _auroc(y, oof)
            scores[f"{name}, C={self.site_c:g}"] = round(score, 5)
            by_site.append((score, j, oof))
        best_score, site, best_oof = max(by_site, key=lambda t: (t[0], -t[1]))
        block = np.asarray(x[:, site * d : (site + 1) * d], dtype=np.float64)
        best_c = self.site_c
        for c in sorted(self.cs):
            if c == self.site_c:
                continue
            oof = _oof_linear(block, y, inner, c)
            score = _auroc(y, oof)
            scores[f"{names[site]}, C={c:g}"] = round(score, 5)
            if score > best_score:
                best_score, best_c, best_oof = score, c, oof
        probe = _fit_vector(block, y, names[site], best_c)
        label = f"{names[site]}, C={best_c:g}"
        model = ProbeScorer(site * d, (site + 1) * d, probe)
        return RecipeFit(model, best_oof, Choice(label, round(best_score, 5), scores))

    def describe(self) -> str:  # noqa: D102
        cs = ", ".join(f"{c:g}" for c in sorted(self.cs))
        return (
            "standardised L2 logistic regression on one hidden-state vector; the vector (layer "
            f"and position) chosen by out-of-fold AUROC at C={self.site_c:g}, then C in "
            f"{{{cs}}}, on the training rows"
        )


@dataclass(frozen=True)
class StackedProbe:
    """The probe's out-of-fold logit stacked with scalar signals.

    The input matrix holds the vector blocks first (names that are vector signals), then the
    scalar columns. The probe is fitted as :class:`HiddenStateProbe`; the combiner, on the
    probe's out-of-fold logit (``probe_logit``) and the scalars, as :class:`FeatureGroups`, on the
    same inner splits.
    """

    probe: HiddenStateProbe = field(default_factory=HiddenStateProbe)
    combiner: FeatureGroups = field(default_factory=FeatureGroups)

    def fit(
        self, x: NDArray[Any], y: NDArray[np.int64], names: Sequence[str], inner: Splits
    ) -> RecipeFit:
        """Fit the probe, then choose and fit the combiner on its out-of-fold logits."""
        sites = [n for n in names if is_vector_signal(n)]
        scalars = [n for n in names if not is_vector_signal(n)]
        if not sites or list(names[: len(sites)]) != sites:
            raise PolicyError("a stacked probe needs its vector signals first, then scalars")
        width = x.shape[1] - len(scalars)
        probed = self.probe.fit(x[:, :width], y, sites, inner)
        z = np.column_stack([probed.oof_logits, np.asarray(x[:, width:], dtype=np.float64)])
        combined = self.combiner.fit(z, y, [PROBE_LOGIT, *scalars], inner)
        assert isinstance(probed.model, ProbeScorer)
        assert isinstance(combined.model, ColumnScorer)
        assert probed.choice is not None and combined.choice is not None
        model = StackedScorer(probed.model, width, combined.model)
        choice = Choice(
            f"{probed.choice.label}; combiner {combined.choice.label}",
            combined.choice.inner_auroc,
            {
                **probed.choice.scores,
                **{f"combiner {k}": v for k, v in combined.choice.scores.items()},
            },
        )
        return RecipeFit(model, combined.oof_logits, choice)

    def describe(self) -> str:  # noqa: D102
        return (
            f"{self.probe.describe()}; its out-of-fold logit stacked with the scalar signals: "
            f"{self.combiner.describe()}"
        )


def as_recipe(learner: Recipe | Callable[..., ScoreModel]) -> Recipe:
    """A recipe as is; a plain ``(x, y, names) -> ScoreModel`` learner wrapped as one."""
    if isinstance(learner, Recipe):
        return learner
    return LearnerRecipe(learner)
