"""Per-group pruning sensitivity, and the policy shape it suggests (a warm start for the search).

A group is sensitive when pruning it alone costs much accuracy. Each group in turn is pruned by one
sparsity, every other group left whole; BatchNorm statistics are re-estimated (no finetune) and
validation accuracy measured on a fixed subset. The shape keeps more of the sensitive groups: ranked
by the accuracy they keep, the least sensitive group is proposed at sparsity ``high`` and the most
sensitive at 0, linearly between. The search's fit then scales that shape to each target size, so
only the proportions matter: with ``high = 0.75`` the most sensitive group keeps four times the
share of the least sensitive one, the same span as the ``centred`` space's multipliers in [1/2, 2].

Example:
    >>> acc = group_sensitivity(model, x, groups, splits.train, splits.val, sparsity=0.5, device="cpu")
    >>> shape = sensitivity_shape(acc)       # group -> proposed sparsity
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .policy import Policy
from .prune import apply_policy, cost_model

__all__ = ["group_sensitivity", "sensitivity_shape"]


def group_sensitivity(model: nn.Module, x: torch.Tensor, groups: Sequence[str], train_ds, val_ds, *,
                      sparsity: float | Mapping[str, float], device: str | torch.device = "cpu",
                      exclude: Sequence[str] = (), bn_batches: int = 5, batch_size: int = 64, val_images: int = 1000,
                      seed: int = 0, round_to: int = 1) -> dict[str, float]:
    """Validation accuracy (on the first ``val_images`` of ``val_ds``) with each group alone pruned
    by ``sparsity`` (one for all, or one per group; L1 ranking), after ``bn_batches`` of BatchNorm
    recalibration; ``model`` is left untouched. A group whose pruning fails, or gives a non-finite
    accuracy, is left out of the result."""
    from .data import TensorData
    from .training import evaluate, recalibrate_bn

    channels = cost_model(model, x, exclude).channels
    subset = val_ds.take(torch.arange(min(val_images, len(val_ds)))) if isinstance(val_ds, TensorData) else val_ds
    out = {}
    for g in groups:
        s = float(sparsity[g] if isinstance(sparsity, Mapping) else sparsity)
        policy = Policy(getattr(model, "autoprune_name", type(model).__name__), {g: s}, {g: channels[g]},
                        round_to, importance="l1")
        try:
            small = apply_policy(model, policy, x, exclude=exclude)
            if bn_batches:
                recalibrate_bn(small, train_ds, device=device, batches=bn_batches, batch_size=batch_size, seed=seed)
            acc = evaluate(small, subset, device=device)
        except Exception:  # noqa: BLE001 - one group that cannot be measured must not stop the others
            continue
        if math.isfinite(acc):
            out[g] = acc
    return out


def sensitivity_shape(accuracy: Mapping[str, float], high: float = 0.75) -> dict[str, float]:
    """Group -> proposed sparsity: ``high`` for the group that kept the most accuracy when pruned
    alone, 0 for the one that kept the least, by rank (ties share their mean rank)."""
    groups = list(accuracy)
    if len(groups) == 1:
        return {groups[0]: high / 2}
    ordered = sorted(groups, key=lambda g: accuracy[g])  # most sensitive first
    ranks: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and accuracy[ordered[j + 1]] == accuracy[ordered[i]]:
            j += 1
        for g in ordered[i:j + 1]:
            ranks[g] = (i + j) / 2
        i = j + 1
    top = len(groups) - 1
    return {g: high * ranks[g] / top for g in groups}
