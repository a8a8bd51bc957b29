"""Benchmark the pruning engine: group search, fitting, pruning, and the CPU speed-up it buys.

For each model, at 50% of the unpruned FLOPs with the uniform policy, it measures

- ``groups_s``: finding the prunable groups of a freshly built model (dependency graph + cost model);
- ``fit_s``: fitting the uniform policy to the budget, on the cost model cached by the group search,
  as every trial of a search after the first does;
- ``apply_s``: pruning a copy of the model; ``fit_apply_s`` is the sum, the per-trial overhead;
- the FLOPs and params ratios of the pruned model (``count_flops``, ``count_params``);
- the CPU latency speed-up (original ms / pruned ms, interleaved in one process by
  ``relative_latency``) at batch 1 and 32.

Run from the repository root (public API only)::

    python scripts/bench_prune.py            # full: writes results/benchmarks/prune.csv
    python scripts/bench_prune.py --quick    # resnet20 and resnet56 at 32x32; prints only

On a machine shared with other work, ``--threads 1`` gives steadier figures: with two intra-op
threads on two busy cores every operator waits for the thread that lost its core.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import autoprune as ap

__all__ = ["main", "bench_model"]

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks" / "prune.csv"

FULL = [("resnet20", 32), ("resnet56", 32), ("resnet110", 32), ("resnet18", 32), ("resnet50", 32),
        ("mobilenet_v2", 32), ("resnet18", 224), ("resnet50", 224)]
QUICK = [("resnet20", 32), ("resnet56", 32)]
CIFAR = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}

# Goals from the issue, printed next to the figures.
GOAL_FIT_APPLY_S = 1.0  # fit + apply per trial, for resnet56 and resnet50
GOAL_FIT_APPLY_MODELS = ("resnet56", "resnet50")
GOAL_SPEEDUP = 1.6  # CPU speed-up at 50% FLOPs, for CIFAR ResNets

COLUMNS = ["model", "input", "groups", "groups_s", "fit_s", "apply_s", "fit_apply_s", "flops", "flops_ratio",
           "params", "params_ratio", "b1_orig_ms", "b1_pruned_ms", "speedup_b1", "b32_orig_ms", "b32_pruned_ms",
           "speedup_b32", "threads", "load"]


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _speedup(small: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor, batch: int) -> tuple[float, float]:
    """(original ms, pruned ms) at ``batch``; fewer rounds where one forward pass takes long."""
    with torch.no_grad():
        _, one = _timed(lambda: model.eval()(x.expand(batch, *x.shape[1:]).contiguous()))
    # A 224x224 batch of 32 takes seconds on two cores: a few rounds already give a steady median.
    rounds = dict(warmup=1, repeats=5) if one > 0.5 else dict(warmup=3, repeats=11)
    pruned_ms, base_ms = ap.relative_latency(small, model, x, batch_size=batch, **rounds)
    return base_ms, pruned_ms


def bench_model(name: str, size: int, repeats: int = 3, round_to: int = 1) -> dict:
    """One row of the table: timings are medians over ``repeats`` runs."""
    load = os.getloadavg()[0]  # other work on the machine: timings on a busy machine are slower and noisier
    x = torch.randn(1, 3, size, size)
    budget = [ap.Budget.parse("flops", "50%")]
    groups_s, fit_s, apply_s = [], [], []
    for _ in range(repeats):
        torch.manual_seed(0)
        model = ap.create_model(name, num_classes=10 if size == 32 else 1000)  # fresh: no cached graph
        groups, t = _timed(lambda: ap.prunable_groups(model, x))
        groups_s.append(t)
        policy, t = _timed(lambda: ap.uniform_policy(model, x, budget, round_to=round_to))
        fit_s.append(t)
        small, t = _timed(lambda: ap.apply_policy(model, policy, x, round_to=round_to))
        apply_s.append(t)
    flops, flops_small = ap.count_flops(model, x), ap.count_flops(small, x)
    params, params_small = ap.count_params(model), ap.count_params(small)
    b1_orig, b1_pruned = _speedup(small, model, x, 1)
    b32_orig, b32_pruned = _speedup(small, model, x, 32)
    fit, apply = statistics.median(fit_s), statistics.median(apply_s)
    return {
        "model": name, "input": f"{size}x{size}", "groups": len(groups),
        "groups_s": statistics.median(groups_s), "fit_s": fit, "apply_s": apply, "fit_apply_s": fit + apply,
        "flops": flops, "flops_ratio": flops_small / flops, "params": params, "params_ratio": params_small / params,
        "b1_orig_ms": b1_orig, "b1_pruned_ms": b1_pruned, "speedup_b1": b1_orig / b1_pruned,
        "b32_orig_ms": b32_orig, "b32_pruned_ms": b32_pruned, "speedup_b32": b32_orig / b32_pruned,
        "threads": torch.get_num_threads(), "load": load,
    }


def _fmt(key: str, value) -> str:
    if isinstance(value, str):
        return value
    if key in ("flops", "params"):
        return f"{value / 1e6:.1f}M"
    if key.endswith("_ratio"):
        return f"{value:.3f}"
    if key.startswith("speedup"):
        return f"{value:.2f}x"
    if key.endswith("_ms"):
        return f"{value:.2f}"
    if key.endswith("_s"):
        return f"{value:.3f}"
    if key == "load":
        return f"{value:.1f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(k, r[k]) for k in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def goals(rows: list[dict]) -> str:
    out = []
    for r in rows:
        if r["model"] in GOAL_FIT_APPLY_MODELS:
            ok = "ok" if r["fit_apply_s"] < GOAL_FIT_APPLY_S else "MISSED"
            out.append(f"fit+apply < {GOAL_FIT_APPLY_S:g} s   {r['model']:>9} {r['input']:>7}: "
                       f"{r['fit_apply_s']:.3f} s  {ok}")
    for r in rows:
        if r["model"] in CIFAR:
            for b in (1, 32):
                s = r[f"speedup_b{b}"]
                ok = "ok" if s >= GOAL_SPEEDUP else "MISSED"
                out.append(f"speed-up >= {GOAL_SPEEDUP:g}x      {r['model']:>9} {r['input']:>7} batch {b:>2}: "
                           f"{s:.2f}x  {ok}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only resnet20 and resnet56 at 32x32; prints only")
    parser.add_argument("--no-224", action="store_true", help="skip the 224x224 rows (minutes on two cores)")
    parser.add_argument("--out", type=Path, default=None, help=f"CSV to write (default {_OUT.relative_to(_ROOT)}, "
                                                               "none with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the median is reported")
    parser.add_argument("--round-to", type=int, default=1, help="kept channels per group in multiples of this")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cases = QUICK if args.quick else [c for c in FULL if not (args.no_224 and c[1] == 224)]
    out = args.out if args.out is not None else (None if args.quick else _OUT)
    print(f"# torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; 50% FLOPs, uniform policy, l1 importance, "
          f"round_to {args.round_to}")
    rows = []
    for name, size in cases:
        row, t = _timed(lambda: bench_model(name, size, args.repeats, args.round_to))
        rows.append(row)
        print(f"  {name} {size}x{size}: {t:.0f} s", flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        print(f"wrote {out}")
    print()
    print(markdown(rows))
    print()
    print(goals(rows))
    return rows


if __name__ == "__main__":
    main()
