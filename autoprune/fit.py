"""Fitting a proposal of per-group sparsities to budgets on a real model, and the uniform policy.

FLOPs and params budgets are met on the cost model alone (bisection, no pruning, no training); a
latency budget is met through a FLOPs proxy, then measured on the device and the shape scaled until
it holds, close under the limit. The pure bisection lives in ``budget.py``; this module binds it to a model.

Example:
    >>> policy = fit_policy(model, x, {g.name: 0.4 for g in prunable_groups(model, x)},
    ...                     [Budget.parse("flops", "50%")])
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .budget import Budget, fit_to_budgets, scale_keep
from .costs import CostModel, default_round_to
from .errors import BudgetError, ConfigError
from .policy import Policy
from .probe import prunable_groups
from .prune import apply_policy, cost_model

__all__ = ["InfeasibleError", "fit_policy", "uniform_policy"]

# A latency fit stops once the measured latency is within this share under the tightest latency
# limit (or the shape cannot grow): close enough to use the budget, wide enough for timing noise.
LATENCY_FILL = 0.05


class InfeasibleError(BudgetError):
    """No policy within reach of the proposal meets every budget."""


def _limits(cm: CostModel, budgets: Sequence[Budget]) -> dict[str, float]:
    base = {"flops": cm.flops, "params": cm.params}
    return {b.kind: min(b.limit(base[b.kind]), float("inf")) for b in budgets if b.kind in base}


def _fit_static(cm: CostModel, proposal: Mapping[str, float], limits: Mapping[str, float],
                round_to: int, max_sparsity: float | Mapping[str, float], fill: bool = False) -> dict[str, float]:
    fitted = fit_to_budgets(proposal, lambda p: cm.cost(p, round_to), limits, max_sparsity=max_sparsity, fill=fill)
    if fitted is None:
        wanted = ", ".join(f"{k} <= {v:.4g}" for k, v in limits.items())
        raise InfeasibleError(f"No policy within reach meets {wanted} for model {cm.model_name!r}.")
    return fitted


def fit_policy(
    model: nn.Module,
    x: torch.Tensor,
    proposal: Mapping[str, float],
    budgets: Sequence[Budget],
    *,
    groups: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    round_to: int | None = None,
    max_sparsity: float | Mapping[str, float] = 0.99,
    device: str | torch.device = "cpu",
    latency_batch: int = 1,
    latency_backend: str = "torch",
    latency_threads: int | None = None,
    max_measurements: int = 6,
    model_name: str | None = None,
    fill: bool = False,
    latency_model=None,
) -> Policy:
    """Fit a proposal (group -> sparsity) to every budget; raise :class:`InfeasibleError` if impossible.

    A proposal within every budget is kept. One over budget keeps the share ``beta * (1 - s)`` of
    each group's channels, with the largest common ``beta`` that meets every FLOPs and params budget
    (bisection on the cost model: no pruning, no training). A latency budget is fitted through a
    FLOPs proxy, then measured on ``device`` (or in ONNX Runtime, ``latency_backend``) against the
    unpruned model, and the shape scaled down until it holds or up while it is more than
    ``LATENCY_FILL`` under the limit (never beyond the proposal, or with ``fill`` the static
    budgets), with at most ``max_measurements`` measurements; measurements are cached by the kept
    channel counts, so a size measured once is not timed again. With a ``latency_model``
    (:class:`~autoprune.latency_model.LatencyModel`) each size to measure is chosen by its
    prediction, corrected by the measurements so far, so the fit usually measures once. With ``fill=True`` a proposal under
    every budget is scaled up to the tightest one, so the proposal sets the shape and the budget sets
    the size.

    Args:
        groups: the groups that may be pruned (default: :func:`~autoprune.prune.prunable_groups`,
            probed); groups missing from ``proposal`` start at sparsity 0.
        max_sparsity: the highest sparsity any group may be given, or one per group (a search
            passes its space's ranges, the sparsities its probe verified).
    """
    cm = cost_model(model, x, exclude)
    if groups is None:
        groups = [g.name for g in prunable_groups(model, x, exclude)]
    if round_to is None:
        round_to = default_round_to(model, x.device)
    unknown = sorted(set(proposal) - set(groups))
    if unknown:
        raise ConfigError(f"Proposal names unknown or left-out groups {unknown[:3]}; valid groups: "
                          f"{sorted(groups)[:5]} ...")
    full = {g: float(proposal.get(g, 0.0)) for g in groups}
    limits = _limits(cm, budgets)
    fitted = _fit_static(cm, full, limits, round_to, max_sparsity, fill)
    name = model_name or cm.model_name
    channels = {g: cm.channels[g] for g in fitted}
    latency = [b for b in budgets if b.kind == "latency"]
    if latency:
        fitted = _fit_latency(model, x, cm, fitted, limits, latency, channels, round_to=round_to,
                              max_sparsity=max_sparsity, device=device, batch=latency_batch,
                              backend=latency_backend, threads=latency_threads,
                              max_measurements=max_measurements, name=name, exclude=exclude, fill=fill,
                              latency_model=latency_model)
    return Policy(name, fitted, channels, round_to)


def _measured(model, x, policy: Policy, *, exclude, device, batch, backend, threads) -> tuple[float, float]:
    """(pruned ms, unpruned ms) of ``policy``, timed side by side once per kept channel counts."""
    from .latency import relative_latency
    from .prune import _CACHE

    key = ("latency", backend, threads, batch, str(device), tuple(sorted(policy.kept().items())))
    cache = _CACHE.setdefault(model, {})
    if key not in cache:
        small = apply_policy(model, policy, x, exclude=exclude)
        cache[key] = relative_latency(small, model, x, device=device, batch_size=batch, backend=backend,
                                      threads=threads)
    return cache[key]


def _fit_latency(model, x, cm, fitted, limits, latency_budgets, channels, *, round_to, max_sparsity, device, batch,
                 max_measurements, name, exclude, fill=False, backend="torch", threads=None,
                 latency_model=None) -> dict[str, float]:
    """Scale ``fitted``'s shape until its measured latency is within every latency limit, and (the
    shape allowing) no more than ``LATENCY_FILL`` under the tightest: latency falls faster than FLOPs
    on some models and backends and slower on others, so a FLOPs share alone lands anywhere."""
    from .latency import measure_latency

    base_ms = None
    if any(not b.relative for b in latency_budgets):
        base_ms = measure_latency(model, x, device=device, batch_size=batch, backend=backend, threads=threads)
    top = fitted  # the largest this shape may grow: the static budgets' fit, or the proposal itself
    if fill and not limits:  # nothing static to fill up to: up to no pruning at all
        top = scale_keep(fitted, 1.0 / max(1e-6, min(1.0 - s for s in fitted.values())), max_sparsity)
    ceiling = cm.cost(top, round_to)["flops"]
    # First guess: the latency share as a FLOPs share.
    share = min(b.cap(base_ms) / base_ms if not b.relative else b.value for b in latency_budgets)
    # The smallest this shape reaches (every group at its highest sparsity): a guess below it is
    # clamped there, so a curve that flattens (fixed overheads) ends measured, not unreachable.
    floor = cm.cost(scale_keep(top, 0.0, max_sparsity), round_to)["flops"]
    at_floor = floor * (1 + 1e-3)  # a FLOPs limit this close to the floor is the smallest model
    guess = min(ceiling, share * cm.flops)

    def predicted(aim: float) -> float:
        """The FLOPs limit whose fitted shape the latency model puts at ``aim`` times the tightest limit."""
        want = aim * share * latency_model.base_ms
        lo, hi = floor, ceiling
        if latency_model.predict(_fit_static(cm, top, {**limits, "flops": hi}, round_to, max_sparsity),
                                 round_to) <= want:
            return hi
        for _ in range(25):  # bisection in log FLOPs
            mid = math.sqrt(lo * hi)
            shape = _fit_static(cm, top, {**limits, "flops": mid}, round_to, max_sparsity)
            lo, hi = (mid, hi) if latency_model.predict(shape, round_to) <= want else (lo, mid)
        return lo

    if latency_model is not None:
        guess = predicted(1.0 - LATENCY_FILL / 2)
    points: list[tuple[float, float]] = []  # (FLOPs, measured latency / tightest limit)
    aims: list[tuple[float, float]] = []  # (predicted latency / tightest limit, measured / tightest limit)
    best, best_worst, worst = None, 0.0, float("inf")
    for _ in range(max_measurements):
        if guess <= at_floor:
            if any(f <= at_floor for f, _w in points):
                break  # the smallest reachable was measured, and missed
            guess = at_floor
        current = _fit_static(cm, top, {**limits, "flops": min(limits.get("flops", float("inf")), guess)},
                              round_to, max_sparsity)
        now = cm.cost(current, round_to)["flops"]
        pruned_ms, base_ms = _measured(model, x, Policy(name, current, channels, round_to), exclude=exclude,
                                       device=device, batch=batch, backend=backend, threads=threads)
        worst = max(pruned_ms / b.cap(base_ms) for b in latency_budgets)
        if worst <= 1.0:
            if best is None or worst > best_worst:
                best, best_worst = current, worst
            if worst >= 1.0 - LATENCY_FILL or now >= ceiling * (1 - 1e-3):
                return current
        points.append((now, worst))
        if latency_model is not None:
            aims.append((latency_model.predict(current, round_to) / (share * latency_model.base_ms), worst))
            guess = min(ceiling, max(floor, predicted(_next_aim(aims))))
        else:
            guess = min(ceiling, _next_flops(points))
    if best is not None:
        return best  # within every limit, if further under the tightest than LATENCY_FILL
    where = device if backend == "torch" else backend
    wanted = ", ".join(b.describe() for b in latency_budgets)
    smallest = [w for f, w in points if f <= at_floor]
    if smallest:
        raise InfeasibleError(
            f"Latency budget {wanted} is out of reach on {where}: the smallest model this shape reaches "
            f"({floor / cm.flops:.3f} of the FLOPs) measured {smallest[-1]:.2f}x the limit.")
    raise InfeasibleError(f"Latency budget {wanted} not met after {max_measurements} measurements on {where} "
                          f"(last: {worst:.2f}x the limit).")


def _next_aim(aims: Sequence[tuple[float, float]]) -> float:
    """The predicted latency (a share of the limit) to fit next, aiming at a measured ``1 - LATENCY_FILL
    / 2``: the prediction corrected by the last measurement's ratio of measured to predicted or, once
    measurements lie on both sides of the aim, interpolated between the closest on each side as a
    power law (a line in log-log; kept inside that bracket). The model's error changes with size
    (layers timed alone miss per-call overheads that weigh more on small models), so the last ratio
    alone can send a fit back and forth across the aim until its measurements run out."""
    goal = 1.0 - LATENCY_FILL / 2
    over = [(p, m) for p, m in aims if m > goal and p > 0]
    if over:
        p1, m1 = min(over)  # the smallest prediction measured over the aim
        # the largest under it measured under the aim (noise can put one under at a larger prediction)
        under = [(p, m) for p, m in aims if 0 < m < goal and 0 < p < p1]
        if under:
            p0, m0 = max(under)
            t = math.log(goal / m0) / math.log(m1 / m0)
            return p0 * (p1 / p0) ** min(0.9, max(0.1, t))
    predicted, measured = aims[-1]
    return goal * predicted / measured if measured > 0 and predicted > 0 else goal


def _next_flops(points: Sequence[tuple[float, float]]) -> float:
    """The next FLOPs to try, aiming at a latency ``1 - LATENCY_FILL / 2`` of the limit: latency taken
    as ``FLOPs ** a``, with ``a`` from the last two sizes measured (first: 0.5 going down, as on small
    batches, 1 going up), and kept inside the bracket of the largest met and the smallest missed."""
    flops, worst = points[-1]
    a = 0.5 if worst > 1.0 else 1.0
    earlier = [(f, w) for f, w in points[:-1] if abs(math.log(f / flops)) > 1e-3]
    if earlier:
        f0, w0 = earlier[-1]
        slope = math.log(worst / w0) / math.log(flops / f0)
        if slope > 0:  # latency rising with FLOPs (noise can say otherwise: then keep the default)
            a = min(max(slope, 0.02), 5.0)  # a flat curve (fixed overheads) asks for a long step
    guess = flops * ((1.0 - LATENCY_FILL / 2) / worst) ** (1.0 / a)
    met = [f for f, w in points if w <= 1.0]
    missed = [f for f, w in points if w > 1.0]
    if met and missed and max(met) < min(missed):
        lo, hi = max(met), min(missed)
        guess = min(max(guess, lo * (hi / lo) ** 0.1), lo * (hi / lo) ** 0.9)
    return guess


def uniform_policy(model: nn.Module, x: torch.Tensor, budgets: Sequence[Budget], **kwargs) -> Policy:
    """One sparsity for every group, the smallest that meets every budget (see :func:`fit_policy`)."""
    groups = kwargs.get("groups")
    if groups is None:
        groups = [g.name for g in prunable_groups(model, x, kwargs.get("exclude", ()))]
    return fit_policy(model, x, {g: 0.0 for g in groups}, budgets, **{**kwargs, "groups": groups})
