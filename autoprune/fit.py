"""Fitting a proposal of per-group sparsities to budgets on a real model, and the uniform policy.

FLOPs and params budgets are met on the cost model alone (bisection, no pruning, no training); a
latency budget is met through a FLOPs proxy, then measured on the device and tightened until it
holds. The pure bisection lives in ``budget.py``; this module binds it to a model.

Example:
    >>> policy = fit_policy(model, x, {g.name: 0.4 for g in prunable_groups(model, x)},
    ...                     [Budget.parse("flops", "50%")])
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .budget import Budget, fit_to_budgets
from .costs import CostModel
from .errors import BudgetError, ConfigError
from .policy import Policy
from .probe import prunable_groups
from .prune import apply_policy, cost_model

__all__ = ["InfeasibleError", "fit_policy", "uniform_policy"]


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
) -> Policy:
    """Fit a proposal (group -> sparsity) to every budget; raise :class:`InfeasibleError` if impossible.

    A proposal within every budget is kept. One over budget keeps the share ``beta * (1 - s)`` of
    each group's channels, with the largest common ``beta`` that meets every FLOPs and params budget
    (bisection on the cost model: no pruning, no training). A latency budget is fitted through a
    FLOPs proxy, then measured on ``device`` (or in ONNX Runtime, ``latency_backend``) against the
    unpruned model and tightened until it holds, with at most ``max_measurements`` measurements;
    measurements are cached by the kept channel counts, so a size measured once is not timed again. With ``fill=True`` a proposal under every budget
    is scaled up to the tightest one, so the proposal sets the shape and the budget sets the size.

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
        round_to = 8 if x.is_cuda else 1
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
                              max_measurements=max_measurements, name=name, exclude=exclude, fill=fill)
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
                 max_measurements, name, exclude, fill=False, backend="torch", threads=None) -> dict[str, float]:
    from .latency import measure_latency

    proxy = dict(limits)
    base_ms = None
    if any(not b.relative for b in latency_budgets):
        base_ms = measure_latency(model, x, device=device, batch_size=batch, backend=backend, threads=threads)
    # First guess: the latency share as a FLOPs share (latency falls slower, so it is refined below).
    share = min(b.cap(base_ms) / base_ms if not b.relative else b.value for b in latency_budgets)
    proxy["flops"] = min(proxy.get("flops", float("inf")), share * cm.flops)
    current = _fit_static(cm, fitted, proxy, round_to, max_sparsity, fill)
    worst = float("inf")
    for _ in range(max_measurements):
        pruned_ms, base_ms = _measured(model, x, Policy(name, current, channels, round_to), exclude=exclude,
                                       device=device, batch=batch, backend=backend, threads=threads)
        worst = max(pruned_ms / b.cap(base_ms) for b in latency_budgets)
        if worst <= 1.0:
            return current
        # Latency falls roughly with the square root of FLOPs on small batches: tighten by overshoot^2.
        now = cm.cost(current, round_to)["flops"]
        proxy["flops"] = now / worst**2 * 0.99
        current = _fit_static(cm, current, proxy, round_to, max_sparsity)
    raise InfeasibleError(
        f"Latency budget {', '.join(b.describe() for b in latency_budgets)} not met after "
        f"{max_measurements} measurements on {device if backend == 'torch' else backend} (last: {worst:.2f}x the limit)."
    )


def uniform_policy(model: nn.Module, x: torch.Tensor, budgets: Sequence[Budget], **kwargs) -> Policy:
    """One sparsity for every group, the smallest that meets every budget (see :func:`fit_policy`)."""
    groups = kwargs.get("groups")
    if groups is None:
        groups = [g.name for g in prunable_groups(model, x, kwargs.get("exclude", ()))]
    return fit_policy(model, x, {g: 0.0 for g in groups}, budgets, **{**kwargs, "groups": groups})
