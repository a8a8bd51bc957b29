"""One trial without Ray: faults become `failed` results with a reason, never exceptions."""
from __future__ import annotations

import math

import pytest
import torch

from autoprune.data import load_dataset
from autoprune.errors import ConfigError
from autoprune.models import create_model, load_checkpoint
from autoprune.policy import Policy
from autoprune.trial import SearchConfig, TrialContext, TrialResult, run_trial, TRIAL_COLUMNS


@pytest.fixture(scope="module")
def context(rand20):
    cfg = SearchConfig(budget_flops="50%", checkpoint=rand20, finetune_epochs=0.1, bn_batches=2, image_size=16)
    splits = load_dataset("digits", image_size=16)
    model = load_checkpoint(create_model("resnet20"), rand20)
    return TrialContext(cfg, model, splits.train, splits.val, splits.example_input(), device=torch.device("cpu"))


def test_ok_trial_measures_and_meets_budget(context):
    policy = context.uniform()
    r = run_trial(context.config, policy, context, trial=3, origin="uniform")
    assert r.status == "ok", r.error
    assert 0.0 <= r.val_acc <= 1.0 and 0.48 <= r.flops_ratio <= 0.5
    assert r.finetune_s > 0 and r.trial_s >= r.finetune_s
    row = r.to_row()
    assert list(row)[: len(TRIAL_COLUMNS)] == list(TRIAL_COLUMNS)
    assert row["policy"] == "policies/3.json" and any(k.startswith("s:") for k in row)


def test_nan_loss_is_a_failed_trial(context):
    cfg = context.config.replace(finetune_lr=1e12)
    r = run_trial(cfg, context.uniform(), context)
    assert r.status == "failed" and ("loss became" in r.error or "NaN" in r.error), r.error


def test_exception_is_a_failed_trial(context):
    wrong = Policy("resnet20", {"no.such.group": 0.5}, {"no.such.group": 16})
    r = run_trial(context.config, wrong, context)
    assert r.status == "failed" and "no.such.group" in r.error


def test_cuda_out_of_memory_is_a_failed_trial(context, monkeypatch):
    import autoprune.train

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(autoprune.train, "train", oom)
    r = run_trial(context.config, context.uniform(), context)
    assert r.status == "failed" and r.error.startswith("CUDA out of memory")


def test_fill_budget_scales_a_small_proposal_up(context):
    small = context.fit({g: 0.8 for g in context.group_names})  # fill_budget is on by default
    ratio = context.costs.cost(small.sparsity)["flops"] / context.base_flops
    assert 0.49 <= ratio <= 0.5
    kept = context.config.replace(fill_budget=False)
    ctx2 = TrialContext(kept, context.model, context.train_ds, context.val_ds, context.example, device=context.device)
    as_is = ctx2.fit({g: 0.8 for g in context.group_names})
    assert all(math.isclose(s, 0.8) for s in as_is.sparsity.values())


@pytest.mark.parametrize("field,value", [("trials", 0), ("finetune_epochs", -1.0), ("gpus_per_trial", -0.5),
                                         ("concurrency", 0), ("sampler", "cmaes"), ("device", "tpu")])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=str(value)):
        SearchConfig(budget_flops="50%", **{field: value})


def test_config_round_trip():
    cfg = SearchConfig(budget_flops="40%", budget_params="50%", trials=12)
    assert SearchConfig.from_dict(cfg.to_dict()) == cfg
    assert [b.kind for b in cfg.budgets()] == ["flops", "params"] and cfg.objective == "flops"
    with pytest.raises(ConfigError, match="bogus"):
        SearchConfig.from_dict({"bogus": 1})


def test_result_rejects_unknown_status():
    with pytest.raises(ValueError):
        TrialResult(trial=0, status="maybe", origin="optuna")


def test_importance_choices_parse():
    from autoprune.trial import AUTO_IMPORTANCES

    assert SearchConfig().importances == AUTO_IMPORTANCES == ("l1", "bn_scale", "taylor")
    assert SearchConfig(importance="bn_scale").importances == ("bn_scale",)
    assert SearchConfig(importance=" l2, taylor ,l2").importances == ("l2", "taylor")
    for bad in ("magic", "l1,magic", "", ","):
        with pytest.raises(ConfigError, match="--importance"):
            SearchConfig(importance=bad)


def test_trial_prunes_with_the_policys_criterion(context):
    # the context's config searches several criteria; each trial's policy says which one it used
    policy = context.fit({g: 0.0 for g in context.group_names}, "bn_scale")
    assert policy.importance == "bn_scale"
    assert context.uniform().importance == context.config.importances[0]
    result = run_trial(context.config, policy, context, trial=0)
    assert result.status == "ok" and result.to_row()["importance"] == "bn_scale"
