"""How well the per-layer latency table predicts a pruned model's latency (issue 25).

For each model: the table is built (or read from this machine's cache) in ONNX Runtime at batch 1,
one thread, channel counts in multiples of ``--round-to``; then ``--candidates`` random candidates
(every group's sparsity drawn uniformly from [0, 0.8], seeded; none of them among the table's own
calibration shapes) are pruned, measured whole against the unpruned model (medians of 15 interleaved
samples each, as the search's budget check does) and predicted: ``predicted_ms`` is the table's
predicted latency ratio times the unpruned model's latency measured beside the candidate (``base_ms``),
so ``error = (predicted - measured) / measured`` is the error of the predicted latency *ratio*, the
quantity a search fits and checks, and a machine whose speed drifts between the table and the
candidate does not count as the table's error. (Until the second run, candidates were measured alone
and compared with the table's absolute milliseconds: ``latency_model_alone.csv``.) Rows go to
``results/benchmarks/latency_model.csv`` as each candidate is measured; the summary (median and 95th
percentile of |error|) to ``latency_model_summary.csv``.

Timing needs a quiet machine: run nothing else at the same time (on a shared 2-core machine, pause
other jobs with ``kill -STOP`` and resume them with ``kill -CONT``).

    python scripts/bench_latency_model.py
    python scripts/bench_latency_model.py --models resnet18 --candidates 20
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import time
from pathlib import Path

import torch

import autoprune as ap
import benchrows  # scripts/ is on sys.path when a script runs

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks"
MODELS = ("mobilenetv2_cifar", "resnet18", "timm:mobilenetv3_small_100")
COLUMNS = ["model", "backend", "threads", "batch", "round_to", "image_size", "candidate", "predicted_ms",
           "measured_ms", "base_ms", "error", "flops_ratio", "commit"]



def run(args) -> None:
    from autoprune.latency_model import LatencyModel

    out = Path(args.out_dir) / "latency_model.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.is_file()
    commit = benchrows.commit()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        for name in args.models:
            model = ap.create_model(name, num_classes=10, in_channels=1).eval()
            x = torch.zeros(1, 1, args.image_size, args.image_size)
            groups = [g.name for g in ap.prunable_groups(model, x)]
            start = time.perf_counter()
            lm = LatencyModel.build(model, x, backend="onnxruntime", threads=1, batch=1, round_to=args.round_to,
                                    groups=groups, log=print)
            print(f"{name}: table ready in {time.perf_counter() - start:.0f}s ({len(lm.layers)} layers), "
                  f"unpruned {lm.base_ms:.3f} ms", flush=True)
            rng = random.Random(12345)  # the table's calibration shapes use seed 0
            base_flops = ap.count_flops(model, x)
            for k in range(args.candidates):
                sparsity = {g: rng.uniform(0.0, 0.8) for g in groups}
                policy = ap.Policy(name, sparsity, {g: lm.cm.channels[g] for g in groups}, args.round_to)
                small = ap.apply_policy(model, policy, x)
                measured, base = ap.relative_latency(small, model, x, backend="onnxruntime", threads=1)
                predicted = lm.predict(sparsity) / lm.base_ms * base
                w.writerow({"model": name, "backend": "onnxruntime", "threads": 1, "batch": 1,
                            "round_to": args.round_to, "image_size": args.image_size, "candidate": k,
                            "predicted_ms": f"{predicted:.4f}", "measured_ms": f"{measured:.4f}",
                            "base_ms": f"{base:.4f}",
                            "error": f"{(predicted - measured) / measured:.4f}",
                            "flops_ratio": f"{ap.count_flops(small, x) / base_flops:.4f}", "commit": commit})
                f.flush()
                if k % 20 == 0:
                    print(f"  {name} candidate {k}: predicted {predicted:.3f} measured {measured:.3f} ms", flush=True)


def summarise(out_dir: Path) -> None:
    path = out_dir / "latency_model.csv"
    if not path.is_file():
        return
    rows = list(csv.DictReader(open(path, newline="")))
    keys = sorted({(r["model"], r["backend"], r["threads"], r["batch"], r["round_to"], r["image_size"]) for r in rows})
    summary = []
    for key in keys:
        signed = [float(r["error"]) for r in rows
                  if (r["model"], r["backend"], r["threads"], r["batch"], r["round_to"], r["image_size"]) == key]
        errs = sorted(abs(e) for e in signed)
        p95 = errs[min(len(errs) - 1, int(round(0.95 * (len(errs) - 1))))]
        summary.append(dict(zip(("model", "backend", "threads", "batch", "round_to", "image_size"), key),
                            candidates=len(errs), median_abs_error=f"{statistics.median(errs):.4f}",
                            p95_abs_error=f"{p95:.4f}", mean_error=f"{statistics.fmean(signed):+.4f}"))
    benchrows.write_table(out_dir / "latency_model_summary.csv", summary)
    for s in summary:
        print(f"{s['model']:<28} round_to {s['round_to']} n={s['candidates']}: median |error| {s['median_abs_error']}"
              f"  p95 {s['p95_abs_error']}  mean {s['mean_error']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--out-dir", default=str(_OUT))
    p.add_argument("--summarise-only", action="store_true")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    torch.set_num_threads(1)
    start = time.perf_counter()
    if not args.summarise_only:
        run(args)
    summarise(Path(args.out_dir))
    print(f"({time.perf_counter() - start:.0f}s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
