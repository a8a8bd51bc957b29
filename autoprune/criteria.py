"""Channel criteria: which channels of a group are removed first (Torch-Pruning's importances).

One table names every criterion with the Torch-Pruning importance that implements it. The
``taylor`` criterion scores channels with the gradient of one training batch; that batch is drawn
here, the same way for a search trial, ``apply`` and the benchmarks, so one policy always removes
the same channels.

Example:
    >>> parse_importances("auto")
    ('l1', 'bn_scale', 'taylor')
    >>> imp = make_importance("bn_scale")        # a tp.importance.BNScaleImportance
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .errors import ConfigError

__all__ = ["IMPORTANCES", "AUTO_IMPORTANCES", "make_importance", "needs_gradients", "parse_importances",
           "gradient_batch", "GRADIENT_BATCH_SIZE"]


def _tp():
    import torch_pruning as tp  # late: heavy, and only pruning needs it

    return tp


# name -> constructor of the Torch-Pruning importance
_TABLE: dict[str, Callable[[], Any]] = {
    "l1": lambda: _tp().importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: _tp().importance.GroupMagnitudeImportance(p=2),
    "bn_scale": lambda: _tp().importance.BNScaleImportance(),
    "taylor": lambda: _tp().importance.GroupTaylorImportance(),
    "random": lambda: _tp().importance.RandomImportance(),
}
IMPORTANCES = tuple(_TABLE)
# --importance auto searches these: one criterion from each family (weight magnitude, BatchNorm
# scale, first-order Taylor); the first is the one the plain uniform warm start uses.
AUTO_IMPORTANCES = ("l1", "bn_scale", "taylor")
_NEEDS_GRADIENTS = frozenset({"taylor"})
GRADIENT_BATCH_SIZE = 64  # images in the taylor criterion's batch


def make_importance(kind: str) -> Any:
    """A fresh Torch-Pruning importance object for the criterion ``kind``."""
    if kind not in _TABLE:
        raise ConfigError(f"Unknown importance {kind!r}; choose one of {', '.join(IMPORTANCES)}.")
    return _TABLE[kind]()


def needs_gradients(kind: str) -> bool:
    """Whether the criterion reads gradients, so pruning needs :func:`gradient_batch` first."""
    return kind in _NEEDS_GRADIENTS


def parse_importances(text: str) -> tuple[str, ...]:
    """``auto``, one criterion, or a comma-separated list -> the criteria a search chooses among."""
    text = str(text).strip()
    if text == "auto":
        return AUTO_IMPORTANCES
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in _TABLE] or ([] if names else [text])
    if bad:
        raise ConfigError(f"Unknown --importance {bad[0]!r}; choose auto, one of {', '.join(IMPORTANCES)}, "
                          "or a comma-separated list of them.")
    return names


def gradient_batch(dataset, batch_size: int = GRADIENT_BATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch the ``taylor`` criterion scores channels with: the first ``batch_size`` images of
    a seed-0 permutation of ``dataset`` (fixed, so every caller removes the same channels)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:batch_size]
    if hasattr(dataset, "x") and hasattr(dataset, "y"):  # in-memory TensorData: slice on its device
        idx = order.to(dataset.x.device)
        return dataset.x[idx], dataset.y[idx]
    with torch.random.fork_rng():  # a dataset that augments (imagefolder) draws the same crops every time
        torch.manual_seed(0)
        items = [dataset[int(i)] for i in order]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])
