"""The three-step journey on the bundled default, recorded for the README.

Runs, as a user would type them::

    autoprune search --budget-flops 50% --trials T --name <run>
    autoprune report results/<run>
    autoprune apply  results/<run> --pick best --epochs N --compare-uniform

and writes each command with what it printed to ``results/benchmarks/journey.md``. Output is
shown live as well. Without a cached baseline the search first trains one (15 epochs of resnet20
on digits) and caches it under ``results/baselines/``.

Usage:
    python scripts/example_journey.py            # 16 trials, apply for 30 epochs
    python scripts/example_journey.py --quick    # 4 short trials, a 3-epoch baseline, apply for 1 epoch
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_step(argv: list[str], cwd: Path) -> tuple[int, str, str, float]:
    """Run ``autoprune ARGV``; echo stdout live; return (exit code, stdout, stderr tail, seconds)."""
    print(f"$ autoprune {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:  # stderr (Ray's own logging) is kept apart and shown only on failure
        print(line, end="", flush=True)
        lines.append(line)
    err = proc.stderr.read() if proc.stderr is not None else ""
    code = proc.wait()
    if code != 0:
        sys.stderr.write(err)
    tail = "".join(err.splitlines(keepends=True)[-20:])
    return code, "".join(lines), tail, time.perf_counter() - start


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 short trials, a 3-epoch baseline, 1 apply epoch")
    p.add_argument("--trials", type=int, default=None, help="default 16 (4 with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="apply epochs: default 30 (1 with --quick)")
    p.add_argument("--budget", default="50%", help="FLOPs budget (default 50%%)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--name", default=None, help="run folder name (default journey[-quick]-<time>)")
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "journey.md"))
    args = p.parse_args(argv)

    trials = args.trials or (4 if args.quick else 16)
    epochs = args.epochs or (1 if args.quick else 30)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = args.name or f"journey{'-quick' if args.quick else ''}-{stamp}"
    run = f"{args.results_dir}/{name}"
    search = ["search", "--budget-flops", args.budget, "--trials", str(trials), "--results-dir", args.results_dir,
              "--name", name]
    if args.quick:
        search += ["--finetune-epochs", "0.5", "--baseline-epochs", "3"]
    steps = [search, ["report", run], ["apply", run, "--pick", "best", "--epochs", str(epochs), "--compare-uniform"]]

    started = time.perf_counter()
    parts = [
        f"# The autoprune journey{' (--quick)' if args.quick else ''}",
        "",
        f"Recorded by `python scripts/example_journey.py{' --quick' if args.quick else ''}` on "
        f"{dt.date.today().isoformat()}: {machine()}.",
        "Search, report and apply on the bundled default (resnet20 on the digits data, a FLOPs budget of "
        f"{args.budget}). Validation accuracy guides the search; only `apply` reads the test split.",
        "",
    ]
    code = 0
    for step in steps:
        code, out, err_tail, seconds = run_step(step, ROOT)
        parts += ["```console", f"$ autoprune {' '.join(step)}", out.rstrip("\n"), "```",
                  f"*{seconds:.0f} s, exit code {code}*", ""]
        if code != 0:
            parts += ["It failed; the end of its stderr:", "", "```", err_tail.rstrip("\n"), "```", ""]
            break
    parts.append(f"Total: {time.perf_counter() - started:.0f} s.")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(parts) + "\n")
    print(f"\nwritten: {out_path}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
