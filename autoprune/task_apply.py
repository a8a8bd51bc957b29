"""``apply`` for a run that searched a user's task: the task's own loop trains the pick, its metric judges it.

The pick is pruned from the run's baseline weights exactly as its trial pruned it (kept channels),
BatchNorm is recalibrated on the task's calibration batches, the task's ``finetune(model, epochs)``
trains it and its ``evaluate`` scores it next to the unpruned model. ``RUN/apply-<pick>/`` gets
``model.safetensors`` (the pruned weights), ``policy.json`` (rebuild: the task's model, then
``apply_policy(model, policy, example_input)``, then load the weights) and ``metrics.json``. A task
knows no test split: ``metric_before`` and ``metric_after`` are its ``evaluate``'s, in its own sign
(not negated for a minimised metric).

Example:
    >>> apply_task_run("results/LRASPP-task-flops50pct-...", pick="best", epochs=5, log=print)
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .atomic import write_json
from .costs import count_flops, count_params
from .criteria import needs_gradients
from .errors import RunError
from .picks import resolve_pick
from .prune import apply_policy
from .results import Run, load_run
from .task import TaskSpec, load_task

__all__ = ["apply_task_run", "task_of"]


def task_of(run: Run) -> str | None:
    """The task a run searched: its import path, ``python`` (functions handed to search_task), or None
    (the built-in classification)."""
    import yaml

    p = Path(run.path) / "config.yaml"
    return (yaml.safe_load(p.read_text()) or {}).get("task") if p.is_file() else None


def apply_task_run(run: str | os.PathLike | Run, *, pick: str | int = "best", epochs: float = 5,
                   spec: TaskSpec | None = None, device: str = "auto", seed: int = 0,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train a task run's pick with the task's ``finetune`` for ``epochs`` and score it with ``evaluate``.

    ``spec`` is the task's pieces (default: its ``--task`` import path, called again; a run searched
    from Python must pass them)."""
    from .models import load_checkpoint
    from .training import resolve_device

    run = run if isinstance(run, Run) else load_run(run)
    where = task_of(run)
    if where is None:
        raise RunError(f"Run {str(run.path)!r} searched the built-in classification task; use autoprune apply.")
    if spec is None:
        if where == "python":
            raise RunError(f"Run {str(run.path)!r} searched a task given from Python; apply it from Python with "
                           "autoprune.apply_task_run(run, spec=autoprune.TaskSpec(...)), its model and functions.")
        spec = load_task(where)
    task = spec.task(where)
    choice = resolve_pick(run, pick)
    dev = resolve_device(device)
    model = spec.model
    load_checkpoint(model, Path(run.path) / "baseline.pt")  # a model that no longer matches: one clear error
    model.cpu().eval()
    x = spec.example_input.cpu()
    before = task.measure(model.to(dev), device=dev)  # in the user's own sign
    model.cpu()
    importance = choice.policy.importance or run.config.importances[0]
    grad = task.gradient_source() if needs_gradients(importance) and not choice.policy.indices else None
    small = apply_policy(model, choice.policy, x, importance=importance, exclude=run.config.space.exclude,
                         seed=run.config.seed + (choice.trial or 0), grad_batch=grad)
    task.recalibrate(small, device=dev, batches=run.config.bn_batches, batch_size=run.config.batch_size, seed=seed)
    searched = None if choice.search_val_acc is None else task.score(choice.search_val_acc)
    log(f"apply-{choice.label}: trial {choice.trial}, {task.metric} {searched} in the search; "
        f"the task's finetune for {epochs:g} epochs")
    task.finetune(small, epochs, device=dev, lr=run.config.finetune_lr, batch_size=run.config.batch_size, seed=seed)
    after = task.measure(small, device=dev)
    small.cpu().eval()
    base_flops, base_params = count_flops(model, x), count_params(model)
    flops, params = count_flops(small, x), count_params(small)
    metrics = {"pick": choice.label, "trial": choice.trial, "metric": task.metric, "direction": task.direction,
               "metric_before": before, "metric_after": after, "epochs": epochs,
               "flops": flops, "flops_ratio": flops / base_flops, "params": params,
               "params_ratio": params / base_params, "task": where, "run": str(run.path),
               "input_size": list(x.shape[1:])}
    out = _write(Path(run.path), choice.label, small, metrics)
    log(f"apply-{choice.label}: {task.metric} {after:.4f} (unpruned {before:.4f})  "
        f"flops {flops:,} ({metrics['flops_ratio']:.3f}x)  params {params:,} ({metrics['params_ratio']:.3f}x)")
    log(f"  written: {out}/ model.safetensors, policy.json, metrics.json")
    return {**metrics, "path": str(out)}


def _write(run_path: Path, label: str, small, metrics: dict) -> Path:
    """Into a hidden folder, renamed to the first free ``apply-<label>[-N]`` (an earlier apply is kept)."""
    from safetensors.torch import save_model

    tmp = run_path / f".apply-{label}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_model(small, str(tmp / "model.safetensors"))
        (tmp / "policy.json").write_text(small.autoprune_policy.to_json())
        n = 1
        while True:
            out = run_path / (f"apply-{label}" if n == 1 else f"apply-{label}-{n}")
            if not out.exists():
                write_json(tmp / "metrics.json", {**metrics, "folder": out.name})
                os.rename(tmp, out)
                return out
            n += 1
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
