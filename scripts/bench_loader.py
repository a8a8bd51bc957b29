"""Loading a disk-backed dataset: autoprune's loader against a plain torchvision DataLoader (issue 28).

A folder of generated JPEGs (``--images`` per split, 256 x 256, two classes) is read as ``imagefolder``
(random resized crop and flip for training, decoded by ``--workers`` processes) by autoprune's
``make_loader`` and by a plain ``torch.utils.data.DataLoader`` over ``torchvision.datasets.ImageFolder``
with the same transforms, batch and workers. Each (loader, workers) runs in its own process, one pass
over the training split, twice in alternation; the faster pass counts. ``peak_rss_mb`` is the peak
resident memory of that process plus ``workers`` times the largest worker's peak (the kernel keeps
only the largest finished child's; an upper bound). Rows go to
``results/benchmarks/loader.csv``; compare ratios within one run (the machine is shared).

A search's memory on a >= 1 GB folder against a 0.1 GB one: ``scripts/bench_search_memory.py``.

    python scripts/bench_loader.py                 # 0.1 GB-ish folder, workers 0 and 2
    python scripts/bench_loader.py --images 400 --workers 0,1
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchrows  # scripts/ is on sys.path when a script runs

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks" / "loader.csv"
COLUMNS = ["loader", "workers", "image_size", "images", "images_per_s", "peak_rss_mb", "folder_mb", "commit"]
BATCH = 64



def make_folder(root: Path, images: int) -> float:
    """``images`` JPEGs per split under root/train and root/val (two classes); returns the size in MB."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", images), ("val", max(2, images // 10))):
        for i in range(n):
            folder = root / split / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            # smooth noise compresses like a photograph more than white noise does
            small = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(small).resize((256, 256), Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)
    return sum(f.stat().st_size for f in root.rglob("*.jpg")) / 2**20


def one_pass(kind: str, folder: str, workers: int, size: int) -> dict:
    """Runs in a fresh process: one pass over the training split; images/s and peak memory."""
    import torch

    torch.set_num_threads(1)
    if kind == "autoprune":
        import autoprune as ap
        from autoprune.loader import make_loader

        splits = ap.load_dataset("imagefolder", data_dir=folder, image_size=size, val_fraction=0.1, seed=0)
        loader = make_loader(splits.train, BATCH, shuffle=True, seed=0, num_workers=workers)
    else:
        import torchvision.datasets as tvd
        from torch.utils.data import DataLoader, Subset

        from autoprune.data import carve
        from autoprune.datasets import imagefolder_transforms

        train_tf, _ = imagefolder_transforms(size)
        full = tvd.ImageFolder(os.path.join(folder, "train"), transform=train_tf)
        keep, _ = carve(len(full), 0.1, 0, None)
        loader = DataLoader(Subset(full, keep.tolist()), BATCH, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0)
    start = time.perf_counter()
    seen = 0
    for x, _ in loader:
        seen += len(x)
    seconds = time.perf_counter() - start
    del loader  # its workers exit and are reaped, so that their peaks are counted below
    gc.collect()
    main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers else 0.0
    # the kernel keeps the largest finished child's peak, not their sum: an upper bound of all of them
    return {"images": seen, "images_per_s": seen / seconds, "peak_rss_mb": main + workers * worker}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000, help="training images (default 1000, about 0.1 GB)")
    p.add_argument("--workers", default="0,2")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--out", default=str(_OUT))
    p.add_argument("--one", nargs=3, metavar=("KIND", "FOLDER", "WORKERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        kind, folder, workers = args.one
        print(json.dumps(one_pass(kind, folder, int(workers), args.image_size)))
        return 0
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="autoprune-loader-") as tmp:
        folder_mb = make_folder(Path(tmp), args.images)
        print(f"folder: {args.images} training JPEGs, {folder_mb:.0f} MB", flush=True)
        rows = []
        for workers in [int(w) for w in args.workers.split(",")]:
            best: dict[str, dict] = {}
            for _ in range(2):  # alternate the two loaders, twice: the faster pass of each counts
                for kind in ("autoprune", "torchvision"):
                    done = subprocess.run([sys.executable, __file__, "--one", kind, tmp, str(workers),
                                           "--image-size", str(args.image_size)],
                                          capture_output=True, text=True, check=True)
                    r = json.loads(done.stdout.strip().splitlines()[-1])
                    if kind not in best or r["images_per_s"] > best[kind]["images_per_s"]:
                        best[kind] = r
            for kind, r in best.items():
                rows.append({"loader": kind, "workers": workers, "image_size": args.image_size, "images": r["images"],
                             "images_per_s": round(r["images_per_s"], 1), "peak_rss_mb": round(r["peak_rss_mb"]),
                             "folder_mb": round(folder_mb), "commit": benchrows.commit()})
            ratio = best["autoprune"]["images_per_s"] / best["torchvision"]["images_per_s"]
            print(f"workers {workers}: autoprune {best['autoprune']['images_per_s']:.0f} images/s, plain DataLoader "
                  f"{best['torchvision']['images_per_s']:.0f} images/s: {ratio:.2f}x", flush=True)
    benchrows.append_rows(out, COLUMNS, rows)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
