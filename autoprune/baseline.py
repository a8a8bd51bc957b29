"""Baselines: train an unpruned model once, save it with its metrics, and cache it for searches.

``autoprune train`` writes ``DIR/model.pt`` (``{"state_dict": ..., "autoprune": {"split": ..., ...}}``: the
weights and the data split they never trained on), ``DIR/metrics.json`` and ``DIR/log.csv``.
A search without ``--checkpoint`` reuses ``results/baselines/<key>/`` or trains it there first;
that path evaluates only the validation split, since search decisions never look at test data.

Example:
    >>> info = train_baseline(model, splits, TrainConfig(epochs=15), out="/tmp/base", device="cpu")
"""
from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch.nn as nn

from .atomic import write_json, write_text
from .progress import Progress

__all__ = ["train_baseline", "ensure_baseline", "baseline_recipe", "split_of", "SPLIT_KEYS"]

# What decides which training images a model saw: a checkpoint records these, and a search refuses
# a checkpoint whose split differs from its own (it would have trained on the validation images).
SPLIT_KEYS = ("dataset", "val_fraction", "split_seed")


def split_of(dataset: str, val_fraction: float, split_seed: int) -> dict:
    """The record of a data split, as checkpoints store it."""
    return {"dataset": dataset, "val_fraction": float(val_fraction), "split_seed": int(split_seed)}


def baseline_recipe(dataset: str, epochs: int, seed: int = 0):
    """The training recipe for a baseline: SGD + cosine, lr 0.1 (0.05 for the small digits set)."""
    from .training import TrainConfig

    lr = 0.05 if dataset == "digits" else 0.1
    hflip = dataset in ("cifar10", "cifar100", "imagefolder")  # flips would turn digits into non-digits
    return TrainConfig(epochs=epochs, lr=lr, batch_size=64 if dataset == "digits" else 128, hflip=hflip,
                       seed=seed, weight_decay=5e-4)


def train_baseline(model: nn.Module, splits, cfg, *, out: str | Path, device, evaluate_test: bool, split: Mapping,
                   log: Callable[[str], None] = print, extra: Mapping[str, Any] | None = None) -> dict:
    """Train ``model`` in place, then write model.pt, metrics.json and log.csv under ``out``.

    ``split`` (see :func:`split_of`) is recorded in model.pt's metadata and in metrics.json.
    """
    import pandas as pd

    from .costs import count_flops, count_params
    from .models import save_checkpoint
    from .task import Classification

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    progress = Progress(math.ceil(cfg.epochs), unit="epoch", log=log)

    def on_epoch(row: dict) -> None:
        rows.append(row)
        progress.write(f"epoch {row['epoch']:>5.1f}  loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.4f}"
                       + (f"  val_acc {row['val_acc']:.4f}" if "val_acc" in row else "")
                       + f"  {row['seconds']:.1f}s  [{progress.step(val_acc=row.get('val_acc', math.nan))}]")

    task = Classification.of(splits)
    start = time.perf_counter()
    try:
        task.train(model, cfg, device=device, on_epoch=on_epoch)
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    model.cpu().eval()
    example = splits.example_input()
    metrics = {
        "val_acc": task.evaluate(model, device=device),
        "test_acc": task.evaluate(model, device=device, split="test") if evaluate_test else None,
        "flops": count_flops(model, example), "params": count_params(model),
        "epochs": cfg.epochs, "seconds": round(seconds, 2), "recipe": cfg.to_dict(),
        "input_shape": list(splits.input_shape), "num_classes": splits.num_classes, "split": dict(split),
        **(extra or {}),
    }
    model.cpu()
    # Written atomically: two searches may train the same cached baseline at once.
    save_checkpoint(model, out / "model.pt", {"split": dict(split), "recipe": cfg.to_dict(), **(extra or {})})
    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False)
    write_text(out / "log.csv", buf.getvalue())
    write_json(out / "metrics.json", metrics)
    return metrics


def ensure_baseline(model: nn.Module, splits, config, *, device, log: Callable[[str], None] = print) -> dict:
    """Load the cached baseline of (model, dataset, seed, epochs) into ``model``, training it first if needed."""
    from .models import load_checkpoint

    size = f"-{config.image_size}px" if config.image_size else ""
    # The key holds everything that decides which images the baseline trained on, so a cached
    # baseline is never reused with a split whose validation images it has seen.
    key = (f"{config.model}-{config.dataset}{size}-v{config.val_fraction:g}-e{config.baseline_epochs}"
           f"-s{config.split_seed}").replace(":", "_").replace("/", "_")
    folder = Path(config.results_dir) / "baselines" / key
    if (folder / "model.pt").is_file() and (folder / "metrics.json").is_file():
        load_checkpoint(model, folder / "model.pt")
        metrics = json.loads((folder / "metrics.json").read_text())
        log(f"baseline: using the cached {folder} (val_acc {metrics['val_acc']:.4f})")
    else:
        cfg = baseline_recipe(config.dataset, config.baseline_epochs, config.split_seed)
        log(f"baseline: no --checkpoint, training {config.model} on {config.dataset} for {cfg.epochs} epochs "
            f"once (cached in {folder}); give --checkpoint to skip this")
        start = time.perf_counter()
        metrics = train_baseline(model, splits, cfg, out=folder, device=device, evaluate_test=False, log=log,
                                 split=split_of(config.dataset, config.val_fraction, config.split_seed),
                                 extra={"model": config.model})
        log(f"baseline: trained in {time.perf_counter() - start:.0f}s, val_acc {metrics['val_acc']:.4f}")
    return {"source": str((folder / "model.pt").resolve()), "test_acc": metrics.get("test_acc")}
