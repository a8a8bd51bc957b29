"""The per-layer latency table (issue 25): interpolation, the cache, the round trip, and a fit that
chooses its size by the prediction and so measures once."""
from __future__ import annotations

import pytest
import torch

import autoprune.latency
from autoprune.budget import Budget
from autoprune.costs import count_flops
from autoprune.fit import LATENCY_FILL, uniform_policy
from autoprune.latency_model import LatencyModel, _counts, _Layer
from autoprune.models import create_model
from autoprune.prune import apply_policy, cost_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_layer_interpolates_bilinearly_and_clamps():
    layer = _Layer("conv", outs=[8, 16], ins=[4, 12], ms=[[1.0, 3.0], [2.0, 6.0]])
    assert layer.at(8, 4) == 1.0 and layer.at(16, 12) == 6.0
    assert layer.at(12, 8) == pytest.approx((1.0 + 3.0 + 2.0 + 6.0) / 4)
    assert layer.at(100, 0) == 2.0  # outside the grid: its edge


def test_bucket_counts_are_multiples_of_round_to_and_include_the_full_width():
    assert _counts(64, 8) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert _counts(20, 8) == [8, 16, 20]
    assert all(c % 4 == 0 for c in _counts(48, 1, multiple=4))


@pytest.fixture
def small_model(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    return create_model("helpers_models:tiny").eval(), torch.zeros(1, 3, 16, 16)


def test_table_is_cached_and_round_trips(small_model, monkeypatch, tmp_path):
    model, x = small_model
    lm = LatencyModel.build(model, x, round_to=4)
    assert {layer.name for layer in lm.layers} == {"0", "3", "8"}  # both convs and the classifier's input side
    assert lm.base_ms > 0 and len(list((tmp_path / "latency").glob("*.json"))) == 1
    shape = {"0": 0.5, "3": 0.25}
    # A second build reads the cache: nothing is timed.
    monkeypatch.setattr(autoprune.latency, "measure_latency", lambda *a, **k: pytest.fail("timed again"))
    again = LatencyModel.build(model, x, round_to=4)
    assert again.predict(shape) == lm.predict(shape)
    copy = LatencyModel.from_dict(cost_model(model, x), lm.to_dict())
    assert copy.predict(shape) == lm.predict(shape) and copy.predict({}) == lm.predict({})
    # other settings are another table
    with pytest.raises(BaseException, match="timed again"):
        LatencyModel.build(model, x, round_to=2)


class _Exact:
    """A latency model that knows the truth: latency = FLOPs share ** 2 of 10 ms."""

    def __init__(self, model, x):
        self.cm, self.base_ms = cost_model(model, x), 10.0

    def predict(self, sparsity, round_to=None):
        return self.base_ms * (self.cm.cost(sparsity, round_to or 1)["flops"] / self.cm.flops) ** 2


def _flops_power_timer(calls: list, power: float):
    """A stand-in for relative_latency: latency as the FLOPs share to ``power``, each call counted."""
    def timer(pruned, original, x, **_):
        calls.append(1)
        return 10.0 * (count_flops(pruned, x) / count_flops(original, x)) ** power, 10.0
    return timer


def test_a_fit_with_an_accurate_latency_model_measures_once(monkeypatch):
    model, x = create_model("resnet20").eval(), torch.randn(1, 3, 32, 32)
    calls = []
    monkeypatch.setattr(autoprune.latency, "relative_latency", _flops_power_timer(calls, 2))
    policy = uniform_policy(model, x, [Budget.parse("latency", "60%")], latency_model=_Exact(model, x))
    share = count_flops(apply_policy(model, policy, x), x) / count_flops(model, x)
    assert 0.6 * (1 - LATENCY_FILL) <= share ** 2 <= 0.6
    assert len(calls) == 1
    # Without it the same fit measures several sizes (the FLOPs share is a poor first guess here).
    calls.clear()
    uniform_policy(model, x, [Budget.parse("latency", "60%")])
    assert len(calls) > 1


def test_a_biased_latency_model_is_corrected_by_the_measurement(monkeypatch):
    """A table that predicts 30% too fast: the first measurement misses, its ratio corrects the next."""
    model, x = create_model("resnet20").eval(), torch.randn(1, 3, 32, 32)
    monkeypatch.setattr(autoprune.latency, "relative_latency",
                        lambda p, o, x, **_: (10.0 * (count_flops(p, x) / count_flops(o, x)) ** 2, 10.0))
    biased = _Exact(model, x)
    biased.predict = lambda s, round_to=None, f=biased.predict: 0.7 * f(s, round_to)
    policy = uniform_policy(model, x, [Budget.parse("latency", "60%")], latency_model=biased)
    share = count_flops(apply_policy(model, policy, x), x) / count_flops(model, x)
    assert 0.6 * (1 - LATENCY_FILL) <= share ** 2 <= 0.6


def test_rescale_puts_a_cached_table_on_todays_scale(small_model):
    model, x = small_model
    lm = LatencyModel.build(model, x, round_to=4)
    before = lm.predict({"0": 0.5})
    again = LatencyModel.build(model, x, round_to=4, base_ms=2 * lm.base_ms)  # from the cache, machine 2x slower
    assert again.base_ms == pytest.approx(2 * lm.base_ms)
    assert again.predict({"0": 0.5}) == pytest.approx(2 * before)


def test_a_latency_model_whose_error_grows_with_size_is_bracketed_not_chased(monkeypatch):
    """The table predicts latency linear in FLOPs; the truth grows as FLOPs ** 2.5. Correcting each guess
    by the last measured/predicted ratio alone overshoots back and forth (mobilenetv3-small did so
    until its six measurements ran out, 15-20% under its target); once two measurements bracket the
    aim the fit interpolates between them and lands within the fill window in a few measurements."""
    model, x = create_model("resnet20").eval(), torch.randn(1, 3, 32, 32)
    calls = []
    monkeypatch.setattr(autoprune.latency, "relative_latency", _flops_power_timer(calls, 2.5))
    linear = _Exact(model, x)
    linear.predict = lambda s, round_to=None: linear.base_ms * linear.cm.cost(s, round_to or 1)["flops"] / linear.cm.flops
    policy = uniform_policy(model, x, [Budget.parse("latency", "60%")], latency_model=linear, round_to=1)
    share = count_flops(apply_policy(model, policy, x), x) / count_flops(model, x)
    assert 0.6 * (1 - LATENCY_FILL) <= share ** 2.5 <= 0.6
    assert len(calls) <= 4


def test_next_aim_interpolates_inside_the_bracket_and_otherwise_corrects_by_the_last_ratio():
    from autoprune.fit import _next_aim

    goal = 1 - LATENCY_FILL / 2
    # one measurement: the last measured/predicted ratio corrects the aim
    assert _next_aim([(1.0, 0.8)]) == pytest.approx(goal / 0.8)
    # a bracket on a power law (measured = predicted ** 2) lands on it in one step
    aim = _next_aim([(0.8, 0.64), (1.2, 1.44)])
    assert aim ** 2 == pytest.approx(goal)
    # ...and a step is kept inside 10-90% of the bracket (in log) however lopsided the measurements
    lo, hi = 0.9, 1.1
    assert lo * (hi / lo) ** 0.1 <= _next_aim([(lo, 0.9499), (hi, 50.0)]) <= lo * (hi / lo) ** 0.9
    # noise put a measurement under the aim at a larger prediction than one over it: the bracket
    # is the closest pair that is in order, not the inverted one
    aim = _next_aim([(0.8, 0.64), (1.2, 1.44), (1.3, 0.9)])
    assert 0.8 < aim < 1.2 and aim ** 2 == pytest.approx(goal)
