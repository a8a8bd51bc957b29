"""The search: Optuna proposes per-group sparsities, Ray Tune runs the trials, the front is written.

The driver prepares everything once (``results.prepare_run``: data, baseline, probed groups), ships
the baseline weights and in-memory data to the workers through Ray's object store, and writes each
trial's row as it ends. Workers build one :class:`~autoprune.trial.TrialContext` per process and
reuse it for every trial they run. Ray itself starts in ``cluster.py``.

Example:
    >>> outcome = search(SearchConfig(budget_flops="50%", trials=8))
    >>> outcome.front[["trial", "val_acc", "flops_ratio"]]
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .cluster import RayStarter
from .config import UNIFORM_SIZES, SearchConfig
from .data import memory_bytes
from .front import best_trial, promotions, proposed_count, uniform_origin
from .results import Prepared, number_or_none, prepare_run, unpruned_size
from .searcher import close_stale_trials, constraint, make_searcher
from .space import IMPORTANCE_PARAM, TARGET_PARAM
from .trial import TrialContext, TrialResult, run_trial

__all__ = ["search", "SearchOutcome", "WarmStart", "size_range"]


@dataclass
class SearchOutcome:
    """What a search left: its folder, the tables, and whether it finished."""

    path: Path
    trials: pd.DataFrame
    front: pd.DataFrame
    requested: int
    finished: bool
    seconds: float
    baseline: dict = field(default_factory=dict)
    # driver-side seconds: prepare, driver_context, ray_start, tuner, ray_shutdown, front (overhead studies)
    timings: dict = field(default_factory=dict)
    left_out: dict = field(default_factory=dict)
    objective: str = "flops"  # the size measure of the front

    @property
    def counts(self) -> dict[str, int]:
        return {s: int((self.trials["status"] == s).sum()) for s in ("ok", "infeasible", "failed")}

    @property
    def best(self) -> pd.Series | None:
        """The front's highest validation accuracy within the budget."""
        return best_trial(self.front)


@dataclass(frozen=True)
class WarmStart:
    """A policy the search runs first: its origin label, its searched parameters (group -> sparsity, or
    log keep multiplier in a space centred on uniform), criterion and target size."""

    origin: str
    point: Mapping[str, float]
    importance: str
    target: float | None = None


# --------------------------------------------------------------------------------------------- workers

_CONTEXTS: dict[str, TrialContext] = {}


def _context(prepared: Prepared, *, driver: bool = False) -> TrialContext:
    """The worker's context for this run, built on first use and kept for later trials.

    The driver's own context (groups, warm starts) stays on the CPU: only trials use the GPU share
    Ray gives them.
    """
    key = f"{prepared.run.path}{':driver' if driver else ''}"
    if key not in _CONTEXTS:
        from .models import create_model
        from .train import resolve_device

        config = prepared.config
        model = create_model(config.model, num_classes=prepared.num_classes, in_channels=prepared.input_shape[0])
        model.load_state_dict(prepared.state_dict)
        device = resolve_device("cpu" if driver else config.trial_device)
        train_ds, val_ds = prepared.train, prepared.val
        if hasattr(train_ds, "to"):  # in-memory tensors: move once, every batch is then a slice
            train_ds, val_ds = train_ds.to(device), val_ds.to(device)
        _CONTEXTS.clear()
        _CONTEXTS[key] = TrialContext(config, model, train_ds, val_ds, torch.zeros(1, *prepared.input_shape),
                                      device=device, groups=prepared.groups)
    return _CONTEXTS[key]


def _threads(config: SearchConfig) -> None:
    threads = max(1, int(config.cpus_per_trial))
    if torch.get_num_threads() != threads:
        # Trials side by side must not fight over cores. Set once per process: changing the
        # thread pool again from a later trial's thread has crashed workers (munmap_chunk).
        torch.set_num_threads(threads)


def _trainable(cfg: dict, prepared: Prepared, warm: tuple[WarmStart, ...], faults: Mapping[str, int]) -> None:
    config = prepared.config
    _threads(config)
    proposal, importance, target, origin = _candidate(cfg, warm, config)
    trial = int(cfg["trial"])
    if faults.get("fail_on_trial") == trial:  # fault injection for tests
        raise RuntimeError(f"injected failure in trial {trial}")
    start = time.perf_counter()
    ctx = _context(prepared)
    context_s = time.perf_counter() - start  # non-zero only on a worker's first trial
    result = run_trial(config, proposal, ctx, trial=trial, origin=origin, importance=importance, target=target)
    _report(config, result, context_s, faults)


def _promoted_trainable(cfg: dict, prepared: Prepared, plan: Mapping[int, Mapping[str, Any]], epochs: float,
                        faults: Mapping[str, int]) -> None:
    """A promotion: the parent trial's policy (the channels it kept) rerun with a longer finetune."""
    from .policy import Policy

    config = prepared.config.replace(finetune_epochs=epochs, rungs=None)  # this rung's finetune
    _threads(config)
    trial = int(cfg["trial"])
    item = plan[trial]
    if faults.get("fail_on_trial") == trial:
        raise RuntimeError(f"injected failure in trial {trial}")
    policy = Policy.from_dict(item["policy"])
    start = time.perf_counter()
    ctx = _context(prepared)
    context_s = time.perf_counter() - start
    result = run_trial(config, {}, ctx, trial=trial, origin=item["origin"], importance=policy.importance,
                       target=item["target"], policy=policy)
    _report(config, result.replace(parent=int(item["parent"])), context_s, faults)


def _report(config: SearchConfig, result: TrialResult, context_s: float, faults: Mapping[str, int]) -> None:
    from ray import tune

    trial = result.trial
    result = result.replace(trial_s=result.trial_s + context_s, timings={"context": context_s, **result.timings})
    if faults.get("nan_on_trial") == trial:  # fault injection for tests: a NaN metric
        result = result.replace(val_acc=float("nan"))
    if result.status == "ok" and not _finite(result.val_acc):
        result = result.replace(status="failed", error=result.error or "validation accuracy is NaN or missing")
    objective = f"{config.objective}_ratio"
    # Both objectives are always finite: a NaN would leave the Optuna trial RUNNING. The searcher
    # turns status "failed" into an Optuna FAIL instead of these placeholder values.
    size = getattr(result, objective)
    tune.report({"val_acc": result.val_acc if _finite(result.val_acc) else 0.0,
                 objective: size if _finite(size) else 1.0, "constraint": constraint(config, result.status, result.latency_ms, result.latency_ratio),
                 "status": result.status, "result": result.to_json()})


def _candidate(cfg: Mapping, warm: tuple[WarmStart, ...], config: SearchConfig
               ) -> tuple[dict[str, float], str, float | None, str]:
    """(proposal, criterion, target size, origin) of a trial's Tune config; the origin is that of the
    warm start it matches, else ``optuna``."""
    params = {g: float(v) for g, v in _flatten(cfg.get("s", {})).items()}
    importance = str(cfg.get(IMPORTANCE_PARAM) or config.importances[0])
    target = float(cfg[TARGET_PARAM]) if cfg.get(TARGET_PARAM) is not None else None
    origin = next((w.origin for w in warm if w.importance == importance
                   and (w.target is None or target is not None and math.isclose(w.target, target, abs_tol=1e-9))
                   and all(math.isclose(params.get(g, -1.0), v, abs_tol=1e-9) for g, v in w.point.items())),
                  "optuna")
    return config.space.to_proposal(params), importance, target, origin


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --------------------------------------------------------------------------------------------- driver


def search(config: SearchConfig, *, resume: bool = False, given: Mapping[str, Any] | None = None,
           argv: list[str] | None = None, log: Callable[[str], None] = print,
           faults: Mapping[str, int] | None = None) -> SearchOutcome:
    """Run (or resume) a search and write its results folder.

    Args:
        config: the resolved settings. On resume, the run's saved config is used, with the
            settings in ``given`` that a resume may change (see ``config.RESUMABLE``).
        resume: continue the run ``config.name`` under ``config.results_dir``.
        given: on resume, the settings the user gave again (default: those of ``config`` that
            differ from the defaults).
        argv: the command line, recorded in config.yaml.
        log: where progress lines go (the CLI prints them).
        faults: test hooks, ``{"fail_on_trial": n}`` or ``{"nan_on_trial": n}``.
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    ray_starter = RayStarter()
    try:
        prepared = prepare_run(config, resume=resume, given=given, argv=argv, log=log, on_checked=ray_starter.start)
        config, run = prepared.config, prepared.run
        timings["prepare"] = time.perf_counter() - start
        done = run.read_trials()
        remaining = config.trials - proposed_count(done)
        if remaining > 0:
            _search_trials(prepared, done, remaining, log=log, faults=faults or {}, timings=timings,
                           ray_starter=ray_starter)
        if config.rungs and proposed_count(run.read_trials()) >= config.trials:
            _promote(prepared, log=log, faults=faults or {}, timings=timings, ray_starter=ray_starter)
    finally:
        t = time.perf_counter()
        ray_starter.close()  # shuts down the Ray this search started, whatever happened
        _lap(timings, "ray_shutdown", t)
    t = time.perf_counter()
    trials = run.read_trials()
    front = run.write_front(config, prepared.baseline)
    finished = proposed_count(trials) >= config.trials and (
        not config.rungs or promotions(trials, config.objective, config.rung_epochs, config.reduction) is None)
    run.write_state(finished=finished)
    timings["front"] = time.perf_counter() - t
    return SearchOutcome(run.path, trials, front, config.trials, finished, time.perf_counter() - start,
                         prepared.baseline, timings, prepared.left_out, config.objective)


def _promote(prepared: Prepared, *, log: Callable[[str], None], faults: Mapping[str, int], timings: dict,
             ray_starter: RayStarter) -> None:
    """Fill each promotion rung in turn: the candidates ``front.promotions`` names, rerun at its epochs."""
    config, run = prepared.config, prepared.run
    floor, top = size_range(prepared)
    while True:
        trials = run.read_trials()
        step = promotions(trials, config.objective, config.rung_epochs, config.reduction)
        if step is None:
            return
        epochs, parents = step
        t = time.perf_counter()
        ray_starter.wait(config, memory_bytes(prepared.state_dict.values(), prepared.train, prepared.val))
        _lap(timings, "ray_start", t)
        log(f"promoting {len(parents)} trial(s) to a {epochs:g}-epoch finetune: {', '.join(map(str, parents))}")
        rows = trials.set_index("trial")
        offset = int(trials["trial"].max()) + 1
        # The parents' policies travel with the plan: a worker on another machine has no run folder.
        plan = {offset + i: {"parent": p, "origin": str(rows.loc[p, "origin"]),
                             "target": number_or_none(rows.loc[p].get("target_ratio")),
                             "policy": run_policy(run, p).to_dict()}
                for i, p in enumerate(parents)}
        t = time.perf_counter()
        try:
            _run_promotions(prepared, plan, epochs, faults, (config.objective, top), log=log)
        finally:
            _lap(timings, "tuner", t)
        after = run.read_trials()
        if not set(plan) <= set(after["trial"].astype(int)):
            # Interrupted (Ctrl-C ends Tune's run early) or lost: stop here, the run stays unfinished
            # and a resume promotes the rest.
            log(f"promotions stopped with {len(set(plan) - set(after['trial'].astype(int)))} of {len(plan)} "
                "not recorded; resume the run to finish them")
            return


def run_policy(run, trial: int):
    from .policy import Policy

    return Policy.load(run.path / "policies" / f"{int(trial)}.json")


def size_range(prepared: Prepared) -> tuple[float, float]:
    """(floor, budget) of the run's size measure, as shares of the unpruned model."""
    config = prepared.config
    return config.size_range(unpruned_size(prepared.baseline, config.objective))


def _warm_starts(config: SearchConfig, ctx: TrialContext, done: pd.DataFrame, sizes: Sequence[float],
                 log) -> tuple[WarmStart, ...]:
    """The uniform policy at each of ``sizes``, once per criterion (origin ``uniform:<criterion>@<size>``),
    unless a row of that origin exists already. A uniform shape (every group at its lowest sparsity,
    or all multipliers 1 in a space centred on uniform) is scaled by the fit to each size by one
    common factor."""
    from .fit import InfeasibleError

    point = config.space.uniform_point(ctx.group_names)
    warm = []
    for size in sizes:
        missing = [imp for imp in config.importances
                   if not (len(done) and (done["origin"] == uniform_origin(imp, size)).any())]
        if not missing:
            continue
        try:
            ctx.uniform(None, size)  # the same fit for every criterion: checked once per size
        except InfeasibleError as e:
            log(f"note: the uniform policy cannot reach {size:.3g} of the model ({e})")
            continue
        warm.extend(WarmStart(uniform_origin(imp, size), point, imp, float(size)) for imp in missing)
    if config.sensitivity and sizes:
        warm.extend(_sensitivity_start(config, ctx, done, float(sizes[0]), log))
    return tuple(warm)


def _sensitivity_start(config: SearchConfig, ctx: TrialContext, done: pd.DataFrame, size: float,
                       log) -> list[WarmStart]:
    """The shape that keeps more of the sensitive groups, at ``size`` with the first criterion; each
    group is pruned alone by the uniform policy's sparsity at that size to measure it."""
    from .fit import InfeasibleError
    from .sensitivity import group_sensitivity, sensitivity_shape

    origin = f"sensitivity@{size:.3f}"
    if len(done) and (done["origin"] == origin).any():
        return []
    try:
        uniform = ctx.uniform(None, size)
    except InfeasibleError:
        return []
    start = time.perf_counter()
    acc = group_sensitivity(ctx.model, ctx.example, ctx.group_names, ctx.train_ds, ctx.val_ds,
                            sparsity=uniform.sparsity, device=ctx.device, exclude=ctx.exclude,
                            batch_size=config.batch_size, seed=config.seed, round_to=ctx.round_to)
    if len(acc) < 2:
        log("sensitivity: fewer than two groups could be measured; no sensitivity warm start")
        return []
    shape = sensitivity_shape(acc)
    log(f"sensitivity: each group pruned alone as the uniform policy at {size:.3g} prunes it "
        f"({time.perf_counter() - start:.0f}s); most sensitive {min(acc, key=acc.get)} ({min(acc.values()):.3f}), "
        f"least {max(acc, key=acc.get)} ({max(acc.values()):.3f})"
        + (f"; not measured: {', '.join(g for g in ctx.group_names if g not in acc)}" if len(acc) < len(ctx.group_names)
           else ""))
    # Groups that could not be measured keep the middle of the shape.
    middle = sorted(shape.values())[len(shape) // 2]
    shape = {g: shape.get(g, middle) for g in ctx.group_names}
    return [WarmStart(origin, config.space.point_of(shape), config.importances[0], size)]


def _search_trials(prepared: Prepared, done: pd.DataFrame, remaining: int, *, log: Callable[[str], None],
                   faults: Mapping[str, int], timings: dict, ray_starter: RayStarter) -> None:
    """Run ``remaining`` trials through Ray Tune; Ray is left running (``ray_starter.close()`` stops it)."""
    t = time.perf_counter()
    config, run = prepared.config, prepared.run
    ctx = _context(prepared, driver=True)  # the driver's own copy: groups, uniform policy
    ranges = config.space.param_ranges(ctx.group_names)
    floor, top = size_range(prepared)
    # the budget first (the size the pick is judged at), then the floor, then the sizes between
    sizes = [round(float(v), 6) for v in np.linspace(floor, top, UNIFORM_SIZES)]
    sizes = [sizes[-1], sizes[0], *sizes[1:-1]]
    warm = _warm_starts(config, ctx, done, sizes, log)
    told, stale = close_stale_trials(run, config)
    if told:
        log(f"resume: told Optuna {told} trial(s) whose results were recorded before the search stopped")
    if stale:
        log(f"resume: marked {stale} interrupted Optuna trial(s) as failed")
    offset = int(done["trial"].max()) + 1 if len(done) else 0
    t = _lap(timings, "driver_context", t)
    # Started in the background once the inputs were checked; what is left of its start-up is waited for here.
    ray_starter.wait(config, memory_bytes(prepared.state_dict.values(), prepared.train, prepared.val))
    t = _lap(timings, "ray_start", t)
    try:
        _run_tuner(prepared, ranges, warm, offset, remaining, faults, (floor, top), log=log)
    finally:
        _lap(timings, "tuner", t)


def _lap(timings: dict, part: str, t0: float) -> float:
    now = time.perf_counter()
    timings[part] = timings.get(part, 0.0) + now - t0
    return now


def _row_writer(run, config: SearchConfig, reference: tuple[str, float], log, describe):
    """A Tune callback that appends each finished trial to trials.csv (driver side, one writer) and
    logs a line. ``describe(trial_config)`` gives (number, origin, target, parent, epochs) for a trial
    whose worker died before it could report."""
    from ray import tune

    objective = f"{config.objective}_ratio"
    known = run.read_trials()
    ok = known[known["status"] == "ok"] if len(known) else known
    best = {"val_acc": float(ok["val_acc"].max()) if len(ok) else -1.0}

    class RowWriter(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            r = TrialResult.from_json(result["result"])
            run.append(r, reference)
            if r.status == "ok":
                best["val_acc"] = max(best["val_acc"], r.val_acc)
            ratio = getattr(r, objective)
            line = (f"trial {r.trial:>3} {r.origin:<8} {r.status:<10} "
                    + (f"val_acc {r.val_acc:.4f}  {objective} {ratio:.3f}  " if r.val_acc is not None else "")
                    + f"best {best['val_acc']:.4f}  {r.trial_s:.1f}s"
                    + (f"  (rerun of {r.parent}, {r.epochs:g} epochs)" if r.parent is not None else "")
                    + (f"  ({r.error})" if r.error else ""))
            log(line)

        def on_trial_error(self, iteration, trials, trial, **info):
            number, origin, target_size, parent, epochs = describe(trial.config)
            message = "the trial's worker raised or died"
            if getattr(trial, "error_file", None) and os.path.isfile(trial.error_file):
                lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
                message = lines[-1][:300] if lines else message
            run.append(TrialResult(trial=number, status="failed", origin=origin, error=message,
                                   target_ratio=target_size, parent=parent, epochs=epochs), reference)
            log(f"trial {number:>3} failed: {message}")

    return RowWriter()


def _run_config(run, name: str, callback):
    from ray import tune

    return tune.RunConfig(name=name, storage_path=str(run.path / "ray"), callbacks=[callback], verbose=0,
                          failure_config=tune.FailureConfig(max_failures=0),
                          checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False))


def _run_tuner(prepared: Prepared, ranges: dict, warm: tuple[WarmStart, ...], offset: int, remaining: int,
               faults: Mapping[str, int], target: tuple[float, float], *, log) -> None:
    from ray import tune

    config, run = prepared.config, prepared.run
    searcher = make_searcher(config, run, ranges, warm, offset, target)

    def describe(cfg):
        _, _, target_size, origin = _candidate(cfg, warm, config)
        return int(cfg.get("trial", -1)), origin, target_size, None, float(config.finetune_epochs)

    writer = _row_writer(run, config, (config.objective, target[1]), log, describe)
    trainable = tune.with_resources(tune.with_parameters(_trainable, prepared=prepared, warm=warm, faults=dict(faults)),
                                    {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                    max_concurrent_trials=config.concurrency, reuse_actors=True),
        run_config=_run_config(run, f"tune-{offset}", writer),
    )
    tuner.fit()


def _run_promotions(prepared: Prepared, plan: Mapping[int, Mapping[str, Any]], epochs: float,
                    faults: Mapping[str, int], reference: tuple[str, float], *, log) -> None:
    """One Tune run over fixed trials (no searcher): each reruns its parent's policy at ``epochs``."""
    from ray import tune

    config, run = prepared.config, prepared.run

    def describe(cfg):
        item = plan[int(cfg["trial"])]
        return int(cfg["trial"]), item["origin"], item["target"], int(item["parent"]), float(epochs)

    writer = _row_writer(run, config, reference, log, describe)
    trainable = tune.with_resources(
        tune.with_parameters(_promoted_trainable, prepared=prepared, plan=dict(plan), epochs=float(epochs),
                             faults=dict(faults)),
        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(sorted(plan))},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=config.concurrency, reuse_actors=True),
        run_config=_run_config(run, f"tune-{min(plan)}", writer),
    )
    tuner.fit()
