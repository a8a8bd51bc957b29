"""A pruning policy: one sparsity per prunable group of a named model.

Policies name groups by the ``named_modules()`` path of their root layer and hold no module
objects, so they cross process boundaries and round-trip through JSON.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .atomic import write_text
from .criteria import IMPORTANCES
from .errors import ConfigError

HEADS = ":heads"  # an attention layer's heads group is named "<layer path>:heads" (attention.py)

__all__ = ["Policy", "kept_channels"]


@dataclass(frozen=True)
class Policy:
    """Group name -> sparsity (share of channels removed, 0 <= s < 1) for one model.

    ``channels`` records the unpruned channel count of each group so the kept counts can be read
    without the model. Sparsities are stored unrounded: JSON keeps floats exactly, and rounding could
    flip a channel count at a rounding edge and break a budget the policy was fitted to.

    ``indices`` records, per group, which channels (positions in the unpruned model) a pruning kept.
    A policy that carries them is applied by keeping exactly those channels, whatever the criterion,
    so a searched policy rebuilds the trial's own model without the data its criterion read.

    Example:
        >>> p = Policy("resnet20", {"layer1.0.conv1": 0.5}, {"layer1.0.conv1": 16})
        >>> p.kept()["layer1.0.conv1"]
        8
    """

    model: str
    sparsity: Mapping[str, float]
    channels: Mapping[str, int] = field(default_factory=dict)
    round_to: int = 1  # kept channels are multiples of this (8 suits GPU kernels); fit and apply agree
    importance: str | None = None  # which channels go first (l1, bn_scale, ...); None: the caller's choice
    indices: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # kept channels, once pruned

    def __post_init__(self) -> None:
        clean = {}
        for name, s in self.sparsity.items():
            s = float(s)
            if not math.isfinite(s) or not 0.0 <= s < 1.0:
                raise ConfigError(f"Sparsity of group {name!r} must lie in [0, 1), but got {s!r}.")
            clean[str(name)] = s
        object.__setattr__(self, "sparsity", dict(sorted(clean.items())))
        object.__setattr__(self, "channels", {str(k): int(v) for k, v in sorted(self.channels.items())})
        if int(self.round_to) != self.round_to or self.round_to < 1:
            raise ConfigError(f"round_to must be a whole number >= 1, but got {self.round_to!r}.")
        object.__setattr__(self, "round_to", int(self.round_to))
        if self.importance is not None and self.importance not in IMPORTANCES:
            raise ConfigError(f"Unknown importance {self.importance!r}; choose one of {', '.join(IMPORTANCES)}.")
        missing = set(self.channels) and set(self.sparsity) - set(self.channels)
        if missing:
            raise ConfigError(f"Policy names groups without channel counts: {sorted(missing)[:5]}.")
        indices = {}
        for name, idx in sorted(self.indices.items()):
            idx = tuple(sorted(int(i) for i in idx))
            n = self.channels.get(name)
            if name not in self.sparsity or not idx or len(set(idx)) != len(idx) or idx[0] < 0 \
                    or (n is not None and idx[-1] >= n):
                raise ConfigError(f"Kept channel indices of group {name!r} must be distinct positions in "
                                  f"[0, {n}) of a group of the policy, but got {list(idx)[:8]}.")
            indices[str(name)] = idx
        object.__setattr__(self, "indices", indices)

    def __hash__(self) -> int:
        return hash((self.model, tuple(self.sparsity.items()), self.importance))

    def kept(self) -> dict[str, int]:
        """Channels kept per group, rounded to a multiple of ``round_to`` (at least one multiple); an
        attention layer's heads (a group named ``<layer>:heads``) are whole units, never rounded."""
        return {name: kept_channels(self.channels[name], s, 1 if name.endswith(HEADS) else self.round_to)
                for name, s in self.sparsity.items()}

    def mean_sparsity(self) -> float:
        return sum(self.sparsity.values()) / max(1, len(self.sparsity))

    def to_dict(self) -> dict:
        d = {"model": self.model, "sparsity": dict(self.sparsity), "channels": dict(self.channels),
             "round_to": self.round_to}
        if self.importance is not None:
            d["importance"] = self.importance
        if self.indices:
            d["indices"] = {g: list(idx) for g, idx in self.indices.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Policy":
        try:
            return cls(str(d["model"]), dict(d["sparsity"]), dict(d.get("channels", {})), int(d.get("round_to", 1)),
                       d.get("importance"), dict(d.get("indices", {})))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"Not a policy: missing or bad key {e}; expected model, sparsity, channels.") from None

    @classmethod
    def from_json(cls, text: str) -> "Policy":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"Policy is not valid JSON: {e}.") from None

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Policy":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Policy file {str(path)!r} does not exist.")
        return cls.from_json(path.read_text())


def kept_channels(channels: int, sparsity: float, round_to: int = 1) -> int:
    """Channels kept when removing ``sparsity`` of ``channels``, rounded to a multiple of ``round_to``."""
    keep = channels - int(round(sparsity * channels))
    if round_to > 1:
        keep = max(round_to, int(math.ceil(keep / round_to) * round_to))  # at least one multiple
    return max(1, min(channels, keep))
