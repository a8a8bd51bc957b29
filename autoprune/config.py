"""The one configuration of a search: a frozen, validated :class:`SearchConfig`.

Its fields map one-to-one to ``autoprune search`` flags (``budget_flops`` is ``--budget-flops``).
Everything a flag's text stands for is resolved once, when the config is made: the budgets are
parsed, the criteria listed, and the search space loaded. A run stores the resolved config in its
``config.yaml``; a resumed run reads that copy back (never the space's YAML file again), and only
the fields in :data:`RESUMABLE` may differ from it.

Example:
    >>> cfg = SearchConfig(model="resnet56", budget_flops="50%", trials=100)
    >>> cfg.budgets
    (Budget(kind='flops', value=0.5, relative=True, text='50%'),)
    >>> cfg.space.high
    0.9
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .budget import Budget
from .criteria import parse_importances
from .errors import ConfigError
from .space import SearchSpace, load_space

__all__ = ["SearchConfig", "SAMPLERS", "DEVICES", "RESUMABLE", "FRONT_FROM", "UNIFORM_SIZES", "resume_config"]

SAMPLERS = ("tpe", "nsga2", "random")
LATENCY_BACKENDS = ("torch", "onnxruntime")
# Without --front-from the front spans [FRONT_FROM x budget, budget]: at 50% FLOPs, 12.5% to 50%. On
# the demo (24 trials), a floor at half the budget gave a front of 4 points, one at a quarter gave 7
# spread over the whole range: validation accuracy must differ across sizes for points to stand apart.
FRONT_FROM = 0.25
CONFIRM_FACTOR = 5  # --confirm's finetune without --confirm-epochs: this many times the longest rung's
UNIFORM_SIZES = 3  # sizes the uniform policy is measured at: the floor, the budget, and evenly between
DEVICES = ("auto", "cpu", "cuda")
# What a resumed run may change: how much more to run and where, never what is searched or how a
# candidate is scored (those would make the rows before and after the resume incomparable). Moving
# the trials between the CPU and a GPU is allowed (policies record their channel rounding), except
# under a latency budget, whose measurements belong to one device.
RESUMABLE = ("trials", "concurrency", "cpus_per_trial", "gpus_per_trial", "device", "address", "dashboard",
             "trial_timeout", "workers")
# Which run: the folder, not a setting of the search.
_RUN_FOLDER = ("name", "results_dir")


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs; fields map one-to-one to ``autoprune search`` flags.

    ``space`` is the resolved search space: loaded from ``search_space`` when not given, and kept
    in the run's config.yaml so a resume reads the space the run started with.
    """

    model: str = "resnet20"
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    checkpoint: str | None = None
    budget_flops: str | None = None
    budget_params: str | None = None
    budget_latency: str | None = None
    # Which budget's measure the front, the pick's size and each trial's target size use: flops,
    # params or latency, one of the budgets given; None: the first given of those (``size_measure``).
    # The other budgets stay hard limits.
    objective: str | None = None
    front_from: str | None = None  # the smallest size searched, like a budget; default FRONT_FROM x the budget
    trials: int = 24
    finetune_epochs: float = 2.0
    finetune_lr: float = 0.01
    distill: float = 0.0  # weight of distillation from the unpruned model in trial finetunes; 0 = off
    rungs: str | None = None  # finetune epochs of promotion rungs after the trials' own, e.g. "0.5" or "0.3,1"
    reduction: int = 3  # a rung keeps the best 1/reduction of the candidates below it (and the uniform curve)
    promote_criteria: bool = False  # rungs also promote the uniform policy at the budget with every criterion
    confirm: int = 0  # rerun this many best candidates and the uniform policy at the budget before naming best
    confirm_epochs: float | None = None  # their finetune; None: CONFIRM_FACTOR x the longest rung's
    sensitivity: bool = False  # also warm-start from each group's pruning sensitivity (measured in the driver)
    depth_starts: bool = True  # also warm-start at the budget from shapes graded by depth (DEPTH_STARTS)
    round_to: int | None = None  # kept channels per group in multiples of this; None: costs.default_round_to
    batch_size: int = 64
    bn_batches: int = 10
    importance: str = "auto"  # a criterion, a comma-separated list to search over, or auto
    fill_budget: bool = True
    concurrency: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    device: str = "auto"
    sampler: str = "tpe"
    search_space: str = "default"
    seed: int = 0  # the search's randomness: sampler, pruning, finetune order
    split_seed: int = 0  # which training images form the validation split (and the cached baseline)
    val_fraction: float = 0.1
    image_size: int | None = None
    baseline_epochs: int = 15
    latency_batch: int = 1
    latency_backend: str = "torch"  # torch (eager, on the trial device) or onnxruntime (CPU, exported)
    latency_threads: int | None = None  # intra-op threads of latency timing; None: torch's, or 1 for onnxruntime
    latency_model: bool = True  # fit latency budgets with a per-layer latency table (latency_model.py)
    trial_timeout: float | None = None  # seconds: a trial still running then is recorded as failed
    workers: int | None = None  # decoding workers of disk-backed data per trial; None: the trial's CPUs
    results_dir: str = "results"
    name: str | None = None
    address: str | None = None
    dashboard: bool = False
    space: SearchSpace | None = None

    def __post_init__(self) -> None:
        rules = [
            ("trials", _whole(self.trials) and self.trials >= 1, "a whole number >= 1"),
            ("finetune_epochs", _finite(self.finetune_epochs) and self.finetune_epochs >= 0, ">= 0"),
            ("finetune_lr", _finite(self.finetune_lr) and self.finetune_lr > 0, "> 0"),
            ("distill", _finite(self.distill) and 0 <= self.distill <= 1, "a weight in [0, 1] (0 = off)"),
            ("batch_size", _whole(self.batch_size) and self.batch_size >= 1, "a whole number >= 1"),
            ("bn_batches", _whole(self.bn_batches) and self.bn_batches >= 0, "a whole number >= 0"),
            ("concurrency", _whole(self.concurrency) and self.concurrency >= 1, "a whole number >= 1"),
            ("cpus_per_trial", _finite(self.cpus_per_trial) and self.cpus_per_trial > 0, "> 0"),
            ("gpus_per_trial", _finite(self.gpus_per_trial) and self.gpus_per_trial >= 0, ">= 0 (e.g. 0.25)"),
            ("val_fraction", _finite(self.val_fraction) and 0 < self.val_fraction < 1, "in (0, 1)"),
            ("baseline_epochs", _whole(self.baseline_epochs) and self.baseline_epochs >= 1, "a whole number >= 1"),
            ("latency_batch", _whole(self.latency_batch) and self.latency_batch >= 1, "a whole number >= 1"),
            ("reduction", _whole(self.reduction) and self.reduction >= 2, "a whole number >= 2"),
            ("confirm", _whole(self.confirm) and self.confirm >= 0, "a whole number >= 0 (0 = off)"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise ConfigError(f"--{name.replace('_', '-')} must be {rule}, but got {getattr(self, name)!r}.")
        for name, value, choices in (("sampler", self.sampler, SAMPLERS), ("device", self.device, DEVICES),
                                     ("latency_backend", self.latency_backend, LATENCY_BACKENDS)):
            if value not in choices:
                raise ConfigError(f"Unknown --{name.replace('_', '-')} {value!r}; choose one of {', '.join(choices)}.")
        if self.gpus_per_trial > 0 and self.device == "cpu":
            raise ConfigError(f"--gpus-per-trial {self.gpus_per_trial} needs --device auto or cuda, not cpu.")
        if self.device == "cuda" and self.gpus_per_trial == 0:
            # Ray hides the GPUs from a trial that asks for none: every trial would fail.
            raise ConfigError("--device cuda needs --gpus-per-trial (1 for a GPU per trial, 0.25 to share one "
                              "between four), but got 0.")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 0):
            raise ConfigError(f"--workers must be a whole number >= 0, but got {self.workers!r}.")
        if self.trial_timeout is not None and (isinstance(self.trial_timeout, bool)
                                               or not isinstance(self.trial_timeout, (int, float))
                                               or not 0 < self.trial_timeout < float("inf")):
            raise ConfigError(f"--trial-timeout must be a number of seconds > 0, but got {self.trial_timeout!r}.")
        if self.latency_threads is not None and (not _whole(self.latency_threads) or self.latency_threads < 1):
            raise ConfigError(f"--latency-threads must be a whole number >= 1, but got {self.latency_threads!r}.")
        if self.latency_backend == "onnxruntime":
            import importlib.util

            if not all(importlib.util.find_spec(p) for p in ("onnx", "onnxruntime")):
                raise ConfigError("--latency-backend onnxruntime needs the onnx and onnxruntime packages: "
                                  "pip install onnx onnxruntime (or pip install 'autoprune[onnx]').")
        if self.round_to is not None and (not _whole(self.round_to) or not 1 <= self.round_to <= 256):
            raise ConfigError(f"--round-to must be a whole number in [1, 256] (8 suits GPU and many CPU kernels), "
                              f"but got {self.round_to!r}.")
        if self.image_size is not None and (not _whole(self.image_size) or self.image_size < 8):
            raise ConfigError(f"--image-size must be a whole number >= 8, but got {self.image_size!r}.")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"--name must be a plain folder name, but got {self.name!r}.")
        # Resolved once, here, so that a bad budget, criterion or space fails before any work.
        texts = {"flops": self.budget_flops, "params": self.budget_params, "latency": self.budget_latency}
        budgets = tuple(Budget.parse(kind, text) for kind, text in texts.items() if text is not None)
        if self.objective is not None:
            given = [b.kind for b in budgets]
            if self.objective not in texts:
                raise ConfigError(f"--objective must be one of {', '.join(texts)}, but got {self.objective!r}.")
            if self.objective not in given:
                raise ConfigError(f"--objective {self.objective} needs a budget on it: give --budget-{self.objective} "
                                  f"(e.g. 60%), or an --objective among the budgets given ({', '.join(given) or 'none'}).")
            budgets = tuple(sorted(budgets, key=lambda b: b.kind != self.objective))  # stable: the objective first
        object.__setattr__(self, "_budgets", budgets)
        object.__setattr__(self, "_importances", parse_importances(self.importance))
        object.__setattr__(self, "_rungs", _parse_rungs(self.rungs, self.finetune_epochs))
        if self.confirm_epochs is not None and not self.confirm:
            raise ConfigError(f"--confirm-epochs {self.confirm_epochs!r} needs --confirm K (how many candidates to "
                              "confirm), e.g. --confirm 3.")
        if self.confirm_epochs is not None and not (
                _finite(self.confirm_epochs) and self.confirm_epochs > self.rung_epochs[-1]):
            raise ConfigError(f"--confirm-epochs must be more than the longest finetune of the search "
                              f"({self.rung_epochs[-1]:g} epochs), but got {self.confirm_epochs!r}.")
        if self.confirm and self.confirm_at <= 0:
            raise ConfigError("--confirm needs a finetune to confirm with: give --confirm-epochs (e.g. 1), "
                              "since --finetune-epochs is 0.")
        floor = None
        if self.front_from is not None:
            floor = Budget.parse(self.size_measure, self.front_from)
            first = self.budgets[0] if self.budgets else None
            if first is not None and first.relative and floor.relative and floor.value >= first.value:
                raise ConfigError(f"--front-from {self.front_from!r} must be below the budget "
                                  f"{first.text or first.value!r}; give a smaller share, such as "
                                  f"{first.value * FRONT_FROM * 100:g}%.")
        object.__setattr__(self, "_floor", floor)
        if self.space is None:
            object.__setattr__(self, "space", load_space(self.search_space))
        elif isinstance(self.space, Mapping):
            object.__setattr__(self, "space", SearchSpace.from_dict(self.space))
        if self.space.centre == "uniform" and not self.fill_budget:
            # Its proposals are shapes around the uniform policy, meaningful only once scaled to their size.
            raise ConfigError(f"--no-fill-budget cannot be used with search space {self.space.name!r} "
                              "(centre: uniform): its proposals are shapes that must be scaled to their target size.")

    @property
    def budgets(self) -> tuple[Budget, ...]:
        """The parsed budgets: the objective's first (``--objective``), the others in the order flops,
        params, latency."""
        return self._budgets

    @property
    def importances(self) -> tuple[str, ...]:
        """The criteria the search chooses among (one: no choice); ``auto`` is ``AUTO_IMPORTANCES``."""
        return self._importances

    @property
    def loader_workers(self) -> int:
        """Decoding worker processes of a loader over a disk-backed dataset (``--workers``; default one
        per CPU a trial has). In-memory data is sliced where it lives and uses none."""
        return int(self.workers) if self.workers is not None else max(0, int(self.cpus_per_trial))

    @property
    def rung_epochs(self) -> tuple[float, ...]:
        """Finetune epochs of each rung: the trials' own (``finetune_epochs``), then each of ``rungs``."""
        return (float(self.finetune_epochs), *self._rungs)

    @property
    def confirm_at(self) -> float:
        """The confirmation finetune's epochs (``--confirm-epochs``, else CONFIRM_FACTOR x the longest rung's)."""
        if self.confirm_epochs is not None:
            return float(self.confirm_epochs)
        return CONFIRM_FACTOR * self.rung_epochs[-1]

    @property
    def size_measure(self) -> str:
        """The size measure the search minimises: the objective's (by default the first budget's),
        FLOPs if there is no budget."""
        return self.budgets[0].kind if self.budgets else "flops"

    def size_range(self, unpruned: float) -> tuple[float, float]:
        """(floor, budget) of the size measure as shares of the unpruned model's ``unpruned`` figure.

        Every trial's target size lies in this range; the budget is that of the first budget.
        """
        if not self.budgets:
            raise ConfigError("Give at least one budget: --budget-flops, --budget-params or --budget-latency "
                              "(e.g. 50%).")
        top = self.budgets[0].ratio(unpruned)
        floor = self._floor.ratio(unpruned) if self._floor is not None else FRONT_FROM * top
        if not 0 < floor < top:
            raise ConfigError(f"--front-from {self.front_from!r} must be below the budget "
                              f"{self.budgets[0].text!r} ({floor:.3g} of the model, against {top:.3g}).")
        return floor, top

    @property
    def trial_device(self) -> str:
        """Where trials run, and so where latency is measured: a GPU share when asked for, else the CPU."""
        return "cuda" if self.gpus_per_trial > 0 else "cpu"

    def budget(self, kind: str) -> Budget | None:
        """The budget on ``kind`` (flops, params, latency), if there is one."""
        return next((b for b in self.budgets if b.kind == kind), None)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["space"] = self.space.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"Unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}.")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "SearchConfig":
        if "search_space" in changes and "space" not in changes:
            changes["space"] = None  # re-resolve the new space
        return dataclasses.replace(self, **changes)


def _parse_rungs(text: str | None, first: float) -> tuple[float, ...]:
    if text is None or str(text).strip() == "":
        return ()
    try:
        rungs = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        rungs = ()
    epochs = (float(first), *rungs)
    if not rungs or not all(math.isfinite(e) for e in rungs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ConfigError(f"--rungs must be finetune epochs rising above --finetune-epochs {first:g}, "
                          f"comma-separated (e.g. {first * 5:g} or {first * 3:g},{first * 10:g}), but got {text!r}.")
    return rungs


def resume_config(saved: SearchConfig, given: Mapping[str, Any]) -> SearchConfig:
    """The config of a resumed run: ``saved`` with the changes in ``given`` that a resume allows.

    ``given`` holds the settings the user gave again (flags, a --config file). Those in
    :data:`RESUMABLE` replace the saved values; any other that differs from the saved run's value
    is refused, since the rows already written were searched and scored with the saved one.
    """
    changes: dict[str, Any] = {}
    for key, value in given.items():
        if key in _RUN_FOLDER:
            changes[key] = value
        elif key in RESUMABLE:
            changes[key] = value
        elif not _same(saved, key, value):
            allowed = ", ".join(f"--{k.replace('_', '-')}" for k in RESUMABLE)
            raise ConfigError(
                f"--{key.replace('_', '-')} cannot change on --resume: the run has {_shown(saved, key)!r}, "
                f"but got {value!r}; a resume may change only {allowed}."
            )
    resumed = saved.replace(**changes) if changes else saved
    if saved.budget("latency") is not None and resumed.trial_device != saved.trial_device:
        raise ConfigError(f"--gpus-per-trial {resumed.gpus_per_trial:g} would move the trials from the "
                          f"{saved.trial_device} to the {resumed.trial_device} on --resume, but the run's latency "
                          "budget was measured on its own device; resume on the same device.")
    return resumed


def _same(saved: SearchConfig, key: str, value: Any) -> bool:
    current = getattr(saved, key, None)
    if key.startswith("budget_") and value is not None and current is not None:
        kind = key.removeprefix("budget_")
        a, b = Budget.parse(kind, value), Budget.parse(kind, current)
        return (a.value, a.relative) == (b.value, b.relative)
    if key == "importance":
        return parse_importances(value) == saved.importances
    if key == "space":
        given = value if isinstance(value, SearchSpace) else SearchSpace.from_dict(value)
        return given == saved.space
    if key == "search_space":
        # The same name or file as the run's: the run keeps the copy of the space it stored.
        return str(value) == str(current)
    return value == current


def _shown(saved: SearchConfig, key: str) -> Any:
    value = getattr(saved, key, None)
    return value.to_dict() if isinstance(value, SearchSpace) else value


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)

