"""The results directory of a run: writing it, and reading it back.

Layout (DESIGN.md section 4)::

    results/<run>/config.yaml  baseline.json  baseline.pt  trials.csv  pareto.csv  pareto.png
                  policies/<trial>.json  study/journal.log  apply-<pick>/

Every file is written atomically (``atomic.py``), so a kill never leaves half a file.
Preparing a run's folder is ``prepare.py``'s.

Example:
    >>> run = load_run("results/resnet20-digits-20261127-120000")
    >>> run.pareto[["trial", "val_acc", "flops_ratio"]]
    >>> small = apply_policy(run.model(), run.policy(3), run.example_input())
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import yaml

from .atomic import write_json, write_text
from .budget import Budget
from .config import SearchConfig
from .errors import RunError
from .convergence import hypervolume_column
from .front import best_pick, gain_vs_uniform, pareto_front, pick_trial, uniform_curve
from .front_plot import plot_front
from .policy import Policy
from .trial import TRIAL_COLUMNS, TrialResult

__all__ = ["RunDir", "Run", "load_run", "unpruned_size"]

_HELD: dict[Path, int] = {}  # run folder -> the descriptor of its writer lock, held by this process


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

    def hold(self) -> None:
        """Take the run's writer lock: one search (or resume) of a run at a time, as trials.csv has one
        writer. An ``flock`` on ``.search.lock`` in the folder (which must exist), dropped by the system
        when the process ends, so a search killed with -9 can be resumed; kept until :meth:`release`.
        Raises :class:`RunError` naming the process that holds it, this one included (a second search
        of the run on another thread). Where the filesystem has no locks (some network mounts, no
        ``fcntl``) or the folder cannot be written, the search goes on without one."""
        if self.path in _HELD:
            raise RunError(f"Run {str(self.path)!r} is being searched now by this process (pid {os.getpid()}); "
                           "wait for that search to end.")
        try:
            import fcntl
        except ImportError:
            return
        try:
            fd = os.open(self.path / ".search.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # a folder we cannot write: no writer to guard
                return
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise RunError(f"Run {str(self.path)!r} is being searched now by another process "
                           f"({'pid ' + holder if holder else 'pid unknown'}); wait for it to end, or stop it "
                           f"and add --resume again.") from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return
            raise
        _HELD[self.path] = fd
        try:  # the holder's pid, for the message of a refused second search
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            pass

    def held(self) -> bool:
        """Whether this process holds the run's writer lock."""
        return self.path in _HELD

    def release(self) -> None:
        """Give the writer lock back (a no-op if this process does not hold it); only its taker calls this."""
        fd = _HELD.pop(self.path, None)
        if fd is not None:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def read_state(self) -> dict:
        p = self.path / "state.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def write_state(self, **state: Any) -> None:
        write_json(self.path / "state.json", {**self.read_state(), **state})

    def write_config(self, config: SearchConfig, extra: Mapping[str, Any]) -> None:
        data = {"search": config.to_dict(), **extra}
        write_text(self.path / "config.yaml", yaml.safe_dump(data, sort_keys=False))

    def read_config(self) -> dict:
        p = self.path / "config.yaml"
        if not p.is_file():
            raise RunError(f"Run folder {str(self.path)!r} has no config.yaml; is it a results folder of autoprune search?")
        return yaml.safe_load(p.read_text()) or {}

    def saved_config(self) -> SearchConfig:
        """The run's resolved config, with the search space it stored (never re-read from YAML)."""
        raw = self.read_config()
        saved = dict(raw.get("search", {}))
        if "space" not in saved and "space" in raw:  # runs written before the config held its space
            saved["space"] = raw["space"]
        old = "depth_starts" not in saved  # written before issue 24 changed two defaults
        saved.setdefault("depth_starts", False)  # ... it had no depth warm starts
        config = SearchConfig.from_dict(saved)
        if old and config.round_to is None:  # ... and free channel counts on the CPU, whatever the model
            config = config.replace(round_to=8 if str(config.trial_device).startswith("cuda") else 1)
        return config

    def write_baseline(self, data: Mapping[str, Any]) -> None:
        write_json(self.path / "baseline.json", data)

    def read_trials(self) -> pd.DataFrame:
        if not self.trials_csv.is_file():
            return pd.DataFrame(columns=list(TRIAL_COLUMNS) + ["error"])
        return read_table(self.trials_csv)

    def append(self, result: TrialResult, reference: tuple[str, float] | None = None) -> None:
        """Add one trial's row (rewriting trials.csv atomically) and save its policy.

        With ``reference`` (size measure, budget as a share), the ``hypervolume`` column is brought up
        to date: the front's hypervolume after each trial, reference point (accuracy 0, the budget).
        """
        if result.policy is not None:
            result.policy.save(self.path / "policies" / f"{result.trial}.json")
        df = self.read_trials()
        row = pd.DataFrame([result.to_row()])
        df = row if df.empty else pd.concat([df[df["trial"] != result.trial], row], ignore_index=True)
        df = df.sort_values("trial", kind="stable").reset_index(drop=True)
        if reference is not None:
            df["hypervolume"] = hypervolume_column(df, *reference)
        self._write_trials(df)

    def _write_trials(self, df: pd.DataFrame) -> None:
        head = [c for c in list(TRIAL_COLUMNS) + ["error", "importance", "target_ratio", "epochs", "parent", "node",
                                                   "hypervolume"]
                if c in df.columns]
        df = df[head + sorted(c for c in df.columns if c not in head)]
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        write_text(self.trials_csv, buf.getvalue())

    def write_front(self, config: SearchConfig, baseline: Mapping[str, Any], *, write: bool = True) -> pd.DataFrame:
        """Write pareto.csv (the front, with each point's gain over the uniform curve) and pareto.png;
        with ``write=False`` only return the front."""
        trials = self.read_trials()
        objective = config.size_measure
        front = pareto_front(trials, objective)
        curve = uniform_curve(trials, objective)
        front["gain_vs_uniform"] = gain_vs_uniform(front, curve, objective)
        if not write:
            return front
        buf = io.StringIO()
        front.to_csv(buf, index=False)
        write_text(self.path / "pareto.csv", buf.getvalue())
        unpruned = unpruned_size(baseline, objective)
        floor = config.size_range(unpruned)[0] if unpruned else None
        plot_front(trials, front, self.path / "pareto.png", budgets=config.budgets, objective=objective,
                   baseline=baseline, curve=curve, floor=floor)
        return front


TEXT_COLUMNS = ("status", "origin", "error", "importance", "node", "policy")  # never read as numbers


def read_table(path: Path) -> pd.DataFrame:
    """trials.csv or pareto.csv, its text columns as text: a Ray node id of hex digits such as
    ``123456789012`` or ``4e1234567890`` would otherwise come back as a number, and differently in a
    table whose other rows hold a node id with letters."""
    return pd.read_csv(path, keep_default_na=True, dtype={c: object for c in TEXT_COLUMNS})


def number_or_none(v: Any) -> float | None:
    """A trials.csv cell as a finite float, or None (empty, NaN, text)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def near_budget_of(config: SearchConfig, baseline: Mapping[str, Any]) -> float | None:
    """The budget's share (in the size measure) when the run's trials are BatchNorm-only, else None."""
    if config.finetune_epochs > 0 or config.rungs or config.confirm:
        return None
    unpruned = unpruned_size(baseline, config.size_measure)
    return config.size_range(unpruned)[1] if unpruned else None


def unpruned_size(baseline: Mapping[str, Any], objective: str) -> float | None:
    """The unpruned model's figure in the size measure ``objective``, from baseline.json."""
    value = baseline.get("latency_ms" if objective == "latency" else objective)
    return float(value) if value else None


@dataclass
class Run:
    """A finished or interrupted run, read back: tables, config, baseline, policies, model."""

    path: Path
    config: SearchConfig
    baseline: dict
    trials: pd.DataFrame
    pareto: pd.DataFrame
    left_out: dict = field(default_factory=dict)  # groups the probe left out, with the reason

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
        """The best confirmed candidate when the run confirmed some (``--confirm``), else the front's
        highest validation accuracy within the budget."""
        return best_pick(self.trials, self.pareto, self.config.size_measure, self.near_budget)

    @property
    def near_budget(self) -> float | None:
        """For a run of BatchNorm-only trials (``finetune_epochs`` 0, no rungs), the budget's share of
        the unpruned model the pick is made near (``front.NEAR_BUDGET``); None otherwise."""
        return near_budget_of(self.config, self.baseline)

    def pick(self, at_most: float | None = None) -> pd.Series | None:
        """The front point with the highest validation accuracy at or under the size ``at_most`` (a
        share of the unpruned model, in the run's size measure); None: anywhere within the budget
        (the front's best, which is :meth:`best` unless the run confirmed candidates)."""
        return pick_trial(self.pareto, self.config.size_measure, at_most)

    def search_cost(self, train_images: int | None = None) -> dict[str, int | float]:
        """What the search processed, in images: ``train`` (finetune steps and Taylor batches, forward
        and backward), ``forward`` (BatchNorm recalibration, validation, a distillation teacher's
        passes) and ``cost = train + forward / 3`` (a forward pass costs about a third of a training
        step). Infeasible trials cost nothing (they are fitted before any training); failed ones are
        not counted. ``train_images`` is the training set's size (default: baseline.json's).

        Example:
            >>> load_run("results/run").search_cost()["cost"]
        """
        from .criteria import GRADIENT_BATCH_SIZE

        c = self.config
        n_train = train_images or self.baseline.get("train_images")
        n_val = self.baseline.get("val_images")
        if not n_train or n_val is None:
            raise RunError(f"Run {self.path.name!r} does not record the size of its "
                           + ("validation set" if n_train else "training and validation sets")
                           + " (baseline.json of searches since issue 24 does), so its search cost is unknown.")
        ok = self.trials[self.trials["status"] == "ok"]
        epochs = ok["epochs"].fillna(c.finetune_epochs) if "epochs" in ok else [c.finetune_epochs] * len(ok)
        steps = int(n_train) // c.batch_size
        finetune = sum(math.ceil(float(e) * steps) * c.batch_size for e in epochs)
        taylor = int((ok["importance"] == "taylor").sum()) * GRADIENT_BATCH_SIZE if "importance" in ok else 0
        forward = len(ok) * (c.bn_batches * c.batch_size + int(n_val)) + (finetune if c.distill > 0 else 0)
        train = finetune + taylor
        return {"train": train, "forward": forward, "cost": train + forward / 3}

    @property
    def budgets(self) -> tuple[Budget, ...]:
        return self.config.budgets


def load_run(path: str | Path) -> Run:
    """Read a run folder written by ``autoprune search``."""
    d = RunDir(path)
    if not d.path.is_dir():
        raise RunError(f"Run folder {str(path)!r} does not exist; give a folder under results/.")
    config = d.saved_config()
    baseline_path = d.path / "baseline.json"
    baseline = json.loads(baseline_path.read_text()) if baseline_path.is_file() else {}
    trials = d.read_trials()
    pareto = read_table(d.path / "pareto.csv") if (d.path / "pareto.csv").is_file() \
        else pareto_front(trials, config.size_measure)
    return Run(d.path, config, baseline, trials, pareto, dict(d.read_config().get("left_out") or {}))
