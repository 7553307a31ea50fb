"""Forward hooks that capture activations at the last prompt token during the prefill only."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from knowgate.models.architecture import BlockLayout


@dataclass
class LastTokenCapture:
    """Activations at the last position of the sequence, filled by the hooks.

    Attributes:
        hidden: per captured layer, the block output ``[B, d]``.
        mlp: per captured layer, the down-projection input ``[B, d_ff]``.
    """

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp: dict[int, torch.Tensor] = field(default_factory=dict)

    def stacked(self, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, L, d], [B, L, d_ff])`` in layer order, as float32 on the CPU."""
        missing = [i for i in layers if i not in self.hidden or i not in self.mlp]
        if missing:
            raise RuntimeError(f"capture hooks did not fire for layers {missing}")
        hidden = torch.stack([self.hidden[i] for i in layers], dim=1)
        mlp = torch.stack([self.mlp[i] for i in layers], dim=1)
        return hidden.float().cpu(), mlp.float().cpu()


def _last_position(t: Any) -> torch.Tensor:
    tensor = t[0] if isinstance(t, tuple) else t
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
        raise RuntimeError(f"expected a [batch, seq, dim] tensor, got {type(tensor).__name__}")
    return tensor[:, -1, :].detach()


@contextmanager
def capture_last_token(layout: BlockLayout, layers: Sequence[int]) -> Iterator[LastTokenCapture]:
    """Register capture hooks on ``layers`` for the duration of the block; always removed after.

    Only the last position is kept (left padding puts every prompt's last token there), so the
    hooks copy a few kilobytes per layer whatever the prompt length.
    """
    capture = LastTokenCapture()
    handles: list[RemovableHandle] = []

    def block_hook(index: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            capture.hidden[index] = _last_position(output)

        return hook

    def down_hook(index: int) -> Any:
        def hook(_module: nn.Module, args: Any) -> None:
            capture.mlp[index] = _last_position(args[0])

        return hook

    try:
        for i in layers:
            handles.append(layout.blocks[i].register_forward_hook(block_hook(i)))
            handles.append(layout.down_projections[i].register_forward_pre_hook(down_hook(i)))
        yield capture
    finally:
        for handle in handles:
            handle.remove()
