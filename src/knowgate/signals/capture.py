"""Plain-array containers for what one forward pass captured.

The model runner fills these; the feature functions read them. They hold numpy arrays only, so
signals can be computed, tested and cached without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    entropy: NDArray[np.float64]
    logprob: NDArray[np.float64]
    margin: NDArray[np.float64]

    def __post_init__(self) -> None:
        shapes = {self.entropy.shape, self.logprob.shape, self.margin.shape}
        if len(shapes) != 1 or self.entropy.ndim != 1:
            raise SignalError(f"TokenStats arrays must be 1-D and equally long, got {shapes}")
        for name in ("entropy", "logprob", "margin"):
            _check_finite(f"TokenStats.{name}", getattr(self, name))

    def __len__(self) -> int:
        return int(self.entropy.shape[0])

    @property
    def prob(self) -> NDArray[np.float64]:
        """Probability of the chosen token."""
        return np.exp(self.logprob)

    def slice(self, start: int, stop: int | None = None) -> TokenStats:
        """Sub-range of positions (e.g. the answer tokens without the stop token)."""
        return TokenStats(
            self.entropy[start:stop], self.logprob[start:stop], self.margin[start:stop]
        )

    @classmethod
    def from_lists(
        cls, entropy: list[float], logprob: list[float], margin: list[float]
    ) -> TokenStats:
        """Build from Python lists (e.g. a JSON cache)."""
        return cls(
            np.asarray(entropy, dtype=np.float64),
            np.asarray(logprob, dtype=np.float64),
            np.asarray(margin, dtype=np.float64),
        )


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
    """

    layers: tuple[int, ...]
    num_layers: int
    hidden: NDArray[np.float32]
    mlp: NDArray[np.float32]
    next_token: TokenStats
    draft: TokenStats | None = None

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

    def with_draft(self, draft: TokenStats) -> ForwardCapture:
        """Copy with the draft-token summary attached."""
        return ForwardCapture(
            self.layers, self.num_layers, self.hidden, self.mlp, self.next_token, draft
        )
