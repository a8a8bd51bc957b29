"""The probe: which groups of a model can be pruned safely, checked once on a copy before a search.

A group whose pruning breaks the forward pass, changes what the kept channels compute, or
disagrees with the cost model is left out (named, with the reason), and the rest is searched.

Example:
    >>> left_out_groups(create_model("helpers_models:concat_grouped"), torch.zeros(1, 3, 16, 16))
    {'branch_b.0': 'removing its channels changes what the kept channels compute ...', 'branch_a.0': ...}
    >>> [g.name for g in prunable_groups(model, x)]
"""
from __future__ import annotations

import copy
import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from .attention import head_group, head_units, prune_heads
from .costs import CostModel, Group, count_flops, is_depthwise, pruned_count
from .graph import _build_graph, output_leaves
from .prune import (DEFAULT_MAX_SPARSITY, _CACHE, _blocks_multiple, _channel_groups, _from_blocks, _norm_blocks,
                    _per_channel_norms, _regroup_norms, _root, cost_model)

__all__ = ["left_out_groups", "prunable_groups", "searchable_flops_share"]


def left_out_groups(model: nn.Module, x: torch.Tensor, exclude: Sequence[str] = (),
                    max_sparsity: float = DEFAULT_MAX_SPARSITY) -> dict[str, str]:
    """Groups that cannot be pruned safely, with the reason, found by probing (cached).

    Every group is pruned on a copy of the model, one after another, at ``max_sparsity`` with its
    channels spread over its whole width (so a group feeding a concatenation loses channels from
    every branch). After each group, on a random input, the forward pass must succeed with the
    unpruned output shape, and give the output the model gave just before, with the removed
    channels' inputs to every consumer zeroed (which is what removing them means; skipped where a
    layer normalises across channels); the params must be those the cost model predicts, and so must
    the FLOPs at the end. A group that fails is left out and the probe starts again without it, so
    the groups that remain were verified together. The whole probe then runs again at half the
    sparsity: some operations (a fixed slice after a concatenation, as in GhostNet) go wrong only
    when enough channels remain for them to cut.
    """
    key = ("probe", tuple(x.shape), tuple(exclude), float(max_sparsity))
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        cm = cost_model(model, x, exclude)
        left: dict[str, str] = dict(getattr(cm, "unfollowed", {}))  # roots the graph could not follow
        for level in (max_sparsity, max_sparsity / 2):
            while True:  # each failure costs one more pass, on a fresh copy without that group
                failure = _probe_once(model, x, exclude, cm, {g: level for g in cm.channels if g not in left})
                if failure is None:
                    break
                left[failure[0]] = failure[1]
        per_model[key] = left
    return dict(per_model[key])


# Layers whose output for one channel depends on the other channels: removing a channel changes
# what the kept ones compute, legitimately, so the probe cannot compare outputs across them.
_ACROSS_CHANNELS = (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention)
_PROBE_TOLERANCE = 1e-4  # relative difference of outputs allowed for float summation order


def _probe_once(model: nn.Module, x: torch.Tensor, exclude: Sequence[str], cm: CostModel,
                sparsity: Mapping[str, float], check_flops_each: bool = False) -> tuple[str, str] | None:
    """Prune ``sparsity`` group by group on a copy; the first group that breaks something, and why."""
    small = copy.deepcopy(model).eval()
    probe_x = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    with torch.no_grad():
        shape = _shapes(small(probe_x))
    graph, groups = _build_graph(small, x, exclude)
    names = {m: n for n, m in small.named_modules()}
    per_channel = _per_channel_norms(small)
    done: dict[str, float] = {}
    for group in groups:
        root, handler = _root(group)
        name = names.get(root)
        if name not in sparsity:
            continue
        n = graph.get_out_channels(root)
        ch_groups, blocks = _channel_groups(group), _norm_blocks(group)
        k = pruned_count(n, sparsity[name], _blocks_multiple(blocks), ch_groups)
        if k <= 0:
            continue
        if blocks and ch_groups == 1:  # as many from every GroupNorm block, spread over each
            idxs = _from_blocks(blocks, k, lambda i: _spread_rank(i, blocks))
        else:  # spread over the width, the same positions in every conv group
            size = n // ch_groups
            spread = np.linspace(0, size, k // ch_groups, endpoint=False).astype(int)
            idxs = sorted(int(i) + g * size for g in range(ch_groups) for i in spread)
        done[name] = sparsity[name]
        try:
            pruning = graph.get_pruning_group(root, handler, idxs)
            comparable = _zero_consumers(graph, pruning)
            with torch.no_grad():
                reference = _flat(small(probe_x))
            pruning.prune()
            _regroup_norms(per_channel, small)
            with torch.no_grad():
                out = small(probe_x)
            if _shapes(out) != shape:
                return name, f"the pruned model's output shape {_text(_shapes(out))} is not {_text(shape)}"
            out = _flat(out)
            gap = float((out - reference).norm() / max(float(reference.norm()), float(out.norm()), 1e-12))
            want = cm.cost(done)
            params = sum(p.numel() for p in small.parameters())
            flops = count_flops(small, x) if check_flops_each else want["flops"]
        except Exception as e:  # whatever breaks, this group is the one that broke it
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return name, f"{type(e).__name__}: {text[:200]}"
        if comparable and not gap <= _PROBE_TOLERANCE:
            return name, (f"removing its channels changes what the kept channels compute (output differs by "
                          f"{gap:.2g}); a layer after it mixes channels in a way the pruner does not follow")
        if not math.isclose(flops, want["flops"], rel_tol=1e-6) or not math.isclose(params, want["params"],
                                                                                    rel_tol=1e-6):
            return name, (f"pruning it gives {flops:,.0f} FLOPs and {params:,} params where the cost model "
                          f"predicts {want['flops']:,.0f} and {want['params']:,.0f} (an operation it cannot price)")
    for path, m in head_units(small, exclude):  # whole heads, spread over the layer, after the widths
        name = head_group(path)
        k = pruned_count(m.num_heads, sparsity.get(name, 0.0), 1, 1)
        if name not in sparsity or k <= 0:
            continue
        done[name] = sparsity[name]
        try:
            prune_heads(small, path, sorted(set(range(m.num_heads)) - set(np.linspace(0, m.num_heads, k, endpoint=False)
                                                                        .astype(int).tolist())))
            with torch.no_grad():
                out = small(probe_x)
            if _shapes(out) != shape:
                return name, f"the pruned model's output shape {_text(_shapes(out))} is not {_text(shape)}"
        except Exception as e:  # a mask per head, a call the smaller attention cannot take
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return name, f"{type(e).__name__}: {text[:200]}"
        if check_flops_each and not math.isclose(count_flops(small, x), cm.cost(done)["flops"], rel_tol=1e-6):
            return name, "pruning its heads gives FLOPs the cost model does not predict (an operation it cannot price)"
    if not check_flops_each and done and not math.isclose(count_flops(small, x), cm.cost(done)["flops"],
                                                          rel_tol=1e-6):
        return _probe_once(model, x, exclude, cm, sparsity, check_flops_each=True)  # find which group
    return None


def _shapes(out) -> tuple:
    return tuple(tuple(t.shape) for t in output_leaves(out))


def _text(shapes: tuple) -> str:
    return str(shapes[0]) if len(shapes) == 1 else str(list(shapes))


def _flat(out) -> torch.Tensor:
    """A model's floating-point outputs as one vector, for comparing before and after a prune."""
    leaves = [t.float().flatten() for t in output_leaves(out) if t.is_floating_point()]
    return torch.cat(leaves) if leaves else torch.zeros(0)


def _spread_rank(i: int, blocks) -> float:
    """A score that orders a block's positions so that its lowest ones are spread over it: position
    ``p`` of a block ranks by the bit-reversed order of ``p``, so any prefix covers the block evenly."""
    block = next(b for b in blocks if i in b)
    p, bits = block.index(i), max(1, (len(block) - 1).bit_length())
    return int(format(p, f"0{bits}b")[::-1], 2)


def _zero_consumers(graph, pruning) -> bool:
    """Zero, in place, every input-side weight that reads a channel ``pruning`` will remove, so the
    model computes what it will compute without them; False if a layer mixes across channels."""
    comparable = True
    for dep, idxs in pruning:
        mod = dep.target.module
        if isinstance(mod, _ACROSS_CHANNELS):
            comparable = False
        if graph.is_out_channel_pruning_fn(dep.handler):
            continue
        if not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and \
                any(True for _ in getattr(mod, "parameters", lambda **k: ())(recurse=False)):
            comparable = False  # a layer with weights whose inputs the probe cannot zero (ConvTranspose, ...)
        if isinstance(mod, nn.Linear):
            with torch.no_grad():
                mod.weight[:, [int(i) for i in idxs]] = 0
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not is_depthwise(mod):
            per_in, per_out = mod.in_channels // mod.groups, mod.out_channels // mod.groups
            with torch.no_grad():
                for c in idxs:  # input channel c feeds only the outputs of its own channel group
                    g = int(c) // per_in
                    mod.weight[g * per_out:(g + 1) * per_out, int(c) % per_in] = 0
    return comparable


def searchable_flops_share(model: nn.Module, x: torch.Tensor, exclude: Sequence[str] = (), *,
                           max_sparsity: float = DEFAULT_MAX_SPARSITY) -> float:
    """The share of the model's FLOPs in layers whose channels a search can change: every layer whose
    input or output width a prunable (probed) group sets.

    Example:
        >>> searchable_flops_share(create_model("resnet20"), torch.zeros(1, 3, 32, 32))
        1.0
    """
    layers = {layer for g in prunable_groups(model, x, exclude, max_sparsity=max_sparsity) for layer in g.layers}
    return cost_model(model, x, exclude).flops_share_of(layers)


def prunable_groups(model: nn.Module, x: torch.Tensor, exclude: Sequence[str] = (), *,
                    max_sparsity: float = DEFAULT_MAX_SPARSITY, probe: bool = True) -> list[Group]:
    """The groups of coupled channels that can be pruned, in dependency-graph order.

    The classifier's output layer is never pruned; layers whose path matches a pattern in
    ``exclude`` (fnmatch, e.g. ``"conv1"`` or ``"features.0.*"``) and every group that sets their
    output width are left out, and so is every group the probe finds unsafe (see
    :func:`left_out_groups`; ``probe=False`` skips it).
    """
    groups = cost_model(model, x, exclude).groups
    if not probe:
        return list(groups)
    left = left_out_groups(model, x, exclude, max_sparsity)
    return [g for g in groups if g.name not in left]
