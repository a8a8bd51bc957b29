"""How far a search can go: the smallest model its prunable groups reach, in FLOPs, params and latency.

Computed once when a run is prepared (``prepare.py``), before any baseline is trained: a budget below
that smallest model is refused in one line, and the front's floor is raised to it
(``workers.size_range``), so that no trial aims at a size no shape reaches.
"""
from __future__ import annotations

from typing import Mapping

from .config import SearchConfig
from .errors import BudgetError

__all__ = ["smallest_reach", "left_out_text", "LATENCY_REACH_MARGIN"]


def left_out_text(left: Mapping[str, str]) -> str:
    return "; ".join(f"{name} ({why})" for name, why in left.items())


def smallest_reach(config: SearchConfig, model, example, groups, left: Mapping[str, str],
                   sizes: Mapping[str, float], log) -> dict[str, float]:
    """The smallest model the searched groups reach (each at the space's highest sparsity), as shares of
    the unpruned FLOPs and params (and latency, with a latency budget: measured); a budget below it is
    refused here, before any baseline is trained, and a front floor below it is raised to it (with a note)."""
    from .costs import default_round_to
    from .prune import cost_model

    space = config.space
    round_to = config.round_to or default_round_to(model, config.trial_device)
    cm = cost_model(model, example, space.exclude)
    smallest = cm.cost({g: space.range_of(g)[1] for g in groups}, round_to)
    reach = {f"reachable_{k}": smallest[k] / sizes[k] for k in ("flops", "params")}
    why = (f"; {len(left)} of {len(left) + len(groups)} groups are left out as unsafe: "
           f"{left_out_text(left)[:300]}" if left else f"; all {len(groups)} groups are searched up to sparsity "
           f"{space.max_sparsity:g}")
    for b in config.budgets:
        if b.kind in ("flops", "params") and b.limit(sizes[b.kind]) < smallest[b.kind]:
            raise BudgetError(f"Budget {b.describe()} is out of reach for model {config.model!r}: the smallest model "
                              f"its prunable groups reach has {reach['reachable_' + b.kind]:.1%} of the {b.kind}"
                              f"{why}.")
    if "latency_ms" in sizes:
        reach["reachable_latency"] = _reach_latency(config, model, example, groups, smallest_policy=(
            {g: space.range_of(g)[1] for g in groups}, cm.channels, round_to), sizes=sizes, why=why)
    measure = config.size_measure
    if measure in ("flops", "params") or "reachable_latency" in reach:
        unpruned = sizes["latency_ms"] if measure == "latency" else sizes[measure]
        floor, _ = config.size_range(unpruned)
        if floor < reach[f"reachable_{measure}"]:
            log(f"note: the front starts at {reach[f'reachable_{measure}']:.1%} of the {measure}, the smallest model "
                f"the prunable groups reach, not at {floor:.1%}")
    return reach


LATENCY_REACH_MARGIN = 1.1  # a latency budget is refused only this far below the smallest model's measurement


def _reach_latency(config: SearchConfig, model, example, groups, *, smallest_policy, sizes, why) -> float:
    """The smallest model's latency as a share of the unpruned model's, measured once side by side as
    the trials measure (backend, threads, batch, device). A latency budget more than
    ``LATENCY_REACH_MARGIN`` below it is refused before any baseline is trained (one measurement is
    noisy: a budget just under it is left to the trials); the front's floor is raised to it
    (``workers.size_range``), so that no trial aims where no shape can go."""
    from .latency import relative_latency
    from .policy import Policy
    from .prune import apply_policy
    from .training import resolve_device

    sparsity, channels, round_to = smallest_policy
    small = apply_policy(model, Policy(config.model, sparsity, channels, round_to), example,
                         exclude=config.space.exclude)
    pruned_ms, base_ms = relative_latency(small, model, example, device=resolve_device(config.trial_device),
                                          batch_size=config.latency_batch, backend=config.latency_backend,
                                          threads=config.latency_threads)
    share = pruned_ms / base_ms
    b = config.budget("latency")
    wanted = b.value if b.relative else b.value / sizes["latency_ms"]
    if wanted * LATENCY_REACH_MARGIN < share:
        raise BudgetError(f"Budget {b.describe()} is out of reach for model {config.model!r} on "
                          f"{config.latency_backend}: the smallest model its prunable groups reach measured "
                          f"{share:.1%} of the unpruned latency{why}.")
    return share
