"""The built-in datasets: the bundled digits, Fashion-MNIST, CIFAR-10/100 and ImageFolder trees.

Each builder is registered by name (``data.register_dataset``) and returns :class:`~autoprune.data.Splits`
with the validation split carved from the training data (seeded, stratified). Small datasets are
held in memory as normalised tensors; normalisation uses statistics of the training part only.
"""
from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Subset

from .data import Splits, TensorData, carve, carve_validation, normalise, register_dataset, resize
from .errors import DataError

__all__ = ["CIFAR_STATS", "IMAGENET_STATS", "FASHION_MNIST_DIRS", "imagefolder_transforms"]

# Per-channel statistics of the training images; CIFAR-10's std is the true per-pixel one, not the
# widely copied (0.2023, 0.1994, 0.2010), which was computed over per-image means.
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_DIGITS_FILE = Path(__file__).resolve().parent / "data" / "digits.npz"
# The digits test split is drawn once with this seed, whatever `seed` the caller passes, so test
# accuracies stay comparable across runs.
_DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED = 0.2, 0
# Where Fashion-MNIST is looked for without --data-dir: Debian's dataset-fashion-mnist package.
_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autoprune"  # where --download puts it
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"), _CACHE)
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@register_dataset("digits")
def _digits(*, image_size: int | None, val_fraction: float, seed: int, **_: object) -> Splits:
    """The bundled 8x8 handwritten digits (UCI, via scikit-learn), upsampled and as 3 channels."""
    if not _DIGITS_FILE.is_file():
        raise DataError(f"Bundled digits data {str(_DIGITS_FILE)!r} is missing; run scripts/make_digits.py "
                        f"or reinstall autoprune.")
    with np.load(_DIGITS_FILE) as npz:
        images, labels = npz["images"], npz["labels"]
    size = image_size or 32
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)  # source grey levels are 0..16
    # Three channels, so the same models serve digits, CIFAR and ImageNet-style data.
    x = resize(x, size).expand(-1, 3, -1, -1).contiguous()
    all_data = TensorData(x, torch.from_numpy(labels.astype(np.int64)))
    pool_idx, test_idx = carve(len(all_data), _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED, labels)
    train, val = carve_validation(all_data.take(pool_idx), val_fraction, seed)
    # Statistics from the training part only, so validation and test never inform preprocessing.
    mean, std = train.x.mean(dim=(0, 2, 3)), train.x.std(dim=(0, 2, 3))
    train, val, test = (TensorData(normalise(d.x, mean, std), d.y, d.index)
                        for d in (train, val, all_data.take(test_idx)))
    return Splits("digits", train, val, test, 10, (3, size, size))


def _cifar(name: str, *, data_dir: Path | None, download: bool, image_size: int | None,
           val_fraction: float, seed: int) -> Splits:
    import torchvision.datasets as tvd

    if data_dir is None:
        raise DataError(f"Dataset {name!r} needs a folder: pass --data-dir DIR (and --download to fetch it).")
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    try:
        sources = [cls(root=str(data_dir), train=t, download=download) for t in (True, False)]
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        raise DataError(f"Dataset {name!r} is missing or corrupted in {str(data_dir)!r}; pass the "
                        f"--data-dir that holds it, or --download to fetch it.") from None
    size = image_size or 32
    mean, std = CIFAR_STATS[name]
    train, test = (_images_to_tensors(src.data, src.targets, mean, std, size) for src in sources)
    train, val = carve_validation(train, val_fraction, seed)
    return Splits(name, train, val, test, len(sources[0].classes), (3, size, size))


def _images_to_tensors(images: np.ndarray, targets: Sequence[int], mean: Sequence[float],
                       std: Sequence[float], size: int) -> TensorData:
    """uint8 (N,H,W,C) images -> normalised float TensorData of (N,C,size,size)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    x = normalise(resize(x, size), mean, std).contiguous()
    return TensorData(x, torch.as_tensor(np.asarray(targets), dtype=torch.long))


# CIFAR is held in memory and normalised, without augmentation: that is the trainer's job.
for _name in CIFAR_STATS:
    register_dataset(_name)(functools.partial(_cifar, _name))


@register_dataset("imagefolder")
def _imagefolder(*, data_dir: Path | None, image_size: int | None, val_fraction: float, seed: int,
                 **_: object) -> Splits:
    """``data_dir/train/<class>/*.png`` and ``data_dir/val/`` (or ``test/``), read lazily from disk."""
    import torchvision.datasets as tvd

    expected = "train/ and val/ (or test/) subfolders, each with one folder of images per class"
    if data_dir is None:
        raise DataError(f"Dataset 'imagefolder' needs --data-dir DIR holding {expected}.")
    if not data_dir.is_dir():
        raise DataError(f"Image folder {str(data_dir)!r} does not exist; expected a folder of {expected}.")
    test_dir = next((data_dir / s for s in ("val", "test") if (data_dir / s).is_dir()), None)
    if not (data_dir / "train").is_dir() or test_dir is None:
        raise DataError(f"Image folder {str(data_dir)!r} lacks train/ or val/; expected {expected}.")
    size = image_size or 224
    train_tf, eval_tf = imagefolder_transforms(size)
    parts = []
    for folder, tf in ((data_dir / "train", train_tf), (data_dir / "train", eval_tf), (test_dir, eval_tf)):
        try:
            parts.append(tvd.ImageFolder(str(folder), transform=tf))
        except (FileNotFoundError, RuntimeError) as e:  # no class folders, or no images in them
            msg = f"Image folder {str(folder)!r} holds no images ({e}); expected {expected}."
            raise DataError(msg) from None
    augmented, plain, test = parts
    if plain.classes != test.classes:
        raise DataError(f"Image folders {str(data_dir / 'train')!r} and {str(test_dir)!r} have different "
                        f"classes: {plain.classes[:5]} vs {test.classes[:5]}.")
    # One carve of train/: its training part read with augmentation, the held-out part as a test image is.
    keep, held = carve(len(plain), val_fraction, seed, np.asarray(plain.targets))
    train, val = Subset(augmented, keep.tolist()), Subset(plain, held.tolist())
    train.augments = True  # the trainer adds no augmentation of its own
    return Splits("imagefolder", train, val, test, len(test.classes), (3, size, size))


def imagefolder_transforms(size: int, mean: Sequence[float] = IMAGENET_STATS[0],
                           std: Sequence[float] = IMAGENET_STATS[1]):
    """(training, evaluation) transforms of an image folder: a random resized crop and a horizontal flip
    for training, a resize to ``size / 0.875`` and a centre crop for evaluation (the validation part
    carved from ``train/`` included), both normalised. A different recipe: register a dataset of your own
    (:func:`~autoprune.data.register_dataset`) that builds its splits with it."""
    import torchvision.transforms as T

    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    evaluate = T.Compose([T.Resize(round(size / 0.875)), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
    return train, evaluate


# --------------------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the original MNIST format, gzipped or not) as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        if raw[:2] != b"\0\0" or raw[2] != 0x08:
            raise ValueError("not an IDX file of unsigned bytes")
        dims = raw[3]
        shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)
    except (OSError, ValueError, IndexError, EOFError) as e:
        raise DataError(f"Fashion-MNIST file {str(path)!r} is unreadable ({e}); expected the original IDX files "
                        f"(train-images-idx3-ubyte.gz and three more).") from None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for base in (folder, folder / "FashionMNIST" / "raw"):  # a plain folder, or torchvision's layout
        for name in (f"{stem}.gz", stem):
            if (base / name).is_file():
                return base / name
    return None


def _fashion_files(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    files = {part: tuple(_idx_file(folder, stem) for stem in stems) for part, stems in _FASHION_FILES.items()}
    return files if all(p is not None for pair in files.values() for p in pair) else None


@register_dataset("fashion_mnist")
def _fashion_mnist(*, data_dir: Path | None, download: bool, image_size: int | None, val_fraction: float, seed: int,
                   **_: object) -> Splits:
    """Zalando's Fashion-MNIST (MIT licence): 60,000 training and 10,000 test images, 28x28 grey, 10 classes.

    Read from ``data_dir`` (the four original IDX files, gzipped or not, or torchvision's
    ``FashionMNIST/raw/`` layout), else from Debian's ``/usr/share/datasets/fashion-mnist`` or an
    earlier download; with ``download``, torchvision's ``FashionMNIST`` fetches it into ``data_dir``
    (default ``~/.cache/autoprune``, where later runs and ``apply`` find it).
    """
    folders = [data_dir] if data_dir is not None else list(FASHION_MNIST_DIRS)
    found = next((f for f in (_fashion_files(d) for d in folders) if f is not None), None)
    if found is None and download:
        import torchvision.datasets as tvd

        root = data_dir or _CACHE
        try:
            tvd.FashionMNIST(root=str(root), train=True, download=True)
            tvd.FashionMNIST(root=str(root), train=False, download=True)
        except Exception as e:  # no network, a proxy, a full disk: say so in one line
            raise DataError(f"Could not download Fashion-MNIST into {str(root)!r}: {type(e).__name__}: {e}") from None
        found = _fashion_files(Path(root))
    if found is None:
        where = " or ".join(repr(str(f)) for f in folders)
        raise DataError(f"Fashion-MNIST not found in {where}; install it with `apt-get install dataset-fashion-mnist` "
                        f"(Debian/Ubuntu), give --data-dir DIR holding train-images-idx3-ubyte.gz and the three "
                        f"other IDX files, or add --download.")
    parts = {}
    for part, (images, labels) in found.items():
        x, y = _read_idx(images), _read_idx(labels)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"Fashion-MNIST files {str(images)!r} and {str(labels)!r} do not match: "
                            f"{x.shape} images, {y.shape} labels.")
        parts[part] = TensorData(torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1),
                                 torch.from_numpy(y.astype(np.int64)))
    size = image_size or 28
    train, val = carve_validation(parts["train"], val_fraction, seed)
    # Statistics of the training part only, so validation and test never inform preprocessing.
    mean, std = train.x.mean(dim=(0, 2, 3)), train.x.std(dim=(0, 2, 3))
    train, val, test = (TensorData(normalise(resize(d.x, size), mean, std), d.y, d.index)
                        for d in (train, val, parts["test"]))
    return Splits("fashion_mnist", train, val, test, 10, (1, size, size))
