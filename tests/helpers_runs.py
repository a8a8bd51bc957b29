"""A tiny hand-made run folder (no Ray): resnet20 on 8x8 digits, as `autoprune search` writes it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from autoprune.budget import Budget
from autoprune.config import SearchConfig
from autoprune.costs import count_flops, count_params
from autoprune.fit import fit_policy, uniform_policy
from autoprune.models import create_model
from autoprune.probe import prunable_groups
from autoprune.prune import apply_policy
from autoprune.results import RunDir
from autoprune.space import SearchSpace
from autoprune.trial import TrialResult

SIZE = 8  # the digits' own resolution: resnet20 trains an epoch in a few CPU seconds
EXCLUDE = ["conv1"]


def make_run(root: Path, uniform_criterion: str = "l1", latency: bool = False) -> Path:
    """A run folder as `autoprune search` writes it: uniform (0), a skewed policy (1), failed (2), infeasible (3).

    The uniform trial ranks channels by ``uniform_criterion``; the skewed one by L1. With ``latency``, the
    run's objective is a 50% latency budget (the unpruned model at 4 ms; a trial's latency is taken to
    fall as its FLOPs, a stand-in for a measurement)."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=3).eval()
    x = torch.zeros(1, 3, SIZE, SIZE)
    budget = {"budget_latency": "50%"} if latency else {"budget_flops": "50%"}
    config = SearchConfig(**budget, name="tiny", image_size=SIZE, results_dir=str(root), device="cpu",
                          bn_batches=2, space=SearchSpace("test", 0.0, 0.9, None, tuple(EXCLUDE)))
    run = RunDir(root / "tiny")
    run.path.mkdir(parents=True)
    torch.save(model.state_dict(), run.path / "baseline.pt")
    run.write_config(config, {})
    flops, params = count_flops(model, x), count_params(model)
    baseline = {"model": "resnet20", "dataset": "digits", "input_shape": [3, SIZE, SIZE], "num_classes": 10,
                "flops": flops, "params": params, "val_acc": 0.1, "test_acc": None, **({"latency_ms": 4.0} if latency else {})}
    run.write_baseline(baseline)
    budgets = config.budgets if not latency else (Budget("flops", 0.5, True, "50%"),)  # stand-in: latency as FLOPs
    uniform = dataclasses.replace(uniform_policy(model, x, budgets, exclude=EXCLUDE), importance=uniform_criterion)
    groups = prunable_groups(model, x, EXCLUDE)
    skewed = fit_policy(model, x, {g.name: 0.6 if i % 2 else 0.1 for i, g in enumerate(groups)}, budgets,
                        exclude=EXCLUDE)
    for trial, origin, policy, val_acc in ((0, f"uniform:{uniform_criterion}@0.500", uniform, 0.40),
                                           (1, "optuna", skewed, 0.55)):
        small = apply_policy(model, policy, x, exclude=EXCLUDE)
        f, p = count_flops(small, x), count_params(small)
        timed = {"latency_ms": 4.0 * f / flops, "latency_ratio": f / flops} if latency else {}
        run.append(TrialResult(trial=trial, status="ok", origin=origin, val_acc=val_acc, flops=f,
                               flops_ratio=f / flops, params=p, params_ratio=p / params,
                               policy=small.autoprune_policy, target_ratio=0.5, **timed),
                   ("latency" if latency else "flops", 0.5))
    run.append(TrialResult(trial=2, status="failed", origin="optuna", error="RuntimeError: boom", policy=skewed))
    run.append(TrialResult(trial=3, status="infeasible", origin="optuna", error="No policy within reach"))
    run.write_front(config, baseline)
    run.write_state(finished=True)
    return run.path
