"""Benchmark the quality of searched policies against uniform and Torch-Pruning's global pruning.

For every model, FLOPs budget and seed, three methods prune the same trained baseline to the same
budget, then get the identical final recipe (BatchNorm recalibration, then a finetune of
``--final-epochs`` epochs at ``--final-lr``), and are measured on validation and test:

- ``autoprune``: the best policy of a search (the highest validation accuracy on its front; search
  decisions never look at test data), re-applied to the baseline with the channel criterion its
  trial used, so the search's own short finetune is not carried over and every method starts from
  the same weights. The search chooses per trial among the criteria of ``--importance auto``
  (L1 magnitude, BatchNorm scale, first-order Taylor), with the uniform policy as a warm start
  for each;
- ``uniform``: one sparsity for every group, fitted to the budget (``ap.uniform_policy``), L1;
- ``tp_global``: Torch-Pruning's global magnitude pruning (L1, ``global_pruning=True``), its
  pruning ratio bisected until the pruned FLOPs are within 1% under the budget.

``uniform`` and ``tp_global`` rank channels by L1 magnitude, the usual baselines; ``autoprune``
may pick another criterion when its validation accuracy says so, and the ``pick`` column names it.
A ``baseline`` row per model gives the unpruned accuracy.

The baseline of each model is trained once (``--baseline-epochs``) and cached under
``results/baselines/`` (the cache ``autoprune search`` uses). Every seed uses that baseline and the
data split of seed 0: the searches run on the dataset ``digits-split0`` (the bundled digits with
the validation split of seed 0, whatever the search seed), so no search validates on samples the
baseline was trained on. The seed varies the search (Optuna, trial seeds) and the final finetune.

Run from the repository root::

    python scripts/bench_quality.py            # full: under an hour on 2 CPU cores
    python scripts/bench_quality.py --quick    # resnet20, 25% FLOPs, 1 seed, 4 trials: a few minutes
    python scripts/bench_quality.py --models resnet20 --budgets 50,25 --seeds 0,1 --trials 8

Writes ``results/benchmarks/quality.csv`` (one row per model, budget, method, seed, rewritten as
rows finish) and ``results/benchmarks/quality_summary.csv`` (means over seeds); search folders go
to ``results/bench/quality/<time>/``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

import autoprune as ap
from autoprune import SearchConfig, TrainConfig, ensure_baseline, evaluate, search

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parent.parent
_OUT_DIR = _ROOT / "results" / "benchmarks"
_RUNS = _ROOT / "results" / "bench" / "quality"

DATASET = "digits"
SPLIT_SEED = 0  # the data split (and baseline) every seed shares
SPLIT_DATASET = f"digits-split{SPLIT_SEED}"
METHODS = ("autoprune", "uniform", "tp_global")
BATCH_SIZE = 64  # the digits recipe's (baseline_recipe), for searches and the final finetune alike
TP_TOLERANCE = 0.01  # tp_global: pruned FLOPs within 1% under the budget
TP_STEPS = 14  # bisection steps on Torch-Pruning's global ratio

# Searches: 8 trials (the uniform warm start once per criterion, then 5 proposals) x 2 finetune epochs,
# the default search's per-trial finetune. With 1-epoch trials the searches mis-ranked at 25% FLOPs
# (quality_search1epoch.csv, levers.md); 2 epochs with fewer trials keeps the whole run under an hour.
FULL = dict(models="resnet20,resnet56", budgets="50,25,12.5", seeds="0,1,2", trials=8, search_epochs=2.0,
            final_epochs=3)
QUICK = dict(models="resnet20", budgets="25", seeds="0", trials=4, search_epochs=1.0, final_epochs=2)

COLUMNS = ["model", "dataset", "budget", "method", "seed", "flops_ratio", "params_ratio", "val_acc", "test_acc",
           "val_acc_bn", "search_val_acc", "pick", "trials", "search_finetune_epochs", "finetune_epochs",
           "finetune_lr", "baseline_epochs", "prune_s", "finetune_s", "seconds", "search_settings", "note"]
# SearchConfig fields recorded with each autoprune row (the rest are the row's own columns)
SETTINGS = ("sampler", "search_space", "importance", "fill_budget", "finetune_lr", "batch_size", "bn_batches",
            "concurrency", "cpus_per_trial", "val_fraction")
SUMMARY_COLUMNS = ["model", "dataset", "budget", "method", "seeds", "flops_ratio", "val_acc", "val_acc_std",
                   "test_acc", "test_acc_std", "seconds"]


def _digits_fixed_split(*, image_size: int | None, val_fraction: float, **_: object):
    """The bundled digits with the validation split of ``SPLIT_SEED``, whatever seed a search passes."""
    return ap.load_dataset(DATASET, image_size=image_size, val_fraction=val_fraction, seed=SPLIT_SEED)


# Only the driver loads data (Ray workers get the tensors from it), so registering here is enough.
if SPLIT_DATASET not in ap.list_datasets():
    ap.register_dataset(SPLIT_DATASET)(_digits_fixed_split)


def _floats(text: str) -> list[float]:
    return [float(v.strip().rstrip("%")) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _pct(budget: float) -> str:
    return f"{budget * 100:g}%"


# ------------------------------------------------------------------------------------------ methods


def final_finetune(small: nn.Module, splits, *, epochs: float, lr: float, bn_batches: int, seed: int) -> dict:
    """The recipe every method gets (``ap.finetune_pruned``): BN recalibration, finetune, val and test accuracy."""
    done = ap.finetune_pruned(small, splits, TrainConfig(epochs=epochs, lr=lr, batch_size=BATCH_SIZE,
                                                         weight_decay=5e-4, seed=seed),
                              device="cpu", bn_batches=bn_batches)
    return {"val_acc_bn": done["val_acc_bn"], "val_acc": done["val_acc"], "test_acc": done["test_acc"],
            "finetune_s": done["seconds"]}


# ---------------------------------------------------------------------------------------------- run


class Table:
    """Rows of quality.csv, rewritten after every row so an interrupted benchmark keeps what it did."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows = path, []

    def add(self, row: dict) -> None:
        self.rows.append({c: row.get(c, "") for c in COLUMNS})
        _write_csv(self.path, COLUMNS, self.rows)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in row.items()})
    tmp.replace(path)


def _relative(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(_ROOT)) if p.is_relative_to(_ROOT) else str(p)


def _baseline(model_name: str, splits, epochs: int, log: Callable[[str], None]) -> tuple[nn.Module, str]:
    model = ap.create_model(model_name, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    cfg = SearchConfig(model=model_name, dataset=DATASET, baseline_epochs=epochs, seed=SPLIT_SEED,
                       results_dir=str(_ROOT / "results"))
    info = ensure_baseline(model, splits, cfg, device="cpu", log=log)
    return model.cpu().eval(), info["source"]


def _search_best(model_name: str, checkpoint: str, budget: float, seed: int, args, folder: Path,
                 log: Callable[[str], None]) -> tuple[ap.Policy, dict]:
    cfg = SearchConfig(model=model_name, dataset=SPLIT_DATASET, checkpoint=checkpoint, budget_flops=_pct(budget),
                       trials=args.trials, finetune_epochs=args.search_epochs, batch_size=BATCH_SIZE,
                       concurrency=args.concurrency, seed=seed, results_dir=str(folder),
                       name=f"{model_name}-flops{_pct(budget).rstrip('%').replace('.', 'p')}pct-s{seed}")
    outcome = search(cfg, log=lambda line: log(f"    {line}"))
    best = outcome.best
    if best is None:
        raise RuntimeError(f"search {outcome.path} has no feasible trial")
    trial = int(best["trial"])
    run = ap.load_run(outcome.path)
    info = {"trial": trial, "origin": str(best["origin"]), "search_val_acc": float(best["val_acc"]),
            "search_flops": int(best["flops"]), "importance": run.policy(trial).importance or run.config.importances[0],
            "prune_seed": run.config.seed + trial,
            "settings": " ".join(f"{k}={getattr(run.config, k)}" for k in SETTINGS)}
    return run.policy(trial), info


def _prune(method: str, model_name: str, base: nn.Module, x: torch.Tensor, budget: float, seed: int,
           checkpoint: str, args, folder: Path, tp_cache: tuple | None, splits,
           log: Callable[[str], None]) -> tuple[nn.Module, dict]:
    """The pruned copy of ``base`` a method gives, and what to record about how it was chosen."""
    if method == "autoprune":
        policy, info = _search_best(model_name, checkpoint, budget, seed, args, folder, log)
        # the policy records the channels its trial kept (taylor's too); older runs rank them again
        grad_batch = ap.gradient_batch(splits.train) if info["importance"] == "taylor" else None
        small = ap.apply_policy(base, policy, x, importance=info["importance"], seed=info["prune_seed"],
                                grad_batch=grad_batch)
        extra = {"search_val_acc": info["search_val_acc"],
                 "pick": f"trial {info['trial']} ({info['origin']}, {info['importance']})",
                 "search_settings": info["settings"]}
        if ap.count_flops(small, x) != info["search_flops"]:
            extra["note"] = "the re-applied policy's FLOPs differ from the search's"
        return small, extra
    if method == "uniform":
        policy = ap.uniform_policy(base, x, [ap.Budget.parse("flops", _pct(budget))])
        small = ap.apply_policy(base, policy, x, importance="l1", seed=seed)
        return small, {"pick": f"sparsity {next(iter(policy.sparsity.values())):.3f}"}
    # tp_global is deterministic given the baseline: bisect once per budget, reuse it for every seed
    # (each seed's row is charged the bisection time, as if it had run alone).
    shared_s = 0.0
    if tp_cache is None:
        t0 = time.perf_counter()
        tp_cache = (*ap.global_magnitude_prune(base, x, budget, tolerance=TP_TOLERANCE, steps=TP_STEPS),
                    time.perf_counter() - t0)
    else:
        shared_s = tp_cache[3]
    return copy.deepcopy(tp_cache[0]), {"pick": f"global ratio {tp_cache[1]:.4f}", "cache": tp_cache,
                                        "shared_s": shared_s}


def run_benchmark(args, log: Callable[[str], None] = print) -> list[dict]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = _RUNS / stamp
    table = Table(Path(args.out_dir) / "quality.csv")
    splits = ap.load_dataset(DATASET, seed=SPLIT_SEED)
    x = splits.example_input()
    common = dict(dataset=DATASET, trials=args.trials, search_finetune_epochs=args.search_epochs,
                  finetune_epochs=args.final_epochs, finetune_lr=args.final_lr, baseline_epochs=args.baseline_epochs)
    log(f"bench_quality: models {args.models}, budgets {[_pct(b) for b in args.budgets]}, seeds {args.seeds}, "
        f"{args.trials} trials x {args.search_epochs:g} epochs per search, final finetune {args.final_epochs:g} "
        f"epochs at lr {args.final_lr:g}; searches in {folder}")
    for model_name in args.models:
        base, checkpoint = _baseline(model_name, splits, args.baseline_epochs, log)
        base_flops, base_params = ap.count_flops(base, x), ap.count_params(base)
        table.add({**common, "model": model_name, "budget": "100%", "method": "baseline", "seed": SPLIT_SEED,
                   "flops_ratio": 1.0, "params_ratio": 1.0, "val_acc": evaluate(base, splits.val, device="cpu"),
                   "test_acc": evaluate(base, splits.test, device="cpu"), "trials": "", "finetune_epochs": "",
                   "search_finetune_epochs": "", "finetune_lr": "", "note": _relative(checkpoint)})
        for budget in args.budgets:
            tp_cache: tuple[nn.Module, float, float, float] | None = None  # deterministic: one per budget
            for seed in args.seeds:
                for method in args.methods:
                    row = {**common, "model": model_name, "budget": _pct(budget), "method": method, "seed": seed}
                    start = time.perf_counter()
                    try:
                        small, extra = _prune(method, model_name, base, x, budget, seed, checkpoint, args, folder,
                                             tp_cache, splits, log)
                        if method == "tp_global":
                            tp_cache = extra.pop("cache")
                        prune_s = time.perf_counter() - start + extra.pop("shared_s", 0.0)
                        row.update(extra, prune_s=prune_s, flops_ratio=ap.count_flops(small, x) / base_flops,
                                   params_ratio=ap.count_params(small) / base_params)
                        row.update(final_finetune(small, splits, epochs=args.final_epochs, lr=args.final_lr,
                                                  bn_batches=args.bn_batches, seed=seed))
                        row["seconds"] = prune_s + row["finetune_s"]
                    except Exception as e:  # one failed cell must not lose the rest of an hour's run
                        text = str(e).splitlines()[0] if str(e) else ""
                        row.update(note=f"failed: {type(e).__name__}: {text}"[:200],
                                   seconds=time.perf_counter() - start)
                    table.add(row)
                    log(f"{model_name} {_pct(budget):>6} {method:<10} seed {seed}: "
                        + (f"flops {row['flops_ratio']:.3f}  val {row['val_acc']:.4f}  test {row['test_acc']:.4f}  "
                           if "test_acc" in row else f"{row['note']}  ")
                        + f"{row['seconds']:.0f}s")
    return table.rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean (and standard deviation) over seeds per model, budget and method."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if isinstance(r.get("test_acc"), float):
            groups.setdefault((r["model"], r["dataset"], r["budget"], r["method"]), []).append(r)
    out = []
    for (model, dataset, budget, method), rs in groups.items():
        def mean(k: str) -> float:
            return statistics.fmean(float(r[k]) for r in rs)

        def std(k: str) -> float:
            return statistics.stdev(float(r[k]) for r in rs) if len(rs) > 1 else 0.0

        out.append({"model": model, "dataset": dataset, "budget": budget, "method": method, "seeds": len(rs),
                    "flops_ratio": mean("flops_ratio"), "val_acc": mean("val_acc"), "val_acc_std": std("val_acc"),
                    "test_acc": mean("test_acc"), "test_acc_std": std("test_acc"),
                    "seconds": mean("seconds") if all(r.get("seconds") != "" for r in rs) else ""})
    return out


def _print_summary(summary: list[dict], log: Callable[[str], None]) -> None:
    log("\nmean over seeds (accuracy in %, std in points):")
    log(f"{'model':<10} {'budget':>6} {'method':<10} {'seeds':>5} {'flops':>6} {'val_acc':>14} {'test_acc':>14}"
        f" {'seconds':>8}")
    for s in summary:
        secs = f"{s['seconds']:.0f}" if s["seconds"] != "" else ""
        log(f"{s['model']:<10} {s['budget']:>6} {s['method']:<10} {s['seeds']:>5} {s['flops_ratio']:>6.3f} "
            f"{s['val_acc'] * 100:>7.2f} ±{s['val_acc_std'] * 100:>5.2f} {s['test_acc'] * 100:>7.2f} "
            f"±{s['test_acc_std'] * 100:>5.2f} {secs:>8}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="resnet20, 25%% FLOPs, 1 seed, 4 trials, 2 final epochs")
    p.add_argument("--models", default=None, help=f"comma-separated (default {FULL['models']})")
    p.add_argument("--budgets", default=None, help=f"FLOPs budgets in %% (default {FULL['budgets']})")
    p.add_argument("--seeds", default=None, help=f"(default {FULL['seeds']})")
    p.add_argument("--methods", default=",".join(METHODS), help="subset of autoprune,uniform,tp_global")
    p.add_argument("--trials", type=int, default=None, help=f"trials per search (default {FULL['trials']})")
    p.add_argument("--search-epochs", type=float, default=None,
                   help=f"finetune epochs per search trial (default {FULL['search_epochs']:g})")
    p.add_argument("--final-epochs", type=float, default=None,
                   help=f"final finetune epochs, every method (default {FULL['final_epochs']})")
    p.add_argument("--final-lr", type=float, default=0.01, help="final finetune learning rate (default 0.01)")
    p.add_argument("--bn-batches", type=int, default=10, help="BN recalibration batches before the final finetune")
    p.add_argument("--baseline-epochs", type=int, default=15, help="epochs of the cached baseline (default 15)")
    p.add_argument("--concurrency", type=int, default=2, help="search trials at once (default 2)")
    p.add_argument("--out-dir", default=str(_OUT_DIR), help="where quality.csv and quality_summary.csv go")
    p.add_argument("--summarise-only", action="store_true",
                   help="rebuild quality_summary.csv from an existing (possibly partial) quality.csv")
    args = p.parse_args(argv)
    if args.summarise_only:
        import pandas as pd

        rows = pd.read_csv(Path(args.out_dir) / "quality.csv").to_dict("records")
        summary = summarise(rows)
        _write_csv(Path(args.out_dir) / "quality_summary.csv", SUMMARY_COLUMNS, summary)
        _print_summary(summary, print)
        return 0
    preset = QUICK if args.quick else FULL
    for key in ("models", "budgets", "seeds", "trials", "search_epochs", "final_epochs"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.models = [m.strip() for m in str(args.models).split(",") if m.strip()]
    args.budgets = [b / 100 for b in _floats(str(args.budgets))]
    args.seeds = _ints(str(args.seeds))
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not all(0 < b < 1 for b in args.budgets):
        p.error(f"--methods must come from {', '.join(METHODS)} and --budgets lie in (0, 100); "
                f"got {args.methods} and {args.budgets}")
    start = time.perf_counter()
    rows = run_benchmark(args)
    summary = summarise(rows)
    _write_csv(Path(args.out_dir) / "quality_summary.csv", SUMMARY_COLUMNS, summary)
    _print_summary(summary, print)
    print(f"\nwritten: {Path(args.out_dir) / 'quality.csv'}, quality_summary.csv  "
          f"({time.perf_counter() - start:.0f}s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
