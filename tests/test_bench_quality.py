"""The paired statistics behind the README's claims (scripts/bench_quality.py), on made-up rows."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "scripts" / "bench_quality.py"


@pytest.fixture(scope="module")
def bq():
    spec = importlib.util.spec_from_file_location("bench_quality", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(method, seed, val, test, pick="trial 0 (uniform:l1@0.250, l1)"):
    return {"model": "resnet20", "dataset": "fashion_mnist", "budget": "25%", "method": method, "seed": str(seed),
            "val_acc": str(val), "test_acc": str(test), "pick": pick}


def test_levers_pair_each_variant_with_the_default_on_validation_and_test(bq):
    rows = [_row("autoprune", s, 0.90, 0.91) for s in range(5)]
    # centred: the same final on seeds 0-2 (another trial named it), ahead on validation on 3 and 4
    rows += [_row("autoprune_centred", s, 0.90, 0.91, pick="trial 5 (confirm:uniform:l1@0.250, l1)")
             for s in range(3)]
    rows += [_row("autoprune_centred", 3, 0.902, 0.905), _row("autoprune_centred", 4, 0.903, 0.912)]
    rows += [_row("autoprune_mf", s, 0.89 + 0.001 * s, 0.90) for s in range(5)]  # behind on every seed
    rows += [_row("uniform", s, 0.80, 0.80) for s in range(5)]  # not a variant: left out
    out = {r["variant"]: r for r in bq.levers(rows)}
    assert set(out) == {"autoprune_centred", "autoprune_mf"}
    c = out["autoprune_centred"]
    assert c["seeds"] == 5 and c["same_final"] == 3
    assert c["val_diff_points"] == pytest.approx(0.1) and c["val_ahead"] == 2 and c["val_behind"] == 0
    assert c["test_diff_points"] == pytest.approx(-0.06) and c["test_ahead"] == 1 and c["test_behind"] == 1
    assert c["val_ci95_low"] < 0 < c["val_ci95_high"] and c["verdict"] == "tie"
    m = out["autoprune_mf"]
    assert m["val_diff_points"] == pytest.approx(-0.8) and m["val_behind"] == 5
    assert m["val_ci95_high"] < 0 and m["verdict"] == "variant behind"


def test_paired_interval_uses_student_t(bq):
    mean, lo, hi = bq._paired([0.01, 0.02, 0.03])
    # sd 0.01, n 3, t(2) = 4.303: half-width 4.303 * 0.01 / sqrt(3) = 0.02484, in points
    assert mean == pytest.approx(2.0) and hi - mean == pytest.approx(2.484, abs=1e-3) and mean - lo == hi - mean
