"""Plain-array containers for what one forward pass captured.

The model runner fills these; the feature functions read them. They hold numpy arrays only, so
signals can be computed, tested and cached without a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import SignalError


def _check_finite(name: str, arr: NDArray[np.floating]) -> None:
    if not np.all(np.isfinite(arr)):
        raise SignalError(f"{name} contains non-finite values (NaN or inf)")


class TokenProbabilities(Protocol):
    """What the probability features read: per position, the chosen token's log-probability and
    the top-1/top-2 margins. Both :class:`TokenStats` (a local model's full distribution) and
    :class:`TopKStats` (a served model's top-k) provide it.
    """  # noqa: D205

    @property
    def logprob(self) -> NDArray[np.float64]:  # noqa: D102
        ...

    @property
    def margin(self) -> NDArray[np.float64]:  # noqa: D102
        ...

    @property
    def logit_margin(self) -> NDArray[np.float64]:  # noqa: D102
        ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class TokenStats:
    """Per-position summaries of next-token distributions (one entry per generated token).

    Attributes:
        entropy: entropy of the full next-token distribution, in nats.
        logprob: log-probability of the chosen (greedy) token; under greedy decoding this is the
            log of the top-1 probability.
        margin: top-1 probability minus top-2 probability.
        logit_margin: top-1 logit minus top-2 logit (TARG's margin, arXiv 2511.09803).
    """

    entropy: NDArray[np.float64]
    logprob: NDArray[np.float64]
    margin: NDArray[np.float64]
    logit_margin: NDArray[np.float64]

    def __post_init__(self) -> None:
        arrays = {
            "entropy": self.entropy,
            "logprob": self.logprob,
            "margin": self.margin,
            "logit_margin": self.logit_margin,
        }
        shapes = {a.shape for a in arrays.values()}
        if len(shapes) != 1 or self.entropy.ndim != 1:
            raise SignalError(f"TokenStats arrays must be 1-D and equally long, got {shapes}")
        for name, arr in arrays.items():
            _check_finite(f"TokenStats.{name}", arr)

    def __len__(self) -> int:
        return int(self.entropy.shape[0])

    @property
    def prob(self) -> NDArray[np.float64]:
        """Probability of the chosen token."""
        return np.exp(self.logprob)

    def slice(self, start: int, stop: int | None = None) -> TokenStats:
        """Sub-range of positions (e.g. the answer tokens without the stop token)."""
        return TokenStats(
            self.entropy[start:stop],
            self.logprob[start:stop],
            self.margin[start:stop],
            self.logit_margin[start:stop],
        )

    @classmethod
    def from_lists(
        cls,
        entropy: list[float],
        logprob: list[float],
        margin: list[float],
        logit_margin: list[float],
    ) -> TokenStats:
        """Build from Python lists (e.g. a JSON cache)."""
        return cls(
            np.asarray(entropy, dtype=np.float64),
            np.asarray(logprob, dtype=np.float64),
            np.asarray(margin, dtype=np.float64),
            np.asarray(logit_margin, dtype=np.float64),
        )


@dataclass(frozen=True)
class TopKStats:
    """Per-position top-k log-probabilities of a greedy generation: what a served model returns.

    An OpenAI-compatible server returns, per generated token, the chosen token's log-probability
    and the ``k`` largest log-probabilities of the full distribution (``top_logprobs``, capped at
    about 20 by most servers). The chosen-token probability, the top-1/top-2 margin and the logit
    margin (``log p1 - log p2`` equals ``logit1 - logit2``) are exact; the entropy is not (see
    :func:`knowgate.signals.topk.topk_entropy`).

    Attributes:
        logprob: log-probability of the chosen token at each position, ``[T]``.
        top_logprobs: the largest log-probabilities at each position, descending, ``[T, k]``;
            a position with fewer than ``k`` alternatives is padded with ``-inf``.
    """

    logprob: NDArray[np.float64]
    top_logprobs: NDArray[np.float64]

    def __post_init__(self) -> None:
        if self.logprob.ndim != 1 or self.top_logprobs.ndim != 2:
            raise SignalError(
                f"TopKStats needs logprob [T] and top_logprobs [T, k], got "
                f"{self.logprob.shape} and {self.top_logprobs.shape}"
            )
        if self.top_logprobs.shape[0] != self.logprob.shape[0]:
            raise SignalError(
                f"TopKStats: {self.logprob.shape[0]} chosen tokens but "
                f"{self.top_logprobs.shape[0]} rows of alternatives"
            )
        _check_finite("TopKStats.logprob", self.logprob)
        top = self.top_logprobs
        if np.isnan(top).any() or np.isposinf(top).any():
            raise SignalError("TopKStats.top_logprobs contains NaN or +inf")
        if top.shape[0] and (top.shape[1] < 2 or not np.isfinite(top[:, :2]).all()):
            raise SignalError(
                "TopKStats needs at least two alternatives per position (the top-1/top-2 "
                "margin); ask the server for top_logprobs >= 2"
            )
        with np.errstate(invalid="ignore"):  # -inf padding minus -inf padding is NaN
            ascending = (np.diff(top, axis=1) > 0).any() if top.shape[1] > 1 else False
        if ascending:
            raise SignalError("TopKStats.top_logprobs must be sorted in descending order")

    def __len__(self) -> int:
        return int(self.logprob.shape[0])

    @property
    def k(self) -> int:
        """Alternatives per position (columns of ``top_logprobs``)."""
        return int(self.top_logprobs.shape[1])

    @property
    def margin(self) -> NDArray[np.float64]:
        """Top-1 minus top-2 probability (of the full distribution) at each position."""
        return np.asarray(
            np.exp(self.top_logprobs[:, 0]) - np.exp(self.top_logprobs[:, 1]), dtype=np.float64
        )

    @property
    def logit_margin(self) -> NDArray[np.float64]:
        """Top-1 minus top-2 logit (``log p1 - log p2``) at each position."""
        return np.asarray(self.top_logprobs[:, 0] - self.top_logprobs[:, 1], dtype=np.float64)

    def slice(self, start: int, stop: int | None = None) -> TopKStats:
        """Sub-range of positions."""
        return TopKStats(self.logprob[start:stop], self.top_logprobs[start:stop])

    @classmethod
    def from_rows(
        cls, chosen: Sequence[float], alternatives: Sequence[Sequence[float]], k: int | None = None
    ) -> TopKStats:
        """Build from per-position lists (any order), keeping the ``k`` largest of each.

        Args:
            chosen: the chosen token's log-probability per position.
            alternatives: the returned top log-probabilities per position.
            k: columns to keep (default: the longest row).
        """
        if len(chosen) != len(alternatives):
            raise SignalError(
                f"TopKStats: {len(chosen)} chosen tokens but {len(alternatives)} rows of "
                "alternatives"
            )
        width = k if k is not None else max((len(a) for a in alternatives), default=2)
        top = np.full((len(alternatives), width), -np.inf, dtype=np.float64)
        for i, row in enumerate(alternatives):
            values = sorted((float(v) for v in row), reverse=True)[:width]
            top[i, : len(values)] = values
        return cls(np.asarray(chosen, dtype=np.float64), top)


@dataclass(frozen=True)
class PositionStates:
    """Activations of the captured layers at one prompt position.

    Attributes:
        hidden: residual-stream output of each captured block, ``[L, d]``.
        mlp: MLP intermediate activation (input of the down-projection), ``[L, d_ff]``.
    """

    hidden: NDArray[np.float32]
    mlp: NDArray[np.float32]


@dataclass(frozen=True)
class ForwardCapture:
    """Everything one prompt's forward pass exposes to the signals.

    Attributes:
        layers: indices of the captured decoder blocks, ascending.
        num_layers: total number of decoder blocks in the model (to locate "middle" and "last").
        hidden: residual-stream output of each captured block at the last prompt token, ``[L, d]``.
        mlp: MLP intermediate activation (input of the down-projection) at the last prompt token,
            ``[L, d_ff]``.
        next_token: summary of the distribution at the end of the prompt (one position).
        draft: summary of each answer token of a greedy draft, stop token excluded; ``None`` when
            the pass stopped after the prefill (pre-generation gate).
        positions: activations at the other captured positions (``question_end``,
            ``question_mean``; see :data:`knowgate.signals.POSITIONS`); empty when the runner did
            not know where the question was.
        question_states: block outputs of the last captured layer at every question token,
            ``[n_question_tokens, d]``, or ``None``.
    """

    layers: tuple[int, ...]
    num_layers: int
    hidden: NDArray[np.float32]
    mlp: NDArray[np.float32]
    next_token: TokenStats
    draft: TokenStats | None = None
    positions: Mapping[str, PositionStates] = field(default_factory=dict)
    question_states: NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        n = len(self.layers)
        if self.hidden.ndim != 2 or self.hidden.shape[0] != n:
            raise SignalError(f"hidden must be [{n}, d], got {self.hidden.shape}")
        if self.mlp.ndim != 2 or self.mlp.shape[0] != n:
            raise SignalError(f"mlp must be [{n}, d_ff], got {self.mlp.shape}")
        if len(self.next_token) != 1:
            raise SignalError(f"next_token must hold one position, got {len(self.next_token)}")
        if list(self.layers) != sorted(set(self.layers)) or not self.layers:
            raise SignalError(f"layers must be non-empty, unique and ascending, got {self.layers}")
        _check_finite("hidden", self.hidden)
        _check_finite("mlp", self.mlp)
        for name, states in self.positions.items():
            if states.hidden.shape != self.hidden.shape or states.mlp.shape != self.mlp.shape:
                raise SignalError(
                    f"position {name!r}: activations must match the prompt-end shapes "
                    f"{self.hidden.shape} / {self.mlp.shape}, got {states.hidden.shape} / "
                    f"{states.mlp.shape}"
                )
            _check_finite(f"{name}.hidden", states.hidden)
            _check_finite(f"{name}.mlp", states.mlp)
        if self.question_states is not None:
            qs = self.question_states
            if qs.ndim != 2 or qs.shape[1] != self.hidden.shape[1]:
                raise SignalError(
                    f"question_states must be [n, {self.hidden.shape[1]}], got {qs.shape}"
                )
            _check_finite("question_states", qs)

    def at(self, position: str) -> PositionStates:
        """The activations at ``position`` (``prompt_end`` or a captured question position).

        Raises:
            SignalError: the position was not captured.
        """
        if position == "prompt_end":
            return PositionStates(self.hidden, self.mlp)
        if position not in self.positions:
            raise SignalError(
                f"position {position!r} was not captured (captured: prompt_end"
                f"{''.join(', ' + p for p in self.positions)}); the runner needs the question "
                "text to locate question positions"
            )
        return self.positions[position]

    def with_draft(self, draft: TokenStats) -> ForwardCapture:
        """Copy with the draft-token summary attached."""
        return replace(self, draft=draft)
