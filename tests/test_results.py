"""The front and the run folder, without Ray."""
from __future__ import annotations

import pandas as pd

from autoprune.results import best_trial, pareto_front


def _trials(rows):
    cols = ["trial", "status", "origin", "val_acc", "flops_ratio"]
    return pd.DataFrame(rows, columns=cols)


def test_pareto_front_keeps_only_non_dominated_ok_trials():
    t = _trials([
        (0, "ok", "uniform", 0.90, 0.50),
        (1, "ok", "optuna", 0.92, 0.50),   # beats 0 at equal size
        (2, "ok", "optuna", 0.85, 0.30),
        (3, "ok", "optuna", 0.80, 0.35),   # dominated by 2
        (4, "failed", "optuna", None, None),
        (5, "infeasible", "optuna", 0.99, 0.20),  # never on the front
        (6, "ok", "optuna", 0.85, 0.30),   # tie with 2: the earlier trial stays
    ])
    front = pareto_front(t, "flops")
    assert list(front["trial"]) == [2, 1]
    assert best_trial(front)["trial"] == 1


def test_empty_front():
    front = pareto_front(_trials([(0, "failed", "optuna", None, None)]), "flops")
    assert front.empty and best_trial(front) is None
