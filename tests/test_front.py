"""The front, the uniform curve, the gain over it, hypervolume and picking by size (pure pandas)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from autoprune.convergence import hypervolume, hypervolume_column, last_growth
from autoprune.front import (
    CONFIRM_PREFIX,
    best_trial,
    confirmation_table,
    confirmations_due,
    confirmed_best,
    gain_vs_uniform,
    pareto_front,
    pick_trial,
    promotions,
    proposed_count,
    top_rung,
    uniform_curve,
    uniform_origin,
    uniform_verdict,
)


def _trials(rows, cols=("trial", "status", "origin", "val_acc", "flops_ratio")):
    return pd.DataFrame(rows, columns=list(cols))


def test_pareto_front_keeps_only_non_dominated_ok_trials():
    t = _trials([
        (0, "ok", "uniform", 0.90, 0.50),
        (1, "ok", "optuna", 0.92, 0.50),   # beats 0 at equal size
        (2, "ok", "optuna", 0.85, 0.30),
        (3, "ok", "optuna", 0.80, 0.35),   # dominated by 2
        (4, "failed", "optuna", None, None),
        (5, "infeasible", "optuna", 0.99, 0.20),  # never on the front
        (6, "ok", "optuna", 0.85, 0.30),   # tie with 2: the earlier trial stays
    ])
    front = pareto_front(t, "flops")
    assert list(front["trial"]) == [2, 1]
    assert best_trial(front)["trial"] == 1


def test_empty_front():
    front = pareto_front(_trials([(0, "failed", "optuna", None, None)]), "flops")
    assert front.empty and best_trial(front) is None and pick_trial(front, "flops", 0.3) is None


def test_pick_by_size():
    front = pareto_front(_trials([(0, "ok", "o", 0.70, 0.20), (1, "ok", "o", 0.80, 0.30), (2, "ok", "o", 0.90, 0.50)]),
                         "flops")
    assert pick_trial(front, "flops")["trial"] == 2  # best within the budget
    assert pick_trial(front, "flops", 0.30)["trial"] == 1  # at or under 30%
    assert pick_trial(front, "flops", 0.25)["trial"] == 0
    assert pick_trial(front, "flops", 0.10) is None


def test_hypervolume_is_the_area_the_front_dominates_up_to_the_budget():
    assert hypervolume([], 0.5) == 0.0
    assert hypervolume([(0.3, 0.8), (0.5, 0.9)], 0.5) == pytest.approx(0.2 * 0.8)
    # a smaller point adds its strip; a dominated point and one over the reference add nothing
    assert hypervolume([(0.2, 0.5), (0.3, 0.8), (0.5, 0.9), (0.4, 0.6), (0.6, 1.0)], 0.5) == pytest.approx(
        0.1 * 0.5 + 0.2 * 0.8)


def test_hypervolume_column_and_last_growth():
    t = _trials([(0, "ok", "o", 0.80, 0.50), (1, "ok", "o", 0.70, 0.25), (2, "failed", "o", None, None),
                 (3, "ok", "o", 0.702, 0.25), (4, "ok", "o", 0.90, 0.30)])
    t["hypervolume"] = hypervolume_column(t, "flops", 0.5)
    assert t["hypervolume"].tolist() == pytest.approx([0.0, 0.175, 0.175, 0.1755, 0.25 * 0.0 + 0.05 * 0.702 + 0.2 * 0.9])
    assert last_growth(t) == (5, 4)  # trial 3's 0.3% is not growth; trial 4 (the 5th trial) is
    assert last_growth(t.iloc[:4]) == (2, 1)


def test_uniform_curve_takes_the_best_criterion_at_each_size_and_gain_interpolates():
    cols = ("trial", "status", "origin", "val_acc", "flops_ratio", "target_ratio", "importance")
    t = _trials([
        (0, "ok", uniform_origin("l1", 0.25), 0.60, 0.249, 0.25, "l1"),
        (1, "ok", uniform_origin("bn_scale", 0.25), 0.70, 0.250, 0.25, "bn_scale"),
        (2, "ok", uniform_origin("l1", 0.5), 0.90, 0.499, 0.5, "l1"),
        (3, "ok", uniform_origin("bn_scale", 0.5), 0.85, 0.500, 0.5, "bn_scale"),
        (4, "ok", "optuna", 0.85, 0.375, 0.375, "l1"),
        (5, "failed", uniform_origin("l1", 0.375), None, None, 0.375, "l1"),
    ], cols)
    curve = uniform_curve(t, "flops")
    assert curve["trial"].tolist() == [1, 2] and curve["val_acc"].tolist() == [0.70, 0.90]
    front = pareto_front(t, "flops")
    gain = gain_vs_uniform(front, curve, "flops")
    at = dict(zip(front["trial"], gain))
    assert at[4] == pytest.approx(0.85 - (0.70 + (0.375 - 0.250) / (0.499 - 0.250) * 0.20))
    assert at[1] == pytest.approx(0.0)
    assert math.isnan(gain_vs_uniform(front, curve.iloc[0:0], "flops").iloc[0])


def test_uniform_verdict_sets_the_gain_beside_the_validation_noise():
    cols = ("trial", "status", "origin", "val_acc", "flops_ratio", "target_ratio", "importance")
    t = _trials([
        (0, "ok", uniform_origin("l1", 0.25), 0.70, 0.25, 0.25, "l1"),
        (1, "ok", uniform_origin("l1", 0.5), 0.90, 0.50, 0.5, "l1"),
        (2, "ok", "optuna", 0.905, 0.50, 0.5, "l1"),  # +0.5 points
        (3, "ok", "optuna", 0.95, 0.50, 0.5, "l1"),  # +5 points
    ], cols)
    # on 1,000 images the noise at 90% is 2 * sqrt(0.9 * 0.1 / 1000) = 1.9 points
    within = uniform_verdict(t.iloc[2], t, "flops", 1000)
    assert "+0.50 points" in within and "within" in within and "uniform pruning is as good" in within
    beyond = uniform_verdict(t.iloc[3], t, "flops", 1000)
    assert "+5.00 points" in beyond and "beyond" in beyond and "as good" not in beyond
    # on 100,000 images the same half point is beyond the noise (0.19 points)
    assert "beyond" in uniform_verdict(t.iloc[2], t, "flops", 100_000)
    assert "uniform pruning is the answer" in uniform_verdict(t.iloc[1], t, "flops", 1000)
    assert "noise unknown" in uniform_verdict(t.iloc[3], t, "flops", None)


RUNG_COLS = ("trial", "status", "origin", "val_acc", "flops_ratio", "target_ratio", "importance", "epochs", "parent")


def _rung0():
    """Rung 0 (0.1 epoch): the uniform curve at two sizes, two criteria each, and six Optuna trials."""
    return [
        (0, "ok", uniform_origin("l1", 0.5), 0.80, 0.50, 0.5, "l1", 0.1, None),
        (1, "ok", uniform_origin("bn_scale", 0.5), 0.78, 0.50, 0.5, "bn_scale", 0.1, None),
        (2, "ok", uniform_origin("l1", 0.25), 0.60, 0.25, 0.25, "l1", 0.1, None),
        (3, "ok", uniform_origin("bn_scale", 0.25), 0.65, 0.25, 0.25, "bn_scale", 0.1, None),
        (4, "ok", "optuna", 0.79, 0.50, 0.5, "l1", 0.1, None),     # largest and most accurate, gain -0.01
        (5, "ok", "optuna", 0.70, 0.30, 0.3, "l1", 0.1, None),     # small, gain +0.02 (curve 0.68)
        (6, "ok", "optuna", 0.75, 0.40, 0.4, "l1", 0.1, None),     # gain +0.01
        (7, "ok", "optuna", 0.60, 0.30, 0.3, "l1", 0.1, None),     # gain -0.08
        (8, "infeasible", "optuna", None, None, 0.3, "l1", 0.1, None),
        (9, "ok", "optuna", 0.71, 0.35, 0.35, "l1", 0.1, None),    # gain 0.00
    ]


def test_promotion_ranks_by_gain_over_the_uniform_curve_not_by_accuracy():
    t = _trials(_rung0(), RUNG_COLS)
    # five ok Optuna trials, reduction 3: the best ceil(5 / 3) = 2 by gain (5, then 6), never trial 4,
    # the most accurate; and the uniform curve's points at both sizes (3, then 0)
    assert promotions(t, "flops", (0.1, 0.5), 3) == (0.5, [3, 0, 5, 6])
    assert promotions(t, "flops", (0.1,), 3) is None  # no rung above the trials' own


def test_promotion_can_take_every_criterion_of_the_uniform_policy_at_the_budget():
    t = _trials(_rung0(), RUNG_COLS)
    # at the budget (0.5) L1 (0) led BatchNorm scale (1); with all_criteria both go up, at the smaller
    # size only the leader (3), and the others as before
    assert promotions(t, "flops", (0.1, 0.5), 3, all_criteria=True) == (0.5, [3, 0, 1, 5, 6])
    rows = _rung0() + [(10, "ok", uniform_origin("bn_scale", 0.5), 0.82, 0.50, 0.5, "bn_scale", 0.5, 1)]
    t = _trials(rows, RUNG_COLS)
    assert promotions(t, "flops", (0.1, 0.5), 3, all_criteria=True) == (0.5, [3, 0, 5, 6])  # 1 was run
    assert promotions(t, "flops", (0.1, 0.5), 3) == (0.5, [3, 0, 5, 6])


def test_promotion_resumes_where_it_stopped_and_climbs_rung_by_rung():
    rows = _rung0() + [(10, "ok", uniform_origin("bn_scale", 0.25), 0.70, 0.25, 0.25, "bn_scale", 0.5, 3),
                       (11, "failed", uniform_origin("l1", 0.5), None, None, 0.5, "l1", 0.5, 0)]
    t = _trials(rows, RUNG_COLS)
    assert promotions(t, "flops", (0.1, 0.5, 1.0), 3) == (0.5, [5, 6])  # 3 and 0 were run (0 failed)
    rows += [(12, "ok", "optuna", 0.74, 0.30, 0.3, "l1", 0.5, 5), (13, "ok", "optuna", 0.80, 0.40, 0.4, "l1", 0.5, 6)]
    t = _trials(rows, RUNG_COLS)
    # rung 2 draws on rung 1's ok trials: the curve is the uniform point 10 alone (flat), so the gain
    # favours 13 (0.80) over 12 (0.74); ceil(2 / 3) = 1 of them
    assert promotions(t, "flops", (0.1, 0.5, 1.0), 3) == (1.0, [10, 13])
    top = top_rung(t)
    assert set(top["trial"]) == {10, 11, 12, 13}  # the highest fidelity any ok trial reached
    front = pareto_front(t, "flops")
    assert set(front["trial"]) <= {10, 12, 13} and 4 not in set(front["trial"])
    assert uniform_curve(t, "flops")["trial"].tolist() == [10]


def test_promotions_add_nothing_to_the_hypervolume_nor_to_the_trial_count():
    # a rerun (10), then one more searched trial (11, after a resume with a larger --trials) that grows the front
    rows = _rung0() + [(10, "ok", "optuna", 0.99, 0.25, 0.25, "l1", 0.5, 5),
                       (11, "ok", "optuna", 0.95, 0.20, 0.2, "l1", 0.1, None)]
    t = _trials(rows, RUNG_COLS)
    hv = hypervolume_column(t, "flops", 0.5)
    assert math.isnan(hv[10]) and hv[9] == pytest.approx(hypervolume_column(t.iloc[:10], "flops", 0.5)[-1])
    assert hv[11] > hv[9] * 1.01
    t["hypervolume"] = hv
    assert last_growth(t) == (11, 11)  # the 11th searched trial: the rerun is not counted
    assert proposed_count(t) == 11
    assert top_rung(t.iloc[:10]).equals(t.iloc[:10])  # no promotion: the whole table


def test_confirmation_reruns_the_best_candidates_and_the_uniform_at_the_budget_and_names_best():
    t = _trials(_rung0(), RUNG_COLS)
    # the uniform curve's point at the budget (0: L1 beats BatchNorm scale there), then the most
    # accurate others by validation accuracy, whatever their origin (4, then the other criterion's
    # uniform 1, then 6): confirmation compares like for like
    assert confirmations_due(t, "flops", 2) == [0, 4, 1]
    assert confirmations_due(t, "flops", 3) == [0, 4, 1, 6]
    assert confirmations_due(t, "flops", 0) == [] and confirmed_best(t) is None
    rows = _rung0() + [(10, "ok", CONFIRM_PREFIX + uniform_origin("l1", 0.5), 0.86, 0.50, 0.5, "l1", 0.5, 0),
                       (11, "ok", CONFIRM_PREFIX + "optuna", 0.84, 0.50, 0.5, "l1", 0.5, 4)]
    t = _trials(rows, RUNG_COLS)
    assert confirmations_due(t, "flops", 3) == [1, 6]  # a resume confirms only what is missing
    rows += [(12, "ok", CONFIRM_PREFIX + "optuna", 0.87, 0.40, 0.4, "l1", 0.5, 6),
             (13, "failed", CONFIRM_PREFIX + uniform_origin("bn_scale", 0.5), None, None, 0.5, "bn_scale", 0.5, 1)]
    t = _trials(rows, RUNG_COLS)
    assert confirmations_due(t, "flops", 3) == []  # a failed confirmation is not run again
    assert int(confirmed_best(t)["trial"]) == 12  # best is the best confirmed, not the search's 0.80
    # the front, the uniform curve, the rungs and the trial count never see the confirmations
    assert pareto_front(t, "flops")["trial"].tolist() == pareto_front(t.iloc[:10], "flops")["trial"].tolist()
    assert uniform_curve(t, "flops").equals(uniform_curve(t.iloc[:10], "flops"))
    assert promotions(t, "flops", (0.1, 0.5), 3) == promotions(t.iloc[:10], "flops", (0.1, 0.5), 3)
    assert proposed_count(t) == 10
    table = confirmation_table(t, "flops").splitlines()
    assert "search_val_acc" in table[0] and "confirmed_val_acc" in table[0]
    assert table[1].split()[:2] == ["12", "6"] and "0.7500" in table[1] and "0.8700" in table[1]
    assert len(table) == 5  # a header and the four confirmations, the failed one included


def test_batchnorm_only_picks_are_made_near_the_budget():
    """A score after BatchNorm recalibration alone does not compare across sizes (issue 24): with
    ``near_budget`` the pick is the best trial sized within [0.9, 1] x the budget, even where a much
    smaller one scored higher; a confirmed candidate still wins, and without any trial near the
    budget the front's best is the pick."""
    from autoprune.front import NEAR_BUDGET, best_pick, near_budget_trial

    t = _trials([
        (0, "ok", "uniform:l1@0.250", 0.40, 0.249),
        (1, "ok", "optuna", 0.55, 0.080),    # the front's best: a third of the budget
        (2, "ok", "optuna", 0.45, 0.240),    # the best near the budget
        (3, "ok", "optuna", 0.60, 0.200),    # higher, but under 0.9 x the budget
        (4, "infeasible", "optuna", None, None),
    ])
    front = pareto_front(t, "flops")
    assert int(best_pick(t, front, "flops")["trial"]) == 3
    assert int(best_pick(t, front, "flops", near_budget=0.25)["trial"]) == 2
    assert int(near_budget_trial(t, "flops", 0.25)["trial"]) == 2
    assert near_budget_trial(t, "flops", 0.5) is None  # nothing within [0.45, 0.5]
    assert int(best_pick(t, front, "flops", near_budget=0.5)["trial"]) == 3
    assert NEAR_BUDGET == pytest.approx(0.9)


def test_a_run_of_batchnorm_only_trials_picks_near_its_budget():
    from autoprune.config import SearchConfig
    from autoprune.results import near_budget_of

    base = {"flops": 1000.0, "params": 50.0}
    assert near_budget_of(SearchConfig(budget_flops="25%", finetune_epochs=0), base) == pytest.approx(0.25)
    assert near_budget_of(SearchConfig(budget_flops="250", finetune_epochs=0), base) == pytest.approx(0.25)
    assert near_budget_of(SearchConfig(budget_flops="25%", finetune_epochs=0.1), base) is None
    assert near_budget_of(SearchConfig(budget_flops="25%", finetune_epochs=0, rungs="0.2"), base) is None
