"""Datasets by name: the bundled digits, CIFAR-10/100, ImageFolder trees, and ``module:function``.

:func:`load_dataset` returns :class:`Splits`: train, validation and test sets plus the shapes a model
needs. The validation split is always carved from the training data with a seeded permutation, so
search decisions never see the test split. Small datasets are held in memory as normalised
:class:`TensorData`, which :func:`~autoprune.loader.make_loader` serves by slicing tensors already on the device, so
data loading never dominates a short finetune.
"""
from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .errors import ConfigError, DataError, close_matches

__all__ = ["DATASETS", "Splits", "TensorData", "carve", "carve_validation", "list_datasets", "load_dataset", "memory_bytes",
           "normalise", "register_dataset", "resize"]


Builder = Callable[..., "Splits"]
DATASETS: dict[str, Builder] = {}


class TensorData(Dataset):
    """An in-memory dataset of normalised images ``x`` (float32, N,C,H,W) and labels ``y`` (int64).

    ``index`` holds each sample's position in the source data, so splits can be checked for overlap
    and traced back to the original samples.

    Example:
        >>> ds = TensorData(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))
        >>> len(ds), ds[1][1].item()
        (4, 1)
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> None:
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"TensorData needs x of shape (N,C,H,W) and y of shape (N,), but got "
                            f"{tuple(x.shape)} and {tuple(y.shape)}.")
        self.x = x.float()
        self.y = y.long()
        self.index = torch.arange(len(y)) if index is None else index.long().cpu()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: str | torch.device) -> "TensorData":
        """A copy whose ``x`` and ``y`` live on ``device`` (no data is copied if already there)."""
        return TensorData(self.x.to(device), self.y.to(device), self.index)

    def take(self, idx: Sequence[int] | np.ndarray | torch.Tensor) -> "TensorData":
        """The samples at positions ``idx``, keeping their source ``index``."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return TensorData(self.x[idx.to(self.x.device)], self.y[idx.to(self.y.device)], self.index[idx])

    def __repr__(self) -> str:
        return f"TensorData(n={len(self)}, shape={tuple(self.x.shape[1:])}, device={self.device})"


@dataclass(frozen=True)
class Splits:
    """Train, validation and test sets of one dataset, and the shapes a model needs.

    Example:
        >>> s = load_dataset("digits")
        >>> s.input_shape, s.num_classes, s.example_input(2).shape
        ((3, 32, 32), 10, torch.Size([2, 3, 32, 32]))
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if int(self.num_classes) < 1:
            raise DataError(f"Dataset {self.name!r} needs at least one class, but got {self.num_classes}.")
        shape = tuple(int(s) for s in self.input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise DataError(f"Dataset {self.name!r} input_shape must be (C, H, W), not {self.input_shape!r}.")
        object.__setattr__(self, "input_shape", shape)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Zeros of shape ``(batch, C, H, W)``, for tracing and FLOPs counting."""
        return torch.zeros(batch, *self.input_shape)


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Register a dataset builder under ``name``; a duplicate name is an error.

    The builder is called with keyword arguments ``data_dir``, ``download``, ``image_size``,
    ``val_fraction`` and ``seed`` and returns :class:`Splits`.

    Example:
        >>> @register_dataset("my_data")
        ... def my_data(*, data_dir, download, image_size, val_fraction, seed): ...
    """

    def deco(fn: Builder) -> Builder:
        if name in DATASETS:
            raise DataError(f"Dataset {name!r} is registered twice.")
        DATASETS[name] = fn
        return fn

    return deco


def list_datasets(pattern: str | None = None) -> list[str]:
    """Registered dataset names, sorted, filtered by a glob pattern such as ``cifar*``."""
    return sorted(n for n in DATASETS if pattern is None or fnmatch.fnmatch(n, pattern))


def load_dataset(
    name: str = "digits",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Splits:
    """Load a dataset by registered name or ``package.module:function``.

    Args:
        name: a name from :func:`list_datasets`, or ``package.module:function``. The function is
            called with whichever of ``data_dir``, ``image_size``, ``download`` and ``seed`` it
            accepts and returns :class:`Splits` or a tuple ``(train_ds, test_ds, num_classes)``.
        data_dir: the folder holding the data (CIFAR, ImageFolder); unused for digits.
        download: let torchvision download CIFAR into ``data_dir``.
        image_size: side of the square images; ``None`` keeps each dataset's default.
        val_fraction: share of the training data held out for validation, in [0, 1).
        seed: seeds the validation split; the same seed gives the same split.

    Example:
        >>> splits = load_dataset("digits", val_fraction=0.1, seed=0)
        >>> len(splits.train) + len(splits.val) + len(splits.test)
        1797
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must lie in [0, 1), but got {val_fraction!r}.")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise ConfigError(f"image_size must be a whole number of pixels >= 1, but got {image_size!r}.")
    kwargs = dict(data_dir=None if data_dir is None else Path(data_dir).expanduser(), download=download,
                  image_size=image_size, val_fraction=val_fraction, seed=seed)
    if name in DATASETS:
        return DATASETS[name](**kwargs)
    if ":" in name:
        return _from_spec(name, **kwargs)
    raise DataError(
        f"Unknown dataset {name!r}; choose one of {close_matches(name, list_datasets())} "
        f"or give module:function."
    )


def carve(n: int, fraction: float, seed: int, labels: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (kept, held-out) index arrays, both sorted.

    With ``labels`` the split is stratified: each class gives up the same share, which keeps small
    validation sets balanced.
    """
    rng = np.random.default_rng(seed)
    if fraction <= 0 or n == 0:
        return np.arange(n), np.arange(0)
    if labels is None:
        held = rng.permutation(n)[: max(1, round(fraction * n))]
    else:
        labels = np.asarray(labels)
        held_parts = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            held_parts.append(rng.permutation(members)[: round(fraction * len(members))])
        held = np.concatenate(held_parts)
        if len(held) == 0:  # every class too small to give up a sample: fall back to one sample
            held = rng.permutation(n)[:1]
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _labels_of(ds: Dataset) -> np.ndarray | None:
    """Labels when they are cheap to read (no image decoding), else None."""
    if isinstance(ds, TensorData):
        return ds.y.cpu().numpy()
    targets = getattr(ds, "targets", None)
    return None if targets is None else np.asarray(targets)


def carve_validation(train: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    keep, held = carve(len(train), val_fraction, seed, _labels_of(train))
    if isinstance(train, TensorData):
        return train.take(keep), train.take(held)
    kept = Subset(train, keep.tolist())
    if getattr(train, "augments", False):  # the dataset augments its own images: the trainer must not again
        kept.augments = True
    return kept, Subset(train, held.tolist())


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    # Antialiasing matters only when shrinking; it keeps downsized images from aliasing.
    shrink = size < max(x.shape[-2:])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def _from_spec(spec: str, *, data_dir: Path | None, download: bool, image_size: int | None,
               val_fraction: float, seed: int) -> Splits:
    module_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError, ValueError) as e:
        msg = f"Cannot load dataset {spec!r}: {e}; give an importable package.module:function."
        raise DataError(msg) from None
    offered = {"data_dir": data_dir, "image_size": image_size, "download": download, "seed": seed}
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = fn(**{k: v for k, v in offered.items() if takes_any or k in params})
    if isinstance(out, Splits):
        return out
    if not (isinstance(out, tuple) and len(out) == 3):
        raise DataError(f"Dataset function {spec!r} returned {type(out).__name__}; it must return Splits "
                        f"or a tuple (train_ds, test_ds, num_classes).")
    train, test, num_classes = out
    if len(train) == 0:
        raise DataError(f"Dataset function {spec!r} returned an empty training set.")
    shape = tuple(train[0][0].shape)
    if len(shape) != 3:
        raise DataError(f"Dataset function {spec!r} gives samples of shape {shape}; expected (C, H, W).")
    train, val = carve_validation(train, val_fraction, seed)
    return Splits(spec, train, val, test, int(num_classes), shape)


def memory_bytes(weights, *data_sets) -> int:
    """Bytes of ``weights`` (tensors) and of in-memory datasets: what a search ships to its workers."""
    total = sum(t.numel() * t.element_size() for t in weights)
    for ds in data_sets:
        for attr in ("x", "y"):
            t = getattr(ds, attr, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


from . import datasets  # noqa: E402,F401  (registers the built-in datasets; they need the names above)
