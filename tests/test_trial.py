"""One trial without Ray: faults become `failed` results with a reason, never exceptions."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from autoprune.config import SearchConfig
from autoprune.data import load_dataset
from autoprune.models import create_model, load_checkpoint
from autoprune.prune import apply_policy
from autoprune.trial import TRIAL_COLUMNS, TrialContext, TrialResult, run_trial


@pytest.fixture(scope="module")
def context(rand20):
    cfg = SearchConfig(budget_flops="50%", checkpoint=rand20, finetune_epochs=0.1, bn_batches=2, image_size=16)
    splits = load_dataset("digits", image_size=16)
    model = load_checkpoint(create_model("resnet20"), rand20)
    return TrialContext(cfg, model, splits.train, splits.val, splits.example_input(), device=torch.device("cpu"))


def uniform(context) -> dict[str, float]:
    return {g: 0.0 for g in context.group_names}  # filled up to the budget by the trial's fit


def test_ok_trial_measures_and_meets_budget(context):
    r = run_trial(context.config, uniform(context), context, trial=3, origin="uniform")
    assert r.status == "ok", r.error
    assert 0.0 <= r.val_acc <= 1.0 and 0.48 <= r.flops_ratio <= 0.5
    assert r.finetune_s > 0 and r.trial_s >= r.finetune_s
    assert {"fit", "prune", "finetune", "evaluate"} <= set(r.timings)
    row = r.to_row()
    assert list(row)[: len(TRIAL_COLUMNS)] == list(TRIAL_COLUMNS)
    assert row["policy"] == "policies/3.json" and any(k.startswith("s:") for k in row)


def test_result_round_trips_through_json(context):
    r = run_trial(context.config, uniform(context), context, trial=1, origin="uniform")
    back = TrialResult.from_json(r.to_json())
    assert back == r
    nan = r.replace(val_acc=float("nan"), status="failed", error="NaN")
    assert TrialResult.from_json(nan.to_json()).val_acc is None  # JSON has no NaN


def test_trial_policy_rebuilds_the_trial_model(context):
    """The policy a trial reports records the channels it kept: applied again, with no data, it
    gives the pruned model the trial started its finetune from."""
    r = run_trial(context.config.replace(finetune_epochs=0.0, bn_batches=0), uniform(context), context,
                  importance="taylor")
    assert r.status == "ok" and r.policy.indices
    again = apply_policy(context.model, r.policy, context.example)
    unrecorded = dataclasses.replace(r.policy, indices={})  # ranks channels by Taylor scores again
    by_taylor = apply_policy(context.model, unrecorded, context.example, grad_batch=context.gradient_batch)
    a, b = again.state_dict(), by_taylor.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_is_a_failed_trial(context):
    cfg = context.config.replace(finetune_lr=1e12)
    r = run_trial(cfg, uniform(context), context)
    assert r.status == "failed" and ("loss became" in r.error or "NaN" in r.error), r.error


def test_bad_proposal_is_a_failed_trial(context):
    r = run_trial(context.config, {"no.such.group": 0.5}, context)
    assert r.status == "failed" and "no.such.group" in r.error


def test_budget_out_of_reach_is_infeasible(context):
    tiny = context.config.replace(budget_flops="0.1%")
    ctx = TrialContext(tiny, context.model, context.train_ds, context.val_ds, context.example, device="cpu")
    r = run_trial(tiny, uniform(ctx), ctx)
    assert r.status == "infeasible" and "flops" in r.error and r.policy is None


def test_cuda_out_of_memory_is_a_failed_trial(context, monkeypatch):
    import autoprune.training

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(autoprune.training, "train", oom)
    r = run_trial(context.config, uniform(context), context)
    assert r.status == "failed" and r.error.startswith("CUDA out of memory")


def test_fill_budget_scales_a_small_proposal_up(context):
    small = context.fit({g: 0.8 for g in context.group_names})  # fill_budget is on by default
    ratio = context.costs.cost(small.sparsity)["flops"] / context.base_flops
    assert 0.49 <= ratio <= 0.5
    kept = context.config.replace(fill_budget=False)
    ctx2 = TrialContext(kept, context.model, context.train_ds, context.val_ds, context.example, device=context.device)
    as_is = ctx2.fit({g: 0.8 for g in context.group_names})
    assert all(math.isclose(s, 0.8) for s in as_is.sparsity.values())


def test_result_rejects_unknown_status():
    with pytest.raises(ValueError, match="maybe"):
        TrialResult(trial=0, status="maybe", origin="optuna")


def test_trial_prunes_with_its_criterion(context):
    # the context's config searches several criteria; each trial's policy says which one it used
    assert context.uniform().importance == context.config.importances[0]
    result = run_trial(context.config, uniform(context), context, trial=0, importance="bn_scale")
    assert result.status == "ok" and result.to_row()["importance"] == "bn_scale"
    assert result.policy.importance == "bn_scale"


def test_target_scales_the_shape_to_that_size(context):
    r = run_trial(context.config, {g: 0.1 * (i % 3) for i, g in enumerate(context.group_names)}, context,
                  target=0.3)
    assert r.status == "ok" and r.target_ratio == 0.3 and r.to_row()["target_ratio"] == 0.3
    assert 0.29 <= r.flops_ratio <= 0.3  # exactly its target, within the fit's tolerance, never over
    over = context.config.replace(budget_params="20%")  # every budget still holds: params bind first
    ctx = TrialContext(over, context.model, context.train_ds, context.val_ds, context.example, device="cpu")
    r = run_trial(over, uniform(ctx), ctx, target=0.45)
    assert r.status == "ok" and r.params_ratio <= 0.2 and r.flops_ratio < 0.45


@pytest.mark.parametrize("slower", [True, False], ids=["latency-falls-slower", "latency-falls-faster"])
def test_latency_objective_targets_latency_under_a_flops_budget(context, monkeypatch, slower):
    """--objective latency: a trial's target is a latency share, met from below whether latency
    falls slower than FLOPs (0.2 + 0.8 f, a stand-in timer) or faster (f squared), and the FLOPs
    budget still holds where it binds first."""
    import autoprune.latency
    from autoprune.costs import count_flops
    from autoprune.fit import LATENCY_FILL

    def latency(f: float) -> float:
        return 0.2 + 0.8 * f if slower else f * f

    def timer(pruned, original, x, device="cpu", batch_size=1, **_):
        return 10.0 * latency(count_flops(pruned, x) / count_flops(original, x)), 10.0

    monkeypatch.setattr(autoprune.latency, "relative_latency", timer)
    cfg = context.config.replace(budget_latency="90%", objective="latency")
    ctx = TrialContext(cfg, context.model, context.train_ds, context.val_ds, context.example, device="cpu",
                       groups=context.group_names)
    base = count_flops(context.model, context.example)
    shares = {}
    low, high = (0.4, 0.8) if slower else (0.16, 0.36)  # both within the FLOPs budget's reach or not
    for target in (low, high):
        policy = ctx.fit(uniform(ctx), target=target)
        shares[target] = count_flops(apply_policy(context.model, policy, context.example), context.example) / base
    assert low * (1 - LATENCY_FILL) <= latency(shares[low]) <= low  # at its target, FLOPs 25% or 40%
    assert 0.45 <= shares[high] <= 0.5  # the latency would need 75% or 60% of the FLOPs: the budget binds


def test_fit_never_goes_beyond_the_space_ranges(context):
    from autoprune.space import SearchSpace

    capped = context.config.replace(space=SearchSpace("capped", 0.0, 0.5))
    ctx = TrialContext(capped, context.model, context.train_ds, context.val_ds, context.example, device="cpu",
                       groups=context.group_names)
    policy = ctx.fit({g: 0.5 for g in ctx.group_names}, target=0.3)
    assert max(policy.sparsity.values()) <= 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_taylor_trial_on_cuda(context):
    """Data on the GPU, the baseline on the CPU: the Taylor batch follows the model copy."""
    dev = torch.device("cuda")
    ctx = TrialContext(context.config, context.model, context.train_ds.to(dev), context.val_ds.to(dev),
                       context.example, device=dev, groups=context.group_names)
    r = run_trial(context.config, uniform(ctx), ctx, importance="taylor")
    assert r.status == "ok", r.error


def test_distilling_trial_consults_the_unpruned_model_on_every_finetune_step(context):
    calls = []  # batch sizes the unpruned model itself saw (pruned copies inherit the hook; not counted)
    hook = context.model.register_forward_hook(
        lambda m, i, o: calls.append(i[0].shape[0]) if m is context.model else None)
    try:
        plain = run_trial(context.config, uniform(context), context, trial=5)
        during_plain = len(calls)
        distilled = run_trial(context.config.replace(distill=1.0), uniform(context), context, trial=5)
    finally:
        hook.remove()
    assert plain.status == distilled.status == "ok"
    steps = math.ceil(context.config.finetune_epochs * (len(context.train_ds) // context.config.batch_size))
    # The teacher runs once per finetune step, on the step's batch, only when distilling.
    assert calls[2 * during_plain:] == [context.config.batch_size] * steps, calls
    assert not context.model.training
    assert plain.val_acc != distilled.val_acc or plain.policy != distilled.policy


def test_a_centred_space_starts_from_the_uniform_policy(context):
    """With ``centre: uniform`` the all-ones multipliers are the uniform policy at any size, and a
    proposal's kept shares stay within spread^2 of each other before the budget's scaling."""
    from autoprune.space import load_space

    space = load_space("centred")
    groups = context.group_names
    for target in (0.2, 0.4):
        centred = context.fit(space.to_proposal(space.uniform_point(groups)), target=target)
        assert centred.sparsity == pytest.approx(context.uniform(target=target).sparsity)


@pytest.mark.parametrize("penalty", [2.0, 1.0], ids=["odd-counts-slow", "counts-free"])
def test_the_uniform_curve_under_a_latency_objective_uses_multiples_of_8_where_they_are_faster(
        context, monkeypatch, penalty):
    """A stand-in timer where a convolution whose output count is not a multiple of 8 costs ``penalty``
    times more: the uniform policy at a latency target then keeps more FLOPs with multiples of 8, and
    the search's uniform warm starts use them; where counts are free, the run's rounding stays."""
    import autoprune.latency
    from autoprune.prune import _CACHE
    from autoprune.driver import _faster_rounding

    def ms(model):
        return sum(c.out_channels * c.in_channels * (1.0 if c.out_channels % 8 == 0 else penalty)
                   for c in model.modules() if isinstance(c, torch.nn.Conv2d))

    monkeypatch.setattr(autoprune.latency, "relative_latency",
                        lambda pruned, original, x, **_: (ms(pruned), ms(original)))
    monkeypatch.setitem(_CACHE, context.model, {})  # the fit's latency measurements, this timer's only
    cfg = context.config.replace(budget_latency="50%", budget_flops=None)
    ctx = TrialContext(cfg, context.model, context.train_ds, context.val_ds, context.example, device="cpu",
                       groups=context.group_names)
    lines = []
    chosen = _faster_rounding(cfg, ctx, ctx.uniform(None, 0.5), 0.5, lines.append)
    if penalty > 1:
        assert chosen == 8 and "multiples of 8 keep" in lines[0]
        r = run_trial(cfg, uniform(ctx), ctx, target=0.5, round_to=chosen)
        assert r.status == "ok" and r.policy.round_to == 8 and r.latency_ratio <= 0.5
        assert all(len(ix) % 8 == 0 for ix in r.policy.indices.values())
    else:
        assert chosen is None and not lines
    assert _faster_rounding(context.config, context, context.uniform(None, 0.5), 0.5, lines.append) is None  # FLOPs


def test_round_to_keeps_every_group_a_multiple_and_the_budget(context):
    cfg = context.config.replace(round_to=8)
    ctx = TrialContext(cfg, context.model, context.train_ds, context.val_ds, context.example, device="cpu")
    r = run_trial(cfg, {g: 0.3 if i % 2 else 0.6 for i, g in enumerate(ctx.group_names)}, ctx, trial=2)
    assert r.status == "ok" and r.policy.round_to == 8 and r.flops_ratio <= 0.5
    kept = {g: len(ix) for g, ix in r.policy.indices.items()}
    assert kept and all(n % 8 == 0 for n in kept.values()), kept
    plain = run_trial(context.config, {g: 0.3 if i % 2 else 0.6 for i, g in enumerate(context.group_names)},
                      context, trial=2)
    assert any(len(ix) % 8 for ix in plain.policy.indices.values())  # without it, counts are free


def test_a_trial_past_its_timeout_is_failed_with_the_reason(context, monkeypatch):
    """--trial-timeout: the finetune stops at the first step after the deadline; the trial is failed."""
    import time as time_module

    import autoprune.training

    slow = autoprune.training.make_loader

    def slow_loader(*args, **kwargs):  # every batch takes 50 ms, so a 0.2 s budget runs out mid-finetune
        for batch in slow(*args, **kwargs):
            time_module.sleep(0.05)
            yield batch

    monkeypatch.setattr(autoprune.training, "make_loader", lambda *a, **k: list(slow_loader(*a, **k)))
    r = run_trial(context.config.replace(trial_timeout=0.2, finetune_epochs=1.0), uniform(context), context)
    assert r.status == "failed" and "--trial-timeout 0.2s" in r.error, r.error
    assert r.policy is not None  # what it was running is recorded with the failure
    done = run_trial(context.config.replace(trial_timeout=600.0), uniform(context), context)
    assert done.status == "ok", done.error


def test_every_latency_measurement_of_a_trial_holds_the_run_s_latency_lock(context, monkeypatch, tmp_path):
    """The fit's measurements as well as the re-measure after the finetune: trials side by side never
    time each other's measurement."""
    import contextlib

    import autoprune.latency
    import autoprune.trial

    held, calls = [], []

    @contextlib.contextmanager
    def lock(config):
        held.append(True)
        try:
            yield
        finally:
            held.pop()

    def timer(pruned, original, x, **_):
        calls.append(bool(held))
        return 4.0, 10.0

    monkeypatch.setattr(autoprune.trial, "_latency_lock", lock)
    monkeypatch.setattr(autoprune.latency, "relative_latency", timer)
    cfg = context.config.replace(budget_latency="50%", latency_model=False, name="run", results_dir=str(tmp_path))
    ctx = TrialContext(cfg, context.model, context.train_ds, context.val_ds, context.example, device="cpu",
                       groups=context.group_names)
    r = run_trial(cfg, uniform(ctx), ctx, trial=0)
    assert r.status == "ok", r.error
    assert len(calls) >= 2 and all(calls)  # the fit's and the re-measure's


def test_a_latency_trial_trains_inside_the_quiet_gate_and_a_flops_trial_does_not(context, monkeypatch, tmp_path):
    """Its BatchNorm recalibration, finetune and evaluation give way to the run's timers (quiet.py)."""
    import contextlib

    import autoprune.latency
    import autoprune.quiet

    seen = []

    @contextlib.contextmanager
    def training(model, folder):
        seen.append((model.autoprune_policy.kept(), folder))
        waited = autoprune.quiet.Waited()
        waited.seconds = 1.5  # held that long for another trial's timing
        yield waited

    monkeypatch.setattr(autoprune.quiet, "training", training)
    monkeypatch.setattr(autoprune.latency, "relative_latency", lambda *a, **k: (4.0, 10.0))
    (tmp_path / "run").mkdir()
    for budgets in ({"budget_latency": "50%", "latency_model": False}, {"budget_flops": "50%"}):
        cfg = context.config.replace(name="run", results_dir=str(tmp_path), **budgets)
        ctx = TrialContext(cfg, context.model, context.train_ds, context.val_ds, context.example, device="cpu",
                           groups=context.group_names)
        r = run_trial(cfg, uniform(ctx), ctx, trial=0)
        assert r.status == "ok", r.error
        assert seen[-1][0] == r.policy.kept()
        assert r.timings.get("paused") == (1.5 if "budget_latency" in budgets else None)  # t:paused in trials.csv
    assert [folder for _, folder in seen] == [tmp_path / "run", None]
