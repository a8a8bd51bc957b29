"""Batches on a device: in-memory :class:`~autoprune.data.TensorData` is sliced where it lives (no
workers, no copies per batch), any other dataset goes through a ``torch.utils.data.DataLoader``.

Example:
    >>> loader = make_loader(load_dataset("digits").train, 128, shuffle=True, seed=0)
    >>> x, y = next(iter(loader))
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .data import TensorData
from .errors import ConfigError

__all__ = ["Loader", "make_loader", "set_workers", "workers"]

_WORKERS = [0]  # decoding worker processes of loaders over disk-backed datasets, unless given


@contextlib.contextmanager
def workers(n: int):
    """:func:`set_workers` for the block only (apply and the baseline in a caller's process)."""
    before = _WORKERS[0]
    set_workers(n)
    try:
        yield
    finally:
        _WORKERS[0] = before


def set_workers(n: int) -> None:
    """The decoding workers every later loader over a disk-backed dataset uses (``--workers``; a
    trial's process sets it once, as it sets its threads). 0 decodes in the calling process."""
    if int(n) != n or n < 0:
        raise ConfigError(f"--workers must be a whole number >= 0, but got {n!r}.")
    _WORKERS[0] = int(n)


class Loader:
    """Batches ``(x, y)`` on a device; ``len()`` is the number of batches per pass.

    Each pass over a shuffled loader draws a new order from one seeded generator, so a sequence of
    epochs is reproducible.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int,
                 device: torch.device, drop_last: bool, num_workers: int) -> None:
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.device, self.drop_last = device, drop_last
        self._gen = torch.Generator().manual_seed(seed)
        self._loader = None
        if isinstance(dataset, TensorData):
            self.dataset = dataset.to(device)  # moved once; every batch is then a slice on the device
        else:  # decoded by workers that live as long as the loader (every epoch of one training run)
            self._loader = DataLoader(dataset, batch_size, shuffle=shuffle, generator=self._gen,
                                      drop_last=drop_last, num_workers=num_workers,
                                      persistent_workers=num_workers > 0, pin_memory=device.type == "cuda")

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._loader is not None:
            for x, y in self._loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            return
        ds: TensorData = self.dataset
        n = len(ds)
        order = torch.randperm(n, generator=self._gen).to(self.device) if self.shuffle else None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            if order is None:
                yield ds.x[lo:hi], ds.y[lo:hi]
            else:
                idx = order[lo:hi]
                yield ds.x[idx], ds.y[idx]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    device: str | torch.device = "cpu",
    drop_last: bool = False,
    num_workers: int | None = None,
) -> Loader:
    """An iterable of ``(x, y)`` batches on ``device``, with ``len()`` = batches per pass.

    :class:`TensorData` is sliced directly on the device (no workers, no copies per batch); it is
    copied to the device once per loader, so callers that build many loaders (one per trial) should
    pass ``ds.to(device)`` to copy it only once. Any other dataset goes through a
    ``torch.utils.data.DataLoader``.

    Example:
        >>> loader = make_loader(load_dataset("digits").train, 128, shuffle=True, seed=0)
        >>> x, y = next(iter(loader))
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, but got {batch_size!r}.")
    workers = _WORKERS[0] if num_workers is None else int(num_workers)
    return Loader(dataset, int(batch_size), shuffle=shuffle, seed=seed,
                  device=torch.device(device), drop_last=drop_last, num_workers=workers)
