"""A per-layer latency table: a pruned model's latency predicted in microseconds, not measured in seconds.

As NetAdapt and HALP do, every convolution and linear layer whose width a group sets is timed alone,
once per bucket of its kept input and output channels (a grid of kept shares, each count a multiple
of ``round_to``), in the backend, thread count and batch the search measures with. A candidate's
latency is the sum of its layers' times, read off the table by interpolating between buckets, put
on the scale of the whole network by a line fitted to a few real measurements (the unpruned model
and the uniform policy at several sizes): layers timed alone miss what the network adds around
them (pooling, additions, the runtime's fixed cost per call), which that line absorbs.

Tables are cached on the machine that measured them (``$AUTOPRUNE_CACHE`` or ``~/.cache/autoprune``),
keyed by the layers' shapes, the backend, threads, batch, grid and the CPU, so a search on another
node, or another CPU, measures its own. The fit uses the prediction to choose a candidate's size;
the budget check stays a measurement of the fitted model.

Example:
    >>> lm = LatencyModel.build(model, x, backend="onnxruntime", threads=1, round_to=8)
    >>> lm.predict(policy.sparsity)          # milliseconds
    >>> lm.predict({}) / lm.base_ms          # the unpruned model: about 1
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .atomic import atomic_path
from .costs import is_depthwise
from .errors import ConfigError

__all__ = ["LatencyModel", "GRID", "cache_dir"]

# Kept shares each variable dimension is timed at (then rounded to a multiple of round_to): denser
# where small models are, since budgets of 25-50% of the latency put most layers below half width.
GRID = (0.0625, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)  # one varying dimension
GRID_2D = (0.125, 0.25, 0.5, 0.75, 1.0)  # each of two (the table grows as the square)
TABLE_VERSION = 2  # 2: the line fitted on latency ratios measured against the unpruned model
_CALIBRATION = (0.2, 0.4, 0.6, 0.8)  # uniform sparsities measured whole, with the unpruned model, for the line
_RANDOM_CALIBRATION = 16  # and this many seeded random shapes (sparsities uniform in [0, 0.8])


def cache_dir() -> Path:
    """Where latency tables are kept: ``$AUTOPRUNE_CACHE/latency`` or ``~/.cache/autoprune/latency``."""
    root = os.environ.get("AUTOPRUNE_CACHE") or Path.home() / ".cache" / "autoprune"
    return Path(root) / "latency"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _counts(dim: int, round_to: int, multiple: int = 1, grid: Sequence[float] = GRID) -> list[int]:
    """The bucket counts of a dimension of ``dim`` channels: ``grid`` shares, multiples of ``round_to``."""
    step = math.lcm(round_to, multiple)
    out = {dim}
    for share in grid:
        c = max(step, int(round(share * dim / step)) * step)
        out.add(min(dim, c))
    return sorted(out)


def _interp(grid: Sequence[int], value: float) -> tuple[int, int, float]:
    """Indices of the grid points around ``value`` and the weight of the upper one (clamped)."""
    if value <= grid[0]:
        return 0, 0, 0.0
    if value >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    j = bisect_left(grid, value)
    i = j - 1
    return i, j, (value - grid[i]) / (grid[j] - grid[i])


@dataclass
class _Layer:
    """One timed layer: its grids of output and input counts (one point where the width is fixed)
    and the milliseconds at every (out, in) pair of them."""

    name: str
    outs: list[int]
    ins: list[int]
    ms: list[list[float]] = field(default_factory=list)  # ms[i_out][i_in]
    tied: bool = False  # depthwise: one kept share sets both sides

    def at(self, out: float, inp: float) -> float:
        a0, a1, wa = _interp(self.outs, out)
        b0, b1, wb = _interp(self.ins, inp)
        m = self.ms
        return ((1 - wa) * ((1 - wb) * m[a0][b0] + wb * m[a0][b1])
                + wa * ((1 - wb) * m[a1][b0] + wb * m[a1][b1]))


class LatencyModel:
    """Latency of a pruned copy of one model, predicted from per-layer timings (see the module doc)."""

    def __init__(self, cm, layers: Sequence[_Layer], *, scale: float, offset: float, base_ms: float, key: str,
                 settings: Mapping, per_mparam: float = 0.0) -> None:
        self.cm = cm
        self.layers = list(layers)
        self.scale, self.per_mparam, self.offset, self.base_ms = scale, per_mparam, offset, base_ms
        self.key = key
        self.settings = dict(settings)

    # ---------------------------------------------------------------------------------- prediction

    def layer_sum(self, sparsity: Mapping[str, float], round_to: int | None = None) -> float:
        """The sum of the table's per-layer milliseconds for ``sparsity`` (group -> share removed)."""
        dims = self.cm.layer_dims(self.cm.pruned_channels(sparsity, round_to or self.settings["round_to"]))
        return self._sum(dims)

    def _sum(self, dims: Mapping[str, tuple[float, float]]) -> float:
        total = 0.0
        for layer in self.layers:
            out, inp = dims[layer.name]
            total += layer.at(out, out if layer.tied else inp)
        return total

    def predict(self, sparsity: Mapping[str, float], round_to: int | None = None) -> float:
        """Predicted milliseconds of the model pruned by ``sparsity`` (the unpruned model for ``{}``)."""
        round_to = round_to or self.settings["round_to"]
        params = self.cm.cost(sparsity, round_to)["params"] / 1e6 if self.per_mparam else 0.0
        return self.scale * self.layer_sum(sparsity, round_to) + self.per_mparam * params + self.offset

    def rescale(self, base_ms: float) -> None:
        """Put the predictions on the scale of the unpruned model measured now (``base_ms``)."""
        if base_ms > 0 and self.base_ms > 0:
            factor = base_ms / self.base_ms
            self.scale, self.per_mparam, self.offset = (self.scale * factor, self.per_mparam * factor,
                                                        self.offset * factor)
            self.base_ms = base_ms

    def to_dict(self) -> dict:
        """The table and its line as plain data (JSON), for workers and the run folder."""
        return {"key": self.key, "settings": self.settings, "scale": self.scale, "per_mparam": self.per_mparam,
                "offset": self.offset, "base_ms": self.base_ms, "layers": [vars(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, cm, d: Mapping) -> "LatencyModel":
        """A latency model over the cost model ``cm`` of the same model, from :meth:`to_dict`."""
        return cls(cm, [_Layer(**layer) for layer in d["layers"]], scale=d["scale"], offset=d["offset"],
                   base_ms=d["base_ms"], key=d.get("key", ""), settings=d["settings"],
                   per_mparam=d.get("per_mparam", 0.0))

    # ------------------------------------------------------------------------------------ building

    @classmethod
    def build(cls, model: nn.Module, x: torch.Tensor, *, backend: str = "torch", threads: int | None = None,
              batch: int = 1, device: str | torch.device = "cpu", round_to: int = 1, exclude: Sequence[str] = (),
              groups: Sequence[str] | None = None, cache: bool = True, log=None,
              base_ms: float | None = None) -> "LatencyModel":
        """Time the layers (or read their table from the cache), then fit the line to the whole model.

        ``base_ms``, the unpruned model measured just now, puts a table read from the cache on today's
        scale (a shared machine drifts between the day a table was timed and the day it is used)."""
        from .latency import check_backend
        from .prune import cost_model

        check_backend(backend)
        if str(device) != "cpu" and backend == "onnxruntime":
            raise ConfigError(f"The onnxruntime latency backend runs on the CPU, but got device {str(device)!r}.")
        cm = cost_model(model, x, exclude)
        shapes = _layer_inputs(model, x, cm)
        settings = {"backend": backend, "threads": threads, "batch": batch, "device": str(device),
                    "round_to": int(round_to), "grid": [list(GRID), list(GRID_2D)], "version": TABLE_VERSION, "cpu": _cpu_name(),
                    "torch": torch.__version__}
        signature = [(n, list(s), repr(m)) for n, (m, s) in sorted(shapes.items())]
        # the line is fitted on shapes of these groups: other groups (or exclusions) are another table
        calibrated = [sorted(groups) if groups is not None else None, sorted(exclude)]
        key = hashlib.sha1(json.dumps([signature, settings, calibrated], sort_keys=True,
                                      default=str).encode()).hexdigest()[:16]
        path = cache_dir() / f"{key}.json"
        if cache and path.is_file():
            try:
                lm = cls.from_dict(cm, {**json.loads(path.read_text()), "key": key, "settings": settings})
                if base_ms:
                    lm.rescale(base_ms)
                return lm
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged cache entry is measured again
        if log is not None:
            log(f"latency model: timing {len(shapes)} layers in {backend} ({threads or 'default'} threads, batch "
                f"{batch}); cached in {path}")
        layers = [_time_layer(name, m, shape, cm, round_to, backend=backend, threads=threads, batch=batch,
                              device=device) for name, (m, shape) in shapes.items()]
        lm = cls(cm, layers, scale=1.0, offset=0.0, base_ms=0.0, key=key, settings=settings)
        lm._calibrate(model, x, groups, exclude=exclude)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Path(tmp).write_text(json.dumps(lm.to_dict()))
        return lm

    def _features(self, sparsity: Mapping[str, float]) -> list[float]:
        """What the line is fitted on: the table's sum, the kept parameters (millions: weights that no
        longer fit in the caches are read from memory on every call, which layers timed alone miss), 1."""
        return [self.layer_sum(sparsity), self.cm.cost(sparsity, self.settings["round_to"])["params"] / 1e6, 1.0]

    def _calibrate(self, model: nn.Module, x: torch.Tensor, groups: Sequence[str] | None, *, exclude) -> None:
        """Least squares of the measured milliseconds of whole networks (the unpruned model, the
        uniform policy at several sparsities and seeded random shapes) on :meth:`_features`.

        Each shape is timed against the unpruned model, interleaved, and enters the fit as its ratio
        times the unpruned model's median over all of them: a shared machine that slows down or
        speeds up while the shapes are timed moves both sides of each ratio, not the line."""
        import random
        import statistics

        import numpy as np

        from .latency import relative_latency
        from .policy import Policy
        from .probe import prunable_groups
        from .prune import apply_policy

        s = self.settings
        if groups is None:
            groups = [g.name for g in prunable_groups(model, x, exclude)]
        rng = random.Random(0)
        shapes = [{g: u for g in groups} for u in (0.0, *_CALIBRATION)]
        shapes += [{g: rng.uniform(0.0, 0.8) for g in groups} for _ in range(_RANDOM_CALIBRATION)]
        rows, ratios, bases = [], [], []
        for sparsity in shapes:
            policy = Policy("calibration", sparsity, {g: self.cm.channels[g] for g in groups}, s["round_to"])
            net = model if not any(sparsity.values()) else apply_policy(model, policy, x, exclude=exclude)
            ms, base = relative_latency(net, model, x, device=s["device"], batch_size=s["batch"],
                                        backend=s["backend"], threads=s["threads"])
            rows.append(self._features(sparsity))
            ratios.append(ms / base)
            bases.append(base)
        self.base_ms = statistics.median(bases)
        a, y = np.array(rows), self.base_ms * np.array(ratios)
        use = [0, 1, 2]
        while True:  # drop a feature whose weight comes out negative (noise on a small sample)
            coef = np.linalg.lstsq(a[:, use], y, rcond=None)[0]
            if (coef[:-1] >= 0).all() or len(use) == 2:
                break
            use.remove(use[int(np.argmin(coef[:-1]))])
        weights = dict(zip(use, coef.tolist()))
        self.scale, self.per_mparam, self.offset = (weights.get(0, 0.0), weights.get(1, 0.0), weights.get(2, 0.0))
        if self.scale <= 0 and self.per_mparam <= 0:  # nothing fits: a pure ratio to the table
            self.scale, self.per_mparam, self.offset = float(y.mean() / a[:, 0].mean()), 0.0, 0.0


def _layer_inputs(model: nn.Module, x: torch.Tensor, cm) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """The conv and linear layers some group sets a width of, with the shape of their input."""
    names = set(cm.varying_layers())
    shapes: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
    hooks = []

    def record(name: str):
        def hook(mod, inp, out) -> None:  # returns None: the output is left as it is
            shapes.setdefault(name, (mod, tuple(inp[0].shape[1:])))
        return hook

    for name, m in model.named_modules():
        if name in names and isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(record(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def _standalone(m: nn.Module, out: int, inp: int) -> nn.Module:
    """A fresh layer like ``m`` with ``out`` output and ``inp`` input channels."""
    if isinstance(m, nn.Linear):
        return nn.Linear(inp, out, bias=m.bias is not None)
    if is_depthwise(m):
        return nn.Conv2d(out, out, m.kernel_size, m.stride, m.padding, m.dilation, out, m.bias is not None)
    return nn.Conv2d(inp, out, m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.bias is not None)


def _time_layer(name: str, m: nn.Module, shape: tuple[int, ...], cm, round_to: int, *, backend, threads, batch,
                device) -> _Layer:
    from .latency import measure_latency

    full_out, full_in = (m.out_features, m.in_features) if isinstance(m, nn.Linear) else (m.out_channels,
                                                                                           m.in_channels)
    varies_out, varies_in = cm.varies(name)
    tied = is_depthwise(m)
    group_mult = 1 if isinstance(m, nn.Linear) or tied else m.groups
    grid = GRID_2D if varies_out and varies_in and not tied else GRID
    outs = _counts(full_out, round_to, group_mult, grid) if varies_out or tied else [full_out]
    ins = [full_in] if tied else (_counts(full_in, round_to, group_mult, grid) if varies_in else [full_in])
    layer = _Layer(name, outs, ins, tied=tied)
    for out in outs:
        row = []
        for inp in ins:
            net = _standalone(m, out, inp)
            xin = torch.zeros(1, *((*shape[:-1], inp) if isinstance(m, nn.Linear) else
                                   (out if tied else inp, *shape[1:])))
            row.append(measure_latency(net, xin, device=device, batch_size=batch, backend=backend, threads=threads,
                                       warmup=2, repeats=5))
        layer.ms.append(row)
    return layer
