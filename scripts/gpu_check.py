"""GPU check: trial throughput, GPU use and latency budgets on one CUDA GPU, without Ray.

The GPU machine this project can borrow has no Ray, Optuna or Ray Tune (and no network), so this check
drives :func:`autoprune.run_trial` directly, which knows nothing of Ray, and packs trials as processes
the way Ray packs them on one GPU: ``--gpus-per-trial 0.25`` runs four worker processes side by side,
each with its own context (baseline copy, data on the device) and a quarter of the CPU cores. What it
leaves unverified of the search's own path: Ray's scheduling of fractional GPUs, its object store and
Optuna's proposals (the trials here take random shapes, scaled to the budget by the trial's own fit).

Data: ``--train-size`` synthetic 3x32x32 images in 10 classes (Gaussian noise plus a fixed pattern per
class, so finetuning has something to learn), nothing downloaded. A resnet56 is trained for
``--baseline-epochs`` (not counted), then each setting of (GPU share, precision) runs ``--trials``
trials at 50% FLOPs; precision ``bf16`` is the library's CUDA default (bf16 autocast, channels-last),
``fp32`` turns autocast off in the worker (convolutions then run in TF32, PyTorch's default). Each setting writes a
row of ``results/benchmarks/gpu.csv``:

    check=throughput, gpus_per_trial, concurrency, precision, trials, ok, seconds, trials_per_hour,
    gpu_util_mean, compute_share, compute_share_trials, finetune_s_mean, trial_s_mean, round_to, ...

``compute_share`` is (BN recalibration + finetune + evaluation) over the setting's trial-slot time
(wall x concurrency); ``compute_share_trials`` the same over the trials' own time; ``gpu_util_mean`` the
mean of NVML's utilisation (the share of time a kernel ran) sampled every 0.2 s during the setting.

Then ``--latency-trials`` trials run under a latency budget measured on the GPU (eager PyTorch, batch
``--latency-batch`` (each of a list)): 50% of the unpruned model, or 15% above the smallest model's measured
latency when 50% is out of reach; when that would be over 95% (a launch-bound model, which pruning barely
speeds up), no trials run and the row's ``error`` says so. Each ``ok`` trial's pruned model is rebuilt from its recorded
policy and timed again beside the unpruned one; ``over`` counts those more than 2% over the limit
(the search's tolerance), in a ``check=latency`` row.

``--dry-run`` runs the same path on the CPU in a minute or two (resnet20, 16x16 images, 2 trials per
setting at concurrency 1 and 2, both precisions meaning the same fp32 there), into
``results/bench/gpu/gpu_dry_run.csv`` unless ``--out`` says otherwise.

    python scripts/gpu_check.py --dry-run       # on the CPU
    python scripts/gpu_check.py                 # on a CUDA machine
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import multiprocessing as mp
import os
import queue as queue_module
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["main", "synthetic_splits"]

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks" / "gpu.csv"
_DRY_OUT = _ROOT / "results" / "bench" / "gpu" / "gpu_dry_run.csv"
COMPUTE_PARTS = ("bn_recalibration", "finetune", "evaluate")
COLUMNS = ["check", "gpus_per_trial", "concurrency", "precision", "trials", "ok", "seconds", "trials_per_hour",
           "gpu_util_mean", "compute_share", "compute_share_trials", "finetune_s_mean", "trial_s_mean",
           "val_acc_mean", "round_to", "budget", "latency_batch", "reach", "ratio_max", "over", "model",
           "train_size", "image_size", "finetune_epochs", "batch_size", "device", "torch", "commit", "error"]


def synthetic_splits(*, train_size: int, image_size: int, classes: int = 10, seed: int = 0):
    """(train, val) of random CIFAR-shaped images: noise plus a fixed pattern per class (learnable, not trivial)."""
    from autoprune import TensorData

    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, 3, image_size, image_size, generator=g)

    def draw(n: int):
        y = torch.randint(0, classes, (n,), generator=g)
        return TensorData(torch.randn(n, 3, image_size, image_size, generator=g) + 0.5 * patterns[y], y)

    n_val = max(1, train_size // 10)
    return draw(train_size - n_val), draw(n_val)


def _config(args, **changes):
    from autoprune import SearchConfig

    base = dict(model=args.model, checkpoint=args.checkpoint, budget_flops="50%", finetune_epochs=args.finetune_epochs,
                batch_size=args.batch_size, gpus_per_trial=0.0 if args.dry_run else 1.0,
                device="cpu" if args.dry_run else "cuda", image_size=args.image_size)
    base.update(changes)
    return SearchConfig(**base)


def _context(args, config, device: str):
    from autoprune import create_model
    from autoprune.trial import TrialContext

    model = create_model(args.model, num_classes=10, in_channels=3)
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    train_ds, val_ds = synthetic_splits(train_size=args.train_size, image_size=args.image_size)
    return TrialContext(config, model, train_ds.to(device), val_ds.to(device),
                        torch.zeros(1, 3, args.image_size, args.image_size), device=device)


def _worker(args, worker: int, trials: list[int], precision: str, threads: int, queue, go) -> None:
    """One packed trial slot: its own context, then its share of the setting's trials, one after another."""
    try:
        _trials(args, worker, trials, precision, threads, queue, go)
    except BaseException as e:  # noqa: BLE001 - said to the parent, which stops the check with it
        import traceback

        queue.put(("error", worker, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        raise


def _trials(args, worker: int, trials: list[int], precision: str, threads: int, queue, go) -> None:
    import autoprune.training
    from autoprune import run_trial

    torch.set_num_threads(threads)
    if precision == "fp32":  # the library's CUDA default is bf16 autocast; the check's baseline turns it off
        autoprune.training._autocast = lambda device: contextlib.nullcontext()
    device = "cpu" if args.dry_run else "cuda"
    config = _config(args)
    context = _context(args, config, device)
    queue.put(("ready", worker, None))
    go.wait()  # every slot starts its trials together, when the parent's clock starts
    for t in trials:
        rng = np.random.default_rng(t)
        proposal = {g: float(rng.uniform(0.1, 0.7)) for g in context.group_names}
        r = run_trial(config, proposal, context, trial=t, origin="random")
        queue.put(("trial", worker, {"status": r.status, "val_acc": r.val_acc, "trial_s": r.trial_s,
                                     "finetune_s": r.finetune_s, "round_to": context.round_to, "error": r.error,
                                     "compute_s": sum(r.timings.get(p, 0.0) for p in COMPUTE_PARTS)}))
    queue.put(("done", worker, None))


class _Utilisation:
    """NVML's GPU utilisation sampled every 0.2 s in a thread (empty on the CPU or without NVML)."""

    def __init__(self, enabled: bool) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._handle = None
        if enabled:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
            except Exception as e:  # noqa: BLE001 - the check still runs without it
                print(f"no GPU utilisation: {type(e).__name__}: {e}")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))

    def __enter__(self):
        if self._handle is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def _throughput(args, gpus: float, concurrency: int, precision: str, device_name: str) -> dict:
    """Run one setting's trials in ``concurrency`` processes; time from all contexts ready to the last trial."""
    spawn = mp.get_context("spawn")
    queue = spawn.Queue()
    cores = os.cpu_count() or 1
    threads = max(1, cores // concurrency)
    shares = [list(range(w, args.trials, concurrency)) for w in range(concurrency)]
    go = spawn.Event()
    procs = [spawn.Process(target=_worker, args=(args, w, shares[w], precision, threads, queue, go), daemon=True)
             for w in range(concurrency)]
    for p in procs:
        p.start()
    results, ready, done = [], 0, 0
    util = _Utilisation(not args.dry_run)
    start, quiet = None, 0.0
    try:
        while done < concurrency:
            try:
                kind, who, payload = queue.get(timeout=5)
            except queue_module.Empty:  # a worker killed outright (out of memory, a CUDA abort) says nothing
                dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
                quiet += 5
                if dead or quiet > args.worker_timeout:
                    raise RuntimeError(f"worker(s) {dead} died (exit codes {[procs[i].exitcode for i in dead]})" if dead
                                       else f"no word from any worker for {args.worker_timeout:g}s") from None
                continue
            quiet = 0.0
            if kind == "ready":
                ready += 1
                if ready == concurrency:
                    start = time.perf_counter()
                    util.__enter__()
                    go.set()
            elif kind == "trial":
                results.append(payload)
            elif kind == "error":
                raise RuntimeError(f"worker {who} failed: {payload}")
            else:
                done += 1
        seconds = time.perf_counter() - start
    finally:
        util.__exit__()
        for p in procs:
            if p.is_alive() and done < concurrency:
                p.kill()
            p.join()
    if not results:
        raise RuntimeError(f"no trials ran at {gpus:g} GPU x {concurrency} ({precision}); give --trials >= 1")
    ok = [r for r in results if r["status"] == "ok"]
    compute = sum(r["compute_s"] for r in results)
    util_mean = util.mean()
    return {"check": "throughput", "gpus_per_trial": gpus, "concurrency": concurrency, "precision": precision,
            "trials": len(results), "ok": len(ok), "seconds": seconds,
            "trials_per_hour": len(results) / seconds * 3600,  # every trial that ran; `ok` says how many were ok
            "gpu_util_mean": util_mean if util_mean is not None else "",
            "compute_share": compute / (seconds * concurrency),
            "compute_share_trials": compute / sum(r["trial_s"] for r in results),
            "finetune_s_mean": statistics.fmean(r["finetune_s"] for r in ok) if ok else "",
            "trial_s_mean": statistics.fmean(r["trial_s"] for r in results),
            "val_acc_mean": statistics.fmean(r["val_acc"] for r in ok) if ok else "",
            "round_to": results[0]["round_to"] if results else "", "device": device_name,
            "error": next((r["error"] for r in results if r["error"]), "")}


def _latency(args, batch: int, device_name: str) -> dict:
    """Latency-budgeted trials on the device, each ok one re-timed against the budget from its policy."""
    from autoprune import apply_policy, run_trial
    from autoprune.latency import relative_latency
    from autoprune.policy import Policy

    device = "cpu" if args.dry_run else "cuda"
    flops_config = _config(args)
    context = _context(args, flops_config, device)
    timing = dict(device=device, batch_size=batch, backend=flops_config.latency_backend,
                  threads=flops_config.latency_threads)  # as the trials time it
    # The smallest model the groups reach, timed beside the unpruned one: the budget must lie above it.
    space = flops_config.space
    smallest = Policy(args.model, {g: space.range_of(g)[1] for g in context.group_names}, context.costs.channels,
                      context.round_to)
    small_ms, base_ms = relative_latency(apply_policy(context.model, smallest, context.example), context.model,
                                         context.example, **timing)
    reach = small_ms / base_ms
    budget = 0.5 if reach < 0.45 else round(reach * 1.15, 2)
    row = {"check": "latency", "trials": 0, "ok": 0, "round_to": context.round_to, "latency_batch": batch,
           "reach": reach, "device": device_name}
    if budget > 0.95:  # launch-bound: pruning channels barely changes the time; no budget worth checking
        print(f"latency on {device_name}, batch {batch}: unpruned {base_ms:.3f} ms, smallest model {reach:.3f} of "
              "it: no latency budget to check")
        return {**row, "error": f"the smallest model measured {reach:.3f} of the unpruned latency: no room "
                                "for a budget (launch-bound)"}
    print(f"latency on {device_name}, batch {batch}: unpruned {base_ms:.3f} ms, smallest model "
          f"{reach:.3f} of it; budget {budget:.0%}")
    config = _config(args, budget_flops=None, budget_latency=f"{budget:.0%}", latency_batch=batch)
    context.config = config
    results = []
    for t in range(args.latency_trials):
        rng = np.random.default_rng(100 + t)
        r = run_trial(config, {g: float(rng.uniform(0.1, 0.7)) for g in context.group_names}, context, trial=t,
                      origin="random")
        results.append(r)
        print(f"  latency trial {t}: {r.status} ratio {r.latency_ratio} {r.error}")
    ratios = []
    for r in results:
        if r.status == "ok":
            pruned_ms, unpruned_ms = relative_latency(apply_policy(context.model, r.policy, context.example),
                                                      context.model, context.example, **timing)
            ratios.append(pruned_ms / unpruned_ms)
    over = sum(q > budget * 1.02 for q in ratios)
    print(f"re-timed {len(ratios)} ok trials: ratios {[round(q, 3) for q in ratios]}, {over} over {budget:.0%} + 2%")
    return {**row, "trials": len(results), "ok": len(ratios), "budget": budget,
            "ratio_max": max(ratios) if ratios else "", "over": over,
            "error": next((r.error for r in results if r.error), "")}


def _baseline(args, folder: Path) -> str:
    from autoprune import create_model
    from autoprune.training import TrainConfig, evaluate, train

    device = "cpu" if args.dry_run else "cuda"
    train_ds, val_ds = synthetic_splits(train_size=args.train_size, image_size=args.image_size)
    model = create_model(args.model, num_classes=10, in_channels=3)
    start = time.perf_counter()
    train(model, train_ds.to(device), TrainConfig(epochs=args.baseline_epochs, lr=0.1, batch_size=args.batch_size),
          device=device)
    print(f"baseline: {args.model} {args.baseline_epochs:g} epoch(s) in {time.perf_counter() - start:.1f}s, "
          f"val_acc {evaluate(model, val_ds.to(device), device=device):.3f}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "base.pt"
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    return str(path)


def _commit() -> str:
    """The commit the check ran from: $AUTOPRUNE_COMMIT when set (a copied working tree's .git can lag behind
    its files, as on the GPU machine), else git's HEAD here."""
    if os.environ.get("AUTOPRUNE_COMMIT"):
        return os.environ["AUTOPRUNE_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, resnet20, 16x16 images, 2 trials per setting")
    p.add_argument("--model", default=None, help="default resnet56 (dry run: resnet20)")
    p.add_argument("--gpus-per-trial", default="1.0,0.25", help="GPU shares to compare (default 1.0,0.25)")
    p.add_argument("--precisions", default="bf16,fp32", help="default bf16,fp32; empty: the latency check alone")
    p.add_argument("--trials", type=int, default=None, help="trials per setting (default 8; dry run 2)")
    p.add_argument("--latency-trials", type=int, default=None, help="default 6 (dry run 2)")
    p.add_argument("--latency-batch", default=None, help="batch sizes, comma-separated (default 1,256; dry run 1)")
    p.add_argument("--train-size", type=int, default=None, help="synthetic images (default 10000; dry run 512)")
    p.add_argument("--image-size", type=int, default=None, help="default 32 (dry run 16)")
    p.add_argument("--finetune-epochs", type=float, default=None, help="per trial (default 2; dry run 0.25)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--baseline-epochs", type=float, default=None, help="default 2 (dry run 0.25)")
    p.add_argument("--worker-timeout", type=float, default=180, help="seconds without word from a worker")
    p.add_argument("--out", default=None, help=f"default {_OUT.relative_to(_ROOT)} ({_DRY_OUT.relative_to(_ROOT)} "
                                               "for a dry run)")
    args = p.parse_args(argv)
    dry = args.dry_run
    defaults = dict(model="resnet20", trials=2, latency_trials=2, latency_batch=1, train_size=512, image_size=16,
                    finetune_epochs=0.25, baseline_epochs=0.25) if dry else dict(
        model="resnet56", trials=8, latency_trials=6, latency_batch="1,256", train_size=10000, image_size=32,
        finetune_epochs=2.0, baseline_epochs=2.0)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.trials < 1 and args.precisions.strip():
        p.error(f"--trials {args.trials}: give 1 or more trials per setting (or --precisions '' for the latency "
                "check alone)")
    if not dry and not torch.cuda.is_available():
        p.error("no CUDA GPU here; use --dry-run to check the path on the CPU")
    out = Path(args.out or (_DRY_OUT if dry else _OUT))
    device_name = "cpu" if dry else torch.cuda.get_device_name(0)
    settings = [(0.0, 1), (0.0, 2)] if dry else [(g, max(1, int(1 / g + 1e-9)))
                                                 for g in (float(v) for v in args.gpus_per_trial.split(","))]
    args.checkpoint = _baseline(args, out.parent / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}")
    common = {"model": args.model, "train_size": args.train_size, "image_size": args.image_size,
              "finetune_epochs": args.finetune_epochs, "batch_size": args.batch_size, "torch": torch.__version__,
              "commit": _commit()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:  # rows as they finish: a check cut short keeps what it measured
        w = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        w.writeheader()
        for precision in [v for v in args.precisions.split(",") if v]:  # none: the latency check alone
            for gpus, concurrency in settings:
                r = {**common, **_throughput(args, gpus, concurrency, precision, device_name)}
                w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
                f.flush()
                print(f"{precision}, {gpus:g} GPU x {concurrency}: {r['trials']} trials ({r['ok']} ok) in "
                      f"{r['seconds']:.1f}s = {r['trials_per_hour']:.0f}/h, GPU busy {r['gpu_util_mean']}, "
                      f"compute share {r['compute_share']:.3f} (of trial time {r['compute_share_trials']:.3f}), "
                      f"round_to {r['round_to']} {r['error']}", flush=True)
        for batch in [int(v) for v in str(args.latency_batch).split(",") if v] if args.latency_trials else []:
            r = {**common, **_latency(args, batch, device_name)}
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
            f.flush()
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
