"""Budgets (``50%``, ``120M``, ``4ms``) and fitting a proposal to them.

Pure Python: no torch. A :class:`Budget` is parsed from the text a user types; it is resolved to an
absolute limit once the unpruned model's figure is known. :func:`fit_to_budgets` pushes a proposal
of per-group sparsities down until every budget holds, given a cost function.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping

from .errors import BudgetError

__all__ = ["Budget", "KINDS", "fit_to_budgets", "scale_keep"]

KINDS = ("flops", "params", "latency")

# Multipliers for absolute sizes: FLOPs and params accept SI suffixes, latency accepts time units.
_SI = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9, "t": 1e12, "T": 1e12}
_TIME = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_FORMS = {
    "flops": "a share like 50% or 0.5, or an absolute count like 120M, 1.2G, 3.5e8",
    "params": "a share like 50% or 0.5, or an absolute count like 1.5M, 300k, 2e6",
    "latency": "a share like 60% or 0.6, or a time like 4ms, 800us",
}


@dataclass(frozen=True)
class Budget:
    """An upper limit on one size measure of the pruned model.

    ``relative`` budgets hold a share of the unpruned model's figure in (0, 1); absolute ones hold a
    FLOPs count, a parameter count, or a latency in milliseconds.

    Example:
        >>> Budget.parse("flops", "50%").limit(200e6)
        100000000.0
    """

    kind: str
    value: float
    relative: bool
    text: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BudgetError(f"Unknown budget kind {self.kind!r}; choose one of {', '.join(KINDS)}.")
        if not math.isfinite(self.value) or self.value <= 0:
            raise BudgetError(
                f"Budget {self.kind} must be positive, but got {self.text or self.value!r}; give {_FORMS[self.kind]}."
            )
        if self.relative and not 0 < self.value < 1:
            raise BudgetError(
                f"Relative {self.kind} budget must lie in (0%, 100%), but got {self.text or self.value!r}; "
                f"give {_FORMS[self.kind]}."
            )

    @classmethod
    def parse(cls, kind: str, text: str) -> "Budget":
        """Parse a budget as a user types it.

        Args:
            kind: ``flops``, ``params`` or ``latency``.
            text: ``50%`` or ``0.5`` (relative), ``120M``/``1.2G``/``3.5e8`` (absolute FLOPs or
                params), ``4ms``/``800us`` (absolute latency).
        """
        if kind not in KINDS:
            raise BudgetError(f"Unknown budget kind {kind!r}; choose one of {', '.join(KINDS)}.")
        raw = str(text).strip()
        bad = BudgetError(f"Bad --budget-{kind} {text!r}: give {_FORMS[kind]}.")
        m = re.fullmatch(rf"({_NUM})\s*%", raw)
        if m:
            return cls(kind, float(m.group(1)) / 100.0, True, raw)
        if kind == "latency":
            m = re.fullmatch(rf"({_NUM})\s*(ms|us|µs|s)", raw)
            if m:
                return cls(kind, float(m.group(1)) * _TIME[m.group(2)], False, raw)
        else:
            m = re.fullmatch(rf"({_NUM})\s*([kKmMgGtT]?)", raw)
            if m and m.group(2):
                return cls(kind, float(m.group(1)) * _SI[m.group(2)], False, raw)
        m = re.fullmatch(_NUM, raw)
        if not m:
            raise bad
        number = float(raw)
        if number < 1:
            # A bare fraction like 0.5 is a share; a bare count like 3.5e8 is absolute.
            return cls(kind, number, True, raw)
        if kind == "latency":
            raise bad  # a bare number of >= 1 has no unit: ambiguous
        return cls(kind, number, False, raw)

    def limit(self, unpruned: float) -> float:
        """The absolute limit for a model whose unpruned figure is ``unpruned``."""
        if self.relative:
            return self.value * unpruned
        if self.value >= unpruned:
            unit = "ms" if self.kind == "latency" else ""
            raise BudgetError(
                f"Absolute {self.kind} budget {self.text or self.value} must be below the unpruned "
                f"model's {unpruned:.4g}{unit}; give a smaller value or a share like 50%."
            )
        return self.value

    def cap(self, unpruned: float) -> float:
        """The absolute limit, without :meth:`limit`'s check that an absolute budget is below the model.

        For figures measured again and again (latency), whose noise must not turn a comparison into
        an error.
        """
        return self.value * unpruned if self.relative else self.value

    def ratio(self, unpruned: float) -> float:
        """The budget as a share of the unpruned model's figure."""
        return self.limit(unpruned) / unpruned

    def describe(self) -> str:
        return f"{self.kind} <= {self.text or self.value}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "relative": self.relative, "text": self.text}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Budget":
        return cls(d["kind"], float(d["value"]), bool(d["relative"]), d.get("text", ""))


def scale_keep(proposal: Mapping[str, float], beta: float,
               max_sparsity: float | Mapping[str, float] = 0.99) -> dict[str, float]:
    """Scale every group's kept share by the common factor ``beta`` (kept shares capped at 1, and
    sparsities at ``max_sparsity``: one cap for all groups, or one per group)."""
    def cap(k: str) -> float:
        return max_sparsity.get(k, 0.99) if isinstance(max_sparsity, Mapping) else max_sparsity

    return {k: min(cap(k), max(0.0, 1.0 - beta * (1.0 - s))) for k, s in proposal.items()}


def fit_to_budgets(
    proposal: Mapping[str, float],
    cost: Callable[[Mapping[str, float]], Mapping[str, float]],
    limits: Mapping[str, float],
    *,
    tolerance: float = 0.005,
    max_steps: int = 40,
    max_sparsity: float | Mapping[str, float] = 0.99,
    fill: bool = False,
) -> dict[str, float] | None:
    """Push ``proposal`` down until ``cost(p)[kind] <= limits[kind]`` for every kind.

    A proposal already within every limit is returned unchanged. Otherwise every group keeps the
    share ``beta * (1 - s)`` of its channels, with the largest ``beta`` that meets every limit found
    by bisection (the costs fall monotonically as ``beta`` falls); groups then take back single
    rounding steps while every limit still holds. Returns ``None`` when even the smallest model in
    reach is over a limit.

    Args:
        proposal: group name -> sparsity in [0, 1).
        cost: proposal -> {kind: absolute figure}; must be cheap (it is called ~30 times).
        limits: kind -> absolute upper limit.
        tolerance: stop once the binding cost is within this share below its limit.
        fill: also scale a proposal that is under every limit *up* (beta > 1) until the binding
            limit is reached, so the proposal is read as a shape and the whole budget is used.
    """

    def slack(p: Mapping[str, float]) -> float:
        c = cost(p)
        return min((limits[k] - c[k]) / limits[k] for k in limits)

    if not limits:
        return dict(proposal)
    if slack(proposal) >= 0:
        if not fill or slack(proposal) <= tolerance:
            return dict(proposal)
        # beta at which every group keeps all its channels: beyond it nothing changes
        top = 1.0 / max(1e-6, min(1.0 - s for s in proposal.values()))
        if slack(scale_keep(proposal, top, max_sparsity)) >= 0:
            return scale_keep(proposal, top, max_sparsity)
        lo, hi, best = 1.0, top, dict(proposal)
    else:
        lo, hi = 0.0, 1.0  # beta: lo always feasible (checked below), hi infeasible
        floor = scale_keep(proposal, 0.0, max_sparsity)
        if slack(floor) < 0:
            return None
        best = floor
    for _ in range(max_steps):
        mid = (lo + hi) / 2
        p = scale_keep(proposal, mid, max_sparsity)
        s = slack(p)
        if s >= 0:
            lo, best = mid, p
            if s <= tolerance:
                break
        else:
            hi = mid
    if slack(best) > tolerance:
        # Channel counts are whole numbers, so near a step every group jumps at once. Give each group
        # back the width it had on the infeasible side of the step while the budget still holds.
        upper = scale_keep(proposal, hi, max_sparsity)
        for name in sorted(best):
            candidate = {**best, name: upper[name]}
            if slack(candidate) >= 0:
                best = candidate
    return best
