"""The search: Optuna proposes per-group sparsities, Ray Tune runs the trials, the front is written.

The driver prepares everything once (``prepare.prepare_run``: data, baseline, probed groups), ships
the baseline weights and in-memory data to the workers through Ray's object store, and writes each
trial's row as it ends. Workers build one :class:`~autoprune.trial.TrialContext` per process and
reuse it for every trial they run; on a Ray this search did not start itself (a cluster), each trial
has a worker of its own (``RayStarter.reuse_workers``). Ray itself starts in ``cluster.py``.

Example:
    >>> outcome = search(SearchConfig(budget_flops="50%", trials=8))
    >>> outcome.front[["trial", "val_acc", "flops_ratio"]]
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import quiet
from .attention import HEADS
from .cluster import RayStarter
from .config import UNIFORM_SIZES, SearchConfig
from .front import (
    best_pick,
    confirmations_due,
    promotions,
    proposed_count,
    uniform_origin,
)
from .prepare import Prepared, for_trials, prepare_run, resumable_run
from .promote import confirm, promote_rungs
from .searcher import close_stale_trials, make_searcher
from .results import RunDir, near_budget_of
from .trial import TrialContext, run_folder
from .workers import (
    WarmStart,
    candidate,
    context,
    lap,
    row_writer,
    run_config,
    size_range,
    trainable,
)

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
    near_budget: float | None = None  # BatchNorm-only trials: the budget's share the pick is made near

    @property
    def counts(self) -> dict[str, int]:
        return {s: int((self.trials["status"] == s).sum()) for s in ("ok", "infeasible", "failed")}

    @property
    def best(self) -> pd.Series | None:
        """The best confirmed candidate (``--confirm``), else the front's highest validation accuracy."""
        return best_pick(self.trials, self.front, self.objective, self.near_budget)

    def policy(self, trial: int | None = None):
        """The policy of ``trial`` (default: :attr:`best`), with the channels it kept; apply it with
        ``autoprune.apply_policy(model, policy, example_input)``."""
        from .errors import RunError
        from .policy import Policy

        if trial is None:
            best = self.best
            if best is None:
                raise RunError(f"Run {str(self.path)!r} has no feasible trial to pick.")
            trial = int(best["trial"])
        path = self.path / "policies" / f"{int(trial)}.json"
        if not path.is_file():
            raise RunError(f"Run {str(self.path)!r} has no policy for trial {trial}.")
        return Policy.from_json(path.read_text())


# --------------------------------------------------------------------------------------------- driver


def search(config: SearchConfig, *, resume: bool = False, given: Mapping[str, Any] | None = None,
           argv: list[str] | None = None, log: Callable[[str], None] = print,
           faults: Mapping[str, int] | None = None, task=None) -> SearchOutcome:
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
        task: a user's task, ``(model, example_input, task.UserTask)`` (see :func:`search_task`); a
            resumed run of a ``--task`` import path imports it again when not given.
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    ray_starter = RayStarter()
    owned = False  # this search took the run over: a refused start must not touch a running run's locks
    run = None  # whose writer lock (RunDir.hold) this search takes: on resume here, for a new run in prepare

    def took(new: RunDir) -> None:  # a new run's lock, taken in prepare: given back below, even if
        nonlocal run  # prepare is interrupted (Ctrl-C) after taking it and before it returns
        run = new
    try:  # the writer lock is released on every way out, after the front and the state are written
        try:
            if resume:  # refuse a run with nothing to resume before importing its task, and one that
                found, _ = resumable_run(config, given)  # another search is running now, before writing anything
                found.hold()
                run = found  # ... whose lock this search now gives back on its way out
                task = _saved_task(config) if task is None else task
            prepared = for_trials(prepare_run(config, resume=resume, given=given, argv=argv, log=log,
                                              on_checked=ray_starter.start, task=task, on_held=took))
            config, run = prepared.config, prepared.run
            owned = True
            if prepared.task is not None:
                _ship_by_value(prepared)
            timings["prepare"] = time.perf_counter() - start
            done = run.read_trials()
            remaining = config.trials - proposed_count(done)
            if remaining > 0:
                _search_trials(prepared, done, remaining, log=log, faults=faults or {}, timings=timings,
                               ray_starter=ray_starter)
            steps = dict(log=log, faults=faults or {}, timings=timings, ray_starter=ray_starter)
            searched = proposed_count(run.read_trials()) >= config.trials
            if searched and (not config.rungs or promote_rungs(prepared, **steps)) and config.confirm:
                confirm(prepared, **steps)
        finally:
            t = time.perf_counter()
            ray_starter.close()  # shuts down the Ray this search started, whatever happened
            lap(timings, "ray_shutdown", t)
            if owned:  # no trial of this search runs now: this host's lock files of the run go
                quiet.forget(run_folder(config))
        t = time.perf_counter()
        trials = run.read_trials()
        front = run.write_front(config, prepared.baseline)
        finished = proposed_count(trials) >= config.trials and (
            not config.rungs or promotions(trials, config.size_measure, config.rung_epochs, config.reduction,
                                           config.promote_criteria) is None) and (
            not confirmations_due(trials, config.size_measure, config.confirm))
        run.write_state(finished=finished)
        timings["front"] = time.perf_counter() - t
        return SearchOutcome(run.path, trials, front, config.trials, finished, time.perf_counter() - start,
                             prepared.baseline, timings, prepared.left_out, config.size_measure,
                             near_budget_of(config, prepared.baseline))
    finally:
        if run is not None:
            run.release()


def _saved_task(config: SearchConfig):
    """On resume, the task a run searched, imported again from its ``--task`` path (None: classification)."""
    from .errors import RunError
    from .task import load_task

    if config.name is None:
        return None
    run = RunDir(Path(config.results_dir) / config.name)
    spec = run.read_config().get("task") if run.exists() else None
    if not spec:
        return None
    if spec == "python":
        raise RunError(f"Run {str(run.path)!r} searched a task given from Python; resume it from Python with "
                       "autoprune.search_task(..., name=..., resume=True) and the same functions.")
    loaded = load_task(spec)
    return loaded.model, loaded.example_input, loaded.task(spec)


def _ship_by_value(prepared: Prepared) -> None:
    """Let Ray pickle a user task's functions and model class by value: the modules they come from
    (a script, a test, a package only the driver has) need not be importable where the trials run;
    only the libraries they import must be installed there."""
    import sys

    from ray import cloudpickle

    import functools

    task = prepared.task
    objs = [task.evaluate_fn, task.finetune_fn, task.loss_fn, task.forward_fn,
            *{type(m) for m in prepared.model.modules()}]
    objs = [o.func if isinstance(o, functools.partial) else o for o in objs]
    objs += [type(o) for o in objs if o is not None and not isinstance(o, type) and not hasattr(o, "__code__")]
    for obj in objs:
        name = getattr(obj, "__module__", None)
        mod = sys.modules.get(name or "")
        where = str(getattr(mod, "__file__", "") or "")
        if mod is None or name == "__main__" or not where or "-packages" in where or name.split(".")[0] in (
                "autoprune", "torch", "torchvision"):
            continue  # __main__ is pickled by value anyway; installed packages are imported on the workers
        cloudpickle.register_pickle_by_value(mod)


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
            policy = ctx.uniform(None, size)  # the same fit for every criterion: checked once per size
        except InfeasibleError as e:
            log(f"note: the uniform policy cannot reach {size:.3g} of the model ({e})")
            continue
        round_to = _faster_rounding(config, ctx, policy, size, log)
        warm.extend(WarmStart(uniform_origin(imp, size), point, imp, float(size), round_to) for imp in missing)
    if config.depth_starts and sizes:
        warm.extend(_depth_starts(config, ctx, done, float(sizes[0])))
    if config.sensitivity and sizes:
        warm.extend(_sensitivity_start(config, ctx, done, float(sizes[0]), log))
    return tuple(warm)


FAST_MULTIPLE = 8  # channel counts that vectorised kernels run fastest (the latency table: MobileNetV2 in ONNX Runtime)
FASTER_MARGIN = 1.05  # ... when they keep at least this many times the FLOPs (beyond the fit's own granularity)


def _faster_rounding(config: SearchConfig, ctx: TrialContext, policy, size: float, log) -> int | None:
    """Under a latency objective, the uniform curve's channel rounding at ``size``: multiples of
    FAST_MULTIPLE (with the run's own) when the uniform policy fitted to that latency with them keeps
    FASTER_MARGIN times the FLOPs or more of the one with the run's rounding (the faster of the two at equal channels), else None (the
    run's). Each fit measures the fitted model's latency, as every trial's does."""
    import math

    from .fit import InfeasibleError

    if config.size_measure != "latency" or ctx.round_to % FAST_MULTIPLE == 0:
        return None
    if config.latency_backend == "torch" and str(config.trial_device).split(":")[0] != ctx.device.type:
        return None  # the trials time on a device the driver cannot (a GPU): their own rounding stays
    other = math.lcm(ctx.round_to, FAST_MULTIPLE)
    try:
        alt = ctx.uniform(None, size, other)
    except InfeasibleError:
        return None
    mine_flops = ctx.costs.cost(policy.sparsity, policy.round_to)["flops"]
    alt_flops = ctx.costs.cost(alt.sparsity, alt.round_to)["flops"]
    if alt_flops < FASTER_MARGIN * mine_flops:
        return None
    log(f"uniform curve at latency {size:.3g}: multiples of {other} keep {alt_flops / mine_flops:.2f}x the FLOPs "
        f"of --round-to {ctx.round_to} at the same latency; its uniform policy uses them")
    return other


# Shapes graded by depth (groups in the order the model defines their layers), run at the budget
# before the sampler's own trials: (label, span, deeper kept). Chosen on the headroom study's seed-0
# validation (results/benchmarks/headroom.csv): at vgg11_cifar 12.5% params the best of 27 candidates
# kept the earlier layers 4x wider than the last (at the same parameter count they are cheap), at
# 12.5% FLOPs the earlier layers 2x; the default search's 24 trials had found neither.
DEPTH_STARTS = (("earlier4x", 4.0, False), ("earlier2x", 2.0, False), ("deeper2x", 2.0, True))


def depth_order(model, groups: Sequence[str]) -> list[str]:
    """``groups`` in the order the model defines their root layers (input side first), which is the
    order of depth for the usual CNN; Torch-Pruning lists groups in another order (a VGG's deepest first)."""
    position = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(groups, key=lambda g: position.get(g.removesuffix(HEADS), len(position)))


def depth_shape(groups: Sequence[str], span: float, deeper: bool = True, high: float = 0.9) -> dict[str, float]:
    """Group -> proposed sparsity of a shape graded by depth (``groups`` input side first): the keep
    share grows geometrically by ``span`` from the first group to the last (``deeper``) or from the last
    to the first. The group kept most proposes sparsity ``1 - high``; the fit then scales the shape to
    the size it is run at.

    Example:
        >>> depth_shape(["a", "b", "c"], 4.0)
        {'a': 0.775, 'b': 0.55, 'c': 0.09999999999999998}
    """
    n = len(groups)
    sign = 1.0 if deeper else -1.0
    keep = {g: span ** (sign * (i / max(n - 1, 1) - 0.5)) for i, g in enumerate(groups)}
    top = max(keep.values())
    return {g: 1.0 - high * k / top for g, k in keep.items()}


def _depth_starts(config: SearchConfig, ctx: TrialContext, done: pd.DataFrame, size: float) -> list[WarmStart]:
    """The depth-graded shapes of DEPTH_STARTS at ``size`` with the first criterion (origin
    ``depth:<label>@<size>``), unless run already; none for a model of fewer than three groups."""
    if len(ctx.group_names) < 3:
        return []
    ordered = depth_order(ctx.model, ctx.group_names)
    out = []
    for label, span, deeper in DEPTH_STARTS:
        origin = f"depth:{label}@{size:.3f}"
        if len(done) and (done["origin"] == origin).any():
            continue
        shape = depth_shape(ordered, span, deeper)
        out.append(WarmStart(origin, config.space.point_of(shape), config.importances[0], size))
    return out


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
    ctx = context(prepared, driver=True)  # the driver's own copy: groups, uniform policy
    ranges = config.space.param_ranges(ctx.group_names)
    floor, top = size_range(prepared)
    # the budget first (the size the pick is judged at), then the floor, then the sizes between
    # rounded for the origins' labels, but never outside [floor, top] (Optuna warns of a fixed value
    # out of its range when rounding lands just under the floor)
    sizes = [min(top, max(floor, round(float(v), 6))) for v in np.linspace(floor, top, UNIFORM_SIZES)]
    sizes = [sizes[-1], sizes[0], *sizes[1:-1]]
    warm = _warm_starts(config, ctx, done, sizes, log)
    told, stale = close_stale_trials(run, config)
    if told:
        log(f"resume: told Optuna {told} trial(s) whose results were recorded before the search stopped")
    if stale:
        log(f"resume: marked {stale} interrupted Optuna trial(s) as failed")
    offset = int(done["trial"].max()) + 1 if len(done) else 0
    t = lap(timings, "driver_context", t)
    # Started in the background once the inputs were checked; what is left of its start-up is waited for here.
    ray_starter.wait(config, prepared.payload_bytes)
    t = lap(timings, "ray_start", t)
    try:
        _run_tuner(prepared, ranges, warm, offset, remaining, faults, (floor, top), log=log,
                   reuse=ray_starter.reuse_workers)
    finally:
        lap(timings, "tuner", t)


def _run_tuner(prepared: Prepared, ranges: dict, warm: tuple[WarmStart, ...], offset: int, remaining: int,
               faults: Mapping[str, int], target: tuple[float, float], *, log, reuse: bool) -> None:
    from ray import tune

    config, run = prepared.config, prepared.run
    searcher = make_searcher(config, run, ranges, warm, offset, target)

    def describe(cfg):
        _, _, target_size, origin = candidate(cfg, warm, config)
        return int(cfg.get("trial", -1)), origin, target_size, None, float(config.finetune_epochs)

    # what the time-left estimate expects: the warm starts' sizes first, then proposals in the target range
    sizes = ([w.target for w in warm] + [None] * max(0, remaining - len(warm)))[:remaining]
    writer = row_writer(run, config, (config.size_measure, target[1]), log, describe, total=remaining,
                        done=config.trials - remaining, sizes=sizes, prior=(target[0] + target[1]) / 2)
    job = tune.with_resources(tune.with_parameters(trainable, prepared=prepared, warm=warm, faults=dict(faults)),
                                    {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    tuner = tune.Tuner(
        job,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                    max_concurrent_trials=config.concurrency, reuse_actors=reuse),
        run_config=run_config(run, f"tune-{offset}", writer),
    )
    tuner.fit()

