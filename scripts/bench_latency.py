"""Where the speed goes: pruned against unpruned latency, eager PyTorch against ONNX Runtime.

For resnet20 (32x32 input), resnet18 and mobilenet_v2 (224x224, as deployed), the uniform L1 policy
at 50% of the FLOPs, with channel counts free (``round_to 1``) and in multiples of 8, is timed next
to its unpruned model: in eager PyTorch and in ONNX Runtime's CPU execution provider, at batch 1 and
32, one thread. Each measurement interleaves pruned and unpruned samples (``ap.relative_latency``)
and is repeated ``--repeats`` times; the speedup is the median of the repeats' ratios. Run it with
nothing else on the machine: it times, so another job would skew it.

Writes ``results/benchmarks/latency.csv``: model, backend, round_to, flops_ratio, params_ratio,
speedup_b1, speedup_b32, base_ms_b1, base_ms_b32, threads, repeats.

    python scripts/bench_latency.py
    python scripts/bench_latency.py --models resnet20 --repeats 3     # a quick look
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import torch

import autoprune as ap

_OUT = Path(__file__).resolve().parent.parent / "results" / "benchmarks" / "latency.csv"
SIZES = {"resnet20": 32, "resnet18": 224, "mobilenet_v2": 224}
COLUMNS = ["model", "image_size", "backend", "round_to", "flops_ratio", "params_ratio", "speedup_b1", "speedup_b32",
           "base_ms_b1", "base_ms_b32", "threads", "repeats"]


def speedup(small, base, x, backend: str, batch: int, threads: int, repeats: int) -> tuple[float, float]:
    """(median unpruned/pruned time ratio over ``repeats`` interleaved measurements, median unpruned ms)."""
    ratios, bases = [], []
    for _ in range(repeats):
        pruned_ms, base_ms = ap.relative_latency(small, base, x, batch_size=batch, warmup=3, repeats=7,
                                                 backend=backend, threads=threads)
        ratios.append(base_ms / pruned_ms)
        bases.append(base_ms)
    return statistics.median(ratios), statistics.median(bases)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(SIZES))
    p.add_argument("--backends", default="torch,onnxruntime")
    p.add_argument("--round-to", default="1,8")
    p.add_argument("--budget", default="50%")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(_OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for name in args.models.split(","):
        size = SIZES.get(name, 224)
        torch.manual_seed(0)
        base = ap.create_model(name, num_classes=10 if size == 32 else 1000).eval()
        x = torch.randn(1, 3, size, size)
        for round_to in (int(r) for r in args.round_to.split(",")):
            policy = ap.uniform_policy(base, x, [ap.Budget.parse("flops", args.budget)], round_to=round_to)
            small = ap.apply_policy(base, policy, x)
            flops = ap.count_flops(small, x) / ap.count_flops(base, x)
            params = ap.count_params(small) / ap.count_params(base)
            for backend in args.backends.split(","):
                s1, b1 = speedup(small, base, x, backend, 1, args.threads, args.repeats)
                s32, b32 = speedup(small, base, x, backend, 32, args.threads, args.repeats)
                row = {"model": name, "image_size": size, "backend": backend, "round_to": round_to,
                       "flops_ratio": round(flops, 4), "params_ratio": round(params, 4), "speedup_b1": round(s1, 3),
                       "speedup_b32": round(s32, 3), "base_ms_b1": round(b1, 3), "base_ms_b32": round(b32, 3),
                       "threads": args.threads, "repeats": args.repeats}
                rows.append(row)
                print(f"{name:<13} {backend:<12} round_to {round_to}: flops {flops:.3f}  speedup b1 {s1:.2f}x "
                      f"b32 {s32:.2f}x  (unpruned {b1:.2f} / {b32:.1f} ms)", flush=True)
    write_rows(Path(args.out), COLUMNS, rows, start)
    return 0


def write_rows(out: Path, columns: list[str], rows: list[dict], start: float) -> None:
    """Write a benchmark's table and say how long it took and how loaded the machine was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    print(f"written {out} ({time.perf_counter() - start:.0f}s, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores)")


if __name__ == "__main__":
    raise SystemExit(main())
