"""Does a neighbour's training bias a latency ratio, and does pausing it (quiet.py) remove the bias? (issue 25)

Why: on mobilenet_v2 the latency search (two trials side by side on 2 cores) timed one shape at 0.494-0.506
of the unpruned model, and the same shape re-timed on a quiet machine six times measured 0.504-0.550 (mean
0.523): ok trials over their budget once re-timed. The guess: a training neighbour slows the larger model
more (shared caches, memory bandwidth), so ratios measured beside training come out low.

Design (written before its first run): per model, the uniform policy at 44% of the FLOPs (where the
mobilenet_v2 violations were) with default channel rounding; ``ap.relative_latency`` in ONNX Runtime,
batch 1, one thread, as the search times, repeated under three conditions, in rounds so that drift of the
machine spreads over all three: ``quiet`` (nothing else running), ``beside_training`` (a second process
trains the unpruned model at one thread on random 64 px batches, as a neighbouring trial does) and
``gated`` (the same trainer inside ``quiet.training`` and the measurement inside ``quiet.measuring``, as a
search's trials now run). Rows: ``results/benchmarks/quiet_timing.csv`` (model, condition, round, repeat,
pruned_ms, base_ms, ratio, commit). The summary (``quiet_timing_summary.csv``) gives, per model and
condition, the median ratio, its spread (min-max) and the median over the quiet median. Run it with
nothing else on the machine.

    python scripts/bench_quiet_timing.py                   # about 5 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import torch

import autoprune as ap
import benchrows  # scripts/ is on sys.path when a script runs
from autoprune import quiet

COLUMNS = ["model", "condition", "round", "repeat", "pruned_ms", "base_ms", "ratio", "commit"]
CONDITIONS = ("quiet", "beside_training", "gated")
TIMING = dict(backend="onnxruntime", threads=1, batch_size=1)


def _trainer(name: str, size: int, folder: str | None, started, stop) -> None:
    torch.set_num_threads(1)
    model = ap.create_model(name, num_classes=10, in_channels=1).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 1, size, size), torch.randint(0, 10, (64,))
    with quiet.training(model, Path(folder) if folder else None):
        while not stop.is_set():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            started.set()


def _measure(model, base, x, folder: Path | None) -> tuple[float, float]:
    with quiet.measuring(folder):
        return ap.relative_latency(model, base, x, **TIMING)


def pair(name: str, size: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """The unpruned model (one input channel, 10 classes), the uniform policy's model at 44% of its FLOPs
    (where mobilenet_v2's violations were), default channel rounding, and an example input."""
    base = ap.create_model(name, num_classes=10, in_channels=1).eval()
    x = torch.randn(1, 1, size, size)
    policy = ap.fit_policy(base, x, {}, [ap.Budget.parse("flops", "44%")])
    return base, ap.apply_policy(base, policy, x).eval(), x


def run(models: list[str], size: int, rounds: int, repeats: int, out: Path) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for name in models:
        base, small, x = pair(name, size)
        ap.relative_latency(small, base, x, **TIMING)  # warm the exporter and the runtime once
        for r in range(rounds):
            for condition in CONDITIONS:
                stop, started = ctx.Event(), ctx.Event()
                with tempfile.TemporaryDirectory() as folder:
                    gate = Path(folder) if condition == "gated" else None
                    worker = None
                    if condition != "quiet":
                        worker = ctx.Process(target=_trainer, args=(name, size, str(gate) if gate else None,
                                                                    started, stop))
                        worker.start()
                        started.wait(120)
                        time.sleep(1.0)
                    try:
                        for i in range(repeats):
                            pruned_ms, base_ms = _measure(small, base, x, gate)
                            row = {"model": name, "condition": condition, "round": r, "repeat": i,
                                   "pruned_ms": round(pruned_ms, 5), "base_ms": round(base_ms, 5),
                                   "ratio": round(pruned_ms / base_ms, 5), "commit": benchrows.commit()}
                            benchrows.append_rows(out, COLUMNS, [row])
                            rows.append(row)
                            print(f"{name} {condition:<16} round {r} ratio {row['ratio']:.4f} "
                                  f"({pruned_ms:.3f} / {base_ms:.3f} ms)", flush=True)
                    finally:
                        stop.set()
                        if worker is not None:
                            worker.join(60)
    return rows


def summarise(rows: list[dict], out: Path) -> None:
    summary = []
    for name in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == name]
        quiet_median = statistics.median(float(r["ratio"]) for r in mine if r["condition"] == "quiet")
        for condition in CONDITIONS:
            ratios = [float(r["ratio"]) for r in mine if r["condition"] == condition]
            if not ratios:
                continue
            med = statistics.median(ratios)
            summary.append({"model": name, "condition": condition, "n": len(ratios), "median_ratio": round(med, 4),
                            "min_ratio": round(min(ratios), 4), "max_ratio": round(max(ratios), 4),
                            "vs_quiet": round(med / quiet_median, 4)})
            print(f"{name} {condition:<16} n={len(ratios)} median {med:.4f} [{min(ratios):.4f}, {max(ratios):.4f}] "
                  f"= {med / quiet_median:.3f}x quiet")
    benchrows.write_table(out, summary)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenet_v2,timm:mobilenetv3_small_100")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--out-dir", default=str(benchrows.ROOT / "results" / "benchmarks"))
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = run([m for m in args.models.split(",") if m], args.image_size, args.rounds, args.repeats,
               out_dir / "quiet_timing.csv")
    summarise(rows, out_dir / "quiet_timing_summary.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
