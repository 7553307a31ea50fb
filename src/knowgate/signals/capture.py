"""Plain-array containers for what one forward pass captured.

The model runner fills these; the feature functions read them. They hold numpy arrays only, so
signals can be computed, tested and cached without a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from knowgate.errors import SignalError


def _check_finite(name: str, arr: NDArray[np.floating]) -> None:
    if not np.all(np.isfinite(arr)):
        raise SignalError(f"{name} contains non-finite values (NaN or inf)")


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
