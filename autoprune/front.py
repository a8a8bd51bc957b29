"""The Pareto front of a run, the uniform curve it is judged against, and its convergence.

Pure functions of the trials table (pandas); ``results.py`` writes what they compute. Sizes are
shares of the unpruned model in the run's size measure (``objective``: flops, params or latency).

Example:
    >>> front = pareto_front(run.trials, "flops")
    >>> curve = uniform_curve(run.trials, "flops")
    >>> front["gain_vs_uniform"] = gain_vs_uniform(front, curve, "flops")
    >>> print(front_table(front))
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd


__all__ = ["proposed_count", "top_rung", "promotions", "pareto_front", "best_trial", "pick_trial", "front_table",
           "uniform_curve", "gain_vs_uniform",
           "uniform_origin", "is_uniform", "CONFIRM_PREFIX", "is_confirmation", "confirmations_due",
           "confirmed_best", "confirmation_table", "uniform_verdict"]

CONFIRM_PREFIX = "confirm:"  # the origin of a confirmation rerun: confirm:<its parent's origin>


def uniform_origin(criterion: str, target: float) -> str:
    """The origin of the uniform policy with ``criterion`` at size ``target``: ``uniform:l1@0.250``."""
    return f"uniform:{criterion}@{target:.3f}"


def is_uniform(origins: pd.Series) -> pd.Series:
    """Which origins are uniform policies (``uniform``, ``uniform:<criterion>``, ``uniform:<c>@<size>``)."""
    return origins.astype(str).str.startswith("uniform")


def _size(trials: pd.DataFrame, objective: str) -> str:
    return f"{objective}_ratio" if f"{objective}_ratio" in trials else objective


def _ok(trials: pd.DataFrame, col: str) -> pd.DataFrame:
    if trials.empty or col not in trials:
        return trials.iloc[0:0]
    return trials[(trials["status"] == "ok") & trials["val_acc"].notna() & trials[col].notna()]


def _epochs(trials: pd.DataFrame) -> pd.Series:
    if "epochs" not in trials:
        return pd.Series(math.nan, index=trials.index, dtype=float)
    return pd.to_numeric(trials["epochs"], errors="coerce")


def _is_promotion(trials: pd.DataFrame) -> pd.Series:
    if "parent" not in trials:
        return pd.Series(False, index=trials.index)
    return pd.to_numeric(trials["parent"], errors="coerce").notna()


def is_confirmation(trials: pd.DataFrame) -> pd.Series:
    """Which rows confirm a candidate (``--confirm``): reruns at the confirmation finetune."""
    if trials.empty or "origin" not in trials:
        return pd.Series(False, index=trials.index)
    return trials["origin"].astype(str).str.startswith(CONFIRM_PREFIX)


def _searched(trials: pd.DataFrame) -> pd.DataFrame:
    """The search's own trials and rung promotions: the front, the uniform curve and the rungs never
    see the confirmation reruns."""
    return trials[~is_confirmation(trials)] if len(trials) else trials


def proposed_count(trials: pd.DataFrame) -> int:
    """Trials the search proposed (what ``--trials`` counts); promotions rerun some of them."""
    return int((~_is_promotion(trials)).sum()) if len(trials) else 0


def top_rung(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials at the highest fidelity (``epochs``) any ok trial reached: the front and the pick
    use only these. A run without promotions (or from before the column) is returned whole.
    Confirmation reruns are never part of it."""
    trials = _searched(trials)
    if trials.empty or not _is_promotion(trials).any():
        return trials
    epochs = _epochs(trials)
    top = epochs[trials["status"] == "ok"].max()
    return trials if math.isnan(top) else trials[np.isclose(epochs, top)]


def promotions(trials: pd.DataFrame, objective: str, rung_epochs: Sequence[float], reduction: int,
               all_criteria: bool = False) -> tuple[float, list[int]] | None:
    """The next rung that lacks trials, and the trials (numbers) to rerun there; None when all are done.

    Rung ``r`` (finetune epochs ``rung_epochs[r]``) takes from the ok trials of rung ``r - 1``: the
    uniform curve's points (best criterion per size, so the gain can be measured at every rung),
    and the best ``ceil(n / reduction)`` of the ``n`` others by their gain over that rung's uniform
    curve at the same size, never by raw accuracy, which would always promote the largest. Ties
    (or no uniform point to measure against) go to the earlier trial. Trials already rerun at a
    rung are not asked again. With ``all_criteria`` the uniform policy at the largest size (the
    budget) goes up with every criterion, not only the one that led at the rung below: at a short
    fidelity the criteria's order at the budget often flips with a longer finetune.
    """
    trials = _searched(trials)
    epochs = _epochs(trials)
    ok = (trials["status"] == "ok") if len(trials) else pd.Series(dtype=bool)
    for prev, cur in zip(rung_epochs, rung_epochs[1:]):
        below = trials[ok & np.isclose(epochs, prev)] if len(trials) else trials
        curve = uniform_curve(below, objective)
        keep = [int(t) for t in curve["trial"]]
        if all_criteria and len(curve):
            keep += [int(t) for t in _uniform_at(below, int(curve.iloc[-1]["trial"]), objective) if int(t) not in keep]
        others = below[~is_uniform(below["origin"])] if len(below) else below
        if len(others):
            gain = gain_vs_uniform(others, curve, objective).fillna(-math.inf)
            ranked = others.assign(_gain=gain).sort_values(["_gain", "trial"], ascending=[False, True], kind="stable")
            keep += [int(t) for t in ranked["trial"].head(math.ceil(len(others) / reduction))]
        at = trials[np.isclose(epochs, cur) & _is_promotion(trials)] if len(trials) else trials
        done = {int(p) for p in pd.to_numeric(at.get("parent", pd.Series(dtype=float)), errors="coerce").dropna()}
        todo = [t for t in keep if t not in done]
        if todo:
            return float(cur), todo
    return None


def _uniform_key(uniform: pd.DataFrame, col: str) -> pd.Series:
    """Which uniform trials form one point of the uniform curve: the same target size."""
    if "target_ratio" in uniform and uniform["target_ratio"].notna().all():
        return uniform["target_ratio"].round(6)
    return uniform[col].round(3)  # runs from before targets: the sizes themselves


def _uniform_at(trials: pd.DataFrame, trial: int, objective: str) -> list[int]:
    """The ok uniform trials of the same curve point as ``trial`` (every criterion there), by number."""
    col = _size(trials, objective)
    uniform = _ok(trials, col)
    uniform = uniform[is_uniform(uniform["origin"])]
    key = _uniform_key(uniform, col)
    at = key[uniform["trial"].astype(int) == trial]
    return sorted(int(t) for t in uniform.loc[key == at.iloc[0], "trial"]) if len(at) else []


def confirmations_due(trials: pd.DataFrame, objective: str, count: int) -> list[int]:
    """The trials (numbers) still to confirm: the uniform curve's point at its largest size (the
    budget, best criterion) and the ``count`` best other ok trials by validation accuracy (uniform
    ones at other sizes or criteria included), all at the top rung, less those already confirmed.
    A candidate that beats the confirmed uniform is at least as small and better."""
    if count <= 0 or trials.empty:
        return []
    searched = top_rung(trials)
    ok = _ok(searched, _size(searched, objective))
    curve = uniform_curve(trials, objective)
    picks = [int(curve.iloc[-1]["trial"])] if len(curve) else []
    others = ok[~ok["trial"].astype(int).isin(picks)]
    others = others.sort_values(["val_acc", "trial"], ascending=[False, True], kind="stable")
    picks += [int(t) for t in others["trial"].head(count)]
    done = trials[is_confirmation(trials)]
    done = {int(p) for p in pd.to_numeric(done.get("parent", pd.Series(dtype=float)), errors="coerce").dropna()}
    return [t for t in picks if t not in done]


def confirmed_best(trials: pd.DataFrame) -> pd.Series | None:
    """The confirmation rerun with the highest validation accuracy (None without any): once a run
    has confirmed its candidates, this is ``best``."""
    conf = trials[is_confirmation(trials)] if len(trials) else trials
    conf = conf[(conf["status"] == "ok") & conf["val_acc"].notna()] if len(conf) else conf
    if conf.empty:
        return None
    return conf.sort_values(["val_acc", "trial"], ascending=[False, True], kind="stable").iloc[0]


def confirmation_table(trials: pd.DataFrame, objective: str) -> str:
    """Each confirmed candidate: its score in the search and after the confirmation finetune."""
    conf = trials[is_confirmation(trials)] if len(trials) else trials
    if conf.empty:
        return "(no confirmation)"
    rows = trials.set_index("trial")
    col = _size(trials, objective)
    out = pd.DataFrame({
        "trial": conf["trial"].astype(int),
        "parent": pd.to_numeric(conf["parent"], errors="coerce").astype("Int64"),
        "origin": conf["origin"].astype(str).str.removeprefix(CONFIRM_PREFIX),
        "epochs": _epochs(conf),
        col: conf[col],
        "search_val_acc": [rows.loc[int(p), "val_acc"] if pd.notna(p) and int(p) in rows.index else math.nan
                           for p in pd.to_numeric(conf["parent"], errors="coerce")],
        "confirmed_val_acc": conf["val_acc"],
    })
    out = out.sort_values(["confirmed_val_acc", "trial"], ascending=[False, True], kind="stable")
    return out.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def pareto_front(trials: pd.DataFrame, objective: str = "flops") -> pd.DataFrame:
    """The ok trials that no other ok trial beats on both val_acc (up) and ``objective`` (down).

    Sorted by the objective ascending. Ties on both keep the earliest trial. With promotions, only
    the trials at the highest fidelity reached count (:func:`top_rung`).
    """
    trials = top_rung(trials)
    col = _size(trials, objective)
    ok = _ok(trials, col).sort_values([col, "val_acc", "trial"], ascending=[True, False, True], kind="stable")
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
    return front.sort_values(["val_acc", "trial"], ascending=[False, True], kind="stable").iloc[0]


# With BatchNorm-only trials (--finetune-epochs 0) the pick is the best trial sized within
# [NEAR_BUDGET x budget, budget], not the front's best: a score after recalibration alone does not compare
# across sizes. On the headroom study's decision seeds (results/benchmarks/headroom_judge.csv, issue 24) the
# front's best fell at a third of resnet20's 6.25% budget and lost 5.0 points to uniform_best after the
# final recipe; picked near the budget it was a tie there (-0.24) and +1.36 at vgg11_cifar 12.5% params.
# Judged on seeds 10-14: +1.79 at the params cell, -0.61 at vgg11_cifar 12.5% FLOPs, -4.80 at resnet20
# 6.25% (docs/benchmarks.md): better than the front's best for such runs, not a default.
NEAR_BUDGET = 0.9


def near_budget_trial(trials: pd.DataFrame, objective: str, budget: float,
                      share: float = NEAR_BUDGET) -> pd.Series | None:
    """The ok trial (at the highest fidelity) with the highest validation accuracy among those sized
    within [share x budget, budget] in ``objective`` (shares of the unpruned model); None if none is."""
    trials = top_rung(trials)
    col = _size(trials, objective)
    ok = _ok(trials, col)
    return best_trial(ok[ok[col].astype(float).between(share * budget, budget + 1e-12)])


def best_pick(trials: pd.DataFrame, front: pd.DataFrame, objective: str,
              near_budget: float | None = None) -> pd.Series | None:
    """What ``--pick best`` applies: the best confirmed candidate (``--confirm``); else, with
    ``near_budget`` (the budget's share, given for BatchNorm-only runs), the best trial near it; else
    the front's highest validation accuracy."""
    confirmed = confirmed_best(trials) if len(trials) else None
    if confirmed is not None:
        return confirmed
    if near_budget is not None:
        near = near_budget_trial(trials, objective, near_budget)
        if near is not None:
            return near
    return best_trial(front)


def pick_trial(front: pd.DataFrame, objective: str, at_most: float | None = None) -> pd.Series | None:
    """The front point with the highest validation accuracy at or under the size ``at_most`` (a share
    of the unpruned model; None: anywhere within the budget), or None if there is none."""
    if at_most is not None and not front.empty:
        front = front[front[_size(front, objective)] <= at_most + 1e-12]
    return best_trial(front)


def metric_label(baseline: Mapping[str, Any]) -> str:
    """What the ``val_acc`` column holds, in words: ``accuracy``, a user task's metric, or ``-<metric>``
    for a metric the task minimises (the column holds minus it, so higher is better everywhere)."""
    metric = str(baseline.get("metric") or "accuracy")
    return f"-{metric}" if baseline.get("direction") == "minimize" else metric


def uniform_curve(trials: pd.DataFrame, objective: str) -> pd.DataFrame:
    """The uniform policy's accuracy against size: at each size it was measured at, its best criterion.

    Columns ``size``, ``val_acc``, ``trial``, ``importance``, sorted by size. Uniform trials of one
    target size (``target_ratio``) form one point, at the size the best of them measured.
    """
    trials = top_rung(trials)
    col = _size(trials, objective)
    ok = _ok(trials, col)
    ok = ok[is_uniform(ok["origin"])] if len(ok) else ok
    if ok.empty:
        return pd.DataFrame(columns=["size", "val_acc", "trial", "importance"])
    key = _uniform_key(ok, col)
    best = ok.loc[ok.sort_values(["val_acc", "trial"], ascending=[False, True]).groupby(key, sort=False)
                  .head(1).index]
    curve = pd.DataFrame({"size": best[col].astype(float), "val_acc": best["val_acc"].astype(float),
                          "trial": best["trial"].astype(int),
                          "importance": best["importance"] if "importance" in best else ""})
    return curve.sort_values("size", kind="stable").reset_index(drop=True)


def gain_vs_uniform(front: pd.DataFrame, curve: pd.DataFrame, objective: str) -> pd.Series:
    """Each front point's validation accuracy minus the uniform curve's at the same size.

    The curve is interpolated linearly between its measured sizes and held flat beyond them; with no
    uniform point at all the gain is NaN.
    """
    if front.empty or curve.empty:
        return pd.Series([math.nan] * len(front), index=front.index, dtype=float)
    at = np.interp(front[_size(front, objective)].astype(float), curve["size"], curve["val_acc"])
    return pd.Series(front["val_acc"].astype(float).to_numpy() - at, index=front.index)


def uniform_verdict(best: Mapping[str, Any], trials: pd.DataFrame, objective: str, val_images: int | None) -> str:
    """One plain sentence on whether the pick beats uniform pruning: its gain over the uniform curve at
    its size beside the validation noise, ``2 * sqrt(p (1 - p) / n)`` for ``n`` validation images."""
    from .stats import accuracy_noise

    if is_uniform(pd.Series([str(best.get("origin", ""))])).iloc[0]:
        return (f"the pick is the uniform policy ({best.get('importance', '')}): at this budget uniform pruning is "
                "the answer; no other shape searched did better on validation.")
    curve = uniform_curve(trials, objective)
    if curve.empty:
        return "no uniform policy finished, so the pick cannot be compared with uniform pruning."
    gain = float(gain_vs_uniform(pd.DataFrame([dict(best)]), curve, objective).iloc[0]) * 100
    if not val_images:
        return f"the pick is {gain:+.2f} points over the uniform curve at its size (validation noise unknown)."
    noise = accuracy_noise(float(best["val_acc"]), int(val_images)) * 100
    where = f"validation noise on {int(val_images):,} images: +/-{noise:.2f}"
    if gain > noise:
        return f"the pick is {gain:+.2f} points over the uniform curve at its size, beyond the {where}."
    return (f"the pick is {gain:+.2f} points over the uniform curve at its size, within the {where}: uniform "
            "pruning is as good here (autoprune apply --pick uniform).")


def front_table(front: pd.DataFrame) -> str:
    rungs = ("parent", "epochs") if _is_promotion(front).any() else ()  # with promotions: which trial, how long
    cols = [c for c in ("trial", *rungs, "origin", "importance", "val_acc", "gain_vs_uniform", "target_ratio",
                        "flops_ratio", "params_ratio", "latency_ratio", "latency_ms", "trial_s")
            if c in front and front[c].notna().any()]
    if front.empty:
        return "(no feasible trial)"
    return front[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}")
