"""Which policy ``autoprune apply`` trains: ``--pick`` resolved to a trial of the run (``best``,
``uniform``, a size such as ``30%``, a trial number), and the uniform policies ``--compare-uniform``
fits at the pick's size.

Example:
    >>> choice = resolve_pick(load_run("results/run"), "best")
    >>> choice.trial, choice.policy.importance
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn as nn

from .budget import Budget
from .criteria import IMPORTANCES
from .errors import RunError
from .fit import fit_policy
from .front import CONFIRM_PREFIX, is_uniform, uniform_curve
from .policy import Policy
from .results import Run, number_or_none

__all__ = ["Choice", "resolve_pick", "uniform_choices", "valid_picks"]

_NAMED_PICKS = ("best", "uniform")
_SHOWN_TRIALS = 10  # ok trial numbers listed in a bad-pick message


@dataclass(frozen=True)
class Choice:
    """A resolved pick: the label of its folder (``best``, ``uniform-l1``, ``7``) and the trial behind it
    (None for a uniform policy fitted to the pick's size, which no trial measured)."""

    label: str
    trial: int | None
    policy: Policy
    search_val_acc: float | None
    search_flops: int | None
    origin: str = ""
    sizes: Mapping[str, float] = dataclasses.field(default_factory=dict)  # flops/params ratios in the search


def uniform_choices(run: Run, choice: Choice, model: nn.Module, x: torch.Tensor,
                     exclude: tuple[str, ...]) -> list[Choice]:
    """The uniform policy at the pick's size: with the pick's criterion, then with the criterion that
    scored best on the run's uniform curve at the measured size nearest the pick's (once if they agree).

    The size is the pick's share of the unpruned model in the run's size measure (FLOPs under a
    latency objective, so no timing noise enters the fit); the run's budgets still hold.
    """
    import pandas as pd

    kind = "flops" if run.config.size_measure == "latency" else run.config.size_measure
    size = choice.sizes.get(kind)
    same = choice.policy.importance or run.config.importances[0]
    criteria = [same]
    curve = uniform_curve(run.trials, kind)
    if len(curve) and size is not None:
        nearest = curve.iloc[(curve["size"] - size).abs().argsort().iloc[0]]["importance"]
        # Runs from before criteria were recorded have no importance column: compare with the pick's only.
        if isinstance(nearest, str) and nearest in IMPORTANCES and nearest not in criteria:
            criteria.append(nearest)
    out = []
    for criterion in criteria:
        if is_uniform(pd.Series([choice.origin.removeprefix(CONFIRM_PREFIX)])).iloc[0] and criterion == same:
            out.append(choice)  # the pick is this very policy
            continue
        if size is None:
            raise RunError(f"--compare-uniform: trial {choice.trial} of run {run.path.name!r} has no {kind} "
                           f"ratio to match; apply it without --compare-uniform.")
        budgets = (*[b for b in run.budgets if b.kind != "latency"], Budget(kind, size, True, f"{size:.4g}"))
        caps = {g: run.config.space.range_of(g)[1] for g in choice.policy.sparsity}
        policy = fit_policy(model, x, {}, budgets, groups=list(choice.policy.sparsity), exclude=exclude,
                            round_to=choice.policy.round_to, max_sparsity=caps, model_name=run.config.model)
        out.append(Choice(f"uniform-{criterion}", None, dataclasses.replace(policy, importance=criterion),
                           None, None, "uniform"))
    return out


def ok_trials(run: Run) -> list[int]:
    t = run.trials
    return sorted(int(v) for v in t.loc[t["status"] == "ok", "trial"]) if len(t) else []


def valid_picks(run: Run) -> str:
    ok = ok_trials(run)
    shown = ", ".join(str(v) for v in ok[:_SHOWN_TRIALS]) + (", ..." if len(ok) > _SHOWN_TRIALS else "")
    return (f"choose best, uniform, a size such as 30% (the best front point at or under it) or an ok trial "
            f"number ({shown})" if ok else "the run has no ok trial")


def resolve_pick(run: Run, pick: str | int) -> Choice:
    """Turn ``best``, ``uniform``, a size (``30%``) or a trial number into an ok trial of the run,
    or raise RunError.

    ``uniform`` is the uniform policy measured at the largest size (the budget), with the criterion
    that scored best there on validation.
    """
    text = str(pick).strip()
    trials = run.trials
    if text == "best":
        best = run.best()
        if best is None:
            raise RunError(f"--pick best: run {run.path.name!r} has no feasible trial on its front; "
                           f"{valid_picks(run)}.")
        trial = int(best["trial"])
    elif text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            raise RunError(f"Unknown --pick {text!r}; {valid_picks(run)}.") from None
        best = run.pick(share)
        if best is None:
            smallest = run.pareto[f"{run.config.size_measure}_ratio"].min() if len(run.pareto) else None
            raise RunError(f"--pick {text}: run {run.path.name!r} has no front point at or under {text} of the "
                           f"{run.config.size_measure}" + (f" (its smallest is {smallest:.1%})" if smallest else "")
                           + f"; {valid_picks(run)}.")
        trial = int(best["trial"])
    elif text == "uniform":
        curve = uniform_curve(trials, run.config.size_measure)
        if curve.empty:
            raise RunError(f"--pick uniform: run {run.path.name!r} has no ok trial of the uniform policy; "
                           f"{valid_picks(run)}.")
        trial = int(curve.iloc[-1]["trial"])
    else:
        try:
            trial = int(text)
        except ValueError:
            raise RunError(f"Unknown --pick {text!r}; {valid_picks(run)}.") from None
        text = str(trial)
        rows = trials[trials["trial"] == trial] if len(trials) else trials
        if rows.empty:
            raise RunError(f"--pick {text}: run {run.path.name!r} has no trial {trial}; {valid_picks(run)}.")
        row = rows.iloc[0]
        if row["status"] != "ok":
            why = str(row.get("error", "") if isinstance(row.get("error", ""), str) else "")
            why = " ".join(why.split())[:160]
            raise RunError(f"--pick {text}: trial {trial} is {row['status']}" + (f" ({why})" if why else "")
                           + f"; {valid_picks(run)}.")
    rows = trials[trials["trial"] == trial] if len(trials) else trials
    row = rows.iloc[0] if len(rows) else run.pareto[run.pareto["trial"] == trial].iloc[0]
    sizes = {k: float(row[f"{k}_ratio"]) for k in ("flops", "params")
             if number_or_none(row.get(f"{k}_ratio")) is not None}
    return Choice(text, trial, run.policy(trial), number_or_none(row.get("val_acc")),
                   number_or_none(row.get("flops")),
                   str(row.get("origin", "")), sizes)
