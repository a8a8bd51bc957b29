"""Benchmark where a search's time goes: finetune and evaluation compute against everything else.

Runs the default search (``autoprune search --budget-flops 50%``: resnet20 on digits, 2 trials at a
time, 1 CPU each, 2 finetune epochs per trial) on the cached baseline (trained first if missing;
not counted), then splits the search's trial-slot time (wall time x concurrency) into parts:

- driver, while every slot waits: ``prepare`` (data, baseline, sizes, groups, run folder),
  ``driver_context`` (cost model and uniform policy), ``ray_start``, ``ray_shutdown``, ``front``
  (pareto.csv and the plot) and ``driver_other`` (the rest of the search's wall time);
- per trial, summed over trials (the ``t:<part>`` columns of trials.csv): ``context`` (a worker's
  first trial builds its model and cost model), ``fit``, ``prune`` (model copy + dependency graph),
  ``count`` (FLOPs), ``bn_recalibration``, ``finetune``, ``evaluate``, ``trial_other``;
- the tuner phase's slot time outside any trial: ``worker_startup`` (Ray starting each worker
  process, imports, the payload's transfer), ``between_trials`` (Tune's scheduling and reporting,
  Optuna's proposals, trials.csv writes) and ``tail_idle`` (a slot with no trial left to run),
  from the times at which the driver logged each trial.

``compute`` is bn_recalibration + finetune + evaluate; ``compute_share`` is compute over all slot
time (the goal: >= 0.90), ``compute_share_tuner`` over the tuner phase's slot time only, and
``compute_share_trials`` over the summed trial time (the per-trial view).

Run from the repository root::

    python scripts/bench_overhead.py              # the default search: 24 trials
    python scripts/bench_overhead.py --trials 6   # quicker

Writes ``results/benchmarks/overhead.csv``; the search folder goes to ``results/bench/overhead/``.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import time
from pathlib import Path

import autoprune as ap
from autoprune import SearchConfig, ensure_baseline, search

__all__ = ["main", "breakdown"]

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks" / "overhead.csv"
_RUNS = _ROOT / "results" / "bench" / "overhead"

GOAL_COMPUTE_SHARE = 0.90
DRIVER_PARTS = ("prepare", "driver_context", "ray_start", "ray_shutdown", "front")
TRIAL_PARTS = ("context", "fit", "prune", "count", "bn_recalibration", "finetune", "evaluate", "latency")
COMPUTE_PARTS = ("bn_recalibration", "finetune", "evaluate")
COLUMNS = ["part", "scope", "seconds", "slot_seconds", "share", "model", "trials", "concurrency", "finetune_epochs",
           "search_seconds", "loadavg"]


def cached_checkpoint(config: SearchConfig, log=print) -> str:
    """The cached baseline that ``autoprune search`` would use for ``config``, trained once if missing."""
    splits = ap.load_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                             val_fraction=config.val_fraction, seed=config.seed)
    model = ap.create_model(config.model, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    info = ensure_baseline(model, splits, config.replace(results_dir=str(_ROOT / "results")), device="cpu", log=log)
    return info["source"]


def _startup_and_tail(outcome, arrivals: dict[int, float], concurrency: int) -> tuple[float, float]:
    """Slot-seconds before each slot's first trial starts, and after each slot's last trial ends.

    A trial's end is when the driver logged its row (``arrivals``, seconds since the search began);
    its start is that minus its ``trial_s``. The first ``concurrency`` starts open the slots (after
    Ray has started each worker process), the last ``concurrency`` ends close them.
    """
    t = outcome.trials.set_index("trial")
    ends = sorted(arrivals.values())
    starts = sorted(arrivals[n] - float(t.loc[n, "trial_s"]) for n in arrivals if n in t.index)
    d = outcome.timings
    tuner_start = sum(d.get(p, 0.0) for p in ("prepare", "driver_context", "ray_start"))
    tuner_end = tuner_start + d.get("tuner", 0.0)
    startup = sum(max(0.0, s - tuner_start) for s in starts[:concurrency])
    tail = sum(max(0.0, tuner_end - e) for e in ends[-concurrency:])
    return startup, tail


def breakdown(outcome, concurrency: int, arrivals: dict[int, float] | None = None) -> list[dict]:
    """Rows of (part, scope, seconds, slot_seconds, share) from a finished search's timings and trials.csv.

    ``arrivals`` (trial -> seconds since the search began when the driver logged it) splits the
    tuner's slot time outside trials into worker start-up, gaps between trials, and the idle tail.
    """
    trials = outcome.trials
    total = outcome.seconds * concurrency
    rows: list[dict] = []

    def add(part: str, scope: str, seconds: float, slot: float) -> None:
        rows.append({"part": part, "scope": scope, "seconds": seconds, "slot_seconds": slot, "share": slot / total})

    driver = outcome.timings
    for part in DRIVER_PARTS:
        add(part, "driver", driver.get(part, 0.0), driver.get(part, 0.0) * concurrency)
    driver_other = outcome.seconds - sum(driver.get(p, 0.0) for p in (*DRIVER_PARTS, "tuner"))
    add("driver_other", "driver", driver_other, driver_other * concurrency)
    summed = {p: float(trials[f"t:{p}"].fillna(0).sum()) for p in TRIAL_PARTS if f"t:{p}" in trials}
    for part, seconds in summed.items():
        add(part, "trial", seconds, seconds)
    trial_s = float(trials["trial_s"].fillna(0).sum())
    add("trial_other", "trial", trial_s - sum(summed.values()), trial_s - sum(summed.values()))
    tuner_slots = driver.get("tuner", 0.0) * concurrency
    idle = tuner_slots - trial_s
    if arrivals:
        startup, tail = _startup_and_tail(outcome, arrivals, concurrency)
        add("worker_startup", "tuner", startup, startup)
        add("tail_idle", "tuner", tail, tail)
        add("between_trials", "tuner", idle - startup - tail, idle - startup - tail)
    else:
        add("scheduling", "tuner", idle, idle)
    add("total", "all", outcome.seconds, total)
    compute = sum(summed.get(p, 0.0) for p in COMPUTE_PARTS)
    add("compute", "trial", compute, compute)
    rows.append({"part": "compute_share", "scope": "all", "seconds": compute, "slot_seconds": total,
                 "share": compute / total})
    rows.append({"part": "compute_share_tuner", "scope": "tuner", "seconds": compute, "slot_seconds": tuner_slots,
                 "share": compute / tuner_slots if tuner_slots else float("nan")})
    rows.append({"part": "compute_share_trials", "scope": "trial", "seconds": compute, "slot_seconds": trial_s,
                 "share": compute / trial_s if trial_s else float("nan")})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=SearchConfig.trials, help="trials (default: the search's, 24)")
    p.add_argument("--finetune-epochs", type=float, default=SearchConfig.finetune_epochs,
                   help="finetune epochs per trial (default: the search's, 2)")
    p.add_argument("--concurrency", type=int, default=SearchConfig.concurrency, help="trials at once (default 2)")
    p.add_argument("--model", default=SearchConfig.model, help="default resnet20")
    p.add_argument("--budget-flops", default="50%")
    p.add_argument("--out", default=str(_OUT))
    args = p.parse_args(argv)

    config = SearchConfig(model=args.model, budget_flops=args.budget_flops, trials=args.trials,
                          finetune_epochs=args.finetune_epochs, concurrency=args.concurrency)
    checkpoint = cached_checkpoint(config)  # not counted: a user's second search finds it cached too
    config = config.replace(checkpoint=checkpoint, results_dir=str(_RUNS), name=time.strftime("%Y%m%d-%H%M%S"))
    print(f"bench_overhead: {config.model} on {config.dataset}, flops <= {args.budget_flops}, {config.trials} trials "
          f"x {config.finetune_epochs:g} epochs, concurrency {config.concurrency}, {config.cpus_per_trial:g} CPU "
          f"each; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    arrivals: dict[int, float] = {}
    start = time.perf_counter()

    def log(line: str) -> None:
        m = re.match(r"trial\s+(\d+)\s", line)
        if m:
            arrivals[int(m.group(1))] = time.perf_counter() - start
        print(f"  {line}")

    outcome = search(config, log=log)
    load = os.getloadavg()[0]
    rows = breakdown(outcome, config.concurrency, arrivals)
    settings = {"model": config.model, "trials": len(outcome.trials), "concurrency": config.concurrency,
                "finetune_epochs": config.finetune_epochs, "search_seconds": outcome.seconds, "loadavg": load}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({**{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()}, **settings,
                        "search_seconds": f"{outcome.seconds:.1f}", "loadavg": f"{load:.2f}"})
    print(f"\n{'part':<22} {'scope':<7} {'seconds':>9} {'slot_s':>9} {'share':>7}")
    for r in rows:
        print(f"{r['part']:<22} {r['scope']:<7} {r['seconds']:>9.2f} {r['slot_seconds']:>9.2f} {r['share']:>7.3f}")
    share = next(r["share"] for r in rows if r["part"] == "compute_share")
    verdict = "meets" if share >= GOAL_COMPUTE_SHARE else "misses"
    print(f"\ncompute_share {share:.3f} {verdict} the goal {GOAL_COMPUTE_SHARE:.2f} "
          f"({len(outcome.trials)} trials in {outcome.seconds:.0f}s, load average {load:.1f}); written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
