"""What a trial trains and scores a pruned model with: the task.

A trial, ``apply`` and the baseline ask a :class:`Task` to recalibrate normalisation, finetune and
evaluate; they know nothing of losses or metrics. Classification on a named dataset
(:class:`Classification`: cross-entropy, top-1 accuracy) is the built-in task; a user's own task
(:class:`UserTask`) brings their functions: ``evaluate(model) -> float``, ``finetune(model, epochs)``,
calibration batches and, for the ``taylor`` criterion, ``loss(model, batch)``.

Example:
    >>> task = UserTask(evaluate=miou, finetune=train_seg, calib_batches=[images[:8]], metric="miou")
    >>> task.evaluate(model, device="cpu")   # the user's metric (negated when direction is minimize)
"""
from __future__ import annotations

import functools
import importlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from .errors import ConfigError

__all__ = ["Task", "Classification", "UserTask", "TaskSpec", "load_task", "DIRECTIONS"]

# Optuna's word for the way the metric improves. The front, its hypervolume, the uniform curve and
# Optuna's scores all take higher as better: for "minimize" the score a trial records (column val_acc)
# is minus the user's metric, and the plot and report name it so ("-loss"); apply gives both signs.
DIRECTIONS = ("maximize", "minimize")
MAX_CALIB_BATCHES = 64  # calibration batches kept (a DataLoader is read this far, not through)


class Task:
    """The seam between a trial and what trains and scores: recalibrate, finetune, evaluate."""

    metric = "val_acc"
    direction = "maximize"
    has_loss = True  # whether a gradient criterion (taylor) can score channels

    def recalibrate(self, model: nn.Module, *, device, batches: int, batch_size: int, seed: int) -> None:
        raise NotImplementedError

    def finetune(self, model: nn.Module, epochs: float, *, device, lr: float, batch_size: int, seed: int,
                 deadline: float | None = None, teacher: nn.Module | None = None, distill: float = 0.0,
                 warmup_epochs: float = 0.0) -> None:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, *, device) -> float:
        """The score a search maximises: the task's validation metric."""
        raise NotImplementedError

    def gradient_source(self):
        """What ``prune.apply_policy`` takes as ``grad_batch`` for a gradient criterion."""
        raise NotImplementedError


class Classification(Task):
    """The built-in task: an image classifier on a training and a validation split (cross-entropy,
    top-1 accuracy), trained by ``training.train``. Trials, ``apply`` and the baseline reach the loss
    and the metric only through it; ``test_ds`` is read only by ``apply`` and the benchmarks."""

    def __init__(self, train_ds, val_ds, test_ds=None) -> None:
        self.train_ds, self.val_ds, self.test_ds = train_ds, val_ds, test_ds

    @classmethod
    def of(cls, splits) -> "Classification":
        """The task of a dataset's splits (``data.load_dataset``)."""
        return cls(splits.train, splits.val, getattr(splits, "test", None))

    def recalibrate(self, model, *, device, batches, batch_size, seed) -> None:
        from .training import recalibrate_bn

        recalibrate_bn(model, self.train_ds, device=device, batches=batches, batch_size=batch_size, seed=seed)

    def finetune(self, model, epochs, *, device, lr, batch_size, seed, deadline=None, teacher=None, distill=0.0,
                 warmup_epochs=0.0) -> None:
        from .training import TrainConfig

        cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, warmup_epochs=warmup_epochs,
                          distill=distill)
        self.train(model, cfg, device=device, deadline=deadline, teacher=teacher)

    def train(self, model, cfg, *, device, on_epoch=None, deadline=None, teacher=None) -> list[dict]:
        """Train with a full recipe (``train.TrainConfig``); with ``on_epoch``, each epoch's row carries
        its validation accuracy. Returns the epoch rows."""
        from .training import train

        return train(model, self.train_ds, cfg, device=device, val_ds=self.val_ds if on_epoch else None,
                     on_epoch=on_epoch, deadline=deadline, teacher=teacher)

    def evaluate(self, model, *, device, split: str = "val") -> float:
        """Top-1 accuracy on the validation split (what a search maximises), or on ``split="test"``."""
        from .training import evaluate

        ds = self.test_ds if split == "test" else self.val_ds
        if ds is None:
            raise ValueError(f"This classification task has no {split} split.")
        return evaluate(model, ds, device=device)

    def final_recipe(self, model, cfg, *, device, bn_batches: int, on_epoch=None, test: bool = True,
                     teacher=None) -> dict:
        """What ``apply`` and the benchmarks give every pruned model: BatchNorm recalibration, a
        finetune of ``cfg``, evaluation. Returns ``val_acc_bn`` (right after recalibration), ``val_acc``,
        ``test_acc`` (None with ``test=False``), ``seconds`` and the epoch ``log``."""
        import time

        start = time.perf_counter()
        if bn_batches:
            self.recalibrate(model, device=device, batches=bn_batches, batch_size=cfg.batch_size, seed=cfg.seed)
        val_bn = self.evaluate(model, device=device)
        log = self.train(model, cfg, device=device, on_epoch=on_epoch, teacher=teacher) if cfg.epochs > 0 else []
        return {"val_acc_bn": val_bn, "val_acc": self.evaluate(model, device=device),
                "test_acc": self.evaluate(model, device=device, split="test") if test else None,
                "seconds": time.perf_counter() - start, "log": log}

    @functools.cached_property
    def _gradient_batch(self):
        from .criteria import gradient_batch

        return gradient_batch(self.train_ds)

    def gradient_source(self):
        return self._gradient_batch  # drawn once per worker, not once per trial


@dataclass
class UserTask(Task):
    """A user's task: their validation metric, training loop and batches.

    ``evaluate(model) -> float`` and ``finetune(model, epochs)`` get the model on the device the trial
    runs on (``next(model.parameters()).device``) and must move their batches there; ``finetune``
    trains in place, for a fractional number of epochs. ``calib_batches`` are what BatchNorm
    recalibration (model in eval mode, BatchNorm layers in train mode) and the criteria run on: each is
    fed as ``forward(model, batch)`` (default: ``model(batch)`` for a tensor, ``model(batch[0])`` for
    a tuple or list, as a loader's ``(inputs, targets)``). ``loss(model, batch) -> Tensor`` enables the
    ``taylor`` criterion (one backward pass on the first calibration batch, model in train mode).
    """

    evaluate_fn: Callable[[nn.Module], float]
    finetune_fn: Callable[[nn.Module, float], Any]
    calib_batches: Sequence[Any]
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None
    forward_fn: Callable[[nn.Module, Any], Any] | None = None
    metric: str = "metric"
    direction: str = "maximize"
    spec: str = field(default="")  # the import path it came from ("pkg.mod:fn"), if any

    def __post_init__(self) -> None:
        for name in ("evaluate_fn", "finetune_fn"):
            if not callable(getattr(self, name)):
                raise ConfigError(f"The task's {name.removesuffix('_fn')} must be a function, "
                                  f"but got {type(getattr(self, name)).__name__}.")
        for name in ("loss_fn", "forward_fn"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise ConfigError(f"The task's {name.removesuffix('_fn')} must be a function or None, "
                                  f"but got {type(getattr(self, name)).__name__}.")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"The task's direction must be one of {', '.join(DIRECTIONS)}, but got "
                              f"{self.direction!r}.")
        if not isinstance(self.metric, str) or not self.metric.strip() or "," in self.metric:
            raise ConfigError(f"The task's metric must be a name without commas, but got {self.metric!r}.")
        if isinstance(self.calib_batches, torch.Tensor) or not hasattr(self.calib_batches, "__iter__"):
            raise ConfigError(f"The task's calib_batches must be a list (or loader) of batches, but got "
                              f"{type(self.calib_batches).__name__}; wrap one tensor batch as [batch].")
        self.calib_batches = list(itertools.islice(self.calib_batches, MAX_CALIB_BATCHES))
        if not self.calib_batches:
            raise ConfigError("The task needs at least one calibration batch (calib_batches) for BatchNorm "
                              "recalibration and the channel criteria.")

    @property
    def has_loss(self) -> bool:  # type: ignore[override]
        return self.loss_fn is not None

    def _feed(self, model: nn.Module, batch) -> Any:
        batch = _to(batch, _device_of(model))
        if self.forward_fn is not None:
            return self.forward_fn(model, batch)
        return model(batch[0] if isinstance(batch, (tuple, list)) else batch)

    def recalibrate(self, model, *, device, batches, batch_size, seed) -> None:
        from .training import fresh_bn_statistics

        if batches < 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return
        model.to(device)
        with fresh_bn_statistics(model), torch.no_grad():
            for batch in self.calib_batches[:batches]:
                self._feed(model, batch)

    def finetune(self, model, epochs, *, device, lr, batch_size, seed, deadline=None, teacher=None, distill=0.0,
                 warmup_epochs=0.0) -> None:
        if distill:
            raise ConfigError("Distillation (--distill) is for the built-in classification task; a user's task "
                              "distils in its own finetune if it wants to.")
        model.to(device).train()
        torch.manual_seed(seed)
        self.finetune_fn(model, float(epochs))
        model.eval()

    def evaluate(self, model, *, device) -> float:
        """The score a search maximises: the user's metric, negated when ``direction`` is minimize."""
        return self.score(self.measure(model, device=device))

    def measure(self, model, *, device) -> float:
        """The user's metric as their ``evaluate`` returns it."""
        model.to(device).eval()
        with torch.no_grad():
            value = float(self.evaluate_fn(model))
        model.eval()
        return value

    def score(self, value: float) -> float:
        """A metric value as a score (higher is better); its own inverse."""
        return -value if self.direction == "minimize" else value

    def gradient_source(self):
        if self.loss_fn is None:
            raise ConfigError("The taylor criterion needs the task's loss(model, batch); give loss= or choose "
                              "--importance l1 or bn_scale.")
        batch, loss = self.calib_batches[0], self.loss_fn
        return lambda model: loss(model, _to(batch, _device_of(model)))


@dataclass(frozen=True)
class TaskSpec:
    """What ``--task pkg.mod:function`` returns: the pieces of a :class:`UserTask`, plus the trained
    model and an example input. A function may also return a dict with these keys."""

    model: nn.Module
    example_input: torch.Tensor
    evaluate: Callable[[nn.Module], float]
    finetune: Callable[[nn.Module, float], Any]
    calib_batches: Sequence[Any]
    loss: Callable[[nn.Module, Any], torch.Tensor] | None = None
    forward: Callable[[nn.Module, Any], Any] | None = None
    metric: str = "metric"
    direction: str = "maximize"  # or "minimize" (see DIRECTIONS)

    def task(self, spec: str = "") -> UserTask:
        return UserTask(self.evaluate, self.finetune, self.calib_batches, self.loss, self.forward, self.metric,
                        self.direction, spec)


def load_task(spec: str) -> TaskSpec:
    """Import ``pkg.mod:function`` (from PYTHONPATH, or the current directory) and call it; its result
    (a :class:`TaskSpec` or a dict of its fields) is checked. Raises ConfigError naming the bad value."""
    mod_name, sep, fn_name = str(spec).partition(":")
    if not sep or not mod_name or not fn_name:
        raise ConfigError(f"--task must be package.module:function, but got {spec!r}.")
    import os
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: a task module beside where the command runs
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and mod_name.startswith(e.name):
            raise ConfigError(f"--task {spec!r}: cannot import module {mod_name!r} ({e}); put it on PYTHONPATH "
                              "or run from the folder that holds it.") from None
        raise ConfigError(f"--task {spec!r}: importing module {mod_name!r} failed: {e}.") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised on import: say so in one line
        raise ConfigError(f"--task {spec!r}: importing module {mod_name!r} failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}.") from None
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ConfigError(f"--task {spec!r}: module {mod_name!r} has no function {fn_name!r}.")
    if not callable(fn):
        raise ConfigError(f"--task {spec!r}: {fn_name!r} in module {mod_name!r} is a {type(fn).__name__}, "
                          "not a function.")
    out = fn()
    if isinstance(out, dict):
        known = set(TaskSpec.__dataclass_fields__)
        unknown = sorted(set(out) - known)
        missing = sorted(k for k in ("model", "example_input", "evaluate", "finetune", "calib_batches")
                         if k not in out)
        if unknown or missing:
            raise ConfigError(f"--task {spec!r} returned a dict with " + (f"unknown keys {unknown}" if unknown else "")
                              + (" and " if unknown and missing else "") + (f"missing keys {missing}" if missing else "")
                              + f"; the keys are {', '.join(TaskSpec.__dataclass_fields__)}.")
        out = TaskSpec(**out)
    if not isinstance(out, TaskSpec):
        raise ConfigError(f"--task {spec!r} must return autoprune.TaskSpec or a dict of its fields, "
                          f"but returned {type(out).__name__}.")
    if not isinstance(out.model, nn.Module) or not isinstance(out.example_input, torch.Tensor):
        raise ConfigError(f"--task {spec!r} must return a torch.nn.Module model and a tensor example_input.")
    return out


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch
