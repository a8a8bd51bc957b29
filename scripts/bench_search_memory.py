"""Does a search's memory grow with the size of a disk-backed dataset? (issue 28)

Generates image folders of JPEGs (256 x 256, two classes, ``train/`` and ``val/``) of about 0.1 GB and
of at least 1 GB, and runs the same search on each as a user would (``autoprune search --dataset
imagefolder --data-dir ...``: resnet20 at 32 px from a saved random checkpoint, so that no baseline
is trained, 4 trials at concurrency 2, a finetune of ``--finetune-images`` images per trial, BatchNorm
recalibration and the validation carved from ``train/``, read in full by every trial). While it runs,
the peak resident memory (``VmHWM``) of every process the search started is read from ``/proc``
every 0.2 s: the driver, and each Ray worker process (trials and their loader processes). A dataset
that were copied into memory or through Ray's object store would show in both.

Rows go to ``results/benchmarks/search_memory.csv`` (``folder_gb, train_images, driver_peak_mb,
worker_peak_mb, workers, trials_ok, seconds, commit``); the goal is peaks within 10% of each other.
The folders are generated in ``--work`` (default: a temporary folder, removed afterwards).

    python scripts/bench_search_memory.py                 # ~0.1 GB and ~1.1 GB, about 15 minutes
    python scripts/bench_search_memory.py --gb 0.1 --work /tmp/mem
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchrows  # scripts/ is on sys.path when a script runs

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks" / "search_memory.csv"
COLUMNS = ["folder_gb", "train_images", "driver_peak_mb", "worker_peak_mb", "workers", "trials_ok", "seconds",
           "commit"]
IMAGE_KB = 20  # a 256 x 256 JPEG of smooth noise at quality 90 (measured by make_folder)


def make_folder(root: Path, gb: float) -> tuple[int, float]:
    """JPEGs under root/train and root/val until train/ holds ``gb`` GB; (training images, GB)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    total, n = 0, 0
    while total < gb * 2**30:
        folder = root / "train" / f"c{n % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        path = folder / f"{n}.jpg"
        Image.fromarray(small).resize((256, 256), Image.BILINEAR).save(path, quality=90)
        total += path.stat().st_size
        n += 1
    for i in range(max(20, n // 50)):  # a small val/ (the test split; a search never reads it)
        folder = root / "val" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).resize((256, 256)).save(
            folder / f"{i}.jpg", quality=90)
    return n, total / 2**30


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _peak_kb(pid: int) -> tuple[int, str] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]), cmd
    return None


def watch(proc: subprocess.Popen) -> dict[int, tuple[int, str]]:
    """Peak memory (kB) and command line of the driver and every process below it, until it exits."""
    peaks: dict[int, tuple[int, str]] = {}
    while proc.poll() is None:
        tree, todo = _children(), [proc.pid]
        while todo:
            pid = todo.pop()
            todo.extend(tree.get(pid, []))
            got = _peak_kb(pid)
            if got is not None and got[0] >= peaks.get(pid, (0, ""))[0]:
                peaks[pid] = got
        time.sleep(0.2)
    return peaks


def one_search(folder: Path, results: Path, checkpoint: Path, finetune_images: int, train_images: int) -> dict:
    epochs = max(finetune_images / (0.9 * train_images), 1e-4)
    name = f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"  # a rerun on kept folders is a new run
    cmd = [sys.executable, "-m", "autoprune", "search", "--dataset", "imagefolder", "--data-dir", str(folder),
           "--image-size", "32", "--checkpoint", str(checkpoint), "--budget-flops", "50%", "--trials", "4",
           "--concurrency", "2", "--finetune-epochs", f"{epochs:.6f}", "--bn-batches", "2",
           "--results-dir", str(results), "--name", name]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    peaks = watch(proc)
    reader.join(timeout=30)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the search on {folder} failed (exit {proc.returncode}):\n" + "".join(out[-20:]))
    workers = {pid: kb for pid, (kb, cmd) in peaks.items() if cmd.startswith("ray::")}
    for pid in sorted(workers, key=workers.get, reverse=True)[:4]:  # which processes peak, for the log
        print(f"  pid {pid}: {workers[pid] / 1024:.0f} MB  {peaks[pid][1][:60]}", flush=True)
    import pandas as pd

    trials = pd.read_csv(results / name / "trials.csv")
    return {"driver_peak_mb": round(peaks[proc.pid][0] / 1024), "workers": len(workers),
            "worker_peak_mb": round(max(workers.values()) / 1024) if workers else None,
            "trials_ok": int((trials["status"] == "ok").sum()), "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", default="0.1,1.05", help="folder sizes in GB, comma-separated")
    p.add_argument("--finetune-images", type=int, default=512, help="images each trial's finetune reads")
    p.add_argument("--work", default=None, help="where the folders go (default: a temporary folder)")
    p.add_argument("--out", default=str(_OUT))
    args = p.parse_args(argv)
    import torch

    from autoprune.models import create_model

    with tempfile.TemporaryDirectory(prefix="autoprune-mem-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = work / "resnet20-2cls.pt"
        torch.manual_seed(0)
        torch.save(create_model("resnet20", num_classes=2).state_dict(), checkpoint)
        for gb in [float(g) for g in args.gb.split(",")]:
            folder = work / f"folder-{gb:g}gb"
            marker = folder / "made.txt"
            if marker.is_file():
                n, size = (float(v) for v in marker.read_text().split())
                n = int(n)
            else:
                t = time.perf_counter()
                n, size = make_folder(folder, gb)
                marker.write_text(f"{n} {size}")
                print(f"folder {folder}: {n} training JPEGs, {size:.2f} GB, made in {time.perf_counter() - t:.0f}s",
                      flush=True)
            row = {"folder_gb": round(size, 3), "train_images": n,
                   **one_search(folder, work / "results", checkpoint, args.finetune_images, n),
                   "commit": benchrows.commit()}
            print(row, flush=True)
            benchrows.append_rows(args.out, COLUMNS, [row])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
