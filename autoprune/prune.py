"""The pruning engine: the dependency graph, its groups, the cost model, structural pruning of a policy.

With graph.py, the only modules that import Torch-Pruning. The one idea to hold: build the dependency
graph, list its groups of coupled channels, remove the least important channels of each group.
Which groups are safe to offer a search is the probe's business (``probe.py``).

Example:
    >>> model = create_model("resnet56"); x = torch.randn(1, 3, 32, 32)
    >>> small = apply_policy(model, uniform_policy(model, x, [Budget.parse("flops", "50%")]), x)
    >>> small.autoprune_policy.indices["layer1.0.conv1"]     # the channels it kept
"""
from __future__ import annotations

import copy
import dataclasses
import math
import weakref
from typing import Sequence

import torch
import torch.nn as nn

from .attention import head_group, head_scores, head_units, prune_heads
from .costs import UNWRAPPED, CostModel, GroupLayout, count_flops, is_depthwise, pruned_count
from .criteria import make_importance, needs_gradients
from .errors import ConfigError, PruningError
from .graph import _build_graph, _ignored_modules, _memory_headroom, _model_label, _out_dim, _tp
from .policy import Policy

__all__ = ["cost_model", "apply_policy", "global_prune", "global_magnitude_prune", "DEFAULT_MAX_SPARSITY"]

DEFAULT_MAX_SPARSITY = 0.9  # the default search space's upper end: how far the probe prunes each group



def _channel_groups(group) -> int:
    groups = [dep.target.module.groups for dep, _ in group
              if isinstance(dep.target.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
              and dep.target.module.groups > 1 and not is_depthwise(dep.target.module)]
    return max(groups, default=1)


def _norm_blocks(group) -> list[list[int]]:
    """The group's channels (root positions) in blocks that must each lose the same share of channels,
    for the GroupNorms they feed to keep equal groups (and the attention layers, equal heads); [] when
    nothing sets a rule.

    A GroupNorm of ``C`` channels in ``G`` groups makes ``G`` blocks of ``C / G``; channels reaching
    several GroupNorms (a residual sum) share one block per combination; channels that reach none (the
    other branch of a concatenation) form one more block. A GroupNorm of one channel per group
    (instance-norm like) sets no rule: its groups are removed with their channels (:func:`_regroup_norms`).
    """
    member: dict[int, tuple] = {}
    for dep, idxs in group:
        m = dep.target.module
        if isinstance(m, nn.GroupNorm) and 1 < m.num_groups < m.num_channels:
            per = m.num_channels // m.num_groups
        elif isinstance(m, nn.MultiheadAttention) and m.num_heads > 1:
            per = m.embed_dim // m.num_heads  # each head loses as many of its dimensions, in q, k and v alike
        else:
            continue
        for i in idxs:
            root = int(getattr(i, "root_idx", i))
            member[root] = member.get(root, ()) + ((id(m), int(getattr(i, "idx", i)) // per),)
    if not member:
        return []
    n = len({int(getattr(i, "root_idx", i)) for i in group[0].idxs})
    blocks: dict[tuple, list[int]] = {}
    for r in range(n):
        blocks.setdefault(tuple(sorted(member.get(r, ()))), []).append(r)
    return list(blocks.values())


def _blocks_multiple(blocks: Sequence[Sequence[int]]) -> int:
    """What the kept (and removed) channels must be a multiple of for ``blocks`` to lose equal shares."""
    if not blocks:
        return 1
    unit = math.gcd(*(len(b) for b in blocks))
    return sum(len(b) for b in blocks) // unit


def _from_blocks(blocks: Sequence[Sequence[int]], k: int, score) -> list[int]:
    """``k`` positions to remove, the same share of every block, each block's lowest by ``score``
    (a position -> value function); ``k`` is a multiple of :func:`_blocks_multiple`."""
    unit = math.gcd(*(len(b) for b in blocks))
    share = k * unit // sum(len(b) for b in blocks)  # channels removed per `unit` of a block
    out = []
    for b in blocks:
        out += sorted(b, key=score)[: share * len(b) // unit]
    return sorted(out)


def _per_channel_norms(model: nn.Module) -> list[nn.GroupNorm]:
    return [m for m in model.modules() if isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels > 1]


def _regroup_norms(norms: Sequence[nn.GroupNorm], model: nn.Module | None = None) -> None:
    """After pruning: a GroupNorm that had one channel per group keeps one (its removed channels took
    their groups with them; Torch-Pruning keeps ``num_groups`` as it was), and a torchvision vision
    transformer reshapes its patches by its pruned hidden width (``hidden_dim``, a constant otherwise)."""
    for m in norms:
        m.num_groups = m.num_channels
    if model is not None:
        for m in model.modules():
            proj = getattr(m, "conv_proj", None)
            if type(m).__name__ == "VisionTransformer" and isinstance(proj, nn.Conv2d) and hasattr(m, "hidden_dim"):
                m.hidden_dim = proj.out_channels


def _root(group) -> tuple[nn.Module, object]:
    return group[0].dep.target.module, group[0].dep.handler


def _layouts(model: nn.Module, graph, groups) -> list[GroupLayout]:
    """Each group's effect on layer widths, read off the dependency graph (see :class:`GroupLayout`)."""
    names = {m: n for n, m in model.named_modules()}
    params = {p: n for n, p in model.named_parameters()}
    layouts = []
    for group in groups:
        root, _ = _root(group)
        n = graph.get_out_channels(root)
        touched: dict[tuple[str, str], set] = {}
        for dep, idxs in group:
            mod = dep.target.module
            if isinstance(mod, nn.Parameter) and mod in params:  # a bare parameter (ConvNeXt's layer_scale)
                key = (UNWRAPPED + params[mod], "out")
            elif mod in names:
                key = (names[mod], "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in")
            else:
                continue  # element-wise ops have no parameters and no module path
            touched.setdefault(key, set()).update(int(i) for i in idxs)
        layouts.append(GroupLayout(names[root], n, _channel_groups(group),
                                   tuple((layer, side, len(idx) / n) for (layer, side), idx in touched.items()),
                                   _blocks_multiple(_norm_blocks(group))))
    return layouts


def _head_layouts(model: nn.Module, exclude: Sequence[str]) -> list[GroupLayout]:
    """A group per attention layer whose channels are its heads (``attention.py``)."""
    return [GroupLayout(head_group(path), m.num_heads, 1, ((path, "heads", 1.0),)) for path, m in head_units(model, exclude)]


# Per model object (compared by identity): {(input shape, exclusions): CostModel} and the probes.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def cost_model(model: nn.Module, x: torch.Tensor, exclude: Sequence[str] = ()) -> CostModel:
    """The (cached) :class:`~autoprune.costs.CostModel` of ``model`` at the input shape of ``x``.

    It prices every group of the dependency graph, probed or not.
    """
    key = ("cost", tuple(x.shape), tuple(exclude))
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        with _memory_headroom(model):
            graph, groups = _build_graph(model, x, exclude)
        layouts = _layouts(model, graph, groups) + _head_layouts(model, exclude)
        per_model[key] = CostModel(model, x, layouts, model_name=_model_label(model))
        per_model[key].unfollowed = dict(getattr(graph, "autoprune_unfollowed", {}))  # roots left out, why
    return per_model[key]


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

    A policy that records kept channels (``policy.indices``, as every searched policy does) keeps
    exactly those. Otherwise each group loses its least important channels.

    The returned module carries ``autoprune_policy``: the policy with the channels it kept recorded.

    Args:
        importance: which channels of a group go first: ``l1``, ``l2``, ``bn_scale``, ``taylor``
            (needs ``grad_batch=(inputs, targets)`` for one backward pass), ``random``. Default: the
            policy's own (a searched policy records the criterion its trial used), else ``l1``.
        round_to: kept channels per group rounded up to a multiple; default: the policy's own
            (set when it was fitted: ``costs.default_round_to`` unless given), so the pruned model
            has exactly the size the policy was fitted to.
        exclude: the same layer patterns the policy was fitted with.
    """
    importance = importance or policy.importance or "l1"
    imp = make_importance(importance)
    if round_to is None:
        round_to = policy.round_to
    small = copy.deepcopy(model)
    small.zero_grad(set_to_none=True)
    if needs_gradients(importance) and not policy.indices:
        if grad_batch is None:
            raise ConfigError(f"Importance {importance!r} needs grad_batch=(inputs, targets) for a backward pass "
                              "(autoprune.gradient_batch(train_set)), or a policy that records its kept channels.")
        _backward(small, grad_batch)
    graph, groups = _build_graph(small, x, exclude)
    names = {m: n for n, m in small.named_modules()}
    per_channel = _per_channel_norms(small)
    kept: dict[str, tuple[int, ...]] = {}
    seen = set()
    name = None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # only RandomImportance draws; keep it reproducible
            for group in groups:
                root, handler = _root(group)
                name = names.get(root)
                seen.add(name)
                if name not in policy.sparsity:
                    continue
                n = graph.get_out_channels(root)
                if n != policy.channels.get(name, n):
                    raise PruningError(f"Group {name!r} has {n} channels but the policy expects "
                                       f"{policy.channels[name]}; was the policy made for another model?")
                idxs = _removed(policy, name, n, round_to, _channel_groups(group),
                                lambda: imp(graph.get_pruning_group(root, handler, list(range(n)))),
                                _norm_blocks(group))
                if not idxs:
                    continue
                graph.get_pruning_group(root, handler, idxs).prune()
                kept[name] = tuple(sorted(set(range(n)) - set(idxs)))
        for path, m in head_units(small, exclude):  # whole heads, after the graph's groups set the widths
            name = head_group(path)
            seen.add(name)
            if name not in policy.sparsity:
                continue
            if policy.channels.get(name, m.num_heads) != m.num_heads:
                raise PruningError(f"Attention layer {path!r} has {m.num_heads} heads but the policy expects "
                                   f"{policy.channels[name]}; was the policy made for another model?")
            heads = m.num_heads  # read first: timm-style attention is pruned in place
            idxs = _removed(policy, name, heads, 1, 1, lambda m=m: head_scores(m, importance))
            if idxs:
                kept[name] = tuple(sorted(set(range(heads)) - set(idxs)))
                prune_heads(small, path, kept[name])
    except PruningError:
        raise
    except Exception as e:  # a library crash on an odd layer: name it instead
        raise PruningError(f"Torch-Pruning failed on model {_model_label(model)!r}, group {name!r}: "
                           f"{type(e).__name__}: {e}") from None
    _regroup_norms(per_channel, small)
    missing = sorted(set(policy.sparsity) - seen)
    if missing:
        raise PruningError(f"Policy names groups the model does not have: {missing[:3]}.")
    small.zero_grad(set_to_none=True)
    small.autoprune_policy = dataclasses.replace(policy, importance=importance, indices=kept)
    return small


def _backward(model: nn.Module, grad_batch) -> None:
    """One backward pass for gradient criteria: of cross-entropy on ``grad_batch=(inputs, targets)``,
    or of the loss a task's callable ``grad_batch(model)`` returns. The gradients are those of a
    training step (BatchNorm on batch statistics); the running statistics that step would update are
    put back, so the criterion only reads the model."""
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    was_training = model.training
    model.train()
    where = next(model.parameters()).device  # the batch may live on a GPU while the model copy is on the CPU
    if callable(grad_batch):
        grad_batch(model).backward()
    else:
        nn.functional.cross_entropy(model(grad_batch[0].to(where)), grad_batch[1].to(where)).backward()
    model.train(was_training)
    with torch.no_grad():
        for k, b in model.named_buffers():
            b.copy_(buffers[k])


def _removed(policy: Policy, name: str, n: int, round_to: int, ch_groups: int, scores,
             blocks: Sequence[Sequence[int]] = ()) -> list[int]:
    """Channel positions of group ``name`` to remove: the recorded complement, or the lowest scored.

    With GroupNorm ``blocks`` (:func:`_norm_blocks`) every block loses the same share, its own lowest
    scored channels, so the kept channels stay in the norm groups they were normalised with."""
    round_to = math.lcm(round_to, _blocks_multiple(blocks))
    if policy.indices:
        if name in policy.indices:
            return sorted(set(range(n)) - set(policy.indices[name]))
        if pruned_count(n, policy.sparsity[name], round_to, ch_groups) > 0:
            raise PruningError(f"The policy records kept channels, but none for group {name!r} that it prunes.")
        return []
    k = pruned_count(n, policy.sparsity[name], round_to, ch_groups)
    if k <= 0:
        return []
    # Indices were computed on the unpruned graph; re-derive the group for the current widths.
    values = scores()
    if values is None:
        values = torch.arange(n, dtype=torch.float32)
    if blocks and ch_groups == 1:
        flat = values.detach().cpu()
        return _from_blocks(blocks, k, lambda i: float(flat[i]))
    size = n // ch_groups
    # Grouped convs: rank positions by importance averaged over the groups, drop the same in each.
    order = torch.argsort(values.detach().cpu().view(ch_groups, size).mean(0))[: k // ch_groups]
    return sorted(int(i) + g * size for g in range(ch_groups) for i in order)


def global_prune(model: nn.Module, x: torch.Tensor, budget: float, *, importance: str = "l1", measure: str = "flops",
                 grad_batch: tuple[torch.Tensor, torch.Tensor] | None = None, tolerance: float = 0.01,
                 steps: int = 14) -> tuple[nn.Module, float, float]:
    """Torch-Pruning's own global pruning of a copy of ``model``, its ratio bisected to a share of FLOPs or params.

    One global ranking of channels across layers by ``importance`` (``l1``, ``bn_scale``, ``taylor``,
    ...), the way Torch-Pruning prunes when asked for a ratio. Returns ``(pruned copy, pruning ratio,
    measure ratio)``: the feasible pruning (``measure`` ratio at most ``budget``) closest to it,
    stopping once it is within ``tolerance`` (relative) under it.

    Example:
        >>> small, ratio, share = global_prune(model, x, 0.25, measure="params")
    """
    from .costs import count_params

    if measure not in ("flops", "params"):
        raise ConfigError(f"global_prune's measure must be flops or params, but got {measure!r}.")
    if needs_gradients(importance) and grad_batch is None:
        raise ConfigError(f"Importance {importance!r} needs grad_batch=(inputs, targets) for a backward pass.")
    tp = _tp()
    size = count_flops if measure == "flops" else (lambda m, _x: count_params(m))
    base = size(model, x)
    with torch.no_grad():
        out_dim = _out_dim(model.eval()(x))
    lo, hi = 0.0, 1.0  # the measure falls as the global ratio rises (near 1, layers stop at one channel)
    best: tuple[nn.Module, float, float] | None = None
    for _ in range(steps):
        r = (lo + hi) / 2
        small = copy.deepcopy(model).eval()
        if needs_gradients(importance):
            _backward(small, grad_batch)
        try:
            tp.pruner.MetaPruner(small, x, make_importance(importance), pruning_ratio=r, global_pruning=True,
                                 ignored_layers=_ignored_modules(small, out_dim, ())).step()
            small.zero_grad(set_to_none=True)
            ratio = size(small, x) / base
        except Exception:  # a layer pruned away entirely: too much
            hi = r
            continue
        if ratio > budget:
            lo = r
            continue
        hi = r
        if best is None or ratio > best[2]:
            best = (small, r, ratio)
        if ratio >= budget * (1 - tolerance):
            break
    if best is None:
        raise PruningError(f"Torch-Pruning's global pruning found no ratio within {budget:.3f} of the {measure} of "
                           f"model {_model_label(model)!r}.")
    return best


def global_magnitude_prune(model: nn.Module, x: torch.Tensor, budget: float, *, tolerance: float = 0.01,
                           steps: int = 14) -> tuple[nn.Module, float, float]:
    """:func:`global_prune` by L1 magnitude to a FLOPs share: the ``tp_global`` baseline of the benchmarks."""
    return global_prune(model, x, budget, tolerance=tolerance, steps=steps)
