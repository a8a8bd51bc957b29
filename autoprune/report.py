"""The HTML report of a run: one self-contained page, read-only over the run folder.

``autoprune report RUN --html`` writes ``RUN/report.html``: the front against the uniform curve, the
pick's kept channels per group against the uniform policy's at the same size (the picture of the AMC
paper), the front's hypervolume over trials, each budget and how close the ok trials came to it, the
groups left out, and the trial table. Images are PNGs inlined as ``data:`` URIs and the style sheet
is inline: the page opens offline, from a mail attachment or a CI artefact, and fetches nothing.
A run still going, interrupted, without a uniform trial or without any ok trial gets a page too,
each section saying what it lacks.

Example:
    >>> path = write_report("results/resnet20-digits-20261127-120000")   # .../report.html
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Sequence

import pandas as pd

from .atomic import write_text
from .errors import AutopruneError
from .convergence import hypervolume_column, last_growth
from .front import (best_pick, best_trial, gain_vs_uniform, is_uniform,
                    pareto_front, proposed_count, uniform_curve, uniform_verdict)
from .front_plot import plot_front
from .policy import Policy
from .report_html import _anchor, _e, _finite, _img, _note, _num, _plt, _png, _share, _table
from .results import Run, RunDir, load_run, unpruned_size

__all__ = ["write_report", "render_report", "SECTIONS"]

SECTIONS = ("Front", "Per-layer shape", "Convergence", "Budgets", "Left out", "Trials")
_FRONT_COLUMNS = ("trial", "parent", "epochs", "origin", "importance", "val_acc", "gain_vs_uniform", "target_ratio",
                  "flops_ratio", "params_ratio", "latency_ratio", "latency_ms", "trial_s")
_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2433; margin: 0;
       background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 34px 0 10px; padding-top: 8px;
     border-top: 1px solid #dde1e8; }
.meta { color: #556; margin: 2px 0; } nav a { margin-right: 14px; color: #2458b3; text-decoration: none; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 8px 12px; margin: 10px 0; }
.verdict { background: #eef4ff; border-left: 4px solid #2458b3; padding: 8px 12px; margin: 10px 0; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { padding: 3px 9px; text-align: right; border-bottom: 1px solid #e6e8ee; white-space: nowrap; }
th { background: #eef0f4; position: sticky; top: 0; } td.text, th.text { text-align: left; }
tr.infeasible td { color: #8a6d00; } tr.failed td { color: #b3261e; }
.scroll { overflow: auto; max-height: 640px; border: 1px solid #e6e8ee; }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; }
"""


def write_report(run: Run | str | Path, path: str | Path | None = None) -> Path:
    """Write the run's report page (default ``RUN/report.html``) and return its path."""
    run = run if isinstance(run, Run) else load_run(run)
    out = Path(path) if path is not None else run.path / "report.html"
    write_text(out, render_report(run))
    return out


def render_report(run: Run) -> str:
    """The page as one HTML string: sections headed as in :data:`SECTIONS`, images inline."""
    v = _View(run)
    body = [_header(v)] + [f'<section id="{_anchor(name)}"><h2>{name}</h2>\n{part}</section>'
                           for name, part in zip(SECTIONS, (_front(v), _shape(v), _convergence(v), _budgets(v),
                                                            _left_out(v), _trials(v)))]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>autoprune report: {_e(run.path.name)}</title><style>{_CSS}</style></head>\n"
            "<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


class _View:
    """What every section reads: the run, its front recomputed from trials.csv (pareto.csv may be
    missing or older on an interrupted run), the uniform curve, the pick and the size range."""

    def __init__(self, run: Run) -> None:
        self.run, self.trials, self.objective = run, run.trials, run.config.size_measure
        self.size = f"{self.objective}_ratio"
        self.front = pareto_front(self.trials, self.objective)
        self.curve = uniform_curve(self.trials, self.objective)
        self.front["gain_vs_uniform"] = gain_vs_uniform(self.front, self.curve, self.objective)
        self.best = best_pick(self.trials, self.front, self.objective, run.near_budget)
        self.unpruned = unpruned_size(run.baseline, self.objective)
        try:
            self.floor, self.top = run.config.size_range(self.unpruned) if self.unpruned else (None, None)
        except AutopruneError:
            self.floor, self.top = None, None
        if self.top is None and run.budgets and run.budgets[0].relative:
            self.top = run.budgets[0].value
        self.status = self.trials["status"].astype(str) if len(self.trials) else pd.Series(dtype=str)
        self.ok = self.trials[self.status == "ok"] if len(self.trials) else self.trials
        self.finished = RunDir(run.path).is_finished()
        self.raw = RunDir(run.path).read_config()


def _header(v: _View) -> str:
    run, c = v.run, v.run.config
    counts = ", ".join(f"{int((v.status == s).sum())} {s}" for s in ("ok", "infeasible", "failed"))
    done = proposed_count(v.trials)
    state = "finished" if v.finished else (
        f"unfinished: {done} of {c.trials} trials recorded (running, or interrupted: continue with "
        f"<code>autoprune search --resume --name {_e(run.path.name)}</code>)")
    b = run.baseline
    base = (f"unpruned: {_e(b.get('metric') or 'val_acc')} {_num(b.get('val_acc'))}, {_num(b.get('flops'))} FLOPs, {_num(b.get('params'))} params"
            if b else "no baseline.json yet (the run stopped while preparing)")
    nav = " ".join(f'<a href="#{_anchor(s)}">{s}</a>' for s in SECTIONS)
    return (f"<h1>{_e(run.path.name)}</h1>\n"
            f"<p class=\"meta\">{_e(c.model)} on {_e(c.dataset)}; budgets: "
            f"{_e(', '.join(x.describe() for x in run.budgets) or 'none')}; front in {_e(v.objective)}</p>\n"
            f"<p class=\"meta\">{len(v.trials)} rows ({counts}); {state}</p>\n<p class=\"meta\">{_e(base)}</p>\n"
            f"<nav>{nav}</nav>")


def _ms(row) -> str:
    ms = row.get("latency_ms")
    return f" ({float(ms):.3g} ms)" if ms is not None and pd.notna(ms) else ""


def _front(v: _View) -> str:
    if v.ok.empty:
        return _note("No trial has finished ok yet, so there is no front to draw.")
    with tempfile.TemporaryDirectory() as tmp:  # plot_front writes a file: the same picture as pareto.png
        png = Path(tmp) / "front.png"
        plot_front(v.trials, v.front, png, budgets=v.run.budgets, objective=v.objective, baseline=v.run.baseline,
                   curve=v.curve, floor=v.floor)
        img = _img(png.read_bytes(), f"validation accuracy against {v.objective}: trials, front, uniform curve")
    parts = [f"<p>Validation accuracy against {_e(v.objective)} as a share of the unpruned model: every ok trial, "
             "the Pareto front, the uniform policy (best criterion at each size; under a latency objective, with multiples of "
             "8 where they are faster), the unpruned model and the budget (milliseconds on the top axis under a latency "
             "objective)."
             "</p>", img]
    if v.best is not None:
        t = int(v.best["trial"])
        parts.append(f"<p>Pick (best within the budget{'' if v.finished else ' so far'}): trial {t}, "
                     f"{_e(v.best.get('origin', ''))}, {_e(v.run.baseline.get('metric') or 'val_acc')} "
                     f"{_num(v.best['val_acc'])} at {_e(v.size)} "
                     f"{_num(v.best.get(v.size))}{_ms(v.best)}. Apply it with <code>autoprune apply {_e(str(v.run.path))} "
                     f"--pick {t}</code>.</p>")
        verdict = uniform_verdict(v.best, v.trials, v.objective, v.run.baseline.get("val_images"))
        so_far = "" if v.finished else " (So far: the run is unfinished.)"
        parts.append(f'<p class="verdict">Against uniform pruning: {_e(verdict)}{so_far}</p>')
    if v.curve.empty:
        parts.append(_note("No uniform trial has finished ok yet: there is no uniform curve to compare with."))
    cols = [c for c in _FRONT_COLUMNS if c in v.front and v.front[c].notna().any()]
    parts.append(f"<p>The front ({len(v.front)} points; gain_vs_uniform: over the uniform curve at the same size):"
                 f"</p>{_table(v.front, cols)}")
    return "\n".join(parts)


def _shape(v: _View) -> str:
    if v.best is None:
        return _note("No ok trial yet: there is no pick whose shape to draw.")
    shown, notes = v.best, []
    if _uniform(v.best):
        searched = v.front[~is_uniform(v.front["origin"])] if len(v.front) else v.front
        if searched.empty:
            return (_note(f"The pick (trial {int(v.best['trial'])}) is the uniform policy: every group loses the "
                          "same share, and no searched shape is on the front yet.") + _kept_figure(v, v.best, None))
        shown = best_trial(searched)
        notes.append(f"The pick (trial {int(v.best['trial'])}) is the uniform policy: every group loses the same "
                     f"share. Drawn instead: the best searched shape on the front, trial {int(shown['trial'])}.")
    uni_t = _nearest_uniform(v, float(shown[v.size]))
    if uni_t is None:
        notes.append("No uniform trial has finished ok yet: only the searched shape is drawn.")
    return "".join(_note(n) for n in notes) + _kept_figure(v, shown, uni_t)


def _kept_figure(v: _View, shown: pd.Series, uni_t: int | None) -> str:
    """Bars per group: the unpruned channels, those ``shown`` kept and those the uniform trial kept."""
    t = int(shown["trial"])
    policy = _policy(v.run, t)
    if policy is None:
        return _note(f"Trial {t} has no policy file in policies/.")
    uniform = _policy(v.run, uni_t) if uni_t is not None else None
    groups = sorted(policy.sparsity, key=_natural)
    channels = [policy.channels.get(g) for g in groups]
    kept = _kept(policy)
    label = "pick" if t == int(v.best["trial"]) else "searched"
    rows = pd.DataFrame({"group": groups, "channels": channels, f"{label} (trial {t})": [kept[g] for g in groups]})
    series = [(f"{label}, trial {t}", [kept[g] for g in groups], "C0")]
    if uniform is not None:
        ukept = _kept(uniform)
        rows[f"uniform (trial {uni_t})"] = [ukept.get(g) for g in groups]
        series.append((f"uniform, trial {uni_t}", [ukept.get(g) for g in groups], "C3"))
    text = (f"<p>Output channels kept per group by the {label} (trial {t}, {_e(v.size)} {_num(shown[v.size])})"
            + (f" and by the uniform policy at the nearest size (trial {uni_t}, {_e(v.size)} "
               f"{_num(v.trials.set_index('trial').loc[uni_t].get(v.size))})" if uniform is not None else "")
            + ", in front of the unpruned model's (grey); groups in the model's order by name.</p>")
    if uni_t is not None and uniform is None:
        text += _note(f"The uniform trial {uni_t} has no policy file in policies/.")
    return text + _img(_bars(groups, channels, series), "kept channels per group") + _table(rows, list(rows.columns))


def _convergence(v: _View) -> str:
    searched = v.trials[pd.to_numeric(v.trials.get("parent", pd.Series(index=v.trials.index, dtype=float)),
                                      errors="coerce").isna()] if len(v.trials) else v.trials
    if v.ok.empty or v.top is None:
        why = "no trial has finished ok yet" if v.ok.empty else "the budget's share of the unpruned model is unknown"
        return _note(f"No hypervolume to draw: {why}.")
    hv = pd.Series(hypervolume_column(v.trials, v.objective, v.top), index=v.trials.index)
    order = searched.sort_values("trial", kind="stable")
    xs, ys = order["trial"].astype(int).tolist(), hv[order.index].tolist()
    grown = last_growth(v.trials.assign(hypervolume=hv))
    fig, ax = _plt().subplots(figsize=(7, 3.2), dpi=110)
    ax.plot(xs, ys, "o-", c="C0", ms=3, drawstyle="steps-post")
    uni = is_uniform(order["origin"]).to_numpy()
    ax.scatter([x for x, u in zip(xs, uni) if u], [y for y, u in zip(ys, uni) if u], s=22, c="C3", zorder=3,
               label="uniform trials")
    if grown is not None:
        ax.axvline(grown[1], ls=":", c="0.4", label=f"last grew >1%: trial {grown[1]}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume of the front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    text = (f"<p>The area the front dominates after each trial (accuracy from 0, {_e(v.objective)} up to the budget "
            f"{v.top:.3g}): {_num(ys[-1] if ys else None)} after {len(xs)} trials. ")
    text += (f"It last grew by more than 1% after {grown[0]} trials (trial {grown[1]}).</p>" if grown is not None
             else "It has not grown by more than 1% yet.</p>")
    return text + _img(_png(fig), "hypervolume over trials")


def _budgets(v: _View) -> str:
    run = v.run
    if not run.budgets:
        return _note("The run has no budget.")
    rows = []
    for b in run.budgets:
        unpruned = unpruned_size(run.baseline, b.kind)
        try:
            share = b.ratio(unpruned) if unpruned else (b.value if b.relative else None)
        except AutopruneError:
            share = None
        col = f"{b.kind}_ratio"
        sizes = pd.to_numeric(v.ok[col], errors="coerce").dropna() if col in v.ok else pd.Series(dtype=float)
        closest = v.ok.loc[sizes.idxmax()] if len(sizes) else None
        pick = v.best.get(col) if v.best is not None else None
        rows.append({"budget": b.describe(), "limit (share)": share, "ok trials measured": len(sizes),
                     "closest ok trial": int(closest["trial"]) if closest is not None else None,
                     "its size": sizes.max() if len(sizes) else None,
                     "of the budget": _share(sizes.max() / share) if len(sizes) and share else "",
                     "median ok size": sizes.median() if len(sizes) else None,
                     "pick's size": pick,
                     "pick, of the budget": _share(pick / share) if _finite(pick) and share else ""})
    infeasible = v.trials[v.status == "infeasible"] if len(v.trials) else v.trials
    parts = ["<p>Each budget as a share of the unpruned model, and how close the ok trials came to it (every ok "
             "trial is within every budget; a candidate that cannot be fitted is recorded as infeasible).</p>",
             _table(pd.DataFrame(rows), list(rows[0]))]
    if v.floor is not None and v.top is not None:
        parts.append(f"<p>The search explored {_e(v.objective)} from {v.floor:.3g} to {v.top:.3g} of the unpruned "
                     "model.</p>")
    if len(infeasible):
        reasons = infeasible["error"].fillna("").astype(str).value_counts() if "error" in infeasible else {}
        parts.append(f"<p>{len(infeasible)} infeasible trial(s): "
                     + "; ".join(f"{_e(r or 'no reason recorded')} ({n})" for r, n in list(reasons.items())[:5])
                     + "</p>")
    return "\n".join(parts)


def _left_out(v: _View) -> str:
    searched = v.raw.get("groups") or []
    if not v.run.left_out:
        return (f"<p>No group was left out: all {len(searched)} prunable groups were searched.</p>" if searched
                else "<p>No group was left out.</p>")
    table = pd.DataFrame({"group": list(v.run.left_out), "reason": [str(r) for r in v.run.left_out.values()]})
    return (f"<p>{len(v.run.left_out)} group(s) left out as unsafe to prune (kept whole in every trial), "
            f"{len(searched)} searched:</p>" + _table(table, ["group", "reason"]))


def _trials(v: _View) -> str:
    if v.trials.empty:
        return _note("No trial has finished yet.")
    filled = [c for c in v.trials.columns if v.trials[c].replace("", pd.NA).notna().any()]
    empty = [c for c in v.trials.columns if c not in filled]
    return (f"<p>trials.csv: {len(v.trials)} rows, one per trial as it ended (s: sparsity per group, t: seconds per "
            "part)" + (f"; empty columns left out: {_e(', '.join(empty))}" if empty else "") + ".</p>"
            + f'<div class="scroll">{_table(v.trials, filled, status=True)}</div>')


# --------------------------------------------------------------------------------------------- helpers


def _policy(run: Run, trial: int) -> Policy | None:
    p = run.path / "policies" / f"{int(trial)}.json"
    return Policy.load(p) if p.is_file() else None


def _kept(policy: Policy) -> dict[str, int]:
    """Channels each group kept: the recorded indices when the trial recorded them, else the count
    its sparsity gives."""
    counted = policy.kept() if set(policy.sparsity) <= set(policy.channels) else {}
    return {g: len(policy.indices[g]) if g in policy.indices else counted.get(g) for g in policy.sparsity}


def _uniform(row: pd.Series) -> bool:
    return bool(is_uniform(pd.Series([str(row.get("origin", ""))])).iloc[0])


def _nearest_uniform(v: _View, size: float) -> int | None:
    """The uniform trial nearest in size to ``size``: the uniform curve's (best criterion) point, else
    any ok uniform trial (all criteria keep the same counts at one size)."""
    pool = v.curve.rename(columns={"size": v.size}) if len(v.curve) else (
        v.ok[is_uniform(v.ok["origin"])] if len(v.ok) else v.ok)
    if pool.empty or v.size not in pool:
        return None
    dist = (pd.to_numeric(pool[v.size], errors="coerce") - size).abs()
    return int(pool.loc[dist.idxmin(), "trial"])


def _natural(name: str) -> list:
    """``layer1.10`` after ``layer1.9``: digits compare as numbers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]


def _bars(groups: Sequence[str], channels: Sequence[int | None], series: Sequence[tuple[str, list, str]]) -> bytes:
    import numpy as np

    plt = _plt()
    n = len(groups)
    fig, ax = plt.subplots(figsize=(min(18.0, max(9.0, 0.42 * n + 2)), 4.2), dpi=110)
    x = np.arange(n)
    ax.bar(x, [c or 0 for c in channels], width=0.86, color="0.88", label="unpruned")
    width = 0.8 / len(series)
    for i, (label, values, color) in enumerate(series):
        ax.bar(x - 0.4 + width * (i + 0.5), [k or 0 for k in values], width=width, color=color, label=label)
    ax.set_xticks(x, list(groups), rotation=60 if n > 6 else 0, ha="right" if n > 6 else "center", fontsize=8)
    ax.set_ylabel("output channels")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
