"""How good is the time-left estimate a search prints? (issue 29)

Runs the demo search (``autoprune search --budget-flops 50%``, 24 trials, the cached digits baseline)
as a user would, stamps each line of its output with the time it arrived, and compares the estimate
printed on the half-way trial's line (``[12/24, 42s left]``) with the time that actually remained until
the search's last line. One row per run goes to ``results/benchmarks/progress.csv``
(``commit, trials, concurrency, half_way, estimate_s, remaining_s, error, load``), ``error`` =
estimate / remaining - 1. The machine's load average at the start is recorded: a benchmark running
beside the demo slows its later trials unevenly, and no estimate from finish times can foresee that.

    python scripts/bench_progress.py            # about 3 minutes on 2 quiet cores
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import benchrows  # scripts/ is on sys.path when a script runs

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks" / "progress.csv"
COLUMNS = ["commit", "trials", "concurrency", "half_way", "estimate_s", "remaining_s", "error", "load"]
_MARK = re.compile(r"\[(\d+)/(\d+)(?:, ([0-9hms]+) left)?\]\s*$")


def seconds(text: str) -> float:
    """``45s``, ``3m05s``, ``1h02m`` as seconds."""
    total, number = 0.0, ""
    for ch in text:
        if ch.isdigit():
            number += ch
        else:
            total += int(number) * {"h": 3600, "m": 60, "s": 1}[ch]
            number = ""
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--out", default=str(_OUT))
    args = p.parse_args(argv)
    cmd = [sys.executable, "-m", "autoprune", "search", "--budget-flops", "50%", "--trials", str(args.trials),
           "--concurrency", str(args.concurrency), "--results-dir", str(_ROOT / "results")]
    load = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=_ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    half, estimate, at, last = args.trials // 2, None, None, None
    for line in proc.stdout:
        now = time.monotonic()
        mark = _MARK.search(line)
        if mark and line.lstrip().startswith("trial"):
            last = now
            if int(mark.group(1)) == half and mark.group(3):
                estimate, at = seconds(mark.group(3)), now
    if proc.wait() != 0 or estimate is None:
        print(f"the demo search failed or printed no estimate at trial {half} (exit {proc.returncode})", file=sys.stderr)
        return 1
    remaining = last - at
    row = {"commit": benchrows.commit(), "trials": args.trials, "concurrency": args.concurrency, "half_way": half,
           "estimate_s": estimate, "remaining_s": round(remaining, 1), "error": round(estimate / remaining - 1, 3),
           "load": round(load, 2)}
    benchrows.append_rows(args.out, COLUMNS, [row])
    print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
