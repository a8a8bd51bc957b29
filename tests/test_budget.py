from __future__ import annotations

import json
import random

import pytest

from autoprune.budget import Budget, fit_to_budgets, scale_keep
from autoprune.errors import AutopruneError, BudgetError

GOOD = [
    # (kind, text, value, relative)
    ("flops", "50%", 0.5, True),
    ("flops", "0.5", 0.5, True),
    ("flops", "120M", 1.2e8, False),
    ("flops", "1.2G", 1.2e9, False),
    ("flops", "3.5e8", 3.5e8, False),
    ("params", "300k", 3e5, False),
    ("params", "1.5M", 1.5e6, False),
    ("params", "40%", 0.4, True),
    ("latency", "4ms", 4.0, False),
    ("latency", "800us", 0.8, False),
    ("latency", "60%", 0.6, True),
    ("latency", "0.6", 0.6, True),
    ("flops", " 50 % ", 0.5, True),  # what a shell or YAML may leave around the text
]

BAD = [
    ("flops", "150%"),
    ("flops", "-10%"),
    ("flops", "0%"),
    ("flops", "fifty"),
    ("flops", "2x"),
    ("flops", "5parsecs"),
    ("flops", ""),
    ("flops", "100%"),
    ("flops", "0"),
    ("params", "-3M"),
    ("latency", "4"),  # a bare number >= 1 has no unit
    ("latency", "4M"),
    ("latency", "-4ms"),
]

# An example of the accepted forms that every error should show, per kind.
EXAMPLES = {"flops": "50%", "params": "50%", "latency": "60%"}


@pytest.mark.parametrize("kind, text, value, relative", GOOD, ids=[f"{k}={t}" for k, t, *_ in GOOD])
def test_parse_good(kind, text, value, relative):
    b = Budget.parse(kind, text)
    assert b.kind == kind
    assert b.relative is relative
    assert b.value == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("kind, text", BAD, ids=[f"{k}={t!r}" for k, t in BAD])
def test_parse_bad_names_text_and_forms(kind, text):
    with pytest.raises(BudgetError) as info:
        Budget.parse(kind, text)
    msg = str(info.value)
    assert isinstance(info.value, AutopruneError)
    assert repr(text) in msg, msg
    # The example must be there besides the bad text itself ('150%' contains '50%').
    assert EXAMPLES[kind] in msg.replace(repr(text), ""), msg


def test_parse_unknown_kind():
    with pytest.raises(BudgetError, match="energy") as info:
        Budget.parse("energy", "50%")
    for kind in ("flops", "params", "latency"):
        assert kind in str(info.value)
    with pytest.raises(BudgetError, match="energy"):
        Budget("energy", 0.5, True)




def test_limit_relative_and_absolute():
    assert Budget.parse("flops", "50%").limit(200e6) == pytest.approx(100e6)
    assert Budget.parse("flops", "120M").limit(200e6) == pytest.approx(120e6)
    assert Budget.parse("flops", "120M").ratio(200e6) == pytest.approx(0.6)
    assert Budget.parse("latency", "4ms").limit(10.0) == pytest.approx(4.0)


@pytest.mark.parametrize("kind, text, unpruned", [
    ("flops", "120M", 100e6),
    ("flops", "120M", 120e6),  # equal: nothing to prune
    ("params", "300k", 2e5),
    ("latency", "4ms", 3.0),
])
def test_limit_absolute_above_unpruned(kind, text, unpruned):
    with pytest.raises(BudgetError, match=text):
        Budget.parse(kind, text).limit(unpruned)


@pytest.mark.parametrize("kind, text", [(k, t) for k, t, *_ in GOOD])
def test_dict_round_trip(kind, text):
    b = Budget.parse(kind, text)
    back = Budget.from_dict(json.loads(json.dumps(b.to_dict())))
    assert back == b


# ---------------------------------------------------------------------------------------------
# fit_to_budgets with synthetic monotone costs: a chain of layers whose FLOPs are products of the
# widths of neighbouring groups, like a plain CNN.

CHANNELS = {"g0": 32, "g1": 64, "g2": 64, "g3": 128, "g4": 128, "g5": 256}


def _chain(widths: list[float]) -> dict[str, float]:
    flops = 27 * widths[0] + sum(9 * a * b for a, b in zip(widths, widths[1:])) + 10 * widths[-1]
    params = flops / 2 + sum(widths)
    return {"flops": float(flops), "params": float(params)}


def continuous_cost(p):
    """Kept shares taken exactly: the cost is smooth, so bisection can land anywhere."""
    return _chain([n * (1 - p.get(g, 0.0)) for g, n in CHANNELS.items()])


def rounded_cost(p):
    """Whole channels, as the real pruning engine keeps them."""
    return _chain([max(1, n - int(round(p.get(g, 0.0) * n))) for g, n in CHANNELS.items()])


FULL = continuous_cost({})


def _proposal(seed: int, high: float = 0.5) -> dict[str, float]:
    rng = random.Random(seed)
    return {g: rng.uniform(0.0, high) for g in CHANNELS}


def test_fit_keeps_proposal_within_budget():
    proposal = _proposal(0)
    limits = {"flops": FULL["flops"] * 0.99}
    assert continuous_cost(proposal)["flops"] <= limits["flops"]
    assert fit_to_budgets(proposal, continuous_cost, limits) == proposal
    assert fit_to_budgets(proposal, continuous_cost, {}) == proposal


@pytest.mark.parametrize("cost", [continuous_cost, rounded_cost], ids=["continuous", "rounded"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("share", [0.5, 0.3])
def test_fit_lands_just_below_limit(cost, seed, share):
    proposal = _proposal(seed, high=0.3)
    limits = {"flops": share * FULL["flops"]}
    assert cost(proposal)["flops"] > limits["flops"]  # the test needs a proposal over budget
    fitted = fit_to_budgets(proposal, cost, limits)
    assert fitted is not None
    assert set(fitted) == set(proposal)
    reached = cost(fitted)["flops"]
    assert reached <= limits["flops"]
    assert reached >= 0.98 * limits["flops"]
    # Fitting only ever removes channels.
    assert all(fitted[g] >= proposal[g] - 1e-12 for g in proposal)
    assert all(0.0 <= s < 1.0 for s in fitted.values())


def test_fit_meets_every_limit():
    proposal = _proposal(3, high=0.2)
    limits = {"flops": 0.6 * FULL["flops"], "params": 0.4 * FULL["params"]}
    fitted = fit_to_budgets(proposal, rounded_cost, limits)
    assert fitted is not None
    reached = rounded_cost(fitted)
    assert reached["flops"] <= limits["flops"]
    assert reached["params"] <= limits["params"]
    # the params limit binds here
    assert reached["params"] >= 0.98 * limits["params"]


@pytest.mark.parametrize("cost", [continuous_cost, rounded_cost], ids=["continuous", "rounded"])
def test_fit_unreachable_returns_none(cost):
    floor = cost(scale_keep({g: 0.0 for g in CHANNELS}, 0.0))
    assert fit_to_budgets(_proposal(0), cost, {"flops": floor["flops"] * 0.5}) is None
    assert fit_to_budgets(_proposal(0), cost, {"flops": 1.0}) is None


def test_scale_keep():
    assert scale_keep({"a": 0.0, "b": 0.5}, 1.0) == {"a": 0.0, "b": 0.5}
    assert scale_keep({"a": 0.0, "b": 0.5}, 0.5) == pytest.approx({"a": 0.5, "b": 0.75})
    assert scale_keep({"a": 0.0}, 0.0, max_sparsity=0.9) == {"a": 0.9}
