"""Models in the wild (issue 26): a search on a GroupNorm model and on a CNN built the way recent ones are.

Two models, each searched at 60% of its FLOPs on the bundled digits (32 px, 1 training epoch per
trial kept short): ``tests/helpers_models.py:wild_cnn`` (GroupNorm instead of BatchNorm, a channel
split with ``torch.chunk`` and a concatenation, a dilated convolution, a squeeze-excitation on pooled
features; seven groups) and ``timm:resnet50_gn`` (timm's ResNet-50 with GroupNorm). For each, one row
goes to ``results/benchmarks/wild.csv``:

    model, groups, searched, left_out, left_out_reasons, searchable_flops_share, trials, ok, ok_share,
    recounted, over_budget, max_flops_ratio, budget, seconds, commit

``groups`` counts every group of coupled channels the dependency graph finds, ``searched`` those the
search varies; ``recounted`` is how many ok trials were re-applied to the baseline and counted with
``torch.utils.flop_counter.FlopCounterMode`` (independently of autoprune's cost model), and
``over_budget`` how many of them exceed the budget. The goal: at least 6 of 7 groups searched for the
wild CNN and all of resnet50_gn's, >= 90% of trials ok, none over. About 25 minutes on 2 CPU cores::

    python scripts/bench_wild.py
    python scripts/bench_wild.py --models timm:resnet50_gn --trials 4
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import autoprune as ap
import benchrows
from check_budget import flops

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks" / "wild.csv"
_RUNS = _ROOT / "results" / "bench" / "wild"
MODELS = ("helpers_models:wild_cnn", "timm:resnet50_gn")
BUDGET = "60%"
COLUMNS = ["model", "groups", "searched", "left_out", "left_out_reasons", "searchable_flops_share", "trials", "ok",
           "ok_share", "recounted", "over_budget", "max_flops_ratio", "budget", "seconds", "commit"]


def _importable_tests() -> None:
    """``helpers_models`` lives in tests/: on the driver's path and, through PYTHONPATH, on Ray's workers."""
    tests = str(_ROOT / "tests")
    sys.path.insert(0, tests)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)


def wild_row(model: str, trials: int, epochs: float, baseline_epochs: int, runs: Path = _RUNS,
             concurrency: int = 2) -> dict:
    start = time.perf_counter()
    name = "wild-" + model.replace(":", "-").replace("_", "-")
    cfg = ap.SearchConfig(model=model, dataset="digits", image_size=32, budget_flops=BUDGET, trials=trials,
                          finetune_epochs=epochs, baseline_epochs=baseline_epochs, results_dir=str(runs),
                          name=name, concurrency=concurrency)
    folder = runs / name
    resume = (folder / "config.yaml").is_file()
    ap.search(cfg, resume=resume, given={} if resume else None, log=lambda line: None)
    run = ap.load_run(folder)
    base, x = run.model(), run.example_input()
    every = ap.prunable_groups(base, x, probe=False)
    left = ap.left_out_groups(base, x)
    searched = [g for g in every if g.name not in left]
    limit = ap.Budget.parse("flops", BUDGET).limit(flops(base, x))
    ok = run.trials[run.trials["status"] == "ok"]
    counted = [flops(ap.apply_policy(run.model(), run.policy(int(t)), x), x) for t in ok["trial"]]
    base_flops = flops(base, x)
    reasons = sorted({str(v).split(":")[0] for v in left.values()})
    return {"model": model, "groups": len(every), "searched": len(searched), "left_out": len(left),
            "left_out_reasons": "; ".join(reasons), "searchable_flops_share": round(ap.searchable_flops_share(base, x), 4),
            "trials": len(run.trials), "ok": len(ok), "ok_share": round(len(ok) / max(len(run.trials), 1), 3),
            "recounted": len(counted), "over_budget": sum(c > limit for c in counted),
            "max_flops_ratio": round(max(counted) / base_flops, 4) if counted else "", "budget": BUDGET,
            "seconds": round(time.perf_counter() - start, 1), "commit": benchrows.commit()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--finetune-epochs", type=float, default=0.5)
    p.add_argument("--baseline-epochs", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=2, help="trials at once (default 2)")
    p.add_argument("--out", default=str(_OUT))
    p.add_argument("--runs", default=str(_RUNS), help="where the searches' run folders go (a rerun resumes them)")
    args = p.parse_args(argv)
    _importable_tests()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    for model in args.models.split(","):
        row = wild_row(model, args.trials, args.finetune_epochs, args.baseline_epochs, Path(args.runs), args.concurrency)
        benchrows.append_rows(args.out, COLUMNS, [row])
        print(" ".join(f"{k}={row[k]}" for k in COLUMNS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
