"""autoprune: search per-layer channel-pruning policies under FLOPs, parameter or latency budgets.

The public API loads lazily, so ``import autoprune`` is cheap and never imports Ray.

Example:
    >>> import torch, autoprune as ap
    >>> model = ap.create_model("resnet20")
    >>> x = torch.randn(1, 3, 32, 32)
    >>> policy = ap.uniform_policy(model, x, [ap.Budget.parse("flops", "50%")])
    >>> small = ap.apply_policy(model, policy, x)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "AutopruneError": "errors",
    "paired_interval": "stats",
    "accuracy_noise": "stats",
    "Budget": "budget",
    "Policy": "policy",
    "IMPORTANCES": "criteria",
    "gradient_batch": "criteria",
    "SearchConfig": "config",
    "SearchSpace": "space",
    "load_space": "space",
    "create_model": "models",
    "list_models": "models",
    "register_model": "models",
    "load_checkpoint": "models",
    "load_dataset": "data",
    "list_datasets": "data",
    "register_dataset": "data",
    "Splits": "data",
    "TensorData": "data",
    "imagefolder_transforms": "datasets",
    "set_workers": "loader",
    "Group": "costs",
    "CostModel": "costs",
    "count_flops": "costs",
    "count_params": "costs",
    "default_round_to": "costs",
    "prunable_groups": "probe",
    "left_out_groups": "probe",
    "HeadAttention": "attention",
    "searchable_flops_share": "probe",
    "apply_policy": "prune",
    "global_magnitude_prune": "prune",
    "global_prune": "prune",
    "fit_policy": "fit",
    "uniform_policy": "fit",
    "InfeasibleError": "fit",
    "measure_latency": "latency",
    "relative_latency": "latency",
    "TrainConfig": "training",
    "train": "training",
    "evaluate": "training",
    "recalibrate_bn": "training",
    "finetune_pruned": "training",
    "TrialContext": "trial",
    "TrialResult": "trial",
    "run_trial": "trial",
    "ensure_baseline": "baseline",
    "group_sensitivity": "sensitivity",
    "sensitivity_shape": "sensitivity",
    "search": "driver",
    "search_task": "task_search",
    "search_spec": "task_search",
    "apply_task_run": "task_apply",
    "TaskSpec": "task",
    "UserTask": "task",
    "Classification": "task",
    "load_task": "task",
    "load_run": "results",
    "write_report": "report",
    "apply_run": "apply",
    "load_pruned": "export",
    "save_pruned": "export",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
