"""One candidate end to end: fit, prune, recalibrate BatchNorm, finetune, evaluate, measure.

Knows nothing of Ray: ``workers.py`` and ``promote.py`` call :func:`run_trial` inside Tune trainables, tests and
scripts call it directly. A trial is a function of (config, proposal, criterion, seed).

Example:
    >>> cfg = SearchConfig(budget_flops="50%")
    >>> ctx = TrialContext(cfg, model, splits.train, splits.val, splits.example_input(), device="cpu")
    >>> result = run_trial(cfg, {g: 0.3 for g in ctx.group_names}, ctx)
    >>> result.status, result.val_acc, result.policy.indices      # the channels the trial kept
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .config import SearchConfig
from . import quiet
from .policy import Policy

__all__ = ["TrialResult", "TrialContext", "run_trial", "TRIAL_COLUMNS", "STATUSES"]

# The column contract of trials.csv and pareto.csv (DESIGN.md section 4); s:<group> columns follow.
TRIAL_COLUMNS = ("trial", "status", "origin", "val_acc", "flops", "flops_ratio", "params", "params_ratio",
                 "latency_ms", "latency_ratio", "finetune_s", "trial_s", "policy")
STATUSES = ("ok", "infeasible", "failed")


@dataclass(frozen=True)
class TrialResult:
    """What one trial measured. ``status`` is ``ok``, ``infeasible`` or ``failed`` (with ``error``)."""

    trial: int
    status: str
    origin: str
    val_acc: float | None = None
    flops: int | None = None
    flops_ratio: float | None = None
    params: int | None = None
    params_ratio: float | None = None
    latency_ms: float | None = None
    latency_ratio: float | None = None
    finetune_s: float = 0.0
    trial_s: float = 0.0
    policy: Policy | None = None
    error: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per part, for overhead studies
    target_ratio: float | None = None  # the size the candidate was scaled to, a share of the unpruned model
    epochs: float | None = None  # finetune epochs the trial trained: its fidelity (0 = BatchNorm only)
    parent: int | None = None  # the trial this one reruns at a longer finetune (a promotion), if any
    node: str = ""  # the Ray node the trial ran on (empty outside Ray, or when its worker died)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, but got {self.status!r}.")

    def replace(self, **changes: Any) -> "TrialResult":
        return dataclasses.replace(self, **changes)

    def to_row(self) -> dict[str, Any]:
        """A trials.csv row: the contract columns, ``error``, then ``s:<group>`` per group, ``t:<part>`` per timing."""
        row = {c: getattr(self, c) for c in TRIAL_COLUMNS if c != "policy"}
        row["policy"] = f"policies/{self.trial}.json" if self.policy is not None else ""
        row["error"] = self.error
        row["importance"] = self.policy.importance if self.policy is not None else ""
        row["target_ratio"] = self.target_ratio
        row["epochs"] = self.epochs
        row["parent"] = self.parent
        row["node"] = self.node
        if self.policy is not None:
            row.update({f"s:{g}": s for g, s in self.policy.sparsity.items()})
        # Seconds per part (fit, prune, count, bn_recalibration, finetune, evaluate, ...), for overhead studies.
        row.update({f"t:{part}": round(float(s), 4) for part, s in self.timings.items()})
        return row

    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["policy"] = self.policy.to_dict() if self.policy is not None else None
        d["timings"] = dict(self.timings)
        if not _finite(d["val_acc"]):
            d["val_acc"] = None  # JSON has no NaN
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "TrialResult":
        d = json.loads(text)
        d["policy"] = Policy.from_dict(d["policy"]) if d.get("policy") else None
        return cls(**d)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class TrialContext:
    """What every trial of a search shares, built once per worker process.

    Holds the baseline model (weights loaded, on CPU), the train and validation splits (never the
    test split), the example input, the cost model, the groups a search may prune and the device.
    ``groups`` defaults to the probed :func:`~autoprune.prune.prunable_groups` of the model; a
    search probes once in the driver and passes the result to its workers.
    """

    def __init__(self, config: SearchConfig, model: nn.Module, train_ds, val_ds, example: torch.Tensor,
                 *, device: str | torch.device, groups: Sequence[str] | None = None,
                 exclude: Sequence[str] | None = None, latency_table: Mapping | None = None,
                 task=None) -> None:
        from .costs import default_round_to
        from .probe import prunable_groups
        from .prune import cost_model

        from .task import Classification

        self.config = config
        self.model = model.eval()
        self.train_ds, self.val_ds = train_ds, val_ds
        # What trains and scores a pruned copy: the built-in classification on the splits, or a user's task.
        self.task = task if task is not None else Classification(train_ds, val_ds)
        self.example = example
        self.device = torch.device(device)
        self.exclude = tuple(config.space.exclude if exclude is None else exclude)
        self.costs = cost_model(model, example, self.exclude)
        if groups is None:
            groups = [g.name for g in prunable_groups(model, example, self.exclude,
                                                      max_sparsity=config.space.max_sparsity)]
        self.group_names = list(groups)
        self.base_flops = self.costs.flops
        self.base_params = self.costs.params
        self.round_to = config.round_to or default_round_to(model, self.device)
        self.latency_model = None
        if latency_table is not None:
            from .latency_model import LatencyModel

            self.latency_model = LatencyModel.from_dict(self.costs, latency_table)
        self._teacher: nn.Module | None = None
        self._teacher_key = ""

    def fit(self, proposal: Mapping[str, float], importance: str | None = None, target: float | None = None,
            round_to: int | None = None) -> Policy:
        """Fit a proposal to the config's budgets (raises ``InfeasibleError`` when impossible).

        With ``target`` (a share of the unpruned model in the size measure of the first budget), the
        proposal is a shape, scaled to that size; every budget still holds. The policy records
        ``importance`` (default: the config's first criterion), so whoever applies it later removes
        the same channels the trial did. ``round_to`` overrides the run's channel rounding (the policy
        records it).
        """
        from .budget import Budget
        from .fit import fit_policy

        budgets = tuple(self.config.budgets)
        if target is not None:
            budgets += (Budget(self.config.size_measure, float(target), True, f"{target:.4g}"),)
        # Never beyond the space's ranges: the sparsities the probe verified and the user allowed.
        caps = {g: self.config.space.range_of(g)[1] for g in self.group_names}
        policy = fit_policy(self.model, self.example, proposal, budgets, groups=self.group_names,
                            exclude=self.exclude, round_to=round_to or self.round_to, device=self.device,
                            max_sparsity=caps,
                            latency_batch=self.config.latency_batch, latency_backend=self.config.latency_backend,
                            latency_threads=self.config.latency_threads, model_name=self.config.model,
                            fill=self.config.fill_budget, latency_model=self.latency_model)
        return dataclasses.replace(policy, importance=importance or self.config.importances[0])

    @property
    def gradient_batch(self):
        """The ``taylor`` criterion's batch (or a task's loss callable), drawn once per worker."""
        return self.task.gradient_source()

    def teacher(self, device: torch.device) -> nn.Module:
        """The unpruned model on ``device``, the teacher of distillation (moved there once per worker)."""
        key = str(device)
        if self._teacher is None or self._teacher_key != key:
            self._teacher = self.model if device.type == "cpu" else copy.deepcopy(self.model).to(device)
            self._teacher_key = key
        return self._teacher.eval()

    def uniform(self, importance: str | None = None, target: float | None = None,
                round_to: int | None = None) -> Policy:
        return self.fit({g: 0.0 for g in self.group_names}, importance, target, round_to)


def run_trial(config: SearchConfig, proposal: Mapping[str, float], context: TrialContext, *, trial: int = 0,
              origin: str = "optuna", importance: str | None = None, target: float | None = None,
              policy: Policy | None = None, round_to: int | None = None) -> TrialResult:
    """Fit ``proposal`` to the budgets, prune, recalibrate BatchNorm, finetune, evaluate on validation, measure.

    Never raises for a bad candidate: a proposal that cannot meet the budgets, or a latency budget
    missed by the measured model, gives ``infeasible``; an exception or a non-finite loss gives
    ``failed`` whose ``error`` says why. The result's policy records the channels the trial kept.

    Args:
        importance: the channel criterion (default: the config's first).
        target: the size to scale the proposal to, a share of the unpruned model (default: the budget).
        policy: an already fitted policy to run instead of fitting ``proposal`` (a promotion reruns
            its parent's policy, with the channels it kept, at a longer finetune).
        round_to: the kept channels' multiple (default: the run's; a latency-objective search runs
            its uniform curve with multiples of 8 where they are faster).
    """
    from .criteria import needs_gradients
    from .costs import count_flops, count_params
    from .fit import InfeasibleError
    from .prune import apply_policy

    start = time.perf_counter()
    timings: dict[str, float] = {}
    base: dict[str, Any] = {"trial": trial, "origin": origin, "target_ratio": target,
                            "epochs": float(config.finetune_epochs)}

    def lap(part: str, t0: float) -> float:
        now = time.perf_counter()
        timings[part] = timings.get(part, 0.0) + now - t0
        return now

    def end(**fields: Any) -> TrialResult:
        return TrialResult(**base, **fields, trial_s=time.perf_counter() - start, timings=timings)

    deadline = time.monotonic() + config.trial_timeout if config.trial_timeout else None

    def in_time(part: str) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"ran longer than --trial-timeout {config.trial_timeout:g}s (before {part})")

    try:
        t = time.perf_counter()
        if policy is None:
            try:  # the fit times candidates under a latency budget: one measurement at a time per run
                with _latency_lock(config) if config.budget("latency") is not None else contextlib.nullcontext():
                    policy = context.fit(proposal, importance, target, round_to)
            except InfeasibleError as e:
                lap("fit", t)
                return end(status="infeasible", error=str(e))
        t = lap("fit", t)
        base["policy"] = policy
        dev = context.device
        importance = policy.importance
        small = apply_policy(context.model, policy, context.example, round_to=policy.round_to,
                             exclude=context.exclude, seed=config.seed + trial,
                             grad_batch=context.gradient_batch if needs_gradients(importance) else None)
        base["policy"] = small.autoprune_policy
        small.to(dev)
        t = lap("prune", t)
        flops = count_flops(small, context.example.to(dev))
        params = count_params(small)
        t = lap("count", t)
        in_time("BatchNorm recalibration")
        task = context.task
        timed = config.budget("latency") is not None  # others of the run time models: give way to them
        with quiet.training(small, run_folder(config) if timed else None) as waited:
            if config.bn_batches:
                task.recalibrate(small, device=dev, batches=config.bn_batches, batch_size=config.batch_size,
                                 seed=config.seed + trial)
            t = lap("bn_recalibration", t)
            if config.finetune_epochs > 0:
                in_time("the finetune")
                try:
                    task.finetune(small, config.finetune_epochs, device=dev, lr=config.finetune_lr,
                                  batch_size=config.batch_size, seed=config.seed + trial, deadline=deadline,
                                  teacher=context.teacher(dev) if config.distill else None, distill=config.distill)
                except TimeoutError as e:
                    raise TimeoutError(f"ran longer than --trial-timeout {config.trial_timeout:g}s (finetune {e})") from None
            t = lap("finetune", t)
            in_time("evaluation")
            val_acc = task.evaluate(small, device=dev)
            t = lap("evaluate", t)
        if timed:
            timings["paused"] = waited.seconds  # held for other trials' timing, inside the parts above
        latency_ms = latency_ratio = None
        status, error = "ok", ""
        latency_budget = config.budget("latency")
        if latency_budget is not None:
            from .latency import relative_latency

            with _latency_lock(config):
                latency_ms, base_ms = relative_latency(small, context.model, context.example, device=dev,
                                                       batch_size=config.latency_batch,
                                                       backend=config.latency_backend, threads=config.latency_threads)
            latency_ratio = latency_ms / base_ms
            limit = latency_budget.cap(base_ms)
            if latency_ms > limit * (1 + LATENCY_TOLERANCE):  # timer noise between the fit and this re-measure
                status, error = "infeasible", f"measured latency {latency_ms:.3g}ms over the limit {limit:.3g}ms"
            t = lap("latency", t)
        if not math.isfinite(val_acc):
            raise FloatingPointError(f"validation accuracy is {val_acc}")
        return end(status=status, error=error, val_acc=val_acc, flops=flops, flops_ratio=flops / context.base_flops,
                   params=params, params_ratio=params / context.base_params, latency_ms=latency_ms,
                   latency_ratio=latency_ratio, finetune_s=timings.get("finetune", 0.0))
    except Exception as e:  # a bad candidate must not end the search; its reason is recorded
        return end(status="failed", error=_one_line(e))


# A trial re-measures its pruned model against the latency budget and is infeasible only beyond this
# share over the limit: timing noise between the fit's measurement and this one, on a shared machine.
LATENCY_TOLERANCE = 0.02


def run_folder(config: SearchConfig):
    """The run's folder, as its trials name it for the lock files of ``quiet.py`` (None without a run name)."""
    from pathlib import Path

    return Path(config.results_dir) / config.name if config.name else None


def _latency_lock(config: SearchConfig):
    """One latency measurement at a time per run (trials side by side would time each other's load), and
    while it takes samples the run's other trials on this machine pause (``quiet.py``). The locks are files
    per run and host in the temporary directory, so they hold across Ray's worker processes on one machine."""
    from .quiet import measuring

    return measuring(run_folder(config))


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    kind = "CUDA out of memory" if "out of memory" in text.lower() else type(e).__name__
    return f"{kind}: {text[:300]}" if text else kind
