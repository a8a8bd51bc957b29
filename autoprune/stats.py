"""Paired comparisons over seeds: the mean difference, its 95% interval (Student's t) and a verdict.

Every claim that one method beats another is made this way (the benchmarks, ``report``): per-seed
differences of two methods that shared each seed, a two-sided 95% interval, and a tie whenever the
interval holds zero.

Example:
    >>> paired_interval([0.01, 0.02, 0.00])        # (mean, low, high), in the units given
    (0.01, -0.0148..., 0.0348...)
    >>> verdict(-0.1, 0.3, "autoprune")
    'tie'
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

__all__ = ["t95", "paired_interval", "verdict", "accuracy_noise"]

# Two-sided 95% quantiles of Student's t by degrees of freedom (standard tables).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom (a smaller tabled ``df``
    when it is not in the table, which widens the interval); NaN below 1."""
    if df < 1:
        return math.nan
    return T95.get(df) or T95[max(k for k in T95 if k <= df)]


def paired_interval(diffs: Sequence[float]) -> tuple[float, float, float]:
    """Mean of per-seed differences and its 95% interval (paired t); the interval is NaN for one seed."""
    if not diffs:
        raise ValueError("paired_interval needs at least one difference, but got none.")
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    half = t95(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def verdict(low: float, high: float, who: str) -> str:
    """``'<who> ahead'`` when the interval is above 0, ``'<who> behind'`` when below, else ``'tie'``."""
    return f"{who} ahead" if low > 0 else f"{who} behind" if high < 0 else "tie"


def accuracy_noise(accuracy: float, n: int) -> float:
    """Two standard errors of an accuracy measured on ``n`` images, ``2 * sqrt(p (1 - p) / n)``: a gap
    smaller than this between two models on one validation set is within its noise."""
    if n <= 0:
        return math.nan
    p = min(max(accuracy, 0.0), 1.0)
    return 2 * math.sqrt(p * (1 - p) / n)
