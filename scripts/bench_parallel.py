"""Benchmark search throughput: trials per hour at concurrency 1 and 2, and the parallel efficiency.

The same search (the default search: resnet20 on digits, 50% FLOPs, 24 trials of 2 finetune
epochs, 1 CPU per trial, the cached baseline) runs once per concurrency. Optuna's random sampler proposes the same
sequence of policies whatever the concurrency (TPE would see different finished trials), so every
run does the same work. ``efficiency`` is the speed-up over concurrency 1 divided by the
concurrency, from the search's whole wall time; ``efficiency_tuner`` counts only the tuner phase
(trials running), without Ray's start-up and shutdown; ``efficiency_steady`` compares the mean
trial time alone (concurrency 1's over this one's): how well the cores scale once trials run,
without any fixed cost. With ``--repeats`` the concurrencies
alternate (1, 2, 2, 1, ...) so that drift in the machine's load falls on both alike, and the
efficiency uses the median of each concurrency's runs.

Run from the repository root::

    python scripts/bench_parallel.py                  # 24 trials at concurrency 1, then 2
    python scripts/bench_parallel.py --trials 4 --finetune-epochs 0.5

Writes ``results/benchmarks/parallel.csv``; search folders go to ``results/bench/parallel/``.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import autoprune as ap
from autoprune import SearchConfig, ensure_baseline, search

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks" / "parallel.csv"
_RUNS = _ROOT / "results" / "bench" / "parallel"

GOAL_EFFICIENCY = 0.9
COLUMNS = ["concurrency", "trials", "seconds", "trials_per_hour", "efficiency", "tuner_seconds",
           "trials_per_hour_tuner", "efficiency_tuner", "efficiency_steady", "finetune_s_mean", "trial_s_mean",
           "repeat", "loadavg"]


def _order(concurrencies: list[int], repeats: int) -> list[int]:
    out = []
    for r in range(repeats):
        out += concurrencies if r % 2 == 0 else concurrencies[::-1]
    return out


def cached_checkpoint(config: SearchConfig) -> str:
    """The cached baseline that ``autoprune search`` would use for ``config``, trained once if missing."""
    splits = ap.load_dataset(config.dataset, image_size=config.image_size, val_fraction=config.val_fraction,
                             seed=config.seed)
    model = ap.create_model(config.model, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    return ensure_baseline(model, splits, config.replace(results_dir=str(_ROOT / "results")), device="cpu")["source"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=SearchConfig.trials, help="default: the search's, 24")
    p.add_argument("--finetune-epochs", type=float, default=SearchConfig.finetune_epochs,
                   help="default: the search's, 2")
    p.add_argument("--concurrency", default="1,2", help="comma-separated (default 1,2)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--sampler", default="random", help="random (default: same proposals at any concurrency), tpe")
    p.add_argument("--repeats", type=int, default=1, help="runs per concurrency, alternating (default 1)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--out", default=str(_OUT))
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    base = SearchConfig(model=args.model, budget_flops="50%", trials=args.trials, finetune_epochs=args.finetune_epochs,
                        cpus_per_trial=args.cpus_per_trial, sampler=args.sampler)
    base = base.replace(checkpoint=cached_checkpoint(base), results_dir=str(_RUNS))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"bench_parallel: {args.model}, {args.trials} trials x {args.finetune_epochs:g} epochs, "
          f"{args.cpus_per_trial:g} CPU per trial, sampler {args.sampler}, concurrency {levels}, "
          f"{args.repeats} repeat(s); {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for i, c in enumerate(_order(levels, args.repeats)):
        cfg = base.replace(concurrency=c, name=f"{stamp}-c{c}-r{i}")
        outcome = search(cfg, log=lambda line: None)
        t = outcome.trials
        ok = t[t["status"] == "ok"]
        tuner = outcome.timings.get("tuner", float("nan"))
        rows.append({"concurrency": c, "trials": len(t), "seconds": outcome.seconds,
                     "trials_per_hour": len(t) / outcome.seconds * 3600, "tuner_seconds": tuner,
                     "trials_per_hour_tuner": len(t) / tuner * 3600, "finetune_s_mean": float(ok["finetune_s"].mean()),
                     "trial_s_mean": float(ok["trial_s"].mean()), "repeat": i, "loadavg": os.getloadavg()[0]})
        r = rows[-1]
        print(f"  concurrency {c}: {r['trials']} trials in {r['seconds']:.0f}s ({r['trials_per_hour']:.0f}/h; tuner "
              f"{tuner:.0f}s, {r['trials_per_hour_tuner']:.0f}/h), finetune {r['finetune_s_mean']:.1f}s per trial, "
              f"load average {r['loadavg']:.1f}")

    def median(c: int, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["concurrency"] == c)

    ref = min(levels)
    for r in rows:
        c = r["concurrency"]
        r["efficiency"] = r["trials_per_hour"] / median(ref, "trials_per_hour") / (c / ref)
        r["efficiency_tuner"] = r["trials_per_hour_tuner"] / median(ref, "trials_per_hour_tuner") / (c / ref)
        r["efficiency_steady"] = median(ref, "trial_s_mean") / r["trial_s_mean"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4g}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})
    print(f"\n{'concurrency':>11} {'trials/h':>9} {'efficiency':>10} {'tuner trials/h':>15} {'efficiency_tuner':>16} "
          f"{'efficiency_steady':>17}")
    for c in levels:
        print(f"{c:>11} {median(c, 'trials_per_hour'):>9.0f} {median(c, 'efficiency'):>10.3f} "
              f"{median(c, 'trials_per_hour_tuner'):>15.0f} {median(c, 'efficiency_tuner'):>16.3f} "
              f"{median(c, 'efficiency_steady'):>17.3f}")
    top = max(levels)
    cores_allow = top * args.cpus_per_trial <= (os.cpu_count() or 1)
    eff = median(top, "efficiency")
    print(f"efficiency at concurrency {top}: {eff:.3f} (goal {GOAL_EFFICIENCY}"
          + ("" if cores_allow else f"; {top} x {args.cpus_per_trial:g} CPUs exceed the {os.cpu_count()} cores")
          + f"); written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
