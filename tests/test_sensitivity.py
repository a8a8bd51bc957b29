"""Per-group sensitivity and the warm-start shape it suggests."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from autoprune.data import load_dataset
from autoprune.probe import prunable_groups
from autoprune.sensitivity import group_sensitivity, sensitivity_shape
from autoprune.training import TrainConfig, evaluate, recalibrate_bn, train


def test_shape_keeps_more_of_the_sensitive_groups():
    shape = sensitivity_shape({"a": 0.90, "b": 0.30, "c": 0.60, "d": 0.60})
    assert shape["a"] == pytest.approx(0.75) and shape["b"] == 0.0  # robust pruned most, fragile least
    assert shape["c"] == shape["d"] == pytest.approx(0.75 * 1.5 / 3)  # a tie shares its mean rank
    assert sensitivity_shape({"only": 0.5}) == {"only": 0.375}


@pytest.fixture(scope="module")
def trained():
    splits = load_dataset("digits", image_size=8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    train(model, splits.train, TrainConfig(epochs=3, lr=0.05, batch_size=64), device="cpu")
    return model, splits


def test_each_group_is_measured_alone_and_the_model_is_untouched(trained):
    model, splits = trained
    x = splits.example_input()
    groups = [g.name for g in prunable_groups(model, x)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kept = group_sensitivity(model, x, groups, splits.train, splits.val, sparsity=0.9, device="cpu",
                             val_images=len(splits.val))
    assert set(kept) == set(groups) and len(groups) == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # pruning nothing costs nothing: every group scores what the whole model scores after the same
    # BatchNorm recalibration
    none = group_sensitivity(model, x, groups, splits.train, splits.val, sparsity=0.0, device="cpu",
                             val_images=len(splits.val))
    import copy

    whole = copy.deepcopy(model)
    recalibrate_bn(whole, splits.train, device="cpu", batches=5, batch_size=64, seed=0)
    assert all(v == pytest.approx(evaluate(whole, splits.val, device="cpu")) for v in none.values())
    assert min(kept.values()) < min(none.values())  # removing 90% of a group's channels costs accuracy


def test_a_group_that_cannot_be_measured_is_left_out(trained, monkeypatch):
    import autoprune.sensitivity as sens

    model, splits = trained
    x = splits.example_input()
    groups = [g.name for g in prunable_groups(model, x)]
    real = sens.apply_policy

    def broken(m, policy, *a, **k):
        if groups[0] in policy.sparsity:
            raise RuntimeError("this group breaks the pruner")
        return real(m, policy, *a, **k)

    monkeypatch.setattr(sens, "apply_policy", broken)
    kept = group_sensitivity(model, x, groups, splits.train, splits.val, sparsity={g: 0.5 for g in groups},
                             device="cpu")
    assert set(kept) == set(groups[1:])
