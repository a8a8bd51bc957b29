"""SearchConfig: validation, the resolved budgets, criteria and space, and what a resume may change."""
from __future__ import annotations

import dataclasses
import re

import pytest

from autoprune.config import RESUMABLE, SearchConfig, resume_config
from autoprune.errors import AutopruneError, ConfigError, SearchSpaceError
from autoprune.space import SearchSpace


@pytest.mark.parametrize("field,value,named", [
    ("trials", 0, "0"), ("finetune_epochs", -1.0, "-1.0"), ("gpus_per_trial", -0.5, "-0.5"),
    ("concurrency", 0, "0"), ("sampler", "cmaes", "cmaes"), ("device", "tpu", "tpu"),
    ("budget_flops", "150%", "150%"), ("importance", "l1,magic", "magic")])
def test_config_rejects_bad_values(field, value, named):
    with pytest.raises(AutopruneError, match=named):
        SearchConfig(**{"budget_flops": "50%", field: value})


def test_budgets_are_parsed_once_in_order():
    cfg = SearchConfig(budget_latency="4ms", budget_flops="40%", budget_params="1.5M")
    assert [b.kind for b in cfg.budgets] == ["flops", "params", "latency"]
    assert cfg.budgets[0].value == 0.4 and cfg.budgets[1].value == 1.5e6 and cfg.size_measure == "flops"
    assert cfg.budget("latency").value == 4.0 and SearchConfig().budget("flops") is None


def test_objective_puts_its_budget_first():
    """--objective latency beside a FLOPs budget: the size measure (front, pick, trial targets, the
    range searched) is latency; the FLOPs budget is still there, as a hard limit."""
    cfg = SearchConfig(budget_flops="50%", budget_latency="60%", objective="latency", front_from="30%")
    assert [b.kind for b in cfg.budgets] == ["latency", "flops"] and cfg.size_measure == "latency"
    assert cfg.size_range(10.0) == pytest.approx((0.3, 0.6))  # the latency budget's, not the FLOPs one's
    assert cfg.budget("flops").value == 0.5
    assert SearchConfig(budget_flops="50%", budget_latency="60%").size_measure == "flops"  # the default
    assert SearchConfig(budget_flops="50%", objective="flops").size_measure == "flops"
    with pytest.raises(ConfigError, match=r"--objective params needs .*--budget-params.*\(flops, latency\)"):
        SearchConfig(budget_flops="50%", budget_latency="60%", objective="params")
    with pytest.raises(ConfigError, match="'speed'"):
        SearchConfig(budget_flops="50%", objective="speed")


def test_round_trip_keeps_the_resolved_space(tmp_path):
    space_file = tmp_path / "mine.yaml"
    space_file.write_text("range: [0.0, 0.5]\nexclude: [conv1]\n")
    cfg = SearchConfig(budget_flops="40%", budget_params="50%", trials=12, search_space=str(space_file))
    assert cfg.space.high == 0.5 and cfg.space.exclude == ("conv1",)
    saved = cfg.to_dict()
    space_file.unlink()  # a resumed run never reads the file again
    back = SearchConfig.from_dict(saved)
    assert back == cfg and back.space == cfg.space
    with pytest.raises(ConfigError, match="bogus"):
        SearchConfig.from_dict({"bogus": 1})
    with pytest.raises(SearchSpaceError, match="mine.yaml"):  # a fresh config does read it
        SearchConfig(search_space=str(space_file))


def test_replace_re_resolves_a_new_space():
    cfg = SearchConfig().replace(search_space="mobilenet")
    assert cfg.space.name == "mobilenet" and cfg.space.exclude


def test_importances_parse():
    assert SearchConfig(importance="bn_scale").importances == ("bn_scale",)
    assert SearchConfig(importance=" l2, taylor ,l2").importances == ("l2", "taylor")
    assert len(SearchConfig().importances) > 1  # auto searches several
    for bad in ("magic", "l1,magic", "", ","):
        with pytest.raises(ConfigError, match="--importance"):
            SearchConfig(importance=bad)


# A value for every field, different from the saved run's (below): what a user might give on --resume.
SAVED = SearchConfig(budget_flops="50%", name="run", results_dir="results")
OTHER = {
    "model": "resnet56", "dataset": "cifar10", "data_dir": "/data", "download": True, "checkpoint": "b.pt",
    "budget_flops": "30%", "budget_params": "50%", "budget_latency": "60%", "objective": "flops", "front_from": "10%", "trials": 99, "finetune_epochs": 3.0,
    "finetune_lr": 0.05, "distill": 0.5, "rungs": "4,6", "reduction": 4, "promote_criteria": True, "confirm": 2, "confirm_epochs": 9.0, "sensitivity": True, "depth_starts": False, "round_to": 8, "latency_backend": "onnxruntime", "latency_threads": 2, "batch_size": 32, "bn_batches": 3, "importance": "l1", "fill_budget": False, "latency_model": False, "trial_timeout": 30.0, "workers": 3,
    "concurrency": 4, "cpus_per_trial": 2.0, "gpus_per_trial": 0.25, "device": "cpu", "sampler": "nsga2",
    "search_space": "mobilenet", "seed": 7, "split_seed": 3, "val_fraction": 0.2, "image_size": 64,
    "baseline_epochs": 30, "latency_batch": 8, "results_dir": "elsewhere", "name": "run",
    "address": "auto", "dashboard": True, "space": SearchSpace("x", 0.0, 0.5).to_dict(),
}


def test_other_covers_every_field():
    assert set(OTHER) == {f.name for f in dataclasses.fields(SearchConfig)}


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(SearchConfig)])
def test_resume_changes_only_what_it_may(field):
    value = OTHER[field]
    if field in RESUMABLE or field in ("name", "results_dir"):
        resumed = resume_config(SAVED, {field: value})
        assert getattr(resumed, field) == value
        changed = {f for f in OTHER if getattr(resumed, f) != getattr(SAVED, f)}
        assert changed <= {field}
    else:
        with pytest.raises(ConfigError) as info:
            resume_config(SAVED, {field: value})
        message = str(info.value)
        assert f"--{field.replace('_', '-')}" in message and "--trials" in message  # names it and the choices


def test_resume_accepts_the_same_values_written_differently():
    assert resume_config(SAVED, {"budget_flops": "0.5", "importance": "auto", "search_space": "default",
                                 "model": "resnet20"}) == SAVED


def test_every_field_is_a_search_flag():
    """Fields map one-to-one to `autoprune search` flags (the resolved space is the flag's result;
    ``distill``, the weight, is ``--distill`` with ``--distill-weight``)."""
    from autoprune.cli import build_parser

    parser = build_parser()
    search = next(a for a in parser._actions if a.dest == "command").choices["search"]
    dests = {a.dest for a in search._actions}
    assert {f.name for f in dataclasses.fields(SearchConfig)} - {"space", "distill"} <= dests
    assert {"distill_on", "distill_weight"} <= dests


def test_the_front_spans_from_a_floor_to_the_budget():
    assert SearchConfig(budget_flops="50%").size_range(1000.0) == pytest.approx((0.125, 0.5))
    assert SearchConfig(budget_flops="50%", front_from="20%").size_range(1000.0) == pytest.approx((0.2, 0.5))
    assert SearchConfig(budget_flops="400", front_from="100").size_range(1000.0) == pytest.approx((0.1, 0.4))
    assert SearchConfig(budget_params="60%", budget_flops="50%", front_from="10%").size_range(1.0)[1] == 0.5
    for bad in ("50%", "70%"):  # at or above the budget
        with pytest.raises(ConfigError, match="--front-from"):
            SearchConfig(budget_flops="50%", front_from=bad)
    with pytest.raises(ConfigError, match="--front-from"):  # absolute: checked once the model is known
        SearchConfig(budget_flops="400", front_from="500").size_range(1000.0)
    with pytest.raises(AutopruneError, match="150%"):
        SearchConfig(budget_flops="50%", front_from="150%")


def test_trials_on_cuda_need_a_gpu_share():
    with pytest.raises(ConfigError, match="--gpus-per-trial"):
        SearchConfig(budget_flops="50%", device="cuda")
    assert SearchConfig(budget_flops="50%", device="cuda", gpus_per_trial=0.25).trial_device == "cuda"
    assert SearchConfig(budget_flops="50%").trial_device == "cpu"


def test_resume_keeps_a_latency_budget_on_its_device():
    saved = SearchConfig(budget_latency="60%", name="run")
    assert resume_config(saved, {"concurrency": 4}).concurrency == 4
    with pytest.raises(ConfigError, match="latency budget"):
        resume_config(saved, {"gpus_per_trial": 1.0})


def test_a_space_centred_on_uniform_needs_proposals_scaled_to_their_size():
    from autoprune.space import load_space

    with pytest.raises(ConfigError, match="--no-fill-budget.*centre: uniform"):
        SearchConfig(budget_flops="50%", search_space="centred", fill_budget=False)
    space = load_space("centred").to_dict()
    with pytest.raises(SearchSpaceError, match="'centre' must be one of none, uniform, but got 'Uniform'"):
        SearchConfig(budget_flops="50%", space={**space, "centre": "Uniform"})
    with pytest.raises(SearchSpaceError, match="'spread' must be a number in \\(1, 10\\], but got 0.5"):
        SearchConfig(budget_flops="50%", space={**space, "spread": 0.5})


def test_distill_flags_set_the_weight():
    from autoprune.cli import DISTILL, _search_config, build_parser

    parser = build_parser()
    base = ["search", "--budget-flops", "50%"]
    assert _search_config(parser.parse_args(base))[0].distill == 0.0
    assert _search_config(parser.parse_args(base + ["--distill"]))[0].distill == DISTILL
    assert _search_config(parser.parse_args(base + ["--distill", "--distill-weight", "0.3"]))[0].distill == 0.3


@pytest.mark.parametrize("changes, says", [
    (dict(confirm=-1), "--confirm must be a whole number >= 0"),
    (dict(confirm_epochs=5.0), "--confirm-epochs 5.0 needs --confirm K"),
    (dict(confirm=2, confirm_epochs=2.0), "--confirm-epochs must be more than the longest finetune of the search (2 "),
    (dict(confirm=2, finetune_epochs=0.0), "--confirm needs a finetune to confirm with"),
])
def test_bad_confirmation_settings_are_refused_with_one_line(changes, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        SearchConfig(budget_flops="50%", **changes)
    assert SearchConfig(budget_flops="50%", confirm=2).confirm_at == 10.0  # 5x the 2-epoch trials
