"""Find the decoder blocks and MLP down-projections of any Hugging Face causal LM.

Instead of a table of per-architecture attribute paths, the blocks are found structurally: the
``ModuleList`` whose length equals the configured number of layers. Inside each block the MLP is
the child named like an MLP, and its down-projection (whose *input* is the MLP intermediate
activation: act(gate)*up for gated MLPs, act(fc) for GPT-2 style) is the child with a known
down-projection name. Tested on Llama (SmolLM2), Gemma3, Qwen2, Mistral, GPT-2 and Phi.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from knowgate.errors import ConfigError, UnsupportedArchitectureError

MLP_NAMES = ("mlp", "feed_forward", "ffn")
DOWN_PROJECTION_NAMES = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "w2", "fc_out")
FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_norm", "norm_f")


@dataclass(frozen=True)
class BlockLayout:
    """Where to hook a model.

    Attributes:
        architecture: ``config.model_type`` (e.g. ``llama``), for messages and traces.
        blocks: the decoder blocks in order; their output is the residual stream.
        down_projections: per block, the module whose input is the MLP intermediate activation.
        final_norm: the norm applied to the last block's output before the LM head (a sibling of
            the block list named like :data:`FINAL_NORM_NAMES`), or ``None`` if not found. Its
            output is what transformers reports as the last of ``hidden_states``.
    """

    architecture: str
    blocks: tuple[nn.Module, ...]
    down_projections: tuple[nn.Module, ...]
    final_norm: nn.Module | None = None

    @property
    def num_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.blocks)


def _num_layers(config: object) -> int | None:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    text_config = getattr(config, "text_config", None)
    return _num_layers(text_config) if text_config is not None else None


def discover_layout(model: nn.Module) -> BlockLayout:
    """Locate blocks and down-projections, or raise naming the architecture."""
    config = getattr(model, "config", None)
    arch = str(getattr(config, "model_type", type(model).__name__))
    n_layers = _num_layers(config)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0
    ]
    if n_layers is not None:
        candidates = [(n, m) for n, m in candidates if len(m) == n_layers]
    if not candidates:
        raise UnsupportedArchitectureError(
            f"cannot find the decoder blocks of architecture {arch!r} "
            f"({type(model).__name__}): no ModuleList of {n_layers} layers"
        )
    # The outermost matching list (shortest dotted path) is the block stack.
    blocks_name, blocks = min(candidates, key=lambda item: item[0].count("."))
    parent = model.get_submodule(blocks_name.rpartition(".")[0])
    final_norm = next(
        (
            getattr(parent, n)
            for n in FINAL_NORM_NAMES
            if isinstance(getattr(parent, n, None), nn.Module)
        ),
        None,
    )
    downs = []
    for i, block in enumerate(blocks):
        mlp = next((getattr(block, n) for n in MLP_NAMES if hasattr(block, n)), None)
        down = (
            next((getattr(mlp, n) for n in DOWN_PROJECTION_NAMES if hasattr(mlp, n)), None)
            if mlp is not None
            else None
        )
        if not isinstance(down, nn.Module):
            raise UnsupportedArchitectureError(
                f"cannot find the MLP down-projection in block {i} of architecture {arch!r} "
                f"({type(block).__name__}); looked for an MLP named {MLP_NAMES} with a child "
                f"named {DOWN_PROJECTION_NAMES}"
            )
        downs.append(down)
    return BlockLayout(arch, tuple(blocks), tuple(downs), final_norm)


def select_layers(layers: str | tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """Turn ``"all"`` or (possibly negative) indices into sorted absolute block indices."""
    if isinstance(layers, str):
        if layers != "all":
            raise ConfigError(f"layers must be 'all' or a list of block indices, got {layers!r}")
        return tuple(range(num_layers))
    absolute: set[int] = set()
    for i in layers:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise ConfigError(f"layer {i} is out of range for a model with {num_layers} blocks")
        absolute.add(j)
    return tuple(sorted(absolute))
