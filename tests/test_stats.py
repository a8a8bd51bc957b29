from __future__ import annotations

import math
import statistics

import pytest

from autoprune.stats import accuracy_noise, paired_interval, t95, verdict


def test_paired_interval_is_the_paired_t_interval():
    diffs = [0.01, 0.02, 0.00, 0.03, 0.01]
    mean, lo, hi = paired_interval(diffs)
    half = 2.776 * statistics.stdev(diffs) / math.sqrt(5)  # t(0.975, 4 df)
    assert mean == pytest.approx(0.014) and lo == pytest.approx(0.014 - half) and hi == pytest.approx(0.014 + half)
    one = paired_interval([0.5])
    assert one[0] == 0.5 and math.isnan(one[1]) and math.isnan(one[2])
    with pytest.raises(ValueError, match="at least one"):
        paired_interval([])


def test_t95_falls_back_to_the_smaller_tabled_df():
    assert t95(2) == 4.303 and t95(11) == t95(10) and math.isnan(t95(0))


def test_verdict_is_a_tie_when_the_interval_holds_zero():
    assert verdict(0.1, 0.5, "a") == "a ahead" and verdict(-0.5, -0.1, "a") == "a behind"
    assert verdict(-0.1, 0.1, "a") == "tie"


def test_accuracy_noise():
    assert accuracy_noise(0.9, 1000) == pytest.approx(2 * math.sqrt(0.09 / 1000))
    assert accuracy_noise(1.0, 50) == 0.0 and math.isnan(accuracy_noise(0.5, 0))
