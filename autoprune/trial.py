"""One candidate end to end: prune a copy of the baseline, recalibrate BN, finetune, evaluate, measure.

Knows nothing of Ray: ``search.py`` calls :func:`run_trial` inside a Tune trainable, tests and
scripts call it directly. A trial is a function of (config, policy, seed).

Example:
    >>> cfg = SearchConfig(budget_flops="50%")
    >>> ctx = TrialContext.build(cfg)                 # baseline model, train/val data, cost model
    >>> policy = ctx.fit({g: 0.3 for g in ctx.group_names})
    >>> result = run_trial(cfg, policy, ctx)
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .budget import Budget
from .errors import ConfigError
from .policy import IMPORTANCES, Policy

__all__ = ["SearchConfig", "TrialResult", "TrialContext", "run_trial", "TRIAL_COLUMNS", "SAMPLERS", "DEVICES"]

SAMPLERS = ("tpe", "nsga2", "random")
DEVICES = ("auto", "cpu", "cuda")
IMPORTANCE_CHOICES = IMPORTANCES
# --importance auto searches these: one criterion from each family (weight magnitude, BatchNorm
# scale, first-order Taylor); the first is the one the uniform warm start uses.
AUTO_IMPORTANCES = ("l1", "bn_scale", "taylor")
# The column contract of trials.csv and pareto.csv (DESIGN.md section 4); s:<group> columns follow.
TRIAL_COLUMNS = ("trial", "status", "origin", "val_acc", "flops", "flops_ratio", "params", "params_ratio",
                 "latency_ms", "latency_ratio", "finetune_s", "trial_s", "policy")


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs; fields map one-to-one to ``autoprune search`` flags.

    Example:
        >>> SearchConfig(model="resnet56", budget_flops="50%", trials=100).budgets()
        [Budget(kind='flops', value=0.5, relative=True, text='50%')]
    """

    model: str = "resnet20"
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    checkpoint: str | None = None
    budget_flops: str | None = None
    budget_params: str | None = None
    budget_latency: str | None = None
    trials: int = 24
    finetune_epochs: float = 2.0
    finetune_lr: float = 0.01
    batch_size: int = 64
    bn_batches: int = 10
    importance: str = "auto"  # a criterion, a comma-separated list to search over, or auto (AUTO_IMPORTANCES)
    fill_budget: bool = True
    concurrency: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    device: str = "auto"
    sampler: str = "tpe"
    search_space: str = "default"
    seed: int = 0  # the search's randomness: sampler, pruning, finetune order
    split_seed: int = 0  # which training images form the validation split (and the cached baseline)
    val_fraction: float = 0.1
    image_size: int | None = None
    baseline_epochs: int = 15
    latency_batch: int = 1
    results_dir: str = "results"
    name: str | None = None
    address: str | None = None
    dashboard: bool = False

    def __post_init__(self) -> None:
        rules = [
            ("trials", isinstance(self.trials, int) and self.trials >= 1, "a whole number >= 1"),
            ("finetune_epochs", _finite(self.finetune_epochs) and self.finetune_epochs >= 0, ">= 0"),
            ("finetune_lr", _finite(self.finetune_lr) and self.finetune_lr > 0, "> 0"),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "a whole number >= 1"),
            ("bn_batches", isinstance(self.bn_batches, int) and self.bn_batches >= 0, "a whole number >= 0"),
            ("concurrency", isinstance(self.concurrency, int) and self.concurrency >= 1, "a whole number >= 1"),
            ("cpus_per_trial", _finite(self.cpus_per_trial) and self.cpus_per_trial > 0, "> 0"),
            ("gpus_per_trial", _finite(self.gpus_per_trial) and self.gpus_per_trial >= 0, ">= 0 (e.g. 0.25)"),
            ("val_fraction", _finite(self.val_fraction) and 0 < self.val_fraction < 1, "in (0, 1)"),
            ("baseline_epochs", isinstance(self.baseline_epochs, int) and self.baseline_epochs >= 1,
             "a whole number >= 1"),
            ("latency_batch", isinstance(self.latency_batch, int) and self.latency_batch >= 1, "a whole number >= 1"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise ConfigError(f"--{name.replace('_', '-')} must be {rule}, but got {getattr(self, name)!r}.")
        for name, value, choices in (("sampler", self.sampler, SAMPLERS), ("device", self.device, DEVICES)):
            if value not in choices:
                raise ConfigError(f"Unknown --{name} {value!r}; choose one of {', '.join(choices)}.")
        self.importances  # noqa: B018 -- parse now, so a bad criterion fails before any work
        if self.gpus_per_trial > 0 and self.device == "cpu":
            raise ConfigError(f"--gpus-per-trial {self.gpus_per_trial} needs --device auto or cuda, not cpu.")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"--image-size must be >= 8, but got {self.image_size!r}.")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"--name must be a plain folder name, but got {self.name!r}.")
        self.budgets()  # parse now, so a bad budget fails before any work

    def budgets(self) -> list[Budget]:
        """The parsed budgets, in the order flops, params, latency."""
        texts = {"flops": self.budget_flops, "params": self.budget_params, "latency": self.budget_latency}
        return [Budget.parse(kind, text) for kind, text in texts.items() if text is not None]

    @property
    def importances(self) -> tuple[str, ...]:
        """The criteria the search chooses among (one: no choice); ``auto`` is :data:`AUTO_IMPORTANCES`."""
        text = str(self.importance).strip()
        if text == "auto":
            return AUTO_IMPORTANCES
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        bad = [n for n in names if n not in IMPORTANCE_CHOICES] or ([] if names else [text])
        if bad:
            raise ConfigError(f"Unknown --importance {bad[0]!r}; choose auto, one of {', '.join(IMPORTANCE_CHOICES)}, "
                              "or a comma-separated list of them.")
        return names

    @property
    def objective(self) -> str:
        """The size measure the search minimises: that of the first budget, FLOPs if there is none."""
        budgets = self.budgets()
        return budgets[0].kind if budgets else "flops"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"Unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}.")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "SearchConfig":
        return dataclasses.replace(self, **changes)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


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

    def __post_init__(self) -> None:
        if self.status not in ("ok", "infeasible", "failed"):
            raise ValueError(f"status must be ok, infeasible or failed, but got {self.status!r}.")

    def to_row(self) -> dict[str, Any]:
        """A trials.csv row: the contract columns, ``error``, then ``s:<group>`` per group, ``t:<part>`` per timing."""
        row = {c: getattr(self, c) for c in TRIAL_COLUMNS if c != "policy"}
        row["policy"] = f"policies/{self.trial}.json" if self.policy is not None else ""
        row["error"] = self.error
        row["importance"] = self.policy.importance if self.policy is not None else ""
        if self.policy is not None:
            row.update({f"s:{g}": s for g, s in self.policy.sparsity.items()})
        # Seconds per part (fit, prune, count, bn_recalibration, finetune, evaluate, ...), for overhead studies.
        row.update({f"t:{part}": round(float(s), 4) for part, s in self.timings.items()})
        return row


class TrialContext:
    """What every trial of a search shares, built once per worker process.

    Holds the baseline model (weights loaded, on CPU), the train and validation splits (never the
    test split), the example input, the cost model and the baseline's figures.
    """

    def __init__(self, config: SearchConfig, model: nn.Module, train_ds, val_ds, example: torch.Tensor,
                 *, device: torch.device, base_latency_ms: float | None = None,
                 exclude: Sequence[str] = ()) -> None:
        from .prune import cost_model

        self.config = config
        self.model = model.eval()
        self.train_ds, self.val_ds = train_ds, val_ds
        self.example = example
        self.device = device
        self.exclude = tuple(exclude)
        self.costs = cost_model(model, example, self.exclude)
        self.base_flops = self.costs.flops
        self.base_params = self.costs.params
        self.base_latency_ms = base_latency_ms
        self.round_to = 8 if device.type == "cuda" else 1

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.costs.groups]

    def fit(self, proposal: Mapping[str, float], importance: str | None = None) -> Policy:
        """Fit a proposal to the config's budgets (raises ``InfeasibleError`` when impossible).

        The policy records ``importance`` (default: the config's first criterion), so whoever
        applies it later removes the same channels the trial did.
        """
        from .prune import fit_policy

        policy = fit_policy(self.model, self.example, proposal, self.config.budgets(), exclude=self.exclude,
                            round_to=self.round_to, device=self.device, latency_batch=self.config.latency_batch,
                            model_name=self.config.model, fill=self.config.fill_budget)
        return dataclasses.replace(policy, importance=importance or self.config.importances[0])

    @functools.cached_property
    def gradient_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``taylor`` criterion's batch, drawn once per worker rather than once per trial."""
        from .data import gradient_batch

        return gradient_batch(self.train_ds)

    def uniform(self, importance: str | None = None) -> Policy:
        return self.fit({g: 0.0 for g in self.group_names}, importance)


def run_trial(config: SearchConfig, policy: Policy, context: TrialContext, *, trial: int = 0,
              origin: str = "optuna") -> TrialResult:
    """Prune, recalibrate BatchNorm, finetune ``config.finetune_epochs``, evaluate on validation, measure.

    Never raises for a bad candidate: an exception or a non-finite loss gives a ``failed`` result
    whose ``error`` says why. A latency budget missed by the measured model gives ``infeasible``.
    """
    from .prune import apply_policy, count_flops, count_params
    from .train import TrainConfig, evaluate, recalibrate_bn, train

    start = time.perf_counter()
    timings: dict[str, float] = {}
    base = {"trial": trial, "origin": origin, "policy": policy}

    def lap(part: str, t0: float) -> float:
        now = time.perf_counter()
        timings[part] = timings.get(part, 0.0) + now - t0
        return now

    try:
        t = time.perf_counter()
        dev = context.device
        importance = policy.importance or config.importances[0]
        small = apply_policy(context.model, policy, context.example, importance=importance,
                             round_to=context.round_to, exclude=context.exclude, seed=config.seed + trial,
                             grad_batch=context.gradient_batch if importance == "taylor" else None)
        small.to(dev)
        t = lap("prune", t)
        flops = count_flops(small, context.example.to(dev))
        params = count_params(small)
        t = lap("count", t)
        if config.bn_batches:
            recalibrate_bn(small, context.train_ds, device=dev, batches=config.bn_batches,
                           batch_size=config.batch_size, seed=config.seed + trial)
        t = lap("bn_recalibration", t)
        if config.finetune_epochs > 0:
            cfg = TrainConfig(epochs=config.finetune_epochs, lr=config.finetune_lr, batch_size=config.batch_size,
                              seed=config.seed + trial, warmup_epochs=0)
            train(small, context.train_ds, cfg, device=dev)
        t = lap("finetune", t)
        val_acc = evaluate(small, context.val_ds, device=dev)
        t = lap("evaluate", t)
        latency_ms = latency_ratio = None
        status, error = "ok", ""
        if config.budget_latency is not None:
            from .latency import relative_latency

            latency_ms, base_ms = relative_latency(small, context.model, context.example, device=dev,
                                                   batch_size=config.latency_batch)
            latency_ratio = latency_ms / base_ms
            limit = next(b for b in config.budgets() if b.kind == "latency").limit(base_ms)
            if latency_ms > limit * 1.02:  # 2% allows for timer noise between fit and re-measure
                status, error = "infeasible", f"measured latency {latency_ms:.3g}ms over the limit {limit:.3g}ms"
            t = lap("latency", t)
        if not math.isfinite(val_acc):
            raise FloatingPointError(f"validation accuracy is {val_acc}")
        return TrialResult(status=status, error=error, val_acc=val_acc, flops=flops,
                           flops_ratio=flops / context.base_flops, params=params,
                           params_ratio=params / context.base_params, latency_ms=latency_ms,
                           latency_ratio=latency_ratio, finetune_s=timings.get("finetune", 0.0),
                           trial_s=time.perf_counter() - start, timings=timings, **base)
    except Exception as e:  # a bad candidate must not end the search; its reason is recorded
        return TrialResult(status="failed", error=_one_line(e), trial_s=time.perf_counter() - start,
                           timings=timings, **base)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    kind = "CUDA out of memory" if "out of memory" in text.lower() else type(e).__name__
    return f"{kind}: {text[:300]}" if text else kind
