"""Attention heads as whole units: which attention layers can lose heads, how, and what they cost.

Torch-Pruning prunes an ``nn.MultiheadAttention`` along its embedding width (every head loses as many
of its dimensions), but ``nn.MultiheadAttention`` ties its inner width to that embedding width, so it
cannot lose a whole head. Here each such layer gets a group of its own, ``"<path>:heads"``, whose
channels are its heads: pruning it keeps the chosen heads' rows of the q, k and v projections and the
matching columns of the output projection, in a :class:`HeadAttention` that computes exactly what the
kept heads computed. The cost model prices it (``costs.py``); ``prune.apply_policy`` applies it after
the graph's groups. timm's attention (one ``qkv`` Linear, reshaped by ``num_heads``) gets a heads group
too; it keeps its class and loses the heads' rows and columns in place (Torch-Pruning cannot follow
that reshape, so its ``qkv`` width groups are left out).

Also here: FLOP formulas PyTorch's counter lacks on the CPU. ``FlopCounterMode`` counts nothing for
``nn.MultiheadAttention``'s inference fast path (``aten._native_multi_head_attention``) nor for the
CPU's fused attention kernel, so a transformer's attention was invisible to every FLOPs figure; the
formulas below count them as the GPU kernels' formulas do (two matmuls of the attention, and the
projections).
"""
from __future__ import annotations

import fnmatch
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import flop_counter

__all__ = ["HeadAttention", "HEADS", "head_units", "is_qkv_attention", "qkv_head_sides", "head_group", "head_scores", "prune_heads", "attention_flops"]

from .policy import HEADS  # a heads group is named "<attention layer path>:heads"


def _register_flop_formulas() -> None:
    aten = torch.ops.aten

    def native_mha(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight, proj_bias, *args,
                   out_shape=None, **kwargs) -> int:
        b, nq, e = query  # the fast path is batch first
        nk = key[1]
        return 2 * b * e * e * (nq + 2 * nk) + 4 * b * nq * nk * e + 2 * b * nq * e * e

    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    for op, formula in ((aten._native_multi_head_attention, native_mha),
                        (aten._scaled_dot_product_flash_attention_for_cpu, cpu_sdpa)):
        if op not in flop_counter.flop_registry and all(o not in flop_counter.flop_registry
                                                        for o in (getattr(op, n) for n in op.overloads())):
            flop_counter.register_flop_formula(op)(formula)


_register_flop_formulas()


def is_qkv_attention(m: nn.Module) -> bool:
    """timm's ``Attention`` and its like (ViT, DeiT, BEiT-free ViTs of timm >= 1.0): one packed ``qkv``
    Linear to 3 x ``num_heads`` x ``head_dim``, a ``proj`` Linear back, an optional ``gate`` Linear and
    ``norm`` over the inner width, and a forward that reshapes by ``num_heads``, ``head_dim`` and
    ``attn_dim`` (so a layer that keeps fewer heads runs once those attributes say so)."""
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    h, d, a = (getattr(m, k, None) for k in ("num_heads", "head_dim", "attn_dim"))
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and all(type(v) is int for v in (h, d, a))):
        return False
    gate, norm = getattr(m, "gate", None), getattr(m, "norm", None)
    return (a == h * d and qkv.out_features == 3 * a and proj.in_features == a
            and (gate is None or isinstance(gate, nn.Linear) and gate.out_features == a)
            and (norm is None or isinstance(norm, nn.Identity)
                 or isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (a,)))


def head_units(model: nn.Module, exclude: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """The attention layers that can lose whole heads, not excluded by a pattern: ``nn.MultiheadAttention``
    with more than one head, one packed in-projection and no extra key/value biases; timm-style
    attention (:func:`is_qkv_attention`) with more than one head. A layer whose projections are excluded
    (``--exclude`` matching its ``qkv``, ``proj``, ``out_proj``...) is excluded with them."""
    out = []
    for name, m in model.named_modules():
        inside = [name] + [f"{name}.{c}" if name else c for c in ("qkv", "gate", "norm", "proj", "out_proj")
                           if isinstance(getattr(m, c, None), nn.Module)]
        if any(fnmatch.fnmatch(path, p) for path in inside for p in exclude):  # its projections are its width
            continue
        if (isinstance(m, nn.MultiheadAttention) and m.num_heads > 1 and m.in_proj_weight is not None
                and m.bias_k is None and not m.add_zero_attn) or (is_qkv_attention(m) and m.num_heads > 1):
            out.append((name, m))
    return out


def qkv_head_sides(model: nn.Module) -> dict[str, tuple[str, str]]:
    """{layer path: (side, attention path)} for the layers inside timm-style attention whose width is
    its heads: ``qkv``, ``gate`` and ``norm`` on their output side, ``proj`` on its input side."""
    sides = {}
    for path, m in model.named_modules():
        if is_qkv_attention(m):
            for child, side in (("qkv", "out"), ("gate", "out"), ("norm", "out"), ("proj", "in")):
                if isinstance(getattr(m, child, None), (nn.Linear, nn.LayerNorm)):
                    sides[f"{path}.{child}" if path else child] = (side, path)
    return sides


def head_group(path: str) -> str:
    return path + HEADS


def attention_flops(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """{attention layer path: FLOPs per sample of its two attention matmuls}: the part of its cost that
    scales with its width once (the projections scale with it twice)."""
    found: dict[str, float] = {}
    hooks = []
    for name, m in model.named_modules():  # every attention layer, whether or not it can lose heads
        if not isinstance(m, (nn.MultiheadAttention, HeadAttention)):
            continue
        def hook(mod, args, kwargs, name=name):
            q = args[0] if args else kwargs["query"]
            k = args[1] if len(args) > 1 else kwargs["key"]
            seq = 1 if mod.batch_first and q.dim() == 3 else 0
            inner = mod.num_heads * mod.head_dim if isinstance(mod, HeadAttention) else mod.embed_dim
            found[name] = found.get(name, 0.0) + 4.0 * q.shape[seq] * k.shape[seq] * inner  # every call
        hooks.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return found


class HeadAttention(nn.Module):
    """Multi-head attention with fewer heads than its embedding width holds: q, k and v project the
    embedding (``embed_dim``) to ``num_heads * head_dim`` each, ``out_proj`` back. Called as
    ``nn.MultiheadAttention`` is (the same arguments and return value), and for the heads it keeps it
    computes what the attention layer it came from computed."""

    # nn.TransformerEncoderLayer takes its fused fast path only when this is True; that kernel assumes
    # the inner width is the embedding's, so the layer must call this module instead.
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, dropout: float = 0.0,
                 batch_first: bool = False, bias: bool = True, kept_heads: Sequence[int] | None = None,
                 source_heads: int | None = None) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        # which heads of the layer it came from these are: a per-head mask made for that layer is sliced
        self.kept_heads = tuple(int(i) for i in kept_heads) if kept_heads is not None else tuple(range(num_heads))
        self.source_heads = int(source_heads or num_heads)
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention starts
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        unbatched = query.dim() == 2
        if unbatched:  # (L, E), as nn.MultiheadAttention accepts
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, nq, nk, inner = query.shape[0], query.shape[1], key.shape[1], self.num_heads * self.head_dim
        w, bias = self.in_proj_weight, self.in_proj_bias
        wq, wk, wv = w.split(inner)
        bq, bk, bv = bias.split(inner) if bias is not None else (None, None, None)

        def heads(t, weight, b_, n):
            return F.linear(t, weight, b_).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(query, wq, bq, nq), heads(key, wk, bk, nk), heads(value, wv, bv, nk)
        mask = _float_mask(attn_mask, key_padding_mask, q.dtype, b, self.kept_heads, self.source_heads, nq, nk)
        drop = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if is_causal and mask is None:
                scores = scores.masked_fill(torch.ones(nq, nk, dtype=torch.bool, device=q.device).triu(1), -math.inf)
            probs = F.dropout(torch.softmax(scores + mask if mask is not None else scores, dim=-1), drop)
            weights = probs.mean(1) if average_attn_weights else probs
            weights = weights.squeeze(0) if unbatched else weights
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop,
                                                 is_causal=is_causal and mask is None)
        # out_proj's weights applied inside this layer, as nn.MultiheadAttention does: its FLOPs are this layer's
        out = F.linear(out.transpose(1, 2).reshape(b, nq, inner), self.out_proj.weight, self.out_proj.bias)
        if unbatched:
            return out.squeeze(0), weights
        return (out if self.batch_first else out.transpose(0, 1)), weights


def _float_mask(attn_mask, key_padding_mask, dtype, b, kept, source, nq, nk):
    """nn.MultiheadAttention's masks (True or -inf: not attended) as one additive float mask; a mask per
    head (``(batch * heads, Lq, Lk)``, made for the layer's original heads) keeps the ``kept`` heads' slices."""
    mask = None
    for m, shape in ((attn_mask, None), (key_padding_mask, (b, 1, 1, nk))):
        if m is None:
            continue
        m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, -math.inf) if m.dtype == torch.bool \
            else m.to(dtype)
        if shape:
            m = m.view(shape)
        elif m.dim() == 3:
            m = m.view(b, source, nq, nk)[:, list(kept)] if m.shape[0] == b * source else m.view(b, len(kept), nq, nk)
        mask = m if mask is None else mask + m
    return mask


def _parts(m) -> tuple[torch.Tensor, torch.Tensor | None, int, nn.Linear]:
    """(the packed q/k/v weight, its bias, the head width, the output projection)."""
    if is_qkv_attention(m):
        return m.qkv.weight, m.qkv.bias, m.head_dim, m.proj
    head_dim = m.head_dim if isinstance(m, HeadAttention) else m.embed_dim // m.num_heads
    return m.in_proj_weight, m.in_proj_bias, head_dim, m.out_proj


def head_scores(m: nn.Module, importance: str) -> torch.Tensor:
    """One score per head (higher: more important) by ``importance``: the norm of its q, k, v rows and
    output-projection columns (``l1``; ``l2``), weight times gradient (``taylor``, where gradients
    exist; else l1), random (``random``). BatchNorm scales do not apply to attention: l1."""
    w, _, d, proj = _parts(m)
    h = m.num_heads
    if importance == "random":
        return torch.rand(h)
    rows = w.detach().view(3, h, d, -1)
    cols = proj.weight.detach().view(proj.weight.shape[0], h, d)
    if importance == "taylor" and w.grad is not None and proj.weight.grad is not None:
        rows = (rows * w.grad.view(3, h, d, -1)).abs()
        cols = (cols * proj.weight.grad.view(cols.shape)).abs()
    if importance == "l2":
        return (rows.pow(2).sum((0, 2, 3)) + cols.pow(2).sum((0, 2))).sqrt()
    return rows.abs().sum((0, 2, 3)) + cols.abs().sum((0, 2))


def _sliced(layer: nn.Module, idx: torch.Tensor, dim: int) -> nn.Module:
    """A copy of a Linear (or LayerNorm) keeping the rows (``dim`` 0) or columns (1) ``idx`` of its weight."""
    w = layer.weight
    if isinstance(layer, nn.LayerNorm):
        if w is None:
            return nn.LayerNorm(len(idx), eps=layer.eps, elementwise_affine=False)
        small = nn.LayerNorm(len(idx), eps=layer.eps, bias=layer.bias is not None)
    else:
        shape = (w.shape[1], len(idx)) if dim == 0 else (len(idx), w.shape[0])
        small = nn.Linear(*shape, bias=layer.bias is not None)
    small = small.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        small.weight.copy_(w.index_select(dim, idx.to(w.device)))
        if layer.bias is not None:
            small.bias.copy_(layer.bias if dim == 1 else layer.bias[idx.to(w.device)])
    small.train(layer.training)
    return small


def prune_heads(model: nn.Module, path: str, keep: Sequence[int]) -> nn.Module:
    """Keep only heads ``keep`` of the attention layer at ``path``: an ``nn.MultiheadAttention`` is replaced
    by a :class:`HeadAttention`; a timm-style attention keeps its class and loses the heads' rows of
    ``qkv`` (and ``gate``, ``norm``) and columns of ``proj``, its ``num_heads`` and ``attn_dim`` set to match."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    m = getattr(parent, attr)
    w, bias, d, _ = _parts(m)
    h, keep = m.num_heads, sorted(int(i) for i in keep)
    rows = torch.tensor([part * h * d + i * d + j for part in range(3) for i in keep for j in range(d)])
    cols = torch.tensor([i * d + j for i in keep for j in range(d)])
    if is_qkv_attention(m):
        m.qkv, m.proj = _sliced(m.qkv, rows, 0), _sliced(m.proj, cols, 1)
        if isinstance(getattr(m, "gate", None), nn.Linear):
            m.gate = _sliced(m.gate, cols, 0)
        if isinstance(getattr(m, "norm", None), nn.LayerNorm):
            m.norm = _sliced(m.norm, cols, 0)
        m.num_heads, m.attn_dim = len(keep), len(keep) * d
        return m
    source = getattr(m, "kept_heads", tuple(range(h)))
    small = HeadAttention(m.embed_dim, len(keep), d, dropout=m.dropout, batch_first=m.batch_first,
                          bias=bias is not None, kept_heads=[source[i] for i in keep],
                          source_heads=getattr(m, "source_heads", h)).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        small.in_proj_weight.copy_(w[rows])
        if bias is not None:
            small.in_proj_bias.copy_(bias[rows])
        small.out_proj.weight.copy_(m.out_proj.weight[:, cols])
        if m.out_proj.bias is not None:
            small.out_proj.bias.copy_(m.out_proj.bias)
    small.train(m.training)
    setattr(parent, attr, small)
    for enc in model.modules():  # its nested-tensor path hands the attention a tensor it cannot take
        if isinstance(enc, nn.TransformerEncoder):
            enc.use_nested_tensor = False
    return small
