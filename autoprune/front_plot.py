"""The picture of a run: ``pareto.png``, accuracy against the size ratio (``plot_front``).

Drawn from the trials table and what ``front.py`` computes of it; ``results.py`` writes it beside
``pareto.csv`` and ``report`` embeds the same picture.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .atomic import atomic_path
from .budget import Budget
from .front import _ok, _searched, _size, is_confirmation, metric_label, top_rung

__all__ = ["plot_front"]


def plot_front(trials: pd.DataFrame, front: pd.DataFrame, path: Path, *, budgets: Sequence[Budget],
               objective: str, baseline: Mapping[str, Any], curve: pd.DataFrame | None = None,
               floor: float | None = None) -> None:
    """Accuracy against the size ratio: every trial, the front, the uniform curve, the unpruned model,
    the budget (and the floor of the searched sizes). With promotions, the trials at the top rung
    are drawn as trials, and those of the shorter rungs lighter (their accuracies are not comparable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = _size(trials, objective)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    confirmed = _ok(trials[is_confirmation(trials)], col)
    everything = _ok(_searched(trials), col)
    trials = top_rung(trials)
    ok = _ok(trials, col)
    lower = everything.loc[everything.index.difference(ok.index)]
    if len(lower):
        ax.scatter(lower[col], lower["val_acc"], s=10, c="0.85", label=f"shorter rungs ({len(lower)} ok)")
    # Zoom on the searched sizes and the accuracies that matter: the front, the uniform curve and the
    # unpruned model (drawn as a line, not at 1.0x far to the right). Trials below are counted.
    main = [*front["val_acc"], *([] if curve is None else curve["val_acc"]), *confirmed["val_acc"]]
    if baseline.get("val_acc") is not None:
        main.append(baseline["val_acc"])
    if main:
        lo, hi = min(main), max(main)
        pad = max(0.02, (hi - lo) * 0.3)
        bottom = lo - pad
        top = hi + pad / 2
        ax.set_ylim(bottom, min(1.005, top) if metric_label(baseline) == "accuracy" else top)
        below = int((ok["val_acc"] < bottom).sum())
    else:
        below = 0
    label = f"trials ({len(ok)} ok of {len(trials)}" + (f"; {below} below the axis)" if below else ")")
    ax.scatter(ok[col], ok["val_acc"], s=18, c="0.6", label=label)
    if not front.empty:
        ax.plot(front[col], front["val_acc"], "o-", c="C0", drawstyle="steps-post", label="Pareto front")
    if len(confirmed):
        ax.scatter(confirmed[col], confirmed["val_acc"], s=90, marker="*", c="C1", zorder=5,
                   label=f"confirmed with a longer finetune ({len(confirmed)})")
    if curve is not None and not curve.empty:
        ax.plot(curve["size"], curve["val_acc"], "s--", c="C3", ms=6, label="uniform (best criterion per size)",
                zorder=4)
    if baseline.get("val_acc") is not None:
        ax.axhline(baseline["val_acc"], ls="-.", c="k", lw=1,
                   label=f"unpruned model (1.0x): {baseline['val_acc']:.4f}")
    budget_x = []
    for b in budgets:
        if b.kind != objective:
            continue
        unpruned = baseline.get("latency_ms" if objective == "latency" else objective)
        x = b.value if b.relative else (b.value / unpruned if unpruned else None)
        if x is not None:
            budget_x.append(x)
            ax.axvline(x, ls="--", c="C2", label=f"budget {b.text or b.value}")
    if floor is not None:
        ax.axvline(floor, ls=":", c="C2", label=f"front from {floor:.3g}")
    xs = [*budget_x, *([floor] if floor is not None else []), *ok[col]]
    if xs:
        span = max(xs) - min(xs)
        ax.set_xlim(min(xs) - 0.05 * span - 0.005, max(xs) + 0.05 * span + 0.005)
    ax.set_xlabel(f"{objective} of pruned model / unpruned model")
    unpruned_ms = baseline.get("latency_ms")
    if objective == "latency" and unpruned_ms:  # the same axis in milliseconds, on top
        top = ax.secondary_xaxis("top", functions=(lambda r: r * unpruned_ms, lambda m: m / unpruned_ms))
        top.set_xlabel(f"latency (ms; unpruned {unpruned_ms:.3g} ms)")
    metric = metric_label(baseline)
    ax.set_ylabel(f"validation {metric} after finetune")
    ax.set_title(f"{baseline.get('model', '')} on {baseline.get('dataset', '')}: {metric} vs {objective}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
