"""Which Optuna sampler should the default search use? TPE, NSGA-II and random at equal compute.

Design (fixed before any figure was seen): resnet20 on fashion_mnist at 25% FLOPs, the default search
of ``bench_quality.py`` (24 trials of 0.1 finetune epoch, 9 of them the uniform curve, concurrency 2)
with only ``--sampler`` changed; seeds 0, 1 and 2. Every search processes the same number of training
images, so compute is equal. The score is the front's final hypervolume (``trials.csv``, reference
point: accuracy 0 and the budget's size), i.e. how much of the accuracy-size plane the front
dominates; the best validation accuracy within the budget is reported beside it. The TPE searches are
``bench_quality.py``'s own (``results/bench/quality/``, same configuration) where they exist.

Rows go to ``results/benchmarks/sampler.csv`` as searches finish; a rerun skips them. The summary
pairs each sampler with TPE over the seeds (mean difference, 95% interval of the paired t, seeds won);
a difference whose interval contains 0 is a tie, and a tie keeps TPE.

    python scripts/bench_sampler.py
    python scripts/bench_sampler.py --summarise-only
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import time
from pathlib import Path

import torch

import autoprune as ap

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks" / "sampler.csv"
_QUALITY_RUNS = _ROOT / "results" / "bench" / "quality"
_RUNS = _ROOT / "results" / "bench" / "sampler"
SAMPLERS = ("tpe", "nsga2", "random")
COLUMNS = ["dataset", "model", "budget", "sampler", "seed", "trials", "ok", "hypervolume", "best_val_acc",
           "best_flops_ratio", "front_points", "search_s", "run"]
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _row(run_path: Path, sampler: str, seed: int, args, seconds: float | None) -> dict:
    run = ap.load_run(run_path)
    t = run.trials
    best = run.best()
    return {"dataset": args.dataset, "model": args.model, "budget": args.budget, "sampler": sampler, "seed": seed,
            "trials": len(t), "ok": int((t["status"] == "ok").sum()), "hypervolume": float(t["hypervolume"].iloc[-1]),
            "best_val_acc": float(best["val_acc"]) if best is not None else "",
            "best_flops_ratio": float(best["flops_ratio"]) if best is not None else "",
            "front_points": len(run.pareto), "search_s": round(seconds, 1) if seconds else "",
            "run": str(run_path)}


def run_benchmark(args) -> None:
    out = Path(args.out)
    done = {(r["sampler"], r["seed"]) for r in _read(out)}
    splits = ap.load_dataset(args.dataset, seed=0)
    model = ap.create_model(args.model, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    base_cfg = ap.SearchConfig(model=args.model, dataset=args.dataset, baseline_epochs=args.baseline_epochs,
                               results_dir=str(_ROOT / "results"))
    source = ap.ensure_baseline(model, splits, base_cfg, device="cpu", log=print)["source"]
    slug = args.budget.rstrip("%").replace(".", "p")
    for seed in args.seeds:
        for sampler in args.samplers:
            if (sampler, str(seed)) in done:
                continue
            name = f"{args.model}-flops{slug}pct-s{seed}"
            quality = _QUALITY_RUNS / args.dataset / name
            if sampler == "tpe" and (quality / "trials.csv").is_file() and \
                    len(ap.load_run(quality).trials) >= args.trials:
                _append(out, _row(quality, sampler, seed, args, None))  # the same default search, already run
                continue
            folder, name = Path(args.runs_dir) / args.dataset, f"{name}-{sampler}"
            resume = (folder / name / "config.yaml").is_file()
            cfg = ap.SearchConfig(model=args.model, dataset=args.dataset, checkpoint=source, budget_flops=args.budget,
                                  trials=args.trials, finetune_epochs=args.search_epochs, sampler=sampler,
                                  concurrency=2, seed=seed, results_dir=str(folder), name=name)
            start = time.perf_counter()
            ap.search(cfg, resume=resume, given={} if resume else None, log=lambda line: None)
            row = _row(folder / name, sampler, seed, args, time.perf_counter() - start)
            _append(out, row)
            print(f"{sampler:<7} seed {seed}: hypervolume {row['hypervolume']:.4f}  best val {row['best_val_acc']:.4f}"
                  f" at {row['best_flops_ratio']:.3f}  {row['search_s']:.0f}s", flush=True)


def _read(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path, newline=""))) if path.is_file() else []


def _append(path: Path, row: dict) -> None:
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)


def report(path: Path) -> None:
    rows = _read(path)
    by = {(r["sampler"], r["seed"]): float(r["hypervolume"]) for r in rows}
    print("\nfinal hypervolume, mean over seeds, and paired against TPE:")
    for sampler in SAMPLERS:
        seeds = sorted(s for (k, s) in by if k == sampler)
        if not seeds:
            continue
        line = f"  {sampler:<7} n={len(seeds)}  {statistics.fmean(by[sampler, s] for s in seeds):.4f}"
        paired = [s for s in seeds if ("tpe", s) in by]
        if sampler != "tpe" and len(paired) > 1:
            d = [by[sampler, s] - by["tpe", s] for s in paired]
            half = T95[len(d) - 1] * statistics.stdev(d) / math.sqrt(len(d))
            m = statistics.fmean(d)
            verdict = "tie (TPE stays)" if m - half <= 0 <= m + half else ("better" if m > 0 else "worse")
            line += f"  minus TPE {m:+.4f} [{m - half:+.4f}, {m + half:+.4f}]  won {sum(x > 0 for x in d)}/{len(d)}  {verdict}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--budget", default="25%")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--search-epochs", type=float, default=0.1)
    p.add_argument("--baseline-epochs", type=int, default=10)
    p.add_argument("--out", default=str(_OUT))
    p.add_argument("--runs-dir", default=str(_RUNS), help="where the searches are written")
    p.add_argument("--summarise-only", action="store_true")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.samplers = [s for s in args.samplers.split(",") if s]
    torch.set_num_threads(2)
    start = time.perf_counter()
    if not args.summarise_only:
        run_benchmark(args)
    report(Path(args.out))
    print(f"({time.perf_counter() - start:.0f}s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
