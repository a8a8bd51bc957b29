"""The analytic cost model: FLOPs and params of a model as a function of per-group sparsities.

FLOPs are those of one sample, exactly as ``torch.utils.flop_counter.FlopCounterMode`` counts them;
params are the parameters of the module. The cost model reads each conv and linear layer's FLOPs
from ``FlopCounterMode`` once, learns from the dependency graph (``prune.py``) which groups set each
layer's output and input widths, and then prices a policy without pruning anything: a layer costs
its base figure times the kept share of each of its dimensions.

Example:
    >>> count_flops(model, torch.zeros(1, 3, 32, 32))
    81626368
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .attention import HeadAttention, attention_flops, is_qkv_attention, qkv_head_sides
from .policy import kept_channels

__all__ = ["Group", "GroupLayout", "CostModel", "count_flops", "count_params", "layer_flops", "pruned_count",
           "ROOT_TYPES", "UNWRAPPED", "is_depthwise"]

UNWRAPPED = "@"  # layouts name a bare parameter (not a layer's weight) "@<parameter path>"
ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # layers whose output channels start a group
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_ATTENTION = (nn.MultiheadAttention, HeadAttention)  # priced as one layer: projections and attention


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


@dataclass(frozen=True)
class GroupLayout:
    """What pruning one group's channels does to the layers, as read off the dependency graph.

    ``touched`` holds ``(layer, side, per_channel)``: pruning one channel of the group removes
    ``per_channel`` output (``side="out"``) or input (``"in"``) channels of ``layer``; a bare
    parameter that Torch-Pruning prunes along its last non-singleton dimension (ConvNeXt's
    ``layer_scale``) is named ``"@<parameter path>"``.
    ``ch_groups`` > 1 when the group feeds a grouped (not depthwise) convolution, whose groups must
    keep equal widths. ``multiple`` > 1 when a normalisation over groups of channels (GroupNorm) sets
    the group's width: the kept channels must stay a multiple of it (its ``num_groups``; several: their
    least common multiple). An attention layer's heads group (``attention.py``) touches that layer on
    the side ``"heads"``: its channels are heads, and ``--round-to`` does not apply to them.
    """

    name: str
    channels: int
    ch_groups: int
    touched: tuple[tuple[str, str, float], ...]
    multiple: int = 1


def _run(model: nn.Module, x: torch.Tensor) -> FlopCounterMode:
    """One counted forward pass in eval mode. Transformer layers' fused inference kernels are switched
    off for it (``torch.backends.mha``): ``nn.TransformerEncoderLayer``'s kernel runs the whole layer as
    one operation the counter knows no formula for, and hides which of its layers the FLOPs are in."""
    was_training, fast = model.training, torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fast)
    return counter


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass per sample, exactly as ``torch.utils.flop_counter.FlopCounterMode`` counts."""
    return int(round(_run(model, x).get_total_flops() / x.shape[0]))


def count_params(model: nn.Module) -> int:
    """Number of parameters of the module (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def layer_flops(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, float]]:
    """(total FLOPs per sample, {conv, linear or attention layer path: its FLOPs per sample}), from one
    counted pass (an attention layer's FLOPs include its projections')."""
    counter = _run(model, x)
    per_module = counter.get_flop_counts()
    # FlopCounterMode names a module "<RootClass>.<path>"; keep the named_modules() path.
    root = type(model).__name__
    out = {}
    def counted(name: str) -> float:
        return sum(per_module.get(f"{root}.{name}" if name else root, {}).values()) / x.shape[0]

    for name, m in model.named_modules():
        if isinstance(m, ROOT_TYPES + _ATTENTION):
            if counted(name):
                out[name] = counted(name)
        elif is_qkv_attention(m):  # its own FLOPs, the attention's two matmuls: its layers are counted apart
            inner = counted(name) - sum(counted(f"{name}.{c}" if name else c) for c, _ in m.named_children())
            if inner:
                out[name] = inner
    return int(round(counter.get_total_flops() / x.shape[0])), out


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, _CONV_TYPES) and m.groups > 1 and m.groups == m.in_channels


def default_round_to(model: nn.Module, device: str | torch.device = "cpu") -> int:
    """``--round-to``'s default: kept channels in multiples of 8 on a GPU, and on the CPU for a model
    with depthwise convolutions (MobileNets, MnasNet, EfficientNets), else free counts (1).

    Measured (results/benchmarks/latency.csv, latency_mobile.csv: the uniform policy at half the FLOPs,
    ONNX Runtime, one thread, batch 1): with free counts MobileNetV2 ran at 0.77x and MobileNetV3-small
    at 0.47x the unpruned model's speed, slower than not pruning; with multiples of 8, faster. The
    ResNets are faster either way, and keep the finer counts."""
    if torch.device(device).type == "cuda":
        return 8
    return 8 if any(is_depthwise(m) and m.in_channels >= 16 for m in model.modules()) else 1


def pruned_count(channels: int, sparsity: float, round_to: int, ch_groups: int) -> int:
    """Channels removed from a group: what the policy keeps, in whole multiples of the channel groups.

    Grouped (not depthwise) convolutions must keep equal widths per group, so removal happens in
    multiples of ``ch_groups``, as Torch-Pruning's own pruner does.
    """
    removed = channels - kept_channels(channels, sparsity, round_to)
    if ch_groups > 1:
        removed = min(channels - ch_groups, int(round(removed / ch_groups)) * ch_groups)
    return removed


def _dims(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.out_features, m.in_features
    if isinstance(m, _CONV_TYPES):
        return m.out_channels, m.in_channels
    if isinstance(m, nn.modules.batchnorm._NormBase):
        return m.num_features, 0
    if isinstance(m, nn.GroupNorm):
        return m.num_channels, 0
    if isinstance(m, nn.LayerNorm):
        return int(m.normalized_shape[0]), 0
    if isinstance(m, _ATTENTION):
        return m.embed_dim, m.embed_dim
    return 0, 0


class CostModel:
    """FLOPs and params of a model as a function of per-group sparsities, without pruning anything.

    Built once per model from the groups' layouts: for every layer it records which groups set its
    output and input widths and by how many channels, so the cost of a policy is a sum over layers
    of base cost x kept share of each dimension. FLOPs outside conv and linear layers are a constant.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, layouts: Sequence[GroupLayout], *,
                 model_name: str = "") -> None:
        self.model_name = model_name or type(model).__name__
        self.flops, self._layer_flops = layer_flops(model, x)
        self.params = count_params(model)
        self._other_flops = self.flops - sum(self._layer_flops.values())
        # layer -> [(group, affected dims per group channel)] for its output and its input side
        self._out: dict[str, list[tuple[str, float]]] = {}
        self._in: dict[str, list[tuple[str, float]]] = {}
        self._channels = {g.name: g.channels for g in layouts}
        self._ch_groups = {g.name: g.ch_groups for g in layouts}
        self._multiple = {g.name: g.multiple for g in layouts}
        self._heads: dict[str, str] = {}  # attention layer -> its heads group
        for g in layouts:
            for layer, side, per in g.touched:
                if side == "heads":
                    self._heads[layer] = g.name
                    continue
                (self._out if side == "out" else self._in).setdefault(layer, []).append((g.name, per))
        self._attn = attention_flops(model, x) if any(isinstance(m, _ATTENTION) for m in model.modules()) else {}
        # timm-style attention: its qkv/gate/norm outputs and proj inputs are its heads (attention.py)
        self._head_sides = {layer: (side, self._heads[path]) for layer, (side, path) in qkv_head_sides(model).items()
                            if path in self._heads}
        self._qkv_inner = {path for path in self._heads if path in self._layer_flops and path not in self._attn}
        # An attention layer's out_proj is pruned with it (Torch-Pruning's MultiheadAttention pruner), not
        # as a layer of its own: it keeps the attention's embedding share on both sides.
        for name, m in model.named_modules():
            entries = self._out.get(name) or self._in.get(name)
            if isinstance(m, _ATTENTION) and entries:
                self._out.setdefault(f"{name}.out_proj", list(entries))
                self._in.setdefault(f"{name}.out_proj", list(entries))
        # Bare parameters some group prunes: priced by their kept share, not as a constant.
        bare = {layer[len(UNWRAPPED):] for layer in self._out if layer.startswith(UNWRAPPED)}
        self._bare = {}  # parameter path -> (numel, width of its pruned dimension)
        self._modules = {}
        for name, m in model.named_modules():
            own = 0
            for pname, p in m.named_parameters(recurse=False):
                path = f"{name}.{pname}" if name else pname
                if path in bare:
                    self._bare[path] = (p.numel(), next((d for d in reversed(p.shape) if d > 1), 1))
                else:
                    own += p.numel()
            if own:
                self._modules[name] = (m, own)
        full = self._flops_with({})
        self.groups = [Group(g.name, g.channels, (full - self._flops_with({g.name: g.channels})) / self.flops,
                             tuple(sorted({layer for layer, _, _ in g.touched if not layer.startswith(UNWRAPPED)}
                                          | {layer for layer, (_, h) in self._head_sides.items() if h == g.name})))
                       for g in layouts]

    @property
    def channels(self) -> dict[str, int]:
        return dict(self._channels)

    def _keep(self, pruned: Mapping[str, int], name: str, side: str, dim: int) -> float:
        entries = (self._out if side == "out" else self._in).get(name, ())
        removed = sum(pruned.get(g, 0) * per for g, per in entries)
        return max(0.0, 1.0 - removed / dim) if dim else 1.0

    def _heads_kept(self, layer: str, pruned: Mapping[str, int]) -> float:
        group = self._heads.get(layer)
        return 1.0 - pruned.get(group, 0) / self._channels[group] if group else 1.0

    def _head_side(self, name: str, side: str, pruned: Mapping[str, int]) -> float:
        """The kept share of heads on ``side`` of a layer inside timm-style attention (1 elsewhere)."""
        entry = self._head_sides.get(name)
        if entry is None or entry[0] != side:
            return 1.0
        return 1.0 - pruned.get(entry[1], 0) / self._channels[entry[1]]

    def _factors(self, name: str, m: nn.Module, pruned: Mapping[str, int]) -> tuple[float, float]:
        out_dim, in_dim = _dims(m)
        f_out = self._keep(pruned, name, "out", out_dim)
        f_in = self._keep(pruned, name, "in", in_dim)
        if is_depthwise(m):  # one kept share sets both sides; the weight has no input dimension
            return min(f_out, f_in), 1.0
        if name.endswith(".out_proj"):  # an attention layer's output projection reads the heads it keeps
            f_in *= self._heads_kept(name[: -len(".out_proj")], pruned)
        return f_out * self._head_side(name, "out", pruned), f_in * self._head_side(name, "in", pruned)

    def _flops_with(self, pruned: Mapping[str, int]) -> float:
        total = self._other_flops
        for name, base in self._layer_flops.items():
            f_out, f_in = self._factors(name, self._modules[name][0], pruned) if name in self._modules else (1.0, 1.0)
            if name in self._qkv_inner:  # timm-style attention's matmuls: the heads' width is fixed
                total += base * self._heads_kept(name, pruned)
                continue
            if name in self._attn:  # projections scale with the embedding twice, the attention once; both with heads
                share, attn = min(f_out, f_in), self._attn[name]
                total += ((base - attn) * share * share + attn * share) * self._heads_kept(name, pruned)
                continue
            total += base * f_out * f_in
        return total

    def flops_share_of(self, layers) -> float:
        """The share of the model's FLOPs in ``layers`` (module paths; those with no FLOPs add none)."""
        names = set(layers)
        return sum(f for name, f in self._layer_flops.items() if name in names) / self.flops if self.flops else 0.0

    def varying_layers(self) -> list[str]:
        """Layers (module paths) whose input or output width some group sets."""
        return sorted((set(self._out) | set(self._in) | set(self._head_sides)) & set(self._modules))

    def varies(self, layer: str) -> tuple[bool, bool]:
        """Whether some group sets ``layer``'s (output, input) width."""
        side = self._head_sides.get(layer, ("",))[0]
        return layer in self._out or side == "out", layer in self._in or side == "in"

    def layer_dims(self, pruned: Mapping[str, int]) -> dict[str, tuple[float, float]]:
        """(kept output, kept input) widths of every varying layer when the groups lose ``pruned``
        channels (group -> count, :meth:`pruned_channels`); a depthwise layer's two are equal."""
        out = {}
        for name in self.varying_layers():
            m = self._modules[name][0]
            o, i = _dims(m)
            ko = self._keep(pruned, name, "out", o) * self._head_side(name, "out", pruned) * o
            ki = self._keep(pruned, name, "in", i) * self._head_side(name, "in", pruned) * i
            if is_depthwise(m):
                ko = ki = min(ko, ki)
            out[name] = (ko, ki)
        return out

    def multiple(self, group: str, round_to: int = 1) -> int:
        """What the kept channels of ``group`` are a multiple of: ``round_to`` and the group's own rule
        (heads are whole units: ``round_to`` does not apply to them)."""
        if group in self._heads.values():
            return self._multiple.get(group, 1)
        return math.lcm(round_to, self._multiple.get(group, 1))

    def pruned_channels(self, sparsity: Mapping[str, float], round_to: int = 1) -> dict[str, int]:
        """Channels each group loses under ``sparsity`` (group -> share removed)."""
        return {g: pruned_count(self._channels[g], s, self.multiple(g, round_to), self._ch_groups[g])
                for g, s in sparsity.items() if g in self._channels}

    def cost(self, sparsity: Mapping[str, float], round_to: int = 1) -> dict[str, float]:
        """{'flops': ..., 'params': ...} of the model pruned by ``sparsity`` (group -> share removed)."""
        pruned = self.pruned_channels(sparsity, round_to)
        params = 0.0
        for name, (m, own) in self._modules.items():
            f_out, f_in = self._factors(name, m, pruned)
            if isinstance(m, ROOT_TYPES):
                weight = m.weight.numel()
                bias = own - weight
                params += weight * f_out * f_in + bias * f_out
            elif isinstance(m, _NORM_TYPES):
                params += own * f_out
            elif isinstance(m, _ATTENTION):
                # its own in_proj (3E x E, + 3E bias), both sides the embedding width (out_proj is a Linear),
                # the output side also the heads kept
                share = min(f_out, f_in)
                weight = sum(p.numel() for p in (m.in_proj_weight, getattr(m, "q_proj_weight", None),
                                                 getattr(m, "k_proj_weight", None), getattr(m, "v_proj_weight", None))
                             if p is not None)
                params += (weight * share * share + (own - weight) * share) * self._heads_kept(name, pruned)
            else:
                params += own
        for path, (numel, width) in self._bare.items():
            params += numel * self._keep(pruned, UNWRAPPED + path, "out", width)
        return {"flops": self._flops_with(pruned), "params": params}
