"""Searching a user's own task from Python: their model, metric, training loop and batches.

The search is the same as ``autoprune search`` (Optuna proposes, Ray Tune runs the trials, the front
is written); only what trains and scores a pruned copy is the user's (``task.UserTask``). Argument
names follow ModelOpt's ``prune(model, constraints, dummy_input, config={"data_loader", "score_func"})``
in spirit and Optuna's ``direction`` word for word.

Example:
    >>> outcome = ap.search_task(model, torch.randn(1, 3, 64, 64), {"flops": "50%"}, evaluate=miou,
    ...                          finetune=train_seg, calib_batches=batches, metric="miou", trials=12)
    >>> small = ap.apply_policy(model, outcome.policy(), torch.randn(1, 3, 64, 64))
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from .config import SearchConfig
from .errors import ConfigError
from .driver import SearchOutcome, search
from .task import DIRECTIONS, TaskSpec, UserTask

__all__ = ["search_task", "search_spec", "task_config"]

_BUDGET_KINDS = ("flops", "params", "latency")


def search_task(model: nn.Module, example_input: torch.Tensor, budgets: Mapping[str, str], *,
                evaluate: Callable[[nn.Module], float], finetune: Callable[[nn.Module, float], Any],
                calib_batches: Sequence[Any], loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
                forward: Callable[[nn.Module, Any], Any] | None = None, metric: str = "metric",
                direction: str = "maximize", resume: bool = False, log: Callable[[str], None] = print,
                spec: str = "", **settings: Any) -> SearchOutcome:
    """Search per-group sparsities of ``model`` (trained) for the user's task; returns what
    :func:`~autoprune.driver.search` returns (the run folder, trials, front; ``outcome.policy()`` is the pick).

    Args:
        example_input: one batch the model takes (``model(example_input)``), for the dependency graph,
            FLOPs and latency.
        budgets: ``{"flops": "50%"}``, ``{"params": "2M", "latency": "60%"}``: as the CLI's --budget-* flags.
        evaluate: ``evaluate(model) -> float``, the validation metric (never test data).
        finetune: ``finetune(model, epochs)``, the user's loop, in place, for fractional epochs.
        calib_batches: batches for BatchNorm recalibration and the criteria, fed as ``forward`` says.
        loss: ``loss(model, batch) -> Tensor``: enables the ``taylor`` criterion.
        forward: ``forward(model, batch)``; default ``model(batch)``, or ``model(batch[0])`` for a tuple.
        metric: the metric's name, recorded in config.yaml and shown on the plot and in ``report``.
        direction: ``maximize`` or ``minimize`` (Optuna's words). For ``minimize`` the trials' score
            (column ``val_acc``, the front, the plot) is minus the metric, named ``-<metric>``.
        settings: any other :class:`~autoprune.config.SearchConfig` field (``trials``, ``finetune_epochs``,
            ``concurrency``, ``name``, ``results_dir``, ``importance``, ...).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"search_task's model must be a torch.nn.Module, but got {type(model).__name__}.")
    if not isinstance(example_input, torch.Tensor):
        raise ConfigError(f"search_task's example_input must be a tensor batch, but got {type(example_input).__name__}.")
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, but got {direction!r}.")
    bad = [k for k in budgets if k not in _BUDGET_KINDS]
    if bad or not budgets:
        raise ConfigError(f"budgets must map {', '.join(_BUDGET_KINDS)} to a budget such as '50%', but got "
                          f"{dict(budgets)!r}.")
    user = UserTask(evaluate, finetune, calib_batches, loss, forward, metric, direction, spec)
    for key in _NOT_FOR_TASKS:
        if key in settings:
            raise ConfigError(f"search_task does not take {key!r}: the task brings its model and data"
                              + (" (distil in your own finetune)" if key == "distill" else "")
                              + (" (sensitivity needs the built-in classification task)" if key == "sensitivity"
                                 else "") + ".")
    config = SearchConfig(**{f"budget_{k}": str(v) for k, v in budgets.items()}, **settings)
    config = task_config(config, model, user)
    return search(config, resume=resume, log=log, task=(model, example_input, user))


_NOT_FOR_TASKS = ("model", "dataset", "checkpoint", "distill", "sensitivity", "data_dir", "image_size", "download")


def task_config(config: SearchConfig, model: nn.Module, user: UserTask) -> SearchConfig:
    """``config`` for a user's task: the model's class and ``task`` as its labels, and criteria without
    ``taylor`` when the task has no loss (``auto``: l1 and bn_scale). Refuses what only the built-in
    classification task has (distillation, the sensitivity warm start)."""
    if config.distill:
        raise ConfigError("--distill is for the built-in classification task; a user's task distils in its own "
                          "finetune if it wants to.")
    if config.sensitivity:
        raise ConfigError("--sensitivity needs the built-in classification task (it scores groups by accuracy "
                          "on its validation split); drop it for --task.")
    importance = config.importance
    if not user.has_loss:
        if importance == "auto":
            importance = "l1,bn_scale"  # taylor needs the task's loss
        elif "taylor" in config.importances:
            raise ConfigError("--importance taylor needs the task's loss(model, batch); give a loss or choose "
                              "l1 or bn_scale.")
    return config.replace(model=type(model).__name__, dataset="task", importance=importance)


def search_spec(loaded: TaskSpec, spec: str, budgets: Mapping[str, str], **kwargs: Any) -> SearchOutcome:
    """:func:`search_task` on what a ``--task pkg.mod:function`` returned."""
    return search_task(loaded.model, loaded.example_input, budgets, evaluate=loaded.evaluate,
                       finetune=loaded.finetune, calib_batches=loaded.calib_batches, loss=loaded.loss,
                       forward=loaded.forward, metric=loaded.metric, direction=loaded.direction, spec=spec,
                       **kwargs)
