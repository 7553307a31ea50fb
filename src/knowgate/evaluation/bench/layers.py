"""Where the signal lives: held-out AUROC of sparsity and of a probe, by layer and position.

Every signal the shipped policies read is taken at the last prompt token, which for chat
prompts is a template token (SmolLM2: the newline after "assistant"; Gemma: "A:"). The
closed-book cache also stores every sparsity metric at every block and three positions, and the
hidden states of ten blocks at those positions; this study asks where knowledge shows.

- **Sparsity**: for each metric, block and position, each outer fold chooses the direction on
  its training rows and scores its held-out rows; the AUROC is pooled over the held-out rows.
- **Probe**: the hidden-state probe's own choice (:class:`~knowgate.policy.selection.
  HiddenStateProbe`) scores every stored (block, position) on each outer fold's training rows
  by out-of-fold AUROC at one ``C``; the mean over outer folds is reported, so this costs no
  extra fit.
"""

from __future__ import annotations

import numpy as np

from knowgate.evaluation.bench.policies import PROBE, HeldOutSet
from knowgate.evaluation.bench.summary import LayerStudy
from knowgate.evaluation.bench.table import BenchTable
from knowgate.evaluation.cross_fitting import held_out_signed
from knowgate.evaluation.metrics import auroc
from knowgate.evaluation.reporting import finite
from knowgate.policy.selection import PROBE_SITE_C
from knowgate.signals import vector_signal_name


def layer_study(table: BenchTable, held: HeldOutSet) -> LayerStudy | None:
    """Sparsity and probe AUROC by block and position (``None`` without stored arrays)."""
    arrays = table.arrays
    if arrays is None:
        return None
    y = table.cb_correct
    values = arrays.sparsity_by_layer  # [n, metrics, positions, layers]
    n, m, p, layers = values.shape
    flat = values.reshape(n, -1)
    finite_cols = np.all(np.isfinite(flat), axis=0)
    aurocs = np.full(flat.shape[1], np.nan)
    signed = held_out_signed(flat[:, finite_cols], y, held.splits)
    aurocs[finite_cols] = [auroc(y, signed[:, j]) for j in range(signed.shape[1])]
    grid = aurocs.reshape(m, p, layers)
    sparsity = {
        metric: {
            position: [finite(float(v)) for v in grid[i, j]]
            for j, position in enumerate(arrays.positions)
        }
        for i, metric in enumerate(arrays.sparsity_rows)
    }
    best_sparsity = {}
    for j, position in enumerate(arrays.positions):
        block = np.where(np.isfinite(grid[:, j]), grid[:, j], -np.inf)
        i, k = np.unravel_index(int(np.argmax(block)), block.shape)
        if np.isfinite(block[i, k]):
            best_sparsity[position] = (
                arrays.sparsity_rows[i],
                arrays.sparsity_layers[k],
                round(float(block[i, k]), 5),
            )
    probe = held.policies.get(PROBE)
    probe_auroc: dict[str, list[float | None]] | None = None
    best_probe: dict[str, tuple[int, float]] = {}
    probe_c: float | None = None
    fold_scores = [f.choice.scores for f in probe.folds if f.choice] if probe else []
    if fold_scores:
        probe_c = PROBE_SITE_C
        probe_auroc = {}
        for position in arrays.positions:
            row: list[float | None] = []
            for layer in arrays.probe_layers:
                key = f"{vector_signal_name(layer, position)}, C={probe_c:g}"
                found = [s[key] for s in fold_scores if key in s]
                row.append(finite(float(np.mean(found))) if found else None)
            probe_auroc[position] = row
            scored = [(v, layer) for v, layer in zip(row, arrays.probe_layers, strict=True) if v]
            if scored:
                value, layer = max(scored)
                best_probe[position] = (layer, round(value, 5))
    return LayerStudy(
        positions=arrays.positions,
        sparsity_layers=arrays.sparsity_layers,
        sparsity_auroc=sparsity,
        best_sparsity=best_sparsity,
        probe_layers=arrays.probe_layers,
        probe_auroc=probe_auroc,
        probe_c=probe_c,
        best_probe=best_probe,
    )
