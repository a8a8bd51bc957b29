"""Attention heads as whole units (issue 26): HeadAttention, head pruning, the attention's FLOPs."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from autoprune import (Policy, apply_policy, create_model, gradient_batch, load_pruned, prunable_groups,
                       save_pruned)
from autoprune.attention import HeadAttention, head_scores, prune_heads
from autoprune.costs import count_flops
from autoprune.prune import cost_model


def _pruned(mha: nn.MultiheadAttention, keep) -> HeadAttention:
    holder = nn.Module()
    holder.attention = copy.deepcopy(mha)
    return prune_heads(holder, "attention", keep)


@pytest.mark.parametrize("batch_first", [True, False])
def test_head_attention_with_every_head_computes_what_the_layer_computed(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    same = _pruned(mha, range(4))
    q = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[:, -1] = True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    with torch.no_grad():
        for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": causal}):
            for weights in (False, True):
                want, want_w = mha(q, q, q, need_weights=weights, **kwargs)
                got, got_w = same(q, q, q, need_weights=weights, **kwargs)
                assert torch.allclose(got, want, atol=1e-5), kwargs
                assert (got_w is None) == (want_w is None)
                if weights:
                    assert torch.allclose(got_w, want_w, atol=1e-6)


def test_removing_heads_is_zeroing_what_they_contribute():
    """The kept heads compute what they computed: the output is the layer's with the removed heads'
    output-projection columns zeroed."""
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    small = _pruned(mha, [1, 3])
    assert small.num_heads == 2 and small.head_dim == 8 and small.in_proj_weight.shape == (48, 32)
    reference = copy.deepcopy(mha)
    with torch.no_grad():
        reference.out_proj.weight[:, 0:8] = 0
        reference.out_proj.weight[:, 16:24] = 0
        q = torch.randn(3, 6, 32)
        assert torch.allclose(small(q, q, q, need_weights=False)[0], reference(q, q, q, need_weights=False)[0],
                              atol=1e-6)


def test_l1_keeps_the_heavier_heads():
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.view(3, 4, 4, 16)[:, 2] *= 10  # head 2 far heavier
    assert int(head_scores(mha, "l1").argmax()) == 2 == int(head_scores(mha, "l2").argmax())


def test_the_attention_is_counted_by_the_flop_counter():
    """PyTorch's counter counts nothing for the CPU's fused attention kernels; autoprune adds their
    formulas, so the same layer counts the same in the inference fast path and the training path."""
    mha = nn.MultiheadAttention(64, 4, batch_first=True)
    x = torch.randn(1, 10, 64)
    want = 2 * 10 * 64 * 64 * 4 + 4 * 10 * 10 * 64  # the four projections and the two attention matmuls

    class Self(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = mha

        def forward(self, t):
            return self.a(t, t, t, need_weights=False)[0]

    assert count_flops(Self(), x) == want  # eval, no grad: aten._native_multi_head_attention
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # training path: linear layers and the fused kernel
        Self().train()(x)
    assert counter.get_total_flops() == want


def test_heads_ignore_round_to_and_survive_save_and_load(tmp_path):
    model, x = create_model("helpers_models:tiny_vit").eval(), torch.zeros(1, 3, 16, 16)
    cm = cost_model(model, x)
    group = "encoder.layers.encoder_layer_1.self_attention:heads"
    assert cm.multiple(group, 8) == 1 and cm.multiple("encoder.layers.encoder_layer_1.mlp.0", 8) == 8
    policy = Policy("heads", {group: 0.5}, {group: 2}, round_to=8)
    small = apply_policy(model, policy, x)
    assert type(small.encoder.layers[1].self_attention) is HeadAttention
    assert small.encoder.layers[1].self_attention.num_heads == 1
    assert cm.cost(policy.sparsity, round_to=8)["flops"] == count_flops(small, x)
    save_pruned(small, tmp_path / "out", x, num_classes=10, model_name="helpers_models:tiny_vit")
    back, _ = load_pruned(tmp_path / "out")
    with torch.no_grad():
        t = torch.randn(2, 3, 16, 16)
        assert torch.equal(back.eval()(t), small(t))


def test_taylor_ranks_heads_by_weight_times_gradient(monkeypatch):
    """Heads are ranked after the graph's groups are pruned; the gradients of the one backward pass
    must still be there then (Torch-Pruning prunes them with the weights)."""
    import autoprune.prune as prune
    from autoprune.data import load_dataset

    seen = []

    def spy(m, importance):
        seen.append((importance, m.in_proj_weight.grad is not None and m.out_proj.weight.grad is not None))
        return head_scores(m, importance)

    monkeypatch.setattr(prune, "head_scores", spy)

    splits = load_dataset("digits", image_size=16)
    x = splits.train[0][0].unsqueeze(0)
    model = create_model("helpers_models:tiny_vit", in_channels=x.shape[1]).eval()
    group = "encoder.layers.encoder_layer_0.self_attention:heads"
    small = apply_policy(model, Policy("h", {group: 0.5}, {group: 2}), x, importance="taylor",
                         grad_batch=gradient_batch(splits.train))
    assert seen == [("taylor", True)]
    assert small.autoprune_policy.importance == "taylor"
    assert len(small.autoprune_policy.indices[group]) == 1


class _Encoder(nn.Module):
    """A small transformer on nn.TransformerEncoderLayer, whose fused inference kernel hides its FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 4, 4)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.enc(self.embed(x).flatten(2).transpose(1, 2)).mean(1))


def test_a_transformer_encoder_loses_heads_and_widths_at_the_cost_the_model_predicts():
    import random

    from autoprune import fit_policy, prunable_groups
    from autoprune.budget import Budget

    torch.manual_seed(3)
    model, x = _Encoder().eval(), torch.zeros(1, 3, 16, 16)
    names = [g.name for g in prunable_groups(model, x)]
    assert {"enc.layers.0.self_attn:heads", "enc.layers.1.self_attn:heads"} <= set(names)
    cm = cost_model(model, x)
    # every layer's projections, attention and feed-forward counted (the fused kernel counted none)
    layer_flops = sum(v for k, v in cm._layer_flops.items() if k.startswith("enc."))
    assert layer_flops == 2 * (2 * 16 * 4 * 32 * 32 + 4 * 16 * 16 * 32 + 2 * 2 * 16 * 32 * 64)
    heads_lost = 0
    for seed in range(4):
        rng = random.Random(seed)
        policy = fit_policy(model, x, {g: rng.uniform(0.0, 0.8) for g in names}, [Budget.parse("flops", "50%")])
        small = apply_policy(model, policy, x)
        assert count_flops(small, x) == pytest.approx(cm.cost(policy.sparsity)["flops"], rel=1e-6)
        assert count_flops(small, x) <= 0.5 * cm.flops
        heads_lost += sum(4 - len(small.autoprune_policy.indices.get(f"enc.layers.{i}.self_attn:heads", range(4)))
                          for i in (0, 1))
        with torch.no_grad():
            assert small(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert heads_lost > 0


class _Odd(nn.Module):
    """Attention called the ways nn.MultiheadAttention allows: by keyword, twice, with a mask per head."""

    def __init__(self, per_head_mask: bool = False) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 4, 4)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.per_head_mask = per_head_mask
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        mask = None
        if self.per_head_mask:  # (batch * heads, L, L): head h may not attend to token h
            mask = torch.zeros(t.shape[0] * 4, t.shape[1], t.shape[1], dtype=torch.bool)
            for h in range(4):
                mask[h::4, :, h] = True
        t = self.attn(query=t, key=t, value=t, need_weights=False, attn_mask=mask)[0]
        t = self.attn(t, t, t, need_weights=False, attn_mask=mask)[0]
        return self.fc(t.mean(1))


@pytest.mark.parametrize("per_head_mask", [False, True])
def test_attention_called_by_keyword_twice_or_with_a_mask_per_head(per_head_mask):
    from autoprune import Budget, fit_policy, left_out_groups, prunable_groups

    torch.manual_seed(4)
    model, x = _Odd(per_head_mask).eval(), torch.zeros(1, 3, 16, 16)
    assert left_out_groups(model, x) == {}
    names = [g.name for g in prunable_groups(model, x)]
    assert "attn:heads" in names
    cm = cost_model(model, x)
    policy = fit_policy(model, x, {n: 0.5 for n in names}, [Budget.parse("flops", "50%")])
    small = apply_policy(model, policy, x)
    assert type(small.attn) is HeadAttention and small.attn.num_heads < 4
    assert count_flops(small, x) == pytest.approx(cm.cost(policy.sparsity)["flops"], rel=1e-6)
    if per_head_mask:  # the kept heads keep their own slices of the mask
        gone = sorted(set(range(4)) - set(small.attn.kept_heads))
        keep_all = Policy("k", {n: s for n, s in policy.sparsity.items() if n != "attn:heads"}, policy.channels,
                          indices={n: i for n, i in small.autoprune_policy.indices.items() if n != "attn:heads"})
        reference = apply_policy(model, keep_all, x)
        d = reference.attn.embed_dim // 4
        with torch.no_grad():
            for h in gone:
                reference.attn.out_proj.weight[:, h * d:(h + 1) * d] = 0
            t = torch.randn(2, 3, 16, 16)
            # one attention call: the second sees the first's output, which the zeroed heads change too
            e = reference.embed(t).flatten(2).transpose(1, 2)
            mask = torch.zeros(8, e.shape[1], e.shape[1], dtype=torch.bool)
            for h in range(4):
                mask[h::4, :, h] = True
            want = reference.attn(e, e, e, need_weights=False, attn_mask=mask)[0]
            got = small.attn(e, e, e, need_weights=False, attn_mask=mask)[0]
            assert torch.allclose(got, want, atol=1e-5)


def test_a_pruned_encoder_takes_a_padding_mask_and_unbatched_input():
    torch.manual_seed(5)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2).eval()  # nested tensors on by default
    holder = nn.Module()
    holder.enc = enc
    prune_heads(holder, "enc.layers.0.self_attn", [0, 2])
    t, padding = torch.randn(2, 6, 32), torch.zeros(2, 6, dtype=torch.bool)
    padding[:, -2:] = True
    with torch.no_grad():
        assert holder.enc(t, src_key_padding_mask=padding).shape == (2, 6, 32)
        small = holder.enc.layers[0].self_attn
        q = torch.randn(6, 32)
        assert torch.allclose(small(q, q, q, need_weights=False)[0], small(q[None], q[None], q[None],
                                                                           need_weights=False)[0][0], atol=1e-6)


def test_a_policy_counts_heads_unrounded():
    p = Policy("m", {"a:heads": 0.5, "conv": 0.5}, {"a:heads": 12, "conv": 12}, round_to=8)
    assert p.kept() == {"a:heads": 6, "conv": 8}


def test_a_single_head_attention_is_priced_by_its_width_too():
    """One head cannot lose heads, but its width can: its attention matmuls scale with the width once
    (left out as unpriceable when only layers that can lose heads were measured)."""
    from autoprune import Budget, left_out_groups, uniform_policy

    class One(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 32, 4, 4)
            self.attn = nn.MultiheadAttention(32, 1, batch_first=True)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            return self.fc(self.attn(t, t, t, need_weights=False)[0].mean(1))

    model, x = One().eval(), torch.zeros(1, 3, 16, 16)
    assert left_out_groups(model, x) == {}
    policy = uniform_policy(model, x, [Budget.parse("flops", "50%")])
    assert count_flops(apply_policy(model, policy, x), x) == cost_model(model, x).cost(policy.sparsity)["flops"]


def _timm_vit():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    return create_model("helpers_models:timm_tiny_vit").eval(), torch.randn(2, 3, 32, 32)


def test_timm_attention_loses_heads_at_the_cost_the_model_predicts(tmp_path):
    model, x = _timm_vit()
    names = {g.name: g.channels for g in prunable_groups(model, x)}
    assert names.get("blocks.0.attn:heads") == 4 and names.get("blocks.1.attn:heads") == 4
    cm = cost_model(model, x)
    for sparsity in ({"blocks.0.attn:heads": 0.25}, {"blocks.1.attn:heads": 0.75},
                     {"blocks.0.attn:heads": 0.5, "blocks.1.attn:heads": 0.5, "blocks.1.mlp.fc2": 0.5,
                      "blocks.0.mlp.fc1": 0.3}):
        policy = Policy("timm", sparsity, names, round_to=1)
        small = apply_policy(model, policy, x)
        for i, block in enumerate(small.blocks):
            kept = 4 - round(4 * sparsity.get(f"blocks.{i}.attn:heads", 0.0))
            assert block.attn.num_heads == kept and block.attn.attn_dim == 12 * kept
        assert cm.cost(sparsity)["flops"] == count_flops(small, x)
        assert cm.cost(sparsity)["params"] == sum(p.numel() for p in small.parameters())
        assert small(x).shape == (2, 10)
    save_pruned(small, tmp_path / "out", x, num_classes=10, model_name="helpers_models:timm_tiny_vit")
    back, _ = load_pruned(tmp_path / "out")
    assert torch.equal(back.eval()(x), small(x))


def test_removing_timm_heads_is_zeroing_what_they_contribute():
    model, x = _timm_vit()
    attn = model.blocks[0].attn  # no norm over the heads: a removed head's output only meets proj
    keep = [0, 2]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for h in (1, 3):
            zeroed.blocks[0].attn.proj.weight[:, 12 * h:12 * (h + 1)] = 0
    prune_heads(model, "blocks.0.attn", keep)
    assert attn.num_heads == 2 and attn.qkv.out_features == 72 and attn.proj.in_features == 24
    with torch.no_grad():
        assert torch.allclose(model(x), zeroed(x), atol=1e-5)


def test_excluding_timm_projections_excludes_their_heads_and_a_heads_group_owns_them():
    model, x = _timm_vit()
    groups = {g.name: g for g in prunable_groups(model, x)}
    assert {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.attn"} <= set(groups["blocks.0.attn:heads"].layers)
    kept = {g.name for g in prunable_groups(model, x, exclude=("blocks.0.attn.qkv",))}
    assert "blocks.0.attn:heads" not in kept and "blocks.1.attn:heads" in kept
