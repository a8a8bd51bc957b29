"""autoprune apply: a tiny hand-made run folder (no Ray), resnet20 on 8x8 digits, one epoch per apply."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_runs import SIZE, make_run

import autoprune
import autoprune.apply as apply_mod
import autoprune.picks as picks_mod
from autoprune.apply import apply_run, load_pruned
from autoprune.cli import main
from autoprune.costs import count_flops, count_params
from autoprune.errors import ConfigError, RunError
from autoprune.results import load_run

FILES = ("model.safetensors", "policy.json", "metadata.json", "model.onnx", "metrics.json", "log.csv")
METRIC_KEYS = {"test_acc", "val_acc", "flops", "flops_ratio", "params", "params_ratio", "latency_ms",
               "latency_ratio", "input_size", "epochs", "seconds", "trial", "pick", "baseline", "export_max_abs_diff"}


@pytest.fixture(scope="module")
def run_path(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def applied(run_path):
    """One apply of `best`, recording every dataset that apply evaluated on."""
    evaluated, loaded, lines = [], [], []
    import autoprune.training

    real_evaluate, real_load = autoprune.training.evaluate, apply_mod.load_dataset

    def spy_evaluate(model, ds, **kw):
        evaluated.append(ds)
        return real_evaluate(model, ds, **kw)

    def spy_load(*a, **kw):
        loaded.append(real_load(*a, **kw))
        return loaded[-1]

    with pytest.MonkeyPatch.context() as mp:
        # every evaluation apply makes goes through the classification task to train.evaluate
        mp.setattr(autoprune.training, "evaluate", spy_evaluate)
        mp.setattr(apply_mod, "load_dataset", spy_load)
        result = apply_run(run_path, pick="best", epochs=1, device="cpu", log=lines.append)
    return result, lines, evaluated, loaded


def test_apply_best_writes_the_pruned_model_and_its_metrics(applied, run_path):
    result, lines, _, _ = applied
    out = run_path / "apply-best"
    assert result["path"] == str(out)
    for name in FILES:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["pick"] == "best" and metrics["trial"] == 1  # highest val_acc on the front
    assert metrics["epochs"] == 1 and metrics["input_size"] == [3, SIZE, SIZE]
    assert set(metrics["baseline"]) >= {"test_acc", "val_acc", "flops", "params", "latency_ms"}
    assert 0 <= metrics["test_acc"] <= 1 and 0 <= metrics["baseline"]["test_acc"] <= 1
    assert metrics["flops_ratio"] == pytest.approx(metrics["flops"] / metrics["baseline"]["flops"])
    assert metrics["flops_ratio"] <= 0.5  # the policy was fitted to the 50% budget
    assert metrics["params"] < metrics["baseline"]["params"]
    assert metrics["latency_ms"] > 0 and metrics["latency_ratio"] > 0
    trials = load_run(run_path).trials
    assert metrics["flops"] == int(trials.loc[trials["trial"] == 1, "flops"].iloc[0])  # pruned as in the search
    policy = json.loads((out / "policy.json").read_text())
    assert policy == json.loads((run_path / "policies" / "1.json").read_text())
    log_csv = (out / "log.csv").read_text().splitlines()
    assert log_csv[0].startswith("epoch,") and len(log_csv) == 2  # header + one epoch
    assert any("epoch" in line and "val_acc" in line for line in lines)
    assert any("test_acc" in line and "unpruned" in line for line in lines)
    assert not any(p.name.startswith(".apply") for p in run_path.iterdir())  # no temporary folder left


def test_the_model_loads_in_a_fresh_process_with_the_reported_flops(applied, run_path):
    out = run_path / "apply-best"
    assert not (out / "model.pt").exists()  # no pickle unless --save-module
    code = (
        "import sys, torch\n"
        "from torch.utils.flop_counter import FlopCounterMode\n"
        "from autoprune import load_pruned\n"
        "m, _ = load_pruned(sys.argv[1])\n"
        f"x = torch.zeros(1, 3, {SIZE}, {SIZE})\n"
        "with torch.no_grad(), FlopCounterMode(display=False) as c:\n"
        "    y = m(x)\n"
        "print(c.get_total_flops(), sum(p.numel() for p in m.parameters()), m.training, tuple(y.shape))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    flops, params, training, shape = proc.stdout.split(maxsplit=3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert int(flops) == metrics["flops"]
    assert int(params) == metrics["params"]
    assert training == "False" and shape.strip() == "(1, 10)"


def test_load_pruned_returns_the_module_and_metrics(applied, run_path):
    out = run_path / "apply-best"
    model, metrics = load_pruned(out)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert count_params(model) == metrics["params"]
    assert model(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 10)
    again, _ = autoprune.load_pruned(out / "model.safetensors")  # the public name, and the file itself
    assert count_flops(again, torch.zeros(1, 3, SIZE, SIZE)) == metrics["flops"]
    with pytest.raises(RunError, match="No pruned model"):
        load_pruned(run_path / "apply-nothing")


def test_apply_reads_the_test_split(applied):
    _, _, evaluated, loaded = applied
    assert len(loaded) == 1
    test = loaded[0].test
    # the pruned model and the unpruned baseline are both evaluated on the test split
    assert sum(ds is test for ds in evaluated) == 2


@pytest.fixture(scope="module")
def compared(applied, run_path):
    """A second apply of `best` (after `applied`), distilled, with the uniform policy trained alongside."""
    first = run_path / "apply-best"
    before = {name: (first / name).read_bytes() for name in FILES}
    lines: list[str] = []
    result = apply_run(run_path, pick="best", epochs=1, device="cpu", compare_uniform=True, distill=0.5,
                       log=lines.append)
    return result, lines, before


def test_a_second_apply_of_the_same_pick_keeps_the_first(compared, run_path):
    result, lines, before = compared
    first, second = run_path / "apply-best", run_path / "apply-best-2"
    assert result["path"] == str(second)
    assert all((second / name).is_file() for name in FILES)
    assert {name: (first / name).read_bytes() for name in FILES} == before
    assert any("apply-best-2" in line and "kept" in line for line in lines)


def test_compare_uniform_trains_both_with_the_same_recipe(compared, run_path):
    result, lines, _ = compared
    assert result["pick"] == "best" and result["trial"] == 1 and result["recipe"]["seed"] == 0
    uni = result["uniform"]
    # The uniform policy fitted to the pick's size, with the pick's criterion: no trial measured it.
    assert uni["trial"] is None and uni["pick"] == "uniform-l1" and uni["path"] == str(run_path / "apply-uniform-l1")
    assert json.loads((run_path / "apply-uniform-l1" / "policy.json").read_text())["importance"] == "l1"
    assert result["flops_ratio"] - 0.02 < uni["flops_ratio"] <= result["flops_ratio"]
    assert all((run_path / "apply-uniform-l1" / name).is_file() for name in FILES)
    assert uni["recipe"] == result["recipe"] and uni["recipe"]["seed"] == 0 and uni["recipe"]["distill"] == 0.5
    assert result["uniform_best"] == uni  # the run's uniform curve has L1 only: one model trained
    cmp = result["comparison"]
    assert cmp["test_acc_diff_points"] == pytest.approx((result["test_acc"] - uni["test_acc"]) * 100)
    assert cmp["test_acc_diff_best_points"] == cmp["test_acc_diff_points"]
    assert cmp["pick"]["trial"] == 1 and cmp["uniform"]["trial"] is None
    for key in ("test_acc", "val_acc", "flops_ratio", "params_ratio", "latency_ratio"):
        assert cmp["pick"][key] == result[key] and cmp["uniform"][key] == uni[key]
    assert sum("best - uniform-l1" in line and "points of test accuracy" in line for line in lines) == 1


def test_compare_uniform_also_trains_the_runs_best_uniform_criterion(tmp_path):
    run_path = make_run(tmp_path, uniform_criterion="bn_scale")
    lines: list[str] = []
    result = apply_run(run_path, pick="best", epochs=1, device="cpu", compare_uniform=True, log=lines.append)
    same, best = result["uniform"], result["uniform_best"]
    assert (same["pick"], best["pick"]) == ("uniform-l1", "uniform-bn_scale")
    assert json.loads((run_path / "apply-uniform-bn_scale" / "policy.json").read_text())["importance"] == "bn_scale"
    assert same["flops_ratio"] == best["flops_ratio"] <= result["flops_ratio"]
    assert same["recipe"] == best["recipe"] == result["recipe"]
    cmp = result["comparison"]
    assert cmp["test_acc_diff_best_points"] == pytest.approx((result["test_acc"] - best["test_acc"]) * 100)
    assert sum(line.lstrip().startswith("epoch") for line in lines) == 3  # pick and both uniforms


def test_compare_uniform_when_the_pick_is_the_uniform_policy(run_path):
    lines: list[str] = []
    result = apply_run(run_path, pick="uniform", epochs=1, device="cpu", compare_uniform=True, log=lines.append)
    assert result["trial"] == result["uniform"]["trial"] == 0
    assert result["comparison"]["test_acc_diff_points"] == 0
    assert sum(line.lstrip().startswith("epoch") for line in lines) == 1  # trained once
    json.dumps(result)  # plain data, no cycles


def test_a_trial_number_names_its_folder(run_path, no_training):
    # resolved without training: the folder label is the number as given
    assert picks_mod.resolve_pick(load_run(run_path), 1).label == "1"
    assert picks_mod.resolve_pick(load_run(run_path), "uniform").trial == 0


@pytest.fixture
def no_training(monkeypatch):
    """Fail loudly if apply gets as far as loading data: every check must come first."""
    def boom(*a, **kw):
        raise AssertionError("apply loaded data before validating its arguments")

    monkeypatch.setattr(apply_mod, "load_dataset", boom)
    from autoprune.task import Classification

    monkeypatch.setattr(Classification, "final_recipe", boom)


@pytest.mark.parametrize("pick, words", [
    ("99", "no trial 99"),
    ("2", "trial 2 is failed"),
    ("3", "trial 3 is infeasible"),
    ("foo", "Unknown --pick 'foo'"),
])
def test_bad_pick_is_one_line_from_the_cli(run_path, capsys, no_training, pick, words):
    code = main(["apply", str(run_path), "--pick", pick, "--epochs", "1", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert words in err and "best, uniform" in err and "(0, 1)" in err  # the valid picks


@pytest.mark.parametrize("kwargs, words", [
    ({"epochs": 0}, "--epochs must be a whole number >= 1"),
    ({"epochs": 1.5}, "--epochs must be a whole number >= 1"),
    ({"lr": -1.0}, "--lr must be a number > 0"),
    ({"batch_size": 0}, "--batch-size must be a whole number >= 1"),
    ({"distill": 2.0}, r"--distill must be a weight in \[0, 1\]"),
])
def test_bad_numbers_fail_before_training(run_path, no_training, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        apply_run(run_path, **{"epochs": 1, **kwargs}, log=lambda line: None)


def test_onnx_without_the_package_fails_before_training(run_path, no_training, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # find_spec then reports the package as absent
    with pytest.raises(ConfigError, match="--onnx: the ONNX export needs the onnx package: pip install onnx"):
        apply_run(run_path, epochs=1, onnx=True, log=lambda line: None)


def test_missing_run_folder(tmp_path, no_training):
    with pytest.raises(RunError, match="does not exist"):
        apply_run(tmp_path / "nope", log=lambda line: None)


def test_onnx_export_is_written_and_checked_by_default(applied):
    pytest.importorskip("onnxruntime")
    result, lines, _, _ = applied
    assert result["export_error"] is None, result["export_error"]
    assert result["export"] == "model.onnx" and (Path(result["path"]) / "model.onnx").is_file()
    assert 0 <= result["export_max_abs_diff"] <= 1e-4
    assert any("model.onnx matches PyTorch" in line for line in lines)


def test_pick_by_size_resolves_to_the_best_front_point_under_it(run_path, no_training):
    run = load_run(run_path)
    small = run.pareto["flops_ratio"].min()
    assert picks_mod.resolve_pick(run, f"{small * 100 + 0.01:.2f}%").trial == int(
        run.pareto.loc[run.pareto["flops_ratio"].idxmin(), "trial"])
    assert run.pick(small + 1e-4)["trial"] == picks_mod.resolve_pick(run, f"{small * 100 + 0.01:.2f}%").trial
    with pytest.raises(RunError, match="no front point at or under 1%"):
        picks_mod.resolve_pick(run, "1%")


def test_compare_uniform_on_a_run_without_recorded_criteria(tmp_path):
    """Runs from before criteria were recorded (no importance column) compare with the pick's criterion only."""
    run_path = make_run(tmp_path)
    trials = run_path / "trials.csv"
    import pandas as pd

    pd.read_csv(trials).drop(columns=["importance"]).to_csv(trials, index=False)
    result = apply_run(run_path, pick="best", epochs=1, device="cpu", compare_uniform=True, log=lambda line: None)
    assert result["uniform"]["pick"] == result["uniform_best"]["pick"] == "uniform-l1"
