"""The results directory of a run: trials.csv, pareto.csv, pareto.png, policies/, reading a run back.

Layout (DESIGN.md section 4)::

    results/<run>/config.yaml  baseline.json  baseline.pt  trials.csv  pareto.csv  pareto.png
                  policies/<trial>.json  study/journal.log  apply-<pick>/

Every file is written through a temporary file and a rename, so a kill never leaves half a file.

Example:
    >>> run = load_run("results/resnet20-digits-20261127-120000")
    >>> run.pareto[["trial", "val_acc", "flops_ratio"]]
    >>> small = apply_policy(run.model(), run.policy(3), run.example_input())
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import yaml

from .budget import Budget
from .errors import RunError
from .policy import Policy, atomic_write_text
from .trial import TRIAL_COLUMNS, SearchConfig, TrialResult

__all__ = ["RunDir", "Run", "load_run", "pareto_front", "plot_front", "front_table", "best_trial"]


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_json(path: Path, data: Mapping) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


class RunDir:
    """Writes one run's folder. One writer per run: the driver process of the search."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()

    @property
    def trials_csv(self) -> Path:
        return self.path / "trials.csv"

    @property
    def study_dir(self) -> Path:
        return self.path / "study"

    def exists(self) -> bool:
        return (self.path / "config.yaml").is_file()

    def is_finished(self) -> bool:
        return (self.path / "pareto.csv").is_file() and self.read_state().get("finished", False)

    def read_state(self) -> dict:
        p = self.path / "state.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def write_state(self, **state: Any) -> None:
        write_json(self.path / "state.json", {**self.read_state(), **state})

    def write_config(self, config: SearchConfig, extra: Mapping[str, Any]) -> None:
        data = {"search": config.to_dict(), **extra}
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(data, sort_keys=False))

    def read_config(self) -> dict:
        p = self.path / "config.yaml"
        if not p.is_file():
            raise RunError(f"Run folder {str(self.path)!r} has no config.yaml; is it a results folder of autoprune search?")
        return yaml.safe_load(p.read_text()) or {}

    def write_baseline(self, data: Mapping[str, Any]) -> None:
        write_json(self.path / "baseline.json", data)

    def read_trials(self) -> pd.DataFrame:
        if not self.trials_csv.is_file():
            return pd.DataFrame(columns=list(TRIAL_COLUMNS) + ["error"])
        return pd.read_csv(self.trials_csv, keep_default_na=True)

    def append(self, result: TrialResult) -> None:
        """Add one trial's row (rewriting trials.csv atomically) and save its policy."""
        if result.policy is not None:
            result.policy.save(self.path / "policies" / f"{result.trial}.json")
        df = self.read_trials()
        row = pd.DataFrame([result.to_row()])
        df = row if df.empty else pd.concat([df[df["trial"] != result.trial], row], ignore_index=True)
        df = df.sort_values("trial", kind="stable")
        head = [c for c in list(TRIAL_COLUMNS) + ["error", "importance"] if c in df.columns]
        df = df[head + sorted(c for c in df.columns if c not in head)]
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        atomic_write_text(self.trials_csv, buf.getvalue())

    def write_front(self, budgets: Sequence[Budget], objective: str, baseline: Mapping[str, Any]) -> pd.DataFrame:
        trials = self.read_trials()
        front = pareto_front(trials, objective)
        buf = io.StringIO()
        front.to_csv(buf, index=False)
        atomic_write_text(self.path / "pareto.csv", buf.getvalue())
        plot_front(trials, front, self.path / "pareto.png", budgets=budgets, objective=objective, baseline=baseline)
        return front


def pareto_front(trials: pd.DataFrame, objective: str = "flops") -> pd.DataFrame:
    """The ok trials that no other ok trial beats on both val_acc (up) and ``objective`` (down).

    Sorted by the objective ascending. Ties on both keep the earliest trial.
    """
    col = f"{objective}_ratio" if f"{objective}_ratio" in trials else objective
    ok = trials[(trials["status"] == "ok") & trials["val_acc"].notna() & trials[col].notna()]
    ok = ok.sort_values([col, "val_acc", "trial"], ascending=[True, False, True], kind="stable")
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
    return front.sort_values(["val_acc", "flops_ratio"], ascending=[False, True], kind="stable").iloc[0]


def front_table(front: pd.DataFrame) -> str:
    cols = [c for c in ("trial", "origin", "importance", "val_acc", "flops_ratio", "params_ratio", "latency_ratio",
                        "trial_s")
            if c in front and front[c].notna().any()]
    if front.empty:
        return "(no feasible trial)"
    return front[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}")


def plot_front(trials: pd.DataFrame, front: pd.DataFrame, path: Path, *, budgets: Sequence[Budget],
               objective: str, baseline: Mapping[str, Any]) -> None:
    """Accuracy against the size ratio: all trials, the front, uniform, the baseline, the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = f"{objective}_ratio"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ok = trials[trials["status"] == "ok"]
    ax.scatter(ok[col], ok["val_acc"], s=18, c="0.6", label=f"trials ({len(ok)} ok of {len(trials)})")
    if not front.empty:
        ax.plot(front[col], front["val_acc"], "o-", c="C0", label="Pareto front")
    uni = ok[ok["origin"] == "uniform"]
    if not uni.empty:
        ax.scatter(uni[col], uni["val_acc"], marker="s", s=60, c="C3", label="uniform policy", zorder=5)
    if baseline.get("val_acc") is not None:
        ax.scatter([1.0], [baseline["val_acc"]], marker="*", s=140, c="k", label="unpruned baseline", zorder=5)
    for b in budgets:
        if b.kind == objective and b.relative:
            ax.axvline(b.value, ls="--", c="C2", label=f"budget {b.text or b.value}")
        elif b.kind == objective and baseline.get(objective):
            ax.axvline(b.value / baseline[objective], ls="--", c="C2", label=f"budget {b.text}")
    ax.set_xlabel(f"{objective} of pruned model / unpruned model")
    ax.set_ylabel("validation accuracy after finetune")
    ax.set_title(f"{baseline.get('model', '')} on {baseline.get('dataset', '')}: accuracy vs {objective}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


@dataclass
class Run:
    """A finished or interrupted run, read back: tables, config, baseline, policies, model."""

    path: Path
    config: SearchConfig
    baseline: dict
    trials: pd.DataFrame
    pareto: pd.DataFrame

    def policy(self, trial: int) -> Policy:
        p = self.path / "policies" / f"{int(trial)}.json"
        if not p.is_file():
            raise RunError(f"Run {self.path.name!r} has no policy for trial {trial}; trials with policies: "
                           f"{', '.join(sorted((q.stem for q in (self.path / 'policies').glob('*.json')), key=int)[:10])}.")
        return Policy.load(p)

    def model(self):
        """The unpruned baseline model with its weights (CPU, eval mode)."""
        from .models import create_model, load_checkpoint

        shape = self.baseline["input_shape"]
        m = create_model(self.config.model, num_classes=self.baseline["num_classes"], in_channels=shape[0])
        load_checkpoint(m, self.path / "baseline.pt")
        return m.eval()

    def example_input(self, batch: int = 1):
        import torch

        return torch.zeros(batch, *self.baseline["input_shape"])

    def best(self) -> pd.Series | None:
        return best_trial(self.pareto)

    @property
    def budgets(self) -> list[Budget]:
        return self.config.budgets()


def load_run(path: str | Path) -> Run:
    """Read a run folder written by ``autoprune search``."""
    d = RunDir(path)
    if not d.path.is_dir():
        raise RunError(f"Run folder {str(path)!r} does not exist; give a folder under results/.")
    raw = d.read_config()
    config = SearchConfig.from_dict(raw.get("search", {}))
    baseline_path = d.path / "baseline.json"
    baseline = json.loads(baseline_path.read_text()) if baseline_path.is_file() else {}
    trials = d.read_trials()
    pareto = pd.read_csv(d.path / "pareto.csv") if (d.path / "pareto.csv").is_file() \
        else pareto_front(trials, config.objective)
    return Run(d.path, config, baseline, trials, pareto)
