from __future__ import annotations

import math

import pytest
import torch

from autoprune.budget import Budget
from autoprune.latency import measure_latency, relative_latency
from autoprune.models import create_model
from autoprune.prune import InfeasibleError, apply_policy, count_flops, uniform_policy

BATCH = 16



@pytest.fixture(scope="module")
def resnet56():
    torch.manual_seed(0)
    return create_model("resnet56").eval(), torch.randn(1, 3, 32, 32)


def test_measure_latency_positive():
    model, x = create_model("resnet20"), torch.randn(1, 3, 32, 32)
    ms = measure_latency(model, x, batch_size=2, warmup=1, repeats=3)
    assert isinstance(ms, float) and math.isfinite(ms) and ms > 0
    assert not model.training  # measured in eval mode


def test_pruned_is_faster(resnet56):
    model, x = resnet56
    small = apply_policy(model, uniform_policy(model, x, [Budget.parse("flops", "25%")]), x)
    assert count_flops(small, x) <= 0.25 * count_flops(model, x)
    pruned_ms, base_ms = relative_latency(small, model, x, batch_size=BATCH, warmup=2, repeats=7)
    assert pruned_ms > 0 and base_ms > 0
    assert pruned_ms / base_ms < 0.9, (pruned_ms, base_ms)


def test_latency_budget_met_or_infeasible():
    """A latency budget is met as measured, or refused; never an over-budget policy returned silently."""
    torch.manual_seed(0)
    model, x = create_model("resnet20").eval(), torch.randn(1, 3, 32, 32)  # resnet20: 4x cheaper to time
    try:
        policy = uniform_policy(model, x, [Budget.parse("latency", "80%")], latency_batch=BATCH)
    except InfeasibleError as e:
        assert "latency" in str(e)
        return
    small = apply_policy(model, policy, x)
    pruned_ms, base_ms = relative_latency(small, model, x, batch_size=BATCH, warmup=2, repeats=7)
    assert pruned_ms / base_ms <= 0.85, (pruned_ms, base_ms)  # 80% plus room for timing noise
