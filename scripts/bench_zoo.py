"""The model zoo: which registered models autoprune prunes, which groups it leaves out, which it refuses.

For every registered model (the CIFAR ResNets and every torchvision classifier), at the smallest
input torchvision allows (32x32 where it can), this builds the model without weights, probes its
groups (``ap.left_out_groups``), fits the uniform policy to 50% of the FLOPs, prunes, and checks the
pruned model runs. One row per model goes to ``results/benchmarks/zoo.csv`` as soon as it is done
(models already in the file are skipped, so an interrupted run continues where it stopped):

    model, params, input_size, groups, left_out, left_out_groups, searchable_flops_share, flops_ratio,
    outcome, seconds, error, commit

``searchable_flops_share`` is the share of the model's FLOPs in layers whose channels the search can
change (``ap.searchable_flops_share``).

``outcome`` is ``clean`` (every group prunable), ``left_out`` (some groups left out as unsafe, named
in ``left_out_groups``), ``error`` (the one-line error a user gets, in ``error``) or ``crash`` (an
exception a user would see as a traceback, a timeout, or memory exhausted: defects to fix).

Each model runs in a child process limited to ``--timeout`` seconds and ``--memory-gb`` of address
space; a model that exceeds either is a ``crash`` row. Run from the repository root (the whole zoo
takes about an hour on 2 CPU cores)::

    python scripts/bench_zoo.py
    python scripts/bench_zoo.py --models 'mobilenet*,resnet18' --out /tmp/zoo.csv
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import time
from pathlib import Path

import torch

import autoprune as ap
import benchrows

_OUT = Path(__file__).resolve().parent.parent / "results" / "benchmarks" / "zoo.csv"
COLUMNS = ["model", "params", "input_size", "groups", "left_out", "left_out_groups", "searchable_flops_share",
           "flops_ratio", "outcome", "seconds", "error", "commit"]
HALF = ap.Budget.parse("flops", "50%")


def input_size(name: str) -> int:
    """32 pixels, or the smallest input torchvision records for the model."""
    from torchvision import models as tvm

    try:
        meta = tvm.get_model_weights(name).DEFAULT.meta
    except (ValueError, KeyError):  # not a torchvision model: the CIFAR ResNets
        return 32
    return max(32, *meta.get("min_size", (1, 1)))


def zoo_row(name: str) -> dict:
    start = time.perf_counter()
    size = input_size(name)
    row: dict = {"model": name, "input_size": size}
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = ap.create_model(name, num_classes=10, in_channels=3).eval()
        size = getattr(model, "image_size", size)  # a vision transformer built without weights takes one size
        row["input_size"] = size
        x = torch.zeros(1, 3, size, size)
        row["params"] = ap.count_params(model)
        left = ap.left_out_groups(model, x)
        groups = ap.prunable_groups(model, x)
        row.update(groups=len(groups), left_out=len(left), left_out_groups="; ".join(sorted(left)),
                   searchable_flops_share=round(ap.searchable_flops_share(model, x), 4))
        small = ap.apply_policy(model, ap.uniform_policy(model, x, [HALF]), x)
        with torch.no_grad():
            out = small(torch.randn(2, 3, size, size))
        if tuple(out.shape) != (2, 10):
            raise RuntimeError(f"the pruned model gives shape {tuple(out.shape)}")
        row["flops_ratio"] = round(ap.count_flops(small, x) / ap.count_flops(model, x), 4)
        row["outcome"] = "left_out" if left else "clean"
    except ap.AutopruneError as e:  # what a user is told
        row.update(outcome="error", error=str(e)[:300])
    except Exception as e:  # a crash a user would see: also recorded, and a defect to fix
        row.update(outcome="crash", error=f"{type(e).__name__}: {str(e).splitlines()[0][:250] if str(e) else ''}")
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _isolated_row(name: str, timeout: float, memory_gb: float) -> dict:
    """``zoo_row(name)`` in a child process, with a time and memory limit: a model that exhausts either is a
    row too (outcome ``crash``), not the end of the zoo."""
    import json
    import resource
    import subprocess
    import sys

    def limit() -> None:
        size = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    start = time.perf_counter()
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_zoo; " \
           f"print('ROW' + json.dumps(bench_zoo.zoo_row({name!r})))"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"model": name, "outcome": "crash", "error": f"no result within {timeout:.0f}s",
                "seconds": round(time.perf_counter() - start, 1), "input_size": input_size(name)}
    rows = [line[3:] for line in done.stdout.splitlines() if line.startswith("ROW")]
    if rows:
        return json.loads(rows[-1])
    tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    if "MemoryError" in done.stderr or done.returncode in (-9, 137):
        tail = f"out of memory (over {memory_gb:g} GB): {tail}"
    return {"model": name, "outcome": "crash", "error": tail[:300], "seconds": round(time.perf_counter() - start, 1),
            "input_size": input_size(name)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="*", help="comma-separated glob patterns (default: every registered model)")
    p.add_argument("--out", default=str(_OUT))
    p.add_argument("--timeout", type=float, default=900, help="seconds per model (default 900)")
    p.add_argument("--memory-gb", type=float, default=16, help="address-space limit per model (default 16)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    out = Path(args.out)
    patterns = [m for m in args.models.split(",") if m]
    names = [n for n in ap.list_models() if any(fnmatch.fnmatch(n, pat) for pat in patterns)]
    done = set()
    if out.is_file():
        with open(out, newline="") as f:
            done = {r["model"] for r in csv.DictReader(f)}
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.is_file()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        for name in names:
            if name in done:
                continue
            row = _isolated_row(name, args.timeout, args.memory_gb)
            w.writerow({c: row.get(c, "") for c in COLUMNS} | {"commit": benchrows.commit()})
            f.flush()
            print(" ".join(f"{k}={row[k]}" for k in COLUMNS if row.get(k, "") != ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
