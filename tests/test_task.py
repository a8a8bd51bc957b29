"""A user's own task (issue 27): search_task from Python, --task from the CLI, apply and report on it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

import autoprune as ap
from autoprune.errors import ConfigError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import helpers_tasks  # noqa: E402


def _torch_flops(model, x) -> int:
    """PyTorch's own count, independent of autoprune's."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops()


def test_a_segmenter_is_searched_with_its_own_metric_and_applied(tmp_path):
    spec = helpers_tasks.small_segmentation()
    outcome = ap.search_spec(spec, "", {"flops": "50%"}, trials=6, finetune_epochs=0.25, bn_batches=2,
                             concurrency=2, results_dir=str(tmp_path), name="seg", log=lambda line: None)
    assert outcome.finished
    ok = outcome.trials[outcome.trials["status"] == "ok"]
    assert len(ok) >= 5, outcome.trials[["trial", "status", "error"]]
    base = _torch_flops(spec.model, spec.example_input)
    for trial in ok["trial"]:
        small = ap.apply_policy(spec.model, outcome.policy(int(trial)), spec.example_input)
        assert _torch_flops(small, spec.example_input) <= 0.5 * base
        assert small(spec.example_input)["out"].shape == spec.model(spec.example_input)["out"].shape
    # the user's metric (mean IoU, in [0, 1]) is what the front holds, and config.yaml names it
    assert ok["val_acc"].between(0, 1).all() and not outcome.front.empty
    saved = yaml.safe_load((tmp_path / "seg" / "config.yaml").read_text())
    assert saved["metric"] == "miou" and saved["task"] == "python" and saved["direction"] == "maximize"
    assert saved["search"]["model"] == "LRASPP" and saved["search"]["dataset"] == "task"
    # taylor ran through the task's loss; a model with no loss would not be offered it
    assert (ok["importance"] == "taylor").any()
    # report names the metric; apply trains the pick with the task's own loop and scores it with its metric
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    shown = subprocess.run([sys.executable, "-m", "autoprune.cli", "report", str(tmp_path / "seg")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "validation miou" in shown.stdout
    from autoprune.errors import RunError
    from autoprune.task_apply import apply_task_run

    with pytest.raises(RunError, match="from Python"):  # its functions cannot be imported again
        apply_task_run(tmp_path / "seg", epochs=1, log=lambda line: None)

    result = apply_task_run(tmp_path / "seg", epochs=1, spec=spec, log=lambda line: None)
    metrics = json.loads((Path(result["path"]) / "metrics.json").read_text())
    assert metrics["metric"] == "miou" and 0 <= metrics["metric_after"] <= 1
    assert metrics["flops_ratio"] <= 0.5 + 1e-9
    assert (Path(result["path"]) / "model.safetensors").is_file()


def test_a_task_from_the_command_line_searches_resumes_and_applies(tmp_path, capsys, monkeypatch):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True,
                              env=env, timeout=600)

    common = ["--results-dir", str(tmp_path), "--name", "tiny", "--finetune-epochs", "0.5", "--bn-batches", "2"]
    first = cli("search", "--task", "helpers_tasks:tiny_task", "--budget-flops", "50%", "--trials", "3", *common)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "pixel_acc" in first.stdout
    more = cli("search", "--resume", "--trials", "5", "--results-dir", str(tmp_path), "--name", "tiny")
    assert more.returncode == 0, more.stderr[-2000:]
    trials = ap.load_run(tmp_path / "tiny").trials
    assert sorted(trials["trial"]) == [0, 1, 2, 3, 4]
    assert (trials["status"] == "ok").sum() >= 4
    assert "taylor" not in set(trials["importance"])  # the task has no loss: taylor is not offered
    from autoprune import cli as in_process

    import autoprune.task

    monkeypatch.setattr(autoprune.task, "load_task", lambda spec: pytest.fail(f"imported {spec} to refuse"))
    assert in_process.main(["search", "--resume", "--results-dir", str(tmp_path), "--name", "tiny"]) == 2
    assert "already finished" in capsys.readouterr().err  # refused before the task is imported
    monkeypatch.undo()
    assert in_process.main(["apply", str(tmp_path / "tiny"), "--epochs", "1", "--lr", "0.1"]) == 2
    assert "--lr cannot be used with a run of a user's task" in capsys.readouterr().err
    assert not (tmp_path / "tiny" / "apply-best").exists()
    applied = cli("apply", str(tmp_path / "tiny"), "--epochs", "1")
    assert applied.returncode == 0, applied.stderr[-2000:]
    assert "pixel_acc" in applied.stdout
    folder = tmp_path / "tiny" / "apply-best"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["task"] == "helpers_tasks:tiny_task" and 0 <= metrics["metric_after"] <= 1


def test_a_user_function_that_raises_is_a_failed_trial_with_its_message(tmp_path):
    pieces = helpers_tasks.tiny_pieces(broken_finetune=True)
    outcome = ap.search_task(pieces["model"], pieces["example_input"], {"flops": "60%"},
                             evaluate=pieces["evaluate"], finetune=pieces["finetune"],
                             calib_batches=pieces["calib_batches"], metric="pixel_acc", trials=3,
                             finetune_epochs=0.5, bn_batches=2, results_dir=str(tmp_path), name="broken",
                             log=lambda line: None)
    assert len(outcome.trials) == 3 and set(outcome.trials["status"]) == {"failed"}
    assert outcome.trials["error"].str.contains("the user's loop exploded on purpose").all()


def test_a_metric_to_minimise_is_searched_as_its_negation_and_applied_in_its_own_sign(tmp_path):
    pieces = helpers_tasks.tiny_pieces()
    acc = pieces["evaluate"]
    outcome = ap.search_task(pieces["model"], pieces["example_input"], {"flops": "60%"},
                             evaluate=lambda m: 1.0 - acc(m), finetune=pieces["finetune"],
                             calib_batches=pieces["calib_batches"], metric="pixel_err", direction="minimize",
                             trials=4, finetune_epochs=0.25, bn_batches=2, results_dir=str(tmp_path), name="err",
                             log=lambda line: None)
    ok = outcome.trials[outcome.trials["status"] == "ok"]
    assert len(ok) >= 3
    # the score is minus the error: the front's best is the trial with the lowest error
    assert ok["val_acc"].between(-1, 0).all() and (ok["val_acc"] < 0).any()
    assert outcome.best["val_acc"] == pytest.approx(ok.loc[ok["flops_ratio"] <= 0.6 + 1e-9, "val_acc"].max())
    assert outcome.baseline["direction"] == "minimize" and outcome.baseline["val_acc"] <= 0
    from autoprune.convergence import hypervolume_column
    from autoprune.front import metric_label

    assert metric_label(outcome.baseline) == "-pixel_err"
    assert hypervolume_column(outcome.trials, "flops_ratio", 0.6)[-1] > 0  # a front of negative scores has area
    saved = yaml.safe_load((tmp_path / "err" / "config.yaml").read_text())
    assert saved["direction"] == "minimize" and saved["metric"] == "pixel_err"
    from autoprune.task_apply import apply_task_run

    spec = ap.TaskSpec(pieces["model"], pieces["example_input"], lambda m: 1.0 - acc(m), pieces["finetune"],
                       pieces["calib_batches"], metric="pixel_err", direction="minimize")
    result = apply_task_run(tmp_path / "err", epochs=0.5, spec=spec, log=lambda line: None)
    assert 0 <= result["metric_before"] <= 1 and 0 <= result["metric_after"] <= 1  # the error, not its negation


def test_bad_tasks_are_one_clear_error(tmp_path, capsys):
    pieces = helpers_tasks.tiny_pieces()
    args = (pieces["model"], pieces["example_input"], {"flops": "50%"})
    kw = dict(evaluate=pieces["evaluate"], finetune=pieces["finetune"], calib_batches=pieces["calib_batches"],
              results_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="taylor needs the task's loss"):
        ap.search_task(*args, importance="taylor", **kw)
    with pytest.raises(ConfigError, match="direction must be one of maximize, minimize, but got 'lower'"):
        ap.search_task(*args, direction="lower", **kw)
    with pytest.raises(ConfigError, match="wrap one tensor batch as"):
        ap.search_task(*args, **{**kw, "calib_batches": pieces["calib_batches"][0]})
    with pytest.raises(ConfigError, match="budgets must map"):
        ap.search_task(pieces["model"], pieces["example_input"], {"size": "50%"}, **kw)
    with pytest.raises(ConfigError, match="does not take 'dataset'"):
        ap.search_task(*args, dataset="digits", **kw)
    with pytest.raises(ConfigError, match="calibration batch"):
        ap.search_task(*args, **{**kw, "calib_batches": []})
    assert not any(tmp_path.iterdir())  # nothing written
    from autoprune import cli

    for argv, needle in ((["--task", "no_such_module_xyz:fn"], "cannot import module 'no_such_module_xyz'"),
                         (["--task", "helpers_tasks:missing"], "has no function 'missing'"),
                         (["--task", "helpers_tasks"], "must be package.module:function"),
                         (["--task", "helpers_tasks:not_a_task"], "must return autoprune.TaskSpec"),
                         (["--task", "helpers_tasks:tiny_task", "--model", "resnet20"], "drop --model")):
        code = cli.main(["search", *argv, "--budget-flops", "50%", "--results-dir", str(tmp_path)])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert code == 2 and len(err) == 1 and needle in err[0], (argv, err)
    done = subprocess.run([sys.executable, "-m", "autoprune.cli", "search", "--task", "no_such_module_xyz:fn",
                           "--budget-flops", "50%", "--results-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no_such_module_xyz" in lines[0] and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())


def test_a_detector_is_searched_with_its_heads_left_out_and_why(tmp_path):
    """torchvision's SSDlite (no weights): the heads' groups, whose outputs are reshaped per anchor, are
    left out with their reasons; the backbone is searched and every trial is scored by mAP@0.5."""
    spec = helpers_tasks.small_detection()
    outcome = ap.search_spec(spec, "", {"flops": "60%"}, trials=3, finetune_epochs=0.25, bn_batches=1,
                             concurrency=2, results_dir=str(tmp_path), name="det", log=lambda line: None)
    assert outcome.finished and outcome.counts["ok"] == 3, outcome.trials[["trial", "status", "error"]]
    assert outcome.left_out and all(why for why in outcome.left_out.values())
    saved = yaml.safe_load((tmp_path / "det" / "config.yaml").read_text())
    assert len(saved["groups"]) > 20 and set(saved["left_out"]) == set(outcome.left_out)
    ok = outcome.trials[outcome.trials["status"] == "ok"]
    assert ok["val_acc"].between(0, 1).all() and (ok["flops_ratio"] <= 0.6 + 1e-9).all()
    small = ap.apply_policy(spec.model, outcome.policy(), spec.example_input)
    assert _torch_flops(small, spec.example_input) <= 0.6 * _torch_flops(spec.model, spec.example_input)


_ABSENT_TASK = '''
import torch, torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        return self.head(self.body(x))

def evaluate(model):
    x = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    return float((model(x).argmax(1) == (x[:, 0] > 0.5).long()).float().mean())

def finetune(model, epochs):
    pass
'''

_ABSENT_DRIVER = '''
import importlib, shutil, sys, torch
sys.path.insert(0, sys.argv[1])
mod = importlib.import_module("absent_task_mod")
model = mod.Net()
shutil.rmtree(sys.argv[1])  # the module is gone: a worker can only have it pickled by value
sys.path.pop(0)
import autoprune as ap
outcome = ap.search_task(model, torch.zeros(1, 3, 12, 12), {"flops": "60%"}, evaluate=mod.evaluate,
                         finetune=mod.finetune, calib_batches=[torch.rand(4, 3, 12, 12)], metric="pix",
                         trials=2, finetune_epochs=0.25, bn_batches=1, results_dir=sys.argv[2], name="gone",
                         log=lambda line: None)
print("STATUS", ",".join(outcome.trials["status"]), "|".join(map(str, outcome.trials["error"].fillna(""))))
'''


def test_a_task_whose_module_exists_only_on_the_driver_runs_on_ray_workers(tmp_path):
    """The user's functions and model class are shipped by value: the module they come from is deleted
    before the search, as on a cluster whose nodes never had the user's script."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "absent_task_mod.py").write_text(_ABSENT_TASK)
    done = subprocess.run([sys.executable, "-c", _ABSENT_DRIVER, str(src), str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    status = [ln for ln in done.stdout.splitlines() if ln.startswith("STATUS")][0]
    assert status.split()[1] == "ok,ok", status
    assert not src.exists()
