"""The pruning engine: prunable groups, a cheap cost model, fitting to budgets, structural pruning.

This is the only module that imports Torch-Pruning. The one idea to hold: build the dependency
graph, list its groups of coupled channels, remove the least important channels of each group.

Example:
    >>> model = create_model("resnet56"); x = torch.randn(1, 3, 32, 32)
    >>> policy = uniform_policy(model, x, [Budget.parse("flops", "50%")])
    >>> small = apply_policy(model, policy, x)
    >>> count_flops(small, x) / count_flops(model, x)   # in [0.48, 0.50]
"""
from __future__ import annotations

import copy
import fnmatch
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .budget import Budget, fit_to_budgets
from .errors import BudgetError, ConfigError, PruningError
from .policy import IMPORTANCES, Policy, kept_channels

__all__ = [
    "Group",
    "CostModel",
    "IMPORTANCES",
    "InfeasibleError",
    "prunable_groups",
    "cost_model",
    "fit_policy",
    "uniform_policy",
    "apply_policy",
    "count_flops",
    "count_params",
]

_ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class InfeasibleError(BudgetError):
    """No policy within reach of the proposal meets every budget."""


@dataclass(frozen=True)
class Group:
    """A set of channels that must be pruned together, named by the module path of its root layer.

    ``flops_share`` is the share of the model's FLOPs that depends on this group's channels (what
    pruning all of them would remove); ``layers`` lists every layer whose width the group sets.
    """

    name: str
    channels: int
    flops_share: float
    layers: tuple[str, ...]


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass per sample, exactly as ``torch.utils.flop_counter.FlopCounterMode`` counts."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(round(counter.get_total_flops() / x.shape[0]))


def count_params(model: nn.Module) -> int:
    """Number of parameters of the module (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _tp():
    import torch_pruning as tp  # late: the package is heavy and only this module needs it

    return tp


def _model_label(model: nn.Module) -> str:
    return getattr(model, "autoprune_name", type(model).__name__)


def _ignored_modules(model: nn.Module, out_dim: int, exclude: Sequence[str]) -> list[nn.Module]:
    """The classifier (the last layer, and any linear layer producing the output width) and ``exclude``.

    Only linear layers are matched by width: a conv whose width happens to equal the number of
    classes (16 classes, 16-channel stage) is an ordinary prunable layer.
    """
    ignored = []
    last_root = None
    for name, m in model.named_modules():
        if isinstance(m, _ROOT_TYPES):
            last_root = m
            head = isinstance(m, nn.Linear) and m.out_features == out_dim
            if head or any(fnmatch.fnmatch(name, p) for p in exclude):
                ignored.append(m)
    if last_root is not None and last_root not in ignored:
        ignored.append(last_root)  # the output layer, whatever its width
    return ignored


def _build_graph(model: nn.Module, x: torch.Tensor, exclude: Sequence[str]):
    tp = _tp()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out_dim = model(x).shape[1]
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        ignored = _ignored_modules(model, out_dim, exclude)
        groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES))
    except (ZeroDivisionError, IndexError, KeyError, RuntimeError, ValueError, AttributeError, TypeError) as e:
        layer = _culprit(e.__traceback__)
        raise PruningError(
            f"Torch-Pruning cannot build the dependency graph of model {_model_label(model)!r}"
            + (f" at {layer}" if layer else "")
            + f": {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (unsupported layer or operation)."
        ) from None
    finally:
        model.train(was_training)
    return graph, groups, ignored


def _culprit(tb) -> str | None:
    """The dependency-graph node Torch-Pruning was handling when it failed, read from its frames."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if type(value).__name__ == "Node" and hasattr(value, "name"):
                return str(value.name)
    return None


def _layer_flops(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Per-sample FLOPs of every conv and linear layer, from forward hooks (2 x MACs, as FlopCounterMode)."""
    flops: dict[str, float] = {}
    handles = []

    def hook(name: str) -> Callable:
        def fn(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if isinstance(mod, nn.Linear):
                per_out = mod.in_features
            else:
                per_out = (mod.in_channels // mod.groups) * int(torch.tensor(mod.kernel_size).prod())
            flops[name] = flops.get(name, 0.0) + 2.0 * out.numel() * per_out / x.shape[0]

        return fn

    for name, m in model.named_modules():
        if isinstance(m, _ROOT_TYPES):
            handles.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return flops


def _pruned_count(channels: int, sparsity: float, round_to: int, ch_groups: int) -> int:
    """Channels removed from a group: what the policy keeps, in whole multiples of the channel groups.

    Grouped (not depthwise) convolutions must keep equal widths per group, so removal happens in
    multiples of ``ch_groups``, as Torch-Pruning's own pruner does.
    """
    removed = channels - kept_channels(channels, sparsity, round_to)
    if ch_groups > 1:
        removed = min(channels - ch_groups, int(round(removed / ch_groups)) * ch_groups)
    return removed


def _channel_groups(group) -> int:
    groups = [dep.target.module.groups for dep, _ in group
              if isinstance(dep.target.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
              and dep.target.module.groups > 1 and not _is_depthwise(dep.target.module)]
    return max(groups, default=1)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups > 1 and m.groups == m.in_channels


class CostModel:
    """FLOPs and params of a model as a function of per-group sparsities, without pruning anything.

    Built once per model (one dependency graph, two forward passes). For every layer it records
    which groups set its output and input widths and by how many channels, so the cost of a policy is
    a sum over layers of base cost x kept share of each dimension. FLOPs from operations outside
    conv/linear layers are kept as a constant.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, exclude: Sequence[str] = ()) -> None:
        self.exclude = tuple(exclude)
        self.model_name = _model_label(model)
        graph, groups, _ = _build_graph(model, x, self.exclude)
        names = {m: n for n, m in model.named_modules()}
        self.flops = count_flops(model, x)
        self.params = count_params(model)
        layer_flops = _layer_flops(model, x)
        self._other_flops = self.flops - sum(layer_flops.values())
        # layer -> [(group, affected dims per group channel)] for its output and its input side
        self._out: dict[str, list[tuple[str, float]]] = {}
        self._in: dict[str, list[tuple[str, float]]] = {}
        self.groups: list[Group] = []
        self._channels: dict[str, int] = {}
        self._ch_groups: dict[str, int] = {}
        layer_groups: dict[str, list[str]] = {}
        for group in groups:
            root = group[0].dep.target.module
            gname = names[root]
            n = graph.get_out_channels(root)
            touched: dict[tuple[str, str], set] = {}
            for dep, idxs in group:
                mod = dep.target.module
                if mod not in names:
                    continue  # element-wise ops and unwrapped parameters have no module path
                side = "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in"
                touched.setdefault((names[mod], side), set()).update(int(i) for i in idxs)
            for (lname, side), idx in touched.items():
                (self._out if side == "out" else self._in).setdefault(lname, []).append((gname, len(idx) / n))
                layer_groups.setdefault(gname, []).append(lname)
            self._channels[gname] = n
            self._ch_groups[gname] = _channel_groups(group)
        self._modules = {}
        for name, m in model.named_modules():
            own = sum(p.numel() for p in m.parameters(recurse=False))
            if own:
                self._modules[name] = (m, own)
        self._layer_flops = layer_flops
        full = self.cost({})
        for gname, n in self._channels.items():
            drop = full["flops"] - self._flops_with({gname: n})
            self.groups.append(Group(gname, n, drop / self.flops, tuple(sorted(set(layer_groups[gname])))))

    @property
    def channels(self) -> dict[str, int]:
        return dict(self._channels)

    def _keep(self, pruned: Mapping[str, int], name: str, side: str, dim: int) -> float:
        entries = (self._out if side == "out" else self._in).get(name, ())
        removed = sum(pruned.get(g, 0) * per for g, per in entries)
        return max(0.0, 1.0 - removed / dim) if dim else 1.0

    def _dims(self, m: nn.Module) -> tuple[int, int]:
        if isinstance(m, nn.Linear):
            return m.out_features, m.in_features
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.out_channels, m.in_channels
        if isinstance(m, nn.modules.batchnorm._NormBase):
            return m.num_features, 0
        if isinstance(m, nn.GroupNorm):
            return m.num_channels, 0
        if isinstance(m, nn.LayerNorm):
            return int(m.normalized_shape[0]), 0
        return 0, 0

    def _factors(self, name: str, m: nn.Module, pruned: Mapping[str, int]) -> tuple[float, float]:
        out_dim, in_dim = self._dims(m)
        f_out = self._keep(pruned, name, "out", out_dim)
        f_in = self._keep(pruned, name, "in", in_dim)
        if _is_depthwise(m):  # one kept share sets both sides; the weight has no input dimension
            return min(f_out, f_in), 1.0
        return f_out, f_in

    def _flops_with(self, pruned: Mapping[str, int]) -> float:
        total = self._other_flops
        for name, base in self._layer_flops.items():
            f_out, f_in = self._factors(name, self._modules[name][0], pruned) if name in self._modules else (1.0, 1.0)
            total += base * f_out * f_in
        return total

    def pruned_channels(self, sparsity: Mapping[str, float], round_to: int = 1) -> dict[str, int]:
        return {g: _pruned_count(self._channels[g], s, round_to, self._ch_groups[g])
                for g, s in sparsity.items() if g in self._channels}

    def cost(self, sparsity: Mapping[str, float], round_to: int = 1) -> dict[str, float]:
        """{'flops': ..., 'params': ...} of the model pruned by ``sparsity`` (group -> share removed)."""
        pruned = self.pruned_channels(sparsity, round_to)
        params = 0.0
        for name, (m, own) in self._modules.items():
            f_out, f_in = self._factors(name, m, pruned)
            if isinstance(m, _ROOT_TYPES):
                weight = m.weight.numel()
                bias = own - weight
                params += weight * f_out * f_in + bias * f_out
            elif isinstance(m, _NORM_TYPES):
                params += own * f_out
            else:
                params += own
        return {"flops": self._flops_with(pruned), "params": params}


# One cost model per (model object, input shape, exclusions); models are compared by identity.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def cost_model(model: nn.Module, x: torch.Tensor, exclude: Sequence[str] = ()) -> CostModel:
    """The (cached) :class:`CostModel` of ``model`` at the input shape of ``x``."""
    key = (tuple(x.shape), tuple(exclude))
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = CostModel(model, x, exclude)
    return per_model[key]


def prunable_groups(model: nn.Module, x: torch.Tensor, exclude: Sequence[str] = ()) -> list[Group]:
    """The groups of coupled channels that can be pruned, in dependency-graph order.

    The classifier's output layer is never pruned; layers whose path matches a pattern in
    ``exclude`` (fnmatch, e.g. ``"conv1"`` or ``"features.0.*"``) and every group that sets their
    output width are left out.
    """
    return list(cost_model(model, x, exclude).groups)


def _limits(cm: CostModel, budgets: Sequence[Budget]) -> dict[str, float]:
    base = {"flops": cm.flops, "params": cm.params}
    return {b.kind: min(b.limit(base[b.kind]), float("inf")) for b in budgets if b.kind in base}


def _fit_static(cm: CostModel, proposal: Mapping[str, float], limits: Mapping[str, float],
                round_to: int, max_sparsity: float, fill: bool = False) -> dict[str, float]:
    fitted = fit_to_budgets(proposal, lambda p: cm.cost(p, round_to), limits, max_sparsity=max_sparsity, fill=fill)
    if fitted is None:
        wanted = ", ".join(f"{k} <= {v:.4g}" for k, v in limits.items())
        raise InfeasibleError(f"No policy within reach meets {wanted} for model {cm.model_name!r}.")
    return fitted


def fit_policy(
    model: nn.Module,
    x: torch.Tensor,
    proposal: Mapping[str, float],
    budgets: Sequence[Budget],
    *,
    exclude: Sequence[str] = (),
    round_to: int | None = None,
    max_sparsity: float = 0.99,
    device: str | torch.device = "cpu",
    latency_batch: int = 1,
    max_measurements: int = 6,
    model_name: str | None = None,
    fill: bool = False,
) -> Policy:
    """Fit a proposal (group -> sparsity) to every budget; raise :class:`InfeasibleError` if impossible.

    A proposal within every budget is kept. One over budget keeps the share ``beta * (1 - s)`` of
    each group's channels, with the largest common ``beta`` that meets every FLOPs and params budget
    (bisection on the cost model: no pruning, no training). A latency budget is fitted through a
    FLOPs proxy, then measured on ``device`` against the unpruned model and tightened until it holds,
    with at most ``max_measurements`` measurements. With ``fill=True`` a proposal under every budget
    is scaled up to the tightest one, so the proposal sets the shape and the budget sets the size.
    """
    cm = cost_model(model, x, exclude)
    if round_to is None:
        round_to = 8 if x.is_cuda else 1
    unknown = sorted(set(proposal) - set(cm.channels))
    if unknown:
        raise ConfigError(f"Proposal names unknown groups {unknown[:3]}; valid groups: {sorted(cm.channels)[:5]} ...")
    full = {g: float(proposal.get(g, 0.0)) for g in cm.channels}
    limits = _limits(cm, budgets)
    fitted = _fit_static(cm, full, limits, round_to, max_sparsity, fill)
    name = model_name or cm.model_name
    latency = [b for b in budgets if b.kind == "latency"]
    if latency:
        fitted = _fit_latency(model, x, cm, fitted, limits, latency, round_to=round_to, max_sparsity=max_sparsity,
                              device=device, batch=latency_batch, max_measurements=max_measurements, name=name,
                              fill=fill)
    return Policy(name, fitted, cm.channels, round_to)


def _fit_latency(model, x, cm, fitted, limits, latency_budgets, *, round_to, max_sparsity, device, batch,
                 max_measurements, name, fill=False) -> dict[str, float]:
    from .latency import relative_latency

    proxy = dict(limits)
    base_ms = None
    if any(not b.relative for b in latency_budgets):
        from .latency import measure_latency

        base_ms = measure_latency(model, x, device=device, batch_size=batch)
    # First guess: the latency share as a FLOPs share (latency falls slower, so it is refined below).
    share = min(b.limit(base_ms) / base_ms if not b.relative else b.value for b in latency_budgets)
    proxy["flops"] = min(proxy.get("flops", float("inf")), share * cm.flops)
    current = _fit_static(cm, fitted, proxy, round_to, max_sparsity, fill)
    worst = float("inf")
    for _ in range(max_measurements):
        small = apply_policy(model, Policy(name, current, cm.channels, round_to), x, exclude=cm.exclude)
        pruned_ms, base_ms = relative_latency(small, model, x, device=device, batch_size=batch)
        worst = max(pruned_ms / b.limit(base_ms) for b in latency_budgets)
        if worst <= 1.0:
            return current
        # Latency falls roughly with the square root of FLOPs on small batches: tighten by overshoot^2.
        now = cm.cost(current, round_to)["flops"]
        proxy["flops"] = now / worst**2 * 0.99
        current = _fit_static(cm, current, proxy, round_to, max_sparsity)
    raise InfeasibleError(
        f"Latency budget {', '.join(b.describe() for b in latency_budgets)} not met after "
        f"{max_measurements} measurements on {device} (last: {worst:.2f}x the limit)."
    )


def uniform_policy(model: nn.Module, x: torch.Tensor, budgets: Sequence[Budget], **kwargs) -> Policy:
    """One sparsity for every group, the smallest that meets every budget (see :func:`fit_policy`)."""
    cm = cost_model(model, x, kwargs.get("exclude", ()))
    return fit_policy(model, x, {g: 0.0 for g in cm.channels}, budgets, **kwargs)


def _importance(kind: str):
    tp = _tp()
    table = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "random": lambda: tp.importance.RandomImportance(),
    }
    if kind not in table:
        raise ConfigError(f"Unknown importance {kind!r}; choose one of {', '.join(IMPORTANCES)}.")
    return table[kind]()


def apply_policy(
    model: nn.Module,
    policy: Policy,
    x: torch.Tensor,
    *,
    importance: str | None = None,
    round_to: int | None = None,
    exclude: Sequence[str] = (),
    grad_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Return a structurally pruned deep copy of ``model``; ``model`` itself is left untouched.

    Args:
        importance: which channels of a group go first: ``l1``, ``l2``, ``bn_scale``, ``taylor``
            (needs ``grad_batch=(inputs, targets)`` for one backward pass), ``random``. Default: the
            policy's own (a searched policy records the criterion its trial used), else ``l1``.
        round_to: kept channels per group rounded up to a multiple; default: the policy's own
            (set when it was fitted: 1 for a CPU example input, 8 for CUDA), so the pruned model
            has exactly the size the policy was fitted to.
        exclude: the same layer patterns the policy was fitted with.
    """
    importance = importance or policy.importance or "l1"
    imp = _importance(importance)
    if round_to is None:
        round_to = policy.round_to
    small = copy.deepcopy(model)
    small.zero_grad(set_to_none=True)
    if importance == "taylor":
        if grad_batch is None:
            raise ConfigError("Importance 'taylor' needs grad_batch=(inputs, targets) for a backward pass.")
        small.train()
        nn.functional.cross_entropy(small(grad_batch[0]), grad_batch[1]).backward()
    graph, groups, _ = _build_graph(small, x, exclude)
    names = {m: n for n, m in small.named_modules()}
    kept = policy.sparsity
    seen = set()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # only RandomImportance draws; keep it reproducible
    try:
        for group in groups:
            root = group[0].dep.target.module
            name = names.get(root)
            seen.add(name)
            if name not in kept:
                continue
            n = graph.get_out_channels(root)
            if n != policy.channels.get(name, n):
                raise PruningError(f"Group {name!r} has {n} channels but the policy expects {policy.channels[name]}; "
                                   "was the policy made for another model?")
            ch_groups = _channel_groups(group)
            k = _pruned_count(n, kept[name], round_to, ch_groups)
            if k <= 0:
                continue
            # Indices were computed on the unpruned graph; re-derive the group for the current widths.
            scores = imp(graph.get_pruning_group(root, group[0].dep.handler, list(range(n))))
            if scores is None:
                scores = torch.arange(n, dtype=torch.float32)
            size = n // ch_groups
            # Grouped convs: rank positions by importance averaged over the groups, drop the same in each.
            order = torch.argsort(scores.detach().cpu().view(ch_groups, size).mean(0))[: k // ch_groups]
            idxs = sorted(int(i) + g * size for g in range(ch_groups) for i in order)
            graph.get_pruning_group(root, group[0].dep.handler, idxs).prune()
    except PruningError:
        raise
    except Exception as e:  # a library crash on an odd layer: name it instead
        raise PruningError(f"Torch-Pruning failed on model {_model_label(model)!r}, group {name!r}: "
                           f"{type(e).__name__}: {e}") from None
    finally:
        torch.random.set_rng_state(generator_state)
    missing = sorted(set(kept) - seen)
    if missing:
        raise PruningError(f"Policy names groups the model does not have: {missing[:3]}.")
    small.zero_grad(set_to_none=True)
    return small
