"""Forward hooks that capture activations at a few positions of the prompt, during prefill only.

Three positions are read (see :data:`knowgate.signals.POSITIONS`):

- ``prompt_end``: the last prompt token (left padding puts it at index -1 of every row). For a
  chat prompt this is a template token (SmolLM2: the newline after ``assistant``), the state the
  answer is generated from.
- ``question_end``: the last token of the question text inside the prompt.
- ``question_mean``: the mean over the question's tokens.

The question positions need a :class:`QuestionSpans` (token indices per row); without one only
``prompt_end`` is captured. The hooks copy a few kilobytes per layer and position whatever the
prompt length; at the last captured layer they also keep the question tokens' states (for the
effective rank of the question's representation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from knowgate.models.architecture import BlockLayout

PROMPT_END = "prompt_end"
QUESTION_END = "question_end"
QUESTION_MEAN = "question_mean"


@dataclass(frozen=True)
class QuestionSpans:
    """Where each row's question sits in the (left-padded) token sequence.

    Attributes:
        end: ``[B]`` index of the last question token of each row.
        mask: ``[B, T]`` float mask, 1 on the question's tokens.
    """

    end: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.end.dim() != 1 or self.mask.dim() != 2 or self.mask.shape[0] != self.end.shape[0]:
            raise ValueError(
                f"QuestionSpans: end must be [B] and mask [B, T], got {tuple(self.end.shape)} "
                f"and {tuple(self.mask.shape)}"
            )
        if bool((self.mask.sum(dim=1) < 1).any()):
            raise ValueError("QuestionSpans: every row needs at least one question token")


@dataclass
class PositionCapture:
    """Activations per position and layer, filled by the hooks.

    Attributes:
        hidden: ``{position: {layer: [B, d]}}`` block outputs (the residual stream).
        mlp: ``{position: {layer: [B, d_ff]}}`` down-projection inputs.
        question_states: per row, ``[n_question_tokens, d]`` block outputs of the last captured
            layer (only with question spans).
    """

    hidden: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    mlp: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    question_states: list[torch.Tensor] = field(default_factory=list)

    @property
    def positions(self) -> list[str]:
        """The positions captured, ``prompt_end`` first."""
        return list(self.hidden)

    def stacked(
        self, layers: Sequence[int], position: str = PROMPT_END
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, L, d], [B, L, d_ff])`` at ``position`` in layer order, float32 on the CPU."""
        hidden, mlp = self.hidden.get(position, {}), self.mlp.get(position, {})
        missing = [i for i in layers if i not in hidden or i not in mlp]
        if missing:
            raise RuntimeError(f"capture hooks did not fire for layers {missing} at {position}")
        h = torch.stack([hidden[i] for i in layers], dim=1)
        m = torch.stack([mlp[i] for i in layers], dim=1)
        return h.float().cpu(), m.float().cpu()


def _sequence_tensor(t: Any) -> torch.Tensor:
    tensor = t[0] if isinstance(t, tuple) else t
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
        raise RuntimeError(f"expected a [batch, seq, dim] tensor, got {type(tensor).__name__}")
    return tensor.detach()


def _at_positions(tensor: torch.Tensor, spans: QuestionSpans | None) -> dict[str, torch.Tensor]:
    out = {PROMPT_END: tensor[:, -1, :]}
    if spans is not None:
        rows = torch.arange(tensor.shape[0], device=tensor.device)
        out[QUESTION_END] = tensor[rows, spans.end.to(tensor.device), :]
        mask = spans.mask.to(device=tensor.device, dtype=tensor.dtype)[..., None]
        out[QUESTION_MEAN] = (tensor * mask).sum(dim=1) / mask.sum(dim=1)
    return out


@contextmanager
def capture_positions(
    layout: BlockLayout, layers: Sequence[int], spans: QuestionSpans | None = None
) -> Iterator[PositionCapture]:
    """Register capture hooks on ``layers`` for the duration of the block; always removed after.

    Args:
        layout: the model's block layout.
        layers: block indices to capture (ascending).
        spans: the question's token positions per row; ``None`` captures ``prompt_end`` only.
    """
    capture = PositionCapture()
    handles: list[RemovableHandle] = []
    last_layer = max(layers)

    def block_hook(index: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            tensor = _sequence_tensor(output)
            for position, value in _at_positions(tensor, spans).items():
                capture.hidden.setdefault(position, {})[index] = value
            if spans is not None and index == last_layer:
                keep = spans.mask.to(tensor.device) > 0
                capture.question_states = [
                    tensor[b, keep[b]].float().cpu() for b in range(tensor.shape[0])
                ]

        return hook

    def down_hook(index: int) -> Any:
        def hook(_module: nn.Module, args: Any) -> None:
            tensor = _sequence_tensor(args[0])
            for position, value in _at_positions(tensor, spans).items():
                capture.mlp.setdefault(position, {})[index] = value

        return hook

    try:
        for i in layers:
            handles.append(layout.blocks[i].register_forward_hook(block_hook(i)))
            handles.append(layout.down_projections[i].register_forward_pre_hook(down_hook(i)))
        yield capture
    finally:
        for handle in handles:
            handle.remove()


def capture_last_token(layout: BlockLayout, layers: Sequence[int]) -> Any:
    """Capture at the last prompt token only (``capture_positions`` without question spans)."""
    return capture_positions(layout, layers, None)
