"""What the search's driver and its Ray workers share: the trial context a worker keeps, the Tune
function a trial runs in, the report it sends back, and the callback that writes its row.

The search (``driver.py``) and the reruns at longer finetunes (``promote.py``: rungs and
confirmation) both run their trials through these.

Example:
    >>> writer = row_writer(run, config, ("flops", 0.5), print, describe)
    >>> tune.Tuner(..., run_config=run_config(run, "tune-0", writer)).fit()
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .config import SearchConfig
from .prepare import Prepared
from .results import unpruned_size
from .searcher import constraint
from .space import IMPORTANCE_PARAM, TARGET_PARAM
from .trial import TrialContext, TrialResult, run_trial

__all__ = ["WarmStart", "context", "set_threads", "trainable", "report", "candidate", "size_range", "lap",
           "row_writer", "run_config"]


@dataclass(frozen=True)
class WarmStart:
    """A policy the search runs first: its origin label, its searched parameters (group -> sparsity, or
    log keep multiplier in a space centred on uniform), criterion and target size."""

    origin: str
    point: Mapping[str, float]
    importance: str
    target: float | None = None
    round_to: int | None = None  # the kept channels' multiple; None: the run's


_CONTEXTS: dict[str, TrialContext] = {}


def context(prepared: Prepared, *, driver: bool = False) -> TrialContext:
    """The worker's context for this run, built on first use and kept for later trials.

    The driver's own context (groups, warm starts) stays on the CPU: only trials use the GPU share
    Ray gives them.
    """
    key = f"{prepared.run.path}{':driver' if driver else ''}"
    if key not in _CONTEXTS:
        from .models import create_model
        from .training import resolve_device

        config = prepared.config
        device = resolve_device("cpu" if driver else config.trial_device)
        task = getattr(prepared, "task", None)
        if task is not None:  # a user's task: their model object and example input, their functions
            import copy

            model = copy.deepcopy(prepared.model)
            model.load_state_dict(prepared.state_dict)
            _CONTEXTS.clear()
            _CONTEXTS[key] = TrialContext(config, model, None, None, prepared.example, device=device,
                                          groups=prepared.groups, latency_table=prepared.latency_table, task=task)
            return _CONTEXTS[key]
        model = create_model(config.model, num_classes=prepared.num_classes, in_channels=prepared.input_shape[0])
        model.load_state_dict(prepared.state_dict)
        train_ds, val_ds = prepared.train, prepared.val
        if hasattr(train_ds, "to"):  # in-memory tensors: move once, every batch is then a slice
            train_ds, val_ds = train_ds.to(device), val_ds.to(device)
        _CONTEXTS.clear()
        _CONTEXTS[key] = TrialContext(config, model, train_ds, val_ds, torch.zeros(1, *prepared.input_shape),
                                      device=device, groups=prepared.groups,
                                      latency_table=getattr(prepared, "latency_table", None))
    return _CONTEXTS[key]


def set_threads(config: SearchConfig) -> None:
    from .loader import set_workers

    set_workers(config.loader_workers)  # decoding processes of disk-backed data, per loader
    threads = max(1, int(config.cpus_per_trial))
    if torch.get_num_threads() != threads:
        # Trials side by side must not fight over cores. Set once per process: changing the
        # thread pool again from a later trial's thread has crashed workers (munmap_chunk).
        torch.set_num_threads(threads)


def trainable(cfg: dict, prepared: Prepared, warm: tuple[WarmStart, ...], faults: Mapping[str, int]) -> None:
    config = prepared.config
    set_threads(config)
    proposal, importance, target, origin = candidate(cfg, warm, config)
    trial = int(cfg["trial"])
    if faults.get("fail_on_trial") == trial:  # fault injection for tests
        raise RuntimeError(f"injected failure in trial {trial}")
    if faults.get("exit_on_trial") == trial:  # fault injection for tests: the worker process dies, once
        marker = prepared.run.path / f".fault-exit-{trial}"
        if not marker.exists():
            marker.touch()
            os._exit(1)
    start = time.perf_counter()
    ctx = context(prepared)
    context_s = time.perf_counter() - start  # non-zero only on a worker's first trial
    round_to = next((w.round_to for w in warm if w.origin == origin), None)
    result = run_trial(config, proposal, ctx, trial=trial, origin=origin, importance=importance, target=target,
                       round_to=round_to)
    report(config, result, context_s, faults)


def report(config: SearchConfig, result: TrialResult, context_s: float, faults: Mapping[str, int]) -> None:
    from ray import tune

    trial = result.trial
    result = result.replace(trial_s=result.trial_s + context_s, timings={"context": context_s, **result.timings},
                            node=_node())
    if faults.get("nan_on_trial") == trial:  # fault injection for tests: a NaN metric
        result = result.replace(val_acc=float("nan"))
    if result.status == "ok" and not _finite(result.val_acc):
        result = result.replace(status="failed", error=result.error or "validation accuracy is NaN or missing")
    objective = f"{config.size_measure}_ratio"
    # Both objectives are always finite: a NaN would leave the Optuna trial RUNNING. The searcher
    # turns status "failed" into an Optuna FAIL instead of these placeholder values.
    size = getattr(result, objective)
    tune.report({"val_acc": result.val_acc if _finite(result.val_acc) else 0.0,
                 objective: size if _finite(size) else 1.0,
                 "constraint": constraint(config, result.status, result.latency_ms, result.latency_ratio),
                 "status": result.status, "result": result.to_json()})


def _node() -> str:
    """The short id of the Ray node this trial runs on ("" outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - a trial's row never fails for want of its node's name
        return ""


def candidate(cfg: Mapping, warm: tuple[WarmStart, ...], config: SearchConfig
               ) -> tuple[dict[str, float], str, float | None, str]:
    """(proposal, criterion, target size, origin) of a trial's Tune config; the origin is that of the
    warm start it matches, else ``optuna``."""
    params = {g: float(v) for g, v in flatten(cfg.get("s", {})).items()}
    importance = str(cfg.get(IMPORTANCE_PARAM) or config.importances[0])
    target = float(cfg[TARGET_PARAM]) if cfg.get(TARGET_PARAM) is not None else None
    origin = next((w.origin for w in warm if w.importance == importance
                   and (w.target is None or target is not None and math.isclose(w.target, target, abs_tol=1e-9))
                   and all(math.isclose(params.get(g, -1.0), v, abs_tol=1e-9) for g, v in w.point.items())),
                  "optuna")
    return config.space.to_proposal(params), importance, target, origin


def flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def size_range(prepared: Prepared) -> tuple[float, float]:
    """(floor, budget) of the run's size measure, as shares of the unpruned model."""
    config = prepared.config
    floor, top = config.size_range(unpruned_size(prepared.baseline, config.size_measure))
    # Below the smallest model the prunable groups reach, no target can be met (prepare said so).
    reach = prepared.baseline.get(f"reachable_{config.size_measure}")
    if reach is not None and floor < reach < top:
        # a measured latency is noisy: aim a little above the smallest model's, so that it is reached
        floor = min(top, reach * (1.05 if config.size_measure == "latency" else 1 + 1e-3))
    return floor, top


def lap(timings: dict, part: str, t0: float) -> float:
    now = time.perf_counter()
    timings[part] = timings.get(part, 0.0) + now - t0
    return now


def row_writer(run, config: SearchConfig, reference: tuple[str, float], log, describe, *, total: int | None = None,
               done: int = 0, sizes: Sequence[float | None] | None = None, prior: float | None = None):
    """A Tune callback that appends each finished trial to trials.csv (driver side, one writer) and
    logs a line. ``describe(trial_config)`` gives (number, origin, target, parent, epochs) for a trial
    whose worker died before it could report.

    With ``total`` (the trials this Tune run will finish; ``done`` counted before it), each line ends
    with the trials done of the total and the time left (``progress.time_left``), and a terminal
    gets a bar with the running best. ``sizes`` and ``prior`` (see :class:`~autoprune.progress.Progress`):
    the trials' expected sizes, so the estimate knows that proposals after large warm starts run faster."""
    from ray import tune

    from .progress import Progress

    objective = f"{config.size_measure}_ratio"
    known = run.read_trials()
    ok = known[known["status"] == "ok"] if len(known) else known
    best = {"val_acc": float(ok["val_acc"].max()) if len(ok) else -1.0}
    progress = Progress(total, done=done, concurrency=config.concurrency, unit="trial", log=log, sizes=sizes,
                        prior=prior) if total is not None else None

    def write(line: str, r: TrialResult | None = None) -> None:
        if progress is None:
            log(line)
            return
        shown = {"best": best["val_acc"]} if best["val_acc"] >= 0 else {}  # -1: no ok trial yet
        size = getattr(r, objective, None) if r is not None and r.status != "failed" else None
        timed = dict(size=size, seconds=r.trial_s, proposed=r.origin == "optuna") if size is not None else {}
        progress.write(f"{line}  [{progress.step(**timed, **shown)}]")

    pending: list[TrialResult] = []  # finished trials whose row could not be written yet (a full disk)

    def save(r: TrialResult | None) -> None:
        """Append ``r``'s row after any still pending, in order; a row that cannot be written stays
        pending (with every row after it) for the next try."""
        if r is not None:
            pending.append(r)
        while pending:
            try:
                run.append(pending[0], reference)
            except OSError as e:
                if r is not None:
                    write(f"could not write trial {r.trial}'s row ({e.strerror or e}); it is kept and written "
                          "with the next row")
                return
            pending.pop(0)

    class RowWriter(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            r = TrialResult.from_json(result["result"])
            save(r)
            if r.status == "ok":
                best["val_acc"] = max(best["val_acc"], r.val_acc)
            ratio = getattr(r, objective)
            line = (f"trial {r.trial:>3} {r.origin:<8} {r.status:<10} "
                    + (f"val_acc {r.val_acc:.4f}  {objective} {ratio:.3f}  " if r.val_acc is not None else "")
                    + f"best {best['val_acc']:.4f}  {r.trial_s:.1f}s"
                    + (f"  (rerun of {r.parent}, {r.epochs:g} epochs)" if r.parent is not None else "")
                    + (f"  ({r.error})" if r.error else ""))
            write(line, r)

        def on_trial_error(self, iteration, trials, trial, **info):
            number, origin, target_size, parent, epochs = describe(trial.config)
            message = "the trial's worker raised or died"
            if getattr(trial, "error_file", None) and os.path.isfile(trial.error_file):
                lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
                message = lines[-1][:300] if lines else message
            save(TrialResult(trial=number, status="failed", origin=origin, error=message,
                             target_ratio=target_size, parent=parent, epochs=epochs))
            write(f"trial {number:>3} failed: {message}")

        def on_experiment_end(self, trials, **info):
            save(None)  # one more try for what is still waiting
            if progress is not None:
                progress.close()
            if pending:
                log(f"{len(pending)} finished trial(s) could not be written to {run.trials_csv} (trials "
                    f"{', '.join(str(p.trial) for p in pending)}); free disk space, then --resume runs them again")

    return RowWriter()


RETRIES = 3  # runs of a trial after its worker or node died, before it is recorded as failed (a retry
# placed before the cluster has noticed a lost node can die with it too; the CI failure once blamed on
# that was more likely a reused worker on the lost node, which Tune fails without retries: see
# RayStarter.reuse_workers)


def run_config(run, name: str, callback):
    from ray import tune

    return tune.RunConfig(name=name, storage_path=str(run.path / "ray"), callbacks=[callback], verbose=0,
                          # A trial whose worker or node died is run again (up to RETRIES times), with the same config and
                          # number (its row is written when it ends): run_trial itself never raises.
                          failure_config=tune.FailureConfig(max_failures=RETRIES),
                          checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False))
