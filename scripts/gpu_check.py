"""GPU check: search throughput and compute share on one CUDA GPU, whole trials or packed by fractions.

One self-contained run (about 3 to 5 minutes on an H100; under 8 by design) on synthetic
CIFAR-shaped data, so nothing is downloaded: ``--train-size`` random 3x32x32 images in 10 classes,
each class adding its own fixed pattern to Gaussian noise, so that finetuning has something to
learn. The data set is registered with ``ap.register_dataset`` in this process: only the search's
driver loads data (Ray's workers get the tensors from it through the object store), so the
workers never need to import this script. A resnet56 is trained for ``--baseline-epochs`` on it
(not counted) and searched at 50% FLOPs, once per ``--gpus-per-trial`` setting (1.0: one trial
on the GPU; 0.25: four trials share it), with bf16 autocast and channels-last, as train.py does on
CUDA. For each setting it writes a row of ``results/benchmarks/gpu.csv``:

    gpus_per_trial, concurrency, trials, seconds, trials_per_hour, compute_share, ...

``compute_share`` is (BN recalibration + finetune + evaluation) over the search's trial-slot time
(wall time x concurrency), as in bench_overhead.py; ``compute_share_trials`` is the per-trial view.

``--dry-run`` checks the whole path on the CPU in a minute or two: resnet20, 16x16 images, 2
trials per setting at concurrency 1 and 2 (gpus_per_trial 0), into
``results/bench/gpu/gpu_dry_run.csv`` unless ``--out`` says otherwise.

Run from the repository root::

    python scripts/gpu_check.py --dry-run       # on the CPU
    python scripts/gpu_check.py                 # on a CUDA machine
    python scripts/gpu_check.py --out $OUT/gpu.csv --trials 12
"""
from __future__ import annotations

import argparse
import csv
import functools
import os
import time
from pathlib import Path

import torch

import autoprune as ap
from autoprune import SearchConfig, Splits, TensorData, TrainConfig, evaluate, search, train

__all__ = ["main", "synthetic_splits"]

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks" / "gpu.csv"
_DRY_OUT = _ROOT / "results" / "bench" / "gpu" / "gpu_dry_run.csv"
_RUNS = _ROOT / "results" / "bench" / "gpu"

COMPUTE_PARTS = ("bn_recalibration", "finetune", "evaluate")
COLUMNS = ["gpus_per_trial", "concurrency", "trials", "seconds", "trials_per_hour", "compute_share",
           "compute_share_tuner", "compute_share_trials", "tuner_seconds", "finetune_s_mean", "trial_s_mean",
           "overhead_s_mean", "val_acc_mean", "model", "train_size", "image_size", "finetune_epochs", "batch_size",
           "cpus_per_trial", "device"]


def synthetic_splits(*, train_size: int, image_size: int, val_fraction: float = 0.1, classes: int = 10,
                     seed: int = 0, **_: object) -> Splits:
    """Random CIFAR-shaped images: Gaussian noise plus a fixed pattern per class (learnable, not trivial)."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 3, image_size, image_size, generator=g)

    def draw(n: int) -> TensorData:
        y = torch.randint(0, classes, (n,), generator=g)
        x = torch.randn(n, 3, image_size, image_size, generator=g) + 0.5 * patterns[y]
        return TensorData(x, y)

    n_val = max(1, round(val_fraction * train_size))
    train_ds, val_ds, test_ds = draw(train_size - n_val), draw(n_val), draw(max(1, train_size // 10))
    return Splits(f"synthetic-{train_size}x{image_size}", train_ds, val_ds, test_ds, classes,
                  (3, image_size, image_size))


def _register(train_size: int, image_size: int) -> str:
    name = f"synthetic-{train_size}x{image_size}"
    if name not in ap.list_datasets():
        def build(*, val_fraction: float, seed: int, **_: object) -> Splits:
            return synthetic_splits(train_size=train_size, image_size=image_size, val_fraction=val_fraction,
                                    seed=seed)

        ap.register_dataset(name)(functools.update_wrapper(build, synthetic_splits))
    return name


def _baseline(model_name: str, dataset: str, epochs: float, batch_size: int, device: str, folder: Path) -> str:
    """Train briefly on the synthetic data and save the weights: pruning then sees real magnitudes."""
    splits = ap.load_dataset(dataset)
    model = ap.create_model(model_name, num_classes=splits.num_classes, in_channels=3)
    start = time.perf_counter()
    if epochs > 0:
        train(model, splits.train, TrainConfig(epochs=epochs, lr=0.1, batch_size=batch_size, warmup_epochs=0),
              device=device)
    acc = evaluate(model, splits.val, device=device)
    print(f"baseline: {model_name} trained {epochs:g} epoch(s) on {device} in {time.perf_counter() - start:.1f}s, "
          f"val_acc {acc:.3f}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "base.pt"
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    return str(path)


def _row(outcome, gpus: float, concurrency: int, cfg: SearchConfig, args, device: str) -> dict:
    t = outcome.trials
    ok = t[t["status"] == "ok"]
    compute = sum(float(t[f"t:{p}"].fillna(0).sum()) for p in COMPUTE_PARTS if f"t:{p}" in t)
    trial_s = float(t["trial_s"].fillna(0).sum())
    tuner = outcome.timings.get("tuner", float("nan"))
    overhead = ok["trial_s"] - sum(ok[f"t:{p}"].fillna(0) for p in COMPUTE_PARTS if f"t:{p}" in ok)
    return {"gpus_per_trial": gpus, "concurrency": concurrency, "trials": len(t), "seconds": outcome.seconds,
            "trials_per_hour": len(t) / outcome.seconds * 3600,
            "compute_share": compute / (outcome.seconds * concurrency),
            "compute_share_tuner": compute / (tuner * concurrency), "compute_share_trials": compute / trial_s,
            "tuner_seconds": tuner, "finetune_s_mean": float(ok["finetune_s"].mean()),
            "trial_s_mean": float(ok["trial_s"].mean()), "overhead_s_mean": float(overhead.mean()),
            "val_acc_mean": float(ok["val_acc"].mean()), "model": cfg.model, "train_size": args.train_size,
            "image_size": args.image_size, "finetune_epochs": cfg.finetune_epochs, "batch_size": cfg.batch_size,
            "cpus_per_trial": cfg.cpus_per_trial, "device": device}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, resnet20, 16x16 images, 2 trials per setting")
    p.add_argument("--model", default=None, help="default resnet56 (dry run: resnet20)")
    p.add_argument("--gpus-per-trial", default="1.0,0.25", help="settings to compare (default 1.0,0.25)")
    p.add_argument("--trials", type=int, default=None, help="trials per setting (default 8; dry run 2)")
    p.add_argument("--train-size", type=int, default=None, help="synthetic images (default 10000; dry run 512)")
    p.add_argument("--image-size", type=int, default=None, help="default 32 (dry run 16)")
    p.add_argument("--finetune-epochs", type=float, default=None, help="per trial (default 2, the search's; dry 0.5)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--baseline-epochs", type=float, default=None, help="default 2 (dry run 0.5)")
    p.add_argument("--out", default=None, help=f"default {_OUT.relative_to(_ROOT)} ({_DRY_OUT.relative_to(_ROOT)} "
                                               "for a dry run)")
    args = p.parse_args(argv)
    dry = args.dry_run
    defaults = dict(model="resnet20", trials=2, train_size=512, image_size=16, finetune_epochs=0.5,
                    baseline_epochs=0.5) if dry else dict(model="resnet56", trials=8, train_size=10000, image_size=32,
                                                          finetune_epochs=2.0, baseline_epochs=2.0)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    out = Path(args.out or (_DRY_OUT if dry else _OUT))
    if not dry and not torch.cuda.is_available():
        p.error("no CUDA GPU here; use --dry-run to check the path on the CPU")
    cores = os.cpu_count() or 1
    if dry:  # the CPU stands in for the GPU: concurrency 1 and 2, one core per trial
        settings = [(0.0, 1), (0.0, min(2, cores))]
        device = "cpu"
    else:
        settings = [(g, max(1, int(1 / g + 1e-9))) for g in (float(v) for v in args.gpus_per_trial.split(","))]
        device = torch.cuda.get_device_name(0)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = _RUNS / stamp
    dataset = _register(args.train_size, args.image_size)
    print(f"gpu_check{' --dry-run' if dry else ''}: {args.model} on {dataset}, {args.trials} trials x "
          f"{args.finetune_epochs:g} epochs per setting {settings} (gpus_per_trial, concurrency), device {device}")
    checkpoint = _baseline(args.model, dataset, args.baseline_epochs, args.batch_size, "cpu" if dry else "cuda", folder)
    rows = []
    for gpus, concurrency in settings:
        cfg = SearchConfig(model=args.model, dataset=dataset, checkpoint=checkpoint, budget_flops="50%",
                           trials=args.trials, finetune_epochs=args.finetune_epochs, batch_size=args.batch_size,
                           concurrency=concurrency, gpus_per_trial=gpus,
                           cpus_per_trial=1.0 if dry else max(1.0, float(cores // concurrency)),
                           device="cpu" if dry else "auto", results_dir=str(folder), name=f"g{gpus:g}-c{concurrency}")
        outcome = search(cfg, log=lambda line: print(f"  {line}"))
        rows.append(_row(outcome, gpus, concurrency, cfg, args, device))
        r = rows[-1]
        print(f"gpus_per_trial {gpus:g} x {concurrency}: {r['trials']} trials in {r['seconds']:.0f}s "
              f"({r['trials_per_hour']:.0f}/h), compute_share {r['compute_share']:.3f} (tuner "
              f"{r['compute_share_tuner']:.3f}, per trial {r['compute_share_trials']:.3f}), finetune "
              f"{r['finetune_s_mean']:.1f}s and other {r['overhead_s_mean']:.1f}s per trial")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
