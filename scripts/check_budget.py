"""Recount every ok trial of a run with PyTorch's own FLOPs counter and check it against the budgets.

Independent of autoprune's cost model and counter: each trial's policy is re-applied to the run's
baseline (``ap.apply_policy``, which keeps the channels the trial recorded), and the pruned model's
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` and its parameters summed here.
Prints one line per trial and exits with status 1 if any trial is over a FLOPs or params budget.

A latency budget is re-measured too, as the run measured it (its backend, threads and batch; a
relative budget against the unpruned model timed side by side), and a trial more than the search's
tolerance (2%) over its limit counts as over. Run it with nothing else on the machine.

    python scripts/check_budget.py results/<run>
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

import autoprune as ap

TOLERANCE = 0.02  # the search's own re-measurement tolerance (autoprune.trial.LATENCY_TOLERANCE)


def flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode's count, with the transformer layers' fused inference kernels off (the counter has
    no formula for nn.TransformerEncoderLayer's; autoprune.attention adds those of the CPU's attention kernels)."""
    model.eval()
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    args = p.parse_args(argv)
    run = ap.load_run(args.run)
    base, x = run.model(), run.example_input()
    base_flops, base_params = flops(base, x), sum(q.numel() for q in base.parameters())
    limits = {b.kind: b.limit({"flops": base_flops, "params": base_params}[b.kind])
              for b in run.budgets if b.kind in ("flops", "params")}
    latency = next((b for b in run.budgets if b.kind == "latency"), None)
    c = run.config
    timing = dict(device=c.trial_device, batch_size=c.latency_batch, backend=c.latency_backend,
                  threads=c.latency_threads)
    over = 0
    ok = run.trials[run.trials["status"] == "ok"]
    for trial in ok["trial"]:
        small = ap.apply_policy(run.model(), run.policy(int(trial)), x)
        got = {"flops": flops(small, x), "params": sum(q.numel() for q in small.parameters())}
        bad = [k for k, limit in limits.items() if got[k] > limit]
        line = ""
        if latency is not None:
            pruned_ms, base_ms = ap.relative_latency(small, base, x, **timing)
            limit = latency.cap(base_ms)
            line = f"latency {pruned_ms:.3f}ms ({pruned_ms / base_ms:.3f}, limit {limit:.3f}ms)  "
            if pruned_ms > limit * (1 + TOLERANCE):
                bad.append("latency")
        over += bool(bad)
        print(f"trial {int(trial):>3}  flops {got['flops']:>12,} ({got['flops'] / base_flops:.4f})  "
              f"params {got['params']:>9,} ({got['params'] / base_params:.4f})  " + line
              + ("OVER " + ",".join(bad) if bad else "within budget"))
    print(f"{len(ok)} ok trials recounted with FlopCounterMode"
          + (f" and re-timed ({c.latency_backend}, batch {c.latency_batch})" if latency is not None else "")
          + f"; {over} over a budget ({', '.join(f'{k} <= {v:,.0f}' for k, v in limits.items())}"
          + (f"{', ' if limits else ''}{latency.describe()} + {TOLERANCE:.0%}" if latency is not None else "")
          + ")")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
