"""The Pareto front of a run: which trials are non-dominated, the best pick, the table and the plot.

Pure functions of the trials table (pandas); ``results.py`` writes what they compute.

Example:
    >>> front = pareto_front(run.trials, "flops")
    >>> print(front_table(front))
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .atomic import atomic_path
from .budget import Budget

__all__ = ["pareto_front", "best_trial", "front_table", "plot_front"]


def pareto_front(trials: pd.DataFrame, objective: str = "flops") -> pd.DataFrame:
    """The ok trials that no other ok trial beats on both val_acc (up) and ``objective`` (down).

    Sorted by the objective ascending. Ties on both keep the earliest trial.
    """
    col = f"{objective}_ratio" if f"{objective}_ratio" in trials else objective
    ok = trials[(trials["status"] == "ok") & trials["val_acc"].notna() & trials[col].notna()]
    ok = ok.sort_values([col, "val_acc", "trial"], ascending=[True, False, True], kind="stable")
    keep, best = [], -math.inf
    for idx, row in ok.iterrows():
        if row["val_acc"] > best:
            keep.append(idx)
            best = row["val_acc"]
    return ok.loc[keep].reset_index(drop=True)


def best_trial(front: pd.DataFrame) -> pd.Series | None:
    """The front's highest validation accuracy (every front row is already within every budget)."""
    if front.empty:
        return None
    return front.sort_values(["val_acc", "flops_ratio"], ascending=[False, True], kind="stable").iloc[0]


def front_table(front: pd.DataFrame) -> str:
    cols = [c for c in ("trial", "origin", "importance", "val_acc", "flops_ratio", "params_ratio", "latency_ratio",
                        "trial_s")
            if c in front and front[c].notna().any()]
    if front.empty:
        return "(no feasible trial)"
    return front[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}")


def plot_front(trials: pd.DataFrame, front: pd.DataFrame, path: Path, *, budgets: Sequence[Budget],
               objective: str, baseline: Mapping[str, Any]) -> None:
    """Accuracy against the size ratio: all trials, the front, uniform, the baseline, the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = f"{objective}_ratio"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ok = trials[trials["status"] == "ok"]
    ax.scatter(ok[col], ok["val_acc"], s=18, c="0.6", label=f"trials ({len(ok)} ok of {len(trials)})")
    if not front.empty:
        ax.plot(front[col], front["val_acc"], "o-", c="C0", label="Pareto front")
    uni = ok[ok["origin"] == "uniform"]
    if not uni.empty:
        ax.scatter(uni[col], uni["val_acc"], marker="s", s=60, c="C3", label="uniform policy", zorder=5)
    if baseline.get("val_acc") is not None:
        ax.scatter([1.0], [baseline["val_acc"]], marker="*", s=140, c="k", label="unpruned baseline", zorder=5)
    for b in budgets:
        if b.kind == objective and b.relative:
            ax.axvline(b.value, ls="--", c="C2", label=f"budget {b.text or b.value}")
        elif b.kind == objective and baseline.get(objective):
            ax.axvline(b.value / baseline[objective], ls="--", c="C2", label=f"budget {b.text}")
    ax.set_xlabel(f"{objective} of pruned model / unpruned model")
    ax.set_ylabel("validation accuracy after finetune")
    ax.set_title(f"{baseline.get('model', '')} on {baseline.get('dataset', '')}: accuracy vs {objective}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)

