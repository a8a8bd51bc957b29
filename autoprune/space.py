"""Search-space files (``search_spaces/*.yaml``) and the Optuna sampling function.

A file sets the sparsity range of every group, an optional step, layer patterns to leave
unpruned, and per-group overrides (fnmatch patterns on group names, first match wins)::

    range: [0.0, 0.9]
    step: null              # or 0.05: sparsities on a grid
    exclude: ["conv1"]      # layers (and the groups that set their width) never pruned
    overrides:
      "layer*.0.shortcut.0": [0.0, 0.6]
    centre: none            # or uniform: search multipliers around the uniform policy (below)
    spread: 2.0

With ``centre: uniform`` a proposal is not a sparsity per group but a multiplier ``m`` on the share
of channels each group keeps, searched on a log scale in ``[1/spread, spread]``. All multipliers 1
is the uniform policy; the fit then scales every proposal to its target size, so the search refines
the uniform shape instead of drawing shapes far from it. ``range`` and ``overrides`` still bound
every group's sparsity.

Example:
    >>> space = load_space("default")
    >>> ranges = space.ranges(["conv1", "layer1.0.conv1"])
    >>> sample = space.sampler(ranges)          # define-by-run function for OptunaSearch
"""
from __future__ import annotations

import fnmatch
import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import SearchSpaceError

__all__ = ["SearchSpace", "load_space", "list_spaces", "builtin_space_text", "PARAM_PREFIX", "IMPORTANCE_PARAM",
           "TARGET_PARAM"]

# The built-in spaces ship inside the package (a wheel install must search); the top-level
# search_spaces/ folder of the repository holds identical copies as user-facing examples.
_BUILTIN = "search_spaces"
PARAM_PREFIX = "s/"  # Optuna parameter name = "s/<group>"; Ray nests it as config["s"][group]
IMPORTANCE_PARAM = "importance"  # the searched channel-importance criterion, when there is a choice
TARGET_PARAM = "target"  # the searched size, a share of the unpruned model in [floor, budget]
_KEYS = ("range", "step", "exclude", "overrides", "description", "centre", "spread")
CENTRES = ("none", "uniform")


@dataclass(frozen=True)
class SearchSpace:
    """Per-group sparsity ranges for a search."""

    name: str = "default"
    low: float = 0.0
    high: float = 0.9
    step: float | None = None
    exclude: tuple[str, ...] = ()
    overrides: tuple[tuple[str, float, float], ...] = ()
    description: str = ""
    centre: str = "none"  # "uniform": search keep multipliers around the uniform policy
    spread: float = 2.0  # with centre uniform: multipliers in [1/spread, spread]

    def __post_init__(self) -> None:
        # load_space names the file; this also guards spaces read back from a run or a --config file.
        if self.centre not in CENTRES:
            raise SearchSpaceError(f"Search space {self.name!r} key 'centre' must be one of {', '.join(CENTRES)}, "
                                   f"but got {self.centre!r}.")
        if not _number(self.spread) or not 1 < self.spread <= 10:
            raise SearchSpaceError(f"Search space {self.name!r} key 'spread' must be a number in (1, 10], "
                                   f"but got {self.spread!r}.")

    def range_of(self, group: str) -> tuple[float, float]:
        for pattern, lo, hi in self.overrides:
            if fnmatch.fnmatch(group, pattern):
                return lo, hi
        return self.low, self.high

    def ranges(self, groups: Sequence[str]) -> dict[str, tuple[float, float]]:
        return {g: self.range_of(g) for g in groups}

    @property
    def max_sparsity(self) -> float:
        """The highest sparsity any group can be given (the probe prunes every group this far)."""
        return max([self.high, *(hi for _, _, hi in self.overrides)])

    def snap(self, value: float, group: str) -> float:
        """``value`` clipped to the group's range and, with a step, rounded to the grid."""
        lo, hi = self.range_of(group)
        value = min(hi, max(lo, value))
        if self.step:
            value = lo + round((value - lo) / self.step) * self.step
            value = min(hi, max(lo, round(value, 10)))
        return value

    def param_ranges(self, groups: Sequence[str]) -> dict[str, tuple[float, float]]:
        """The searched parameter's range per group: its sparsity range, or with ``centre: uniform``
        the natural log of the keep multiplier, ``[-ln spread, ln spread]``."""
        if self.centre == "uniform":
            half = math.log(self.spread)
            return {g: (-half, half) for g in groups}
        return self.ranges(groups)

    def uniform_point(self, groups: Sequence[str]) -> dict[str, float]:
        """The parameters of the uniform shape (which the fit scales to any size)."""
        if self.centre == "uniform":
            return {g: 0.0 for g in groups}
        return {g: self.snap(0.0, g) for g in groups}

    def to_proposal(self, params: Mapping[str, float]) -> dict[str, float]:
        """Group -> sparsity of searched parameters. A log multiplier ``v`` keeps the share
        ``exp(v) / spread`` of the group's channels before the fit scales the whole shape."""
        if self.centre == "uniform":
            # Not clipped to the group's range here: clipping before the fit scales the shape would
            # flatten it (and make the all-ones point non-uniform); the fit applies the caps after.
            return {g: 1.0 - math.exp(float(v)) / self.spread for g, v in params.items()}
        return {g: float(v) for g, v in params.items()}

    def point_of(self, proposal: Mapping[str, float]) -> dict[str, float]:
        """The searched parameters of a sparsity proposal (the inverse of :meth:`to_proposal`, within
        the parameters' range): a warm start given as sparsities."""
        if self.centre == "uniform":
            half = math.log(self.spread)
            return {g: min(half, max(-half, math.log(max(1e-9, self.spread * (1.0 - float(s))))))
                    for g, s in proposal.items()}
        return {g: self.snap(float(s), g) for g, s in proposal.items()}

    def sampler(self, ranges: Mapping[str, tuple[float, float]], importances: Sequence[str] = (),
                target: tuple[float, float] | None = None) -> "Sampler":
        """A define-by-run function: a ``target`` size in ``target`` (when given), a categorical
        ``importance`` when there is more than one criterion, and one ``suggest_float`` per group
        (``ranges`` from :meth:`param_ranges`)."""
        step = self.step if self.centre == "none" else None
        return Sampler(dict(ranges), step, tuple(importances), tuple(target) if target else None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchSpace":
        """The inverse of :meth:`to_dict` (a run's config.yaml keeps its resolved space)."""
        low, high = d.get("range", (0.0, 0.9))
        return cls(d.get("name", "default"), float(low), float(high), d.get("step"), tuple(d.get("exclude", ())),
                   tuple((p, float(lo), float(hi)) for p, (lo, hi) in d.get("overrides", {}).items()),
                   d.get("description", ""), str(d.get("centre", "none")), float(d.get("spread", 2.0)))

    def to_dict(self) -> dict:
        return {"name": self.name, "range": [self.low, self.high], "step": self.step, "exclude": list(self.exclude),
                "overrides": {p: [lo, hi] for p, lo, hi in self.overrides}, "description": self.description,
                "centre": self.centre, "spread": self.spread}


@dataclass(frozen=True)
class Sampler:
    """The Optuna define-by-run space: picklable, since Ray checkpoints the searcher with it."""

    ranges: Mapping[str, tuple[float, float]]
    step: float | None = None
    importances: tuple[str, ...] = ()
    target: tuple[float, float] | None = None

    def __call__(self, trial: Any) -> None:
        if self.target is not None:
            trial.suggest_float(TARGET_PARAM, *self.target)
        if len(self.importances) > 1:
            trial.suggest_categorical(IMPORTANCE_PARAM, list(self.importances))
        for group, (lo, hi) in self.ranges.items():
            trial.suggest_float(PARAM_PREFIX + group, lo, hi, step=self.step if self.step and hi > lo else None)


def _builtin_files() -> dict[str, Any]:
    folder = importlib.resources.files("autoprune") / _BUILTIN
    return {f.name[: -len(".yaml")]: f for f in folder.iterdir() if f.name.endswith(".yaml")}


def list_spaces() -> list[str]:
    """Names of the built-in search spaces."""
    return sorted(_builtin_files())


def builtin_space_text(name: str) -> str:
    """The YAML text of a built-in space, as shipped in the package."""
    files = _builtin_files()
    if name not in files:
        raise SearchSpaceError(f"Unknown built-in search space {name!r}; choose one of {', '.join(sorted(files))}.")
    return files[name].read_text()


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A built-in space by name (``default``, ``centred``, ``cifar_resnet``, ``mobilenet``) or a YAML file."""
    path = Path(name_or_path)
    if path.is_file():
        where, stem = str(path), path.stem
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise SearchSpaceError(f"Cannot read search space {where!r}: {e}.") from None
    elif str(name_or_path) in _builtin_files():
        where, stem = f"built-in {name_or_path}", str(name_or_path)
        text = builtin_space_text(str(name_or_path))
    else:
        raise SearchSpaceError(
            f"Search space {str(name_or_path)!r} is neither a file nor a built-in space; "
            f"choose one of {', '.join(list_spaces())} or give a YAML file."
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise SearchSpaceError(f"Search space {where!r} is not valid YAML{at}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SearchSpaceError(f"Search space {where!r} must be a mapping with keys {', '.join(_KEYS)}.")
    unknown = sorted(set(map(str, data)) - set(_KEYS))
    if unknown:
        raise SearchSpaceError(f"Search space {where!r} has unknown key {unknown[0]!r}; valid keys: {', '.join(_KEYS)}.")
    low, high = _range(data.get("range", [0.0, 0.9]), where, "range")
    step = data.get("step")
    if step is not None and (not _number(step) or not 0 < step < 1):
        raise SearchSpaceError(f"Search space {where!r} key 'step' must be null or in (0, 1), but got {step!r}.")
    exclude = data.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(p, str) for p in exclude):
        raise SearchSpaceError(f"Search space {where!r} key 'exclude' must be a list of layer patterns, "
                               f"but got {exclude!r}.")
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SearchSpaceError(f"Search space {where!r} key 'overrides' must map group patterns to [low, high].")
    parsed = tuple((str(p), *_range(r, where, f"overrides.{p}")) for p, r in overrides.items())
    centre = data.get("centre", "none")
    if centre not in CENTRES:
        raise SearchSpaceError(f"Search space {where!r} key 'centre' must be one of {', '.join(CENTRES)}, "
                               f"but got {centre!r}.")
    spread = data.get("spread", 2.0)
    if not _number(spread) or not 1 < spread <= 10:
        raise SearchSpaceError(f"Search space {where!r} key 'spread' must be a number in (1, 10], but got {spread!r}.")
    return SearchSpace(stem, low, high, float(step) if step is not None else None, tuple(exclude), parsed,
                       str(data.get("description", "")), centre, float(spread))


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _range(value: Any, where: str, key: str) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value)
            and 0 <= value[0] <= value[1] < 1):
        raise SearchSpaceError(f"Search space {where!r} key {key!r} must be [low, high] with "
                               f"0 <= low <= high < 1, but got {value!r}.")
    return float(value[0]), float(value[1])
