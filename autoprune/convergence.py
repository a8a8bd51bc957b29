"""How a search converged: the hypervolume of its front after each trial, and when it last grew.

The hypervolume is the area a front dominates in (size, score) up to the budget; a front that reaches a
higher score at smaller sizes covers more. ``report`` draws it over trials, ``trials.csv`` keeps it in
its ``hypervolume`` column, and the search's closing lines say when it last grew by more than 1%.

Example:
    >>> hypervolume([(0.25, 0.9), (0.5, 0.95)], reference=0.5)
    0.225
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from .front import _is_promotion, _size

__all__ = ["GROWTH", "hypervolume", "hypervolume_column", "last_growth"]

GROWTH = 0.01  # "the front grew": its hypervolume rose by more than this share


def hypervolume(points: Sequence[tuple[float, float]], reference: float, floor: float = 0.0) -> float:
    """Area dominated by (size, accuracy) points: sizes in [size, ``reference``], accuracy in [floor, acc].

    The reference point is (accuracy ``floor``, size ``reference``, the budget): a front that reaches
    higher accuracy at smaller sizes covers more. The floor is 0 for a metric that is never negative
    (accuracy, IoU); a minimised metric's scores are negative and need one below them.
    """
    pts = sorted((s, a) for s, a in points if s <= reference and a > floor)
    area, best = 0.0, floor
    for (size, acc), nxt in zip(pts, [p[0] for p in pts[1:]] + [reference]):
        best = max(best, acc)
        area += (nxt - size) * (best - floor)
    return area


def hypervolume_column(trials: pd.DataFrame, objective: str, reference: float) -> list[float]:
    """The hypervolume of the front after each trial, in trial order (a trial not yet ok adds nothing).

    It measures the search's progress at the trials' own fidelity: promotions (reruns at a longer
    finetune) get NaN and add nothing.
    """
    col = _size(trials, objective)
    ordered = trials.sort_values("trial", kind="stable")
    promoted = _is_promotion(ordered)
    scores = pd.to_numeric(ordered.loc[ordered["status"] == "ok", "val_acc"], errors="coerce").dropna()
    # 0 for scores that are never negative; below the lowest for a minimised metric's (negated) scores
    low = float(scores.min()) if len(scores) else 0.0
    floor = 0.0 if low >= 0 else 1.1 * low
    out, points = {}, []
    for idx, row in ordered.iterrows():
        if promoted[idx]:
            out[idx] = math.nan
            continue
        ok = row["status"] == "ok" and pd.notna(row.get("val_acc")) and pd.notna(row.get(col))
        if ok:
            points.append((float(row[col]), float(row["val_acc"])))
        out[idx] = hypervolume(points, reference, floor)
    return [out[i] for i in trials.index]


def last_growth(trials: pd.DataFrame, share: float = GROWTH) -> tuple[int, int] | None:
    """(trials run, trial number) when the ``hypervolume`` column last grew by more than ``share``."""
    if "hypervolume" not in trials or trials.empty:
        return None
    ordered = trials.sort_values("trial", kind="stable")
    ordered = ordered[~_is_promotion(ordered)]
    last, before = None, 0.0
    for count, (_, row) in enumerate(ordered.iterrows(), start=1):
        hv = float(row["hypervolume"]) if pd.notna(row["hypervolume"]) else before
        if hv > before * (1 + share) and hv > 0:
            last = (count, int(row["trial"]))
        before = max(before, hv)
    return last
