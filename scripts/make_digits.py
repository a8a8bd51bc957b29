"""Write the bundled digits data set: ``autoprune/data/digits.npz`` and its card ``DIGITS.md``.

Run once from the repository root (scikit-learn ships the data, so nothing is downloaded)::

    python scripts/make_digits.py

The arrays are stored exactly as scikit-learn holds them (8x8 grey levels 0..16), so ``data.py``
owns all scaling, resizing and normalisation, and the file never has to be regenerated when those
change.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

__all__ = ["main", "make_digits"]

_OUT = Path(__file__).resolve().parent.parent / "autoprune" / "data"

_CARD = """\
# digits: the bundled data set

`digits.npz` holds the 1,797 8x8 grey-level images of handwritten digits (classes 0-9) that ship
with scikit-learn as `sklearn.datasets.load_digits()`. autoprune uses it as its default data set
because it is small, needs no download, and trains to high accuracy in seconds on a CPU.

| array | dtype | shape | values |
|---|---|---|---|
| `images` | uint8 | (1797, 8, 8) | 0..16, as in the source |
| `labels` | uint8 | (1797,) | 0..9 |

## Source

UCI Machine Learning Repository, "Optical Recognition of Handwritten Digits"
(test portion), E. Alpaydin and C. Kaynak, 1998. <https://doi.org/10.24432/C50P49>,
as distributed by scikit-learn {sklearn_version} (`sklearn.datasets.load_digits`).

## Licence

Creative Commons Attribution 4.0 International (CC BY 4.0),
<https://creativecommons.org/licenses/by/4.0/>. Credit: Alpaydin, E. and Kaynak, C. (1998).
Optical Recognition of Handwritten Digits [Dataset]. UCI Machine Learning Repository.

## How it was produced

`python scripts/make_digits.py`: `load_digits()` once, the `images` (float 0..16) cast to uint8
without rescaling, `target` cast to uint8, written with `numpy.savez_compressed`. No samples were
added, removed or reordered.

sha256 of `digits.npz`: `{sha256}`
"""


def make_digits(out_dir: Path = _OUT) -> Path:
    """Write ``digits.npz`` and ``DIGITS.md`` into ``out_dir`` and return the npz path.

    Example:
        >>> make_digits(Path("autoprune/data"))  # doctest: +SKIP
    """
    import sklearn
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images)
    # The source values are whole numbers 0..16; check before casting so a changed source cannot
    # be silently truncated.
    whole = np.all(images == np.round(images))
    if images.shape != (1797, 8, 8) or images.min() < 0 or images.max() > 16 or not whole:
        raise ValueError(
            f"Expected 1797 whole-valued 8x8 images in 0..16, but got shape {images.shape}, "
            f"range {images.min()}..{images.max()}."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "digits.npz"
    labels = np.asarray(bunch.target).astype(np.uint8)
    np.savez_compressed(path, images=images.astype(np.uint8), labels=labels)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    card = _CARD.format(sklearn_version=sklearn.__version__, sha256=sha)
    (out_dir / "DIGITS.md").write_text(card)
    return path


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=_OUT, help="where to write")
    args = parser.parse_args()
    path = make_digits(args.out_dir)
    print(f"wrote {path} and {path.parent / 'DIGITS.md'}")


if __name__ == "__main__":
    main()
