"""Bad command lines, typed as a new user would: one clear line on stderr, exit 2, no work done first.

Contract checked for every case (STYLE.md principle 4):

* exit status 2;
* stderr is exactly one non-empty line, ``autoprune: error: ...``. argparse usage errors are one
  line too: ``cli._Parser.error`` prints ``autoprune: error: <message>; see `autoprune <cmd> --help`.``
  instead of argparse's usage block plus error line;
* the line names the bad value (and, where there are any, the rule or the valid choices);
* no traceback anywhere;
* ``search`` cases fail before any work: fast, no ``baselines/`` and no run folder in the results
  dir, no ``baseline:`` progress line. In-process, baseline training, the training loop and Ray
  start-up are also replaced by guards that raise, so work done before validation fails the test.

Most cases run in-process through ``autoprune.cli.main(argv)``: an exception other than the
``SystemExit`` of argparse escapes ``main`` and fails the test, so tracebacks are caught there too.
A handful also run as real subprocesses (``python -m autoprune.cli``) as an end-to-end check.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from autoprune import cli
from autoprune.errors import CheckpointError

MAX_SECONDS = 20.0  # a bad search must fail long before a baseline could train or Ray could start
# A subprocess also pays for starting Python and importing torch, which takes 5-15 s on a loaded shared
# machine; the folder checks, not the clock, are what prove no baseline or run was started there.
MAX_SECONDS_SUBPROCESS = 2 * MAX_SECONDS


class WorkStarted(BaseException):
    """Raised by the guards; a BaseException so that no ``except Exception`` in the product hides it."""


# --------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    """Files the cases point at, built once per module."""

    root: Path
    r20: Path  # a real resnet20 state dict (digits: 10 classes, 3 channels)
    r32: Path  # a resnet32 state dict: the wrong model for resnet20
    r20_split5: Path  # a resnet20 checkpoint that records training on another validation split
    text: Path  # a text file that is not a checkpoint
    space_syntax: Path
    space_unknown_key: Path
    space_reversed: Path
    config_unknown_key: Path
    empty_dir: Path
    not_a_run: Path  # a folder without config.yaml
    run: Path  # a fake finished run folder


def _fake_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"search": {"model": "resnet20", "budget_flops": "50%"}}))
    rows = ("trial,status,origin,val_acc,flops,flops_ratio,params,params_ratio,latency_ms,latency_ratio,"
            "finetune_s,trial_s,policy,error\n0,ok,uniform,0.9,100,0.5,10,0.5,,,1.0,2.0,policies/0.json,\n")
    (path / "trials.csv").write_text(rows)
    (path / "pareto.csv").write_text(rows)
    (path / "state.json").write_text(json.dumps({"finished": True}))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    from autoprune.models import create_model, save_checkpoint

    root = tmp_path_factory.mktemp("inputs")
    with torch.random.fork_rng():  # leave the global RNG as other tests expect it
        torch.manual_seed(0)
        for name in ("resnet20", "resnet32"):
            torch.save(create_model(name, num_classes=10, in_channels=3).state_dict(), root / f"{name}.pt")
        save_checkpoint(create_model("resnet20"), root / "r20_split5.pt",
                        {"split": {"dataset": "digits", "val_fraction": 0.1, "split_seed": 5}})
    (root / "notes.pt").write_text("these are my notes, not weights\n")
    (root / "syntax.yaml").write_text("range: [0.0, 0.9\nstep: null\n")
    (root / "unknown_key.yaml").write_text("range: [0.0, 0.9]\nsparsity: 0.5\n")
    (root / "reversed.yaml").write_text("range: [0.5, 0.2]\n")
    (root / "run.yaml").write_text("budget: 50%\n")
    (root / "empty").mkdir()
    (root / "not_a_run").mkdir()
    return Inputs(root, root / "resnet20.pt", root / "resnet32.pt", root / "r20_split5.pt", root / "notes.pt", root / "syntax.yaml",
                  root / "unknown_key.yaml", root / "reversed.yaml", root / "run.yaml", root / "empty",
                  root / "not_a_run", _fake_run(root / "runs" / "done"))


# --------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Inputs], list[str]]  # the command line after `autoprune`
    expect: tuple[str, ...]  # fragments the error line must hold: the bad value, the rule or the choices
    e2e: bool = False  # also run as a subprocess


def C(id: str, argv: Callable[[Inputs], list[str]], *expect: str, e2e: bool = False) -> Case:
    return Case(id, argv, expect, e2e)


S = ["search"]
F50 = ["--budget-flops", "50%"]

CASES = [
    # budgets
    C("budget-150pct", lambda i: S + ["--budget-flops", "150%"], "'150%'", "(0%, 100%)", e2e=True),
    C("budget-negative", lambda i: S + ["--budget-flops", "-10%"], "'-10%'", "positive"),
    C("budget-0pct", lambda i: S + ["--budget-flops", "0%"], "'0%'", "positive"),
    C("budget-100pct", lambda i: S + ["--budget-flops", "100%"], "'100%'", "(0%, 100%)"),
    C("budget-word", lambda i: S + ["--budget-flops", "fifty"], "'fifty'", "50%"),
    C("budget-2x", lambda i: S + ["--budget-flops", "2x"], "'2x'", "120M"),
    C("budget-parsecs", lambda i: S + ["--budget-params", "5parsecs"], "'5parsecs'", "1.5M"),
    C("latency-no-unit", lambda i: S + ["--budget-latency", "4"], "'4'", "4ms"),
    C("flops-above-model-ckpt", lambda i: S + ["--budget-flops", "120G", "--checkpoint", str(i.r20)],
      "120G", "below the unpruned model", e2e=True),
    C("flops-above-model-no-ckpt", lambda i: S + ["--budget-flops", "120G"], "120G", "below the unpruned model"),
    C("params-above-model", lambda i: S + ["--budget-params", "5M"], "5M", "below the unpruned model"),
    C("no-budget", lambda i: S, "--budget-flops", "--budget-params", "--budget-latency"),
    C("objective-without-its-budget", lambda i: S + F50 + ["--objective", "latency"], "--objective latency",
      "--budget-latency", "(flops)"),
    C("objective-unknown", lambda i: S + F50 + ["--objective", "speed"], "'speed'", "flops", "latency"),
    # numbers and choices
    C("trials-0", lambda i: S + F50 + ["--trials", "0"], "--trials", "got 0"),
    C("trials-negative", lambda i: S + F50 + ["--trials", "-3"], "--trials", "got -3"),
    C("trials-fraction", lambda i: S + F50 + ["--trials", "2.5"], "--trials", "'2.5'", "--help", e2e=True),
    C("finetune-epochs-negative", lambda i: S + F50 + ["--finetune-epochs", "-1"], "--finetune-epochs", "-1.0"),
    C("distill-above-1", lambda i: S + F50 + ["--distill", "--distill-weight", "1.5"], "--distill", "1.5", "[0, 1]"),
    C("distill-weight-alone", lambda i: S + F50 + ["--distill-weight", "0.5"], "--distill-weight", "--distill"),
    C("latency-backend-tensorrt", lambda i: S + F50 + ["--latency-backend", "tensorrt"], "'tensorrt'",
      "torch, onnxruntime"),
    C("round-to-0", lambda i: S + F50 + ["--round-to", "0"], "--round-to", "got 0", "[1, 256]"),
    C("gpus-negative", lambda i: S + F50 + ["--gpus-per-trial", "-0.5"], "--gpus-per-trial", "-0.5"),
    C("concurrency-0", lambda i: S + F50 + ["--concurrency", "0"], "--concurrency", "got 0"),
    C("workers-negative", lambda i: S + F50 + ["--workers", "-1"], "--workers", "got -1", ">= 0"),
    C("sampler-cmaes", lambda i: S + F50 + ["--sampler", "cmaes"], "'cmaes'", "tpe, nsga2, random"),
    C("device-tpu", lambda i: S + F50 + ["--device", "tpu"], "'tpu'", "auto, cpu, cuda"),
    C("importance-magic", lambda i: S + F50 + ["--importance", "l1,magic"], "'magic'", "auto", "bn_scale"),
    C("unknown-command", lambda i: ["serch", *F50], "'serch'", "search"),
    # models and data
    C("model-resnet5", lambda i: S + F50 + ["--model", "resnet5"], "'resnet5'", "resnet56", "list-models",
      e2e=True),
    C("model-no-package", lambda i: S + F50 + ["--model", "nosuchpkg.mod:fn"], "'nosuchpkg.mod:fn'",
      "package.module:function"),
    C("model-no-function", lambda i: S + F50 + ["--model", "os:nosuchfn"], "'os:nosuchfn'", "nosuchfn"),
    C("vit-wrong-image-size", lambda i: S + F50 + ["--model", "vit_b_32", "--image-size", "64"], "'vit_b_32'",
      "[3, 64, 64]", "--image-size"),
    C("budget-out-of-reach", lambda i: S + ["--budget-flops", "5%", "--model", "helpers_models:split_concat"],
      "flops <= 5%", "out of reach", "smallest model", "14.4%", "1 of 3 groups", "stem.0"),
    C("latency-out-of-reach", lambda i: S + ["--budget-latency", "1%"], "latency <= 1%", "out of reach",
      "smallest model", "of the unpruned latency"),
    C("dataset-mnist", lambda i: S + F50 + ["--dataset", "mnist"], "'mnist'", "cifar10", "digits"),
    C("imagefolder-no-dir", lambda i: S + F50 + ["--dataset", "imagefolder"], "'imagefolder'", "--data-dir"),
    C("imagefolder-empty", lambda i: S + F50 + ["--dataset", "imagefolder", "--data-dir", str(i.empty_dir)],
      "empty'", "train/"),
    C("cifar10-no-dir", lambda i: S + F50 + ["--dataset", "cifar10"], "'cifar10'", "--data-dir"),
    C("fashion-mnist-empty-dir", lambda i: S + F50 + ["--dataset", "fashion_mnist", "--data-dir", str(i.empty_dir)],
      "empty'", "apt-get install dataset-fashion-mnist", "--download"),
    C("cifar10-empty-dir", lambda i: S + F50 + ["--dataset", "cifar10", "--data-dir", str(i.empty_dir)],
      "'cifar10'", "empty'", "--download"),
    C("checkpoint-missing", lambda i: S + F50 + ["--checkpoint", "nosuch.pt"], "'nosuch.pt'", "does not exist"),
    C("checkpoint-text", lambda i: S + F50 + ["--checkpoint", str(i.text)], "notes.pt'", "state dict"),
    C("checkpoint-wrong-model", lambda i: S + F50 + ["--checkpoint", str(i.r32)], "resnet32.pt'",
      "does not match"),
    C("checkpoint-other-split", lambda i: S + F50 + ["--checkpoint", str(i.r20_split5)], "r20_split5.pt'",
      "split_seed=5", "split_seed=0", "--split-seed", e2e=True),
    # search spaces and config files
    C("space-syntax", lambda i: S + F50 + ["--search-space", str(i.space_syntax)], "syntax.yaml'",
      "not valid YAML"),
    C("space-unknown-key", lambda i: S + F50 + ["--search-space", str(i.space_unknown_key)], "'sparsity'",
      "valid keys"),
    C("space-reversed-range", lambda i: S + F50 + ["--search-space", str(i.space_reversed)], "[0.5, 0.2]",
      "low <= high"),
    C("space-unknown-name", lambda i: S + F50 + ["--search-space", "nosuchspace"], "'nosuchspace'",
      "cifar_resnet, default, mobilenet"),
    C("config-missing", lambda i: S + F50 + ["--config", "run.yaml"], "'run.yaml'", "does not exist"),
    C("config-unknown-key", lambda i: S + F50 + ["--config", str(i.config_unknown_key)], "budget",
      "valid keys"),
    # run folders
    C("resume-no-name", lambda i: S + ["--resume"], "--resume", "--name"),
    C("resume-unknown-name", lambda i: S + ["--resume", "--name", "nosuchrun"], "nosuchrun'", "no such run"),
    C("report-missing", lambda i: ["report", "results/nosuchrun"], "'results/nosuchrun'", "does not exist",
      e2e=True),
    C("report-not-a-run", lambda i: ["report", str(i.not_a_run)], "not_a_run'", "config.yaml"),
    C("report-no-folder", lambda i: ["report"], "run", "--help"),
    C("apply-missing", lambda i: ["apply", "results/nosuchrun"], "'results/nosuchrun'", "does not exist"),
    C("apply-epochs-0", lambda i: ["apply", str(i.run), "--epochs", "0"], "--epochs", "0"),
    C("apply-workers-negative", lambda i: ["apply", str(i.run), "--workers", "-2"], "--workers", "got -2", ">= 0"),
    C("apply-distill-negative", lambda i: ["apply", "--distill", str(i.run), "--distill-weight", "-0.2"], "--distill",
      "-0.2", "[0, 1]"),
    C("apply-pick-unknown", lambda i: ["apply", str(i.run), "--pick", "bestest"], "'bestest'", "uniform"),
    # train
    C("train-model-resnet5", lambda i: ["train", "--model", "resnet5"], "'resnet5'", "resnet56"),
    C("train-epochs-0", lambda i: ["train", "--epochs", "0"], "--epochs", "got 0", e2e=True),
    C("train-dataset-nope", lambda i: ["train", "--dataset", "nope"], "'nope'", "digits"),
    C("train-device-tpu", lambda i: ["train", "--device", "tpu"], "'tpu'", "cpu"),
]


def _argv(case: Case, inputs: Inputs, tmp_path: Path) -> list[str]:
    argv = case.argv(inputs)
    if argv and argv[0] == "search":
        argv = argv + ["--results-dir", str(tmp_path / "results")]
    return argv


def _check(case: Case, argv: list[str], tmp_path: Path, code: object, out: str, err: str, seconds: float,
           limit: float = MAX_SECONDS) -> str:
    """The contract of the module docstring; returns the error line."""
    assert "Traceback" not in out + err, f"{case.id}: traceback\n{err}"
    assert code == 2, f"{case.id}: exit {code!r}, stderr:\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"{case.id}: stderr is not one line:\n{err}"
    line = lines[0]
    assert line.startswith("autoprune: error: "), line
    for fragment in case.expect:
        assert fragment in line, f"{case.id}: {fragment!r} missing from: {line}"
    if argv[0] == "search":
        results = tmp_path / "results"
        made = sorted(p.name for p in results.iterdir()) if results.is_dir() else []
        assert made == [], f"{case.id}: the failed search wrote {made} into the results dir"
        assert "baseline:" not in out, f"{case.id}: a baseline was prepared before the error:\n{out}"
        assert seconds < limit, f"{case.id}: took {seconds:.1f}s; work was done before validation"
    return line


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make baseline training, any training loop and Ray start-up raise: they must not be reached."""
    import autoprune.baseline
    import autoprune.cluster
    import autoprune.training

    def forbid(what: str) -> Callable:
        def guard(*args, **kwargs):
            raise WorkStarted(f"{what} started before the bad input was reported")

        return guard

    monkeypatch.setattr(autoprune.baseline, "ensure_baseline", forbid("baseline preparation"))
    monkeypatch.setattr(autoprune.baseline, "train_baseline", forbid("baseline training"))
    monkeypatch.setattr(autoprune.training, "train", forbid("the training loop"))
    monkeypatch.setattr(autoprune.cluster, "init_ray", forbid("Ray"))


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[object, str, str, float]:
    """``cli.main(argv)``; an exception other than argparse's SystemExit escapes and fails the test."""
    capsys.readouterr()
    start = time.perf_counter()
    try:
        code: object = cli.main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    return code, captured.out, captured.err, seconds


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_in_process(case: Case, inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture, guarded: None) -> None:
    monkeypatch.chdir(tmp_path)
    argv = _argv(case, inputs, tmp_path)
    _check(case, argv, tmp_path, *run_in_process(argv, capsys))


def run_subprocess(argv: list[str], cwd: Path) -> tuple[object, str, str, float]:
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "autoprune.cli", *argv], cwd=cwd, capture_output=True, text=True,
                       timeout=120)
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - start


E2E = [c for c in CASES if c.e2e]


@pytest.mark.parametrize("case", E2E, ids=[c.id for c in E2E])
def test_bad_input_subprocess(case: Case, inputs: Inputs, tmp_path: Path) -> None:
    argv = _argv(case, inputs, tmp_path)
    _check(case, argv, tmp_path, *run_subprocess(argv, tmp_path), limit=MAX_SECONDS_SUBPROCESS)


# --------------------------------------------------------------------------- nothing written is lost


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("extra, expect", [
    (["--budget-flops", "150%"], "'150%'"),  # bad budget: fails before the folder is even looked at
    (["--budget-flops", "50%"], "already exists (finished)"),  # good budget, but the name is taken
    (["--budget-flops", "50%", "--resume"], "already finished"),
    (["--budget-flops", "30%", "--resume"], "--budget-flops cannot change on --resume"),
    (["--finetune-epochs", "5", "--resume"], "--finetune-epochs cannot change on --resume"),
], ids=["bad-budget", "name-taken", "resume-finished", "resume-other-budget", "resume-other-finetune"])
def test_failed_search_leaves_existing_run_untouched(extra: list[str], expect: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture, guarded: None) -> None:
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    run = _fake_run(results / "done")
    (run / "config.yaml").write_text(yaml.safe_dump({"search": {"model": "resnet20", "budget_flops": "50%",
                                                                "results_dir": str(results), "name": "done"}}))
    before = _snapshot(results)
    code, out, err, _ = run_in_process(["search", *extra, "--name", "done", "--results-dir", str(results)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and expect in err, err
    assert "Traceback" not in out + err
    assert _snapshot(results) == before


def test_resume_of_a_run_another_search_is_running_is_refused_and_a_killed_one_frees_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, guarded: None) -> None:
    """trials.csv has one writer: a second --resume of a run still being searched is refused before
    anything is written; the lock dies with the process that held it (kill -9, then --resume works)."""
    from autoprune.results import RunDir

    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    run = _fake_run(results / "going")
    (run / "state.json").write_text(json.dumps({"finished": False}))
    (run / "config.yaml").write_text(yaml.safe_dump({"search": {"model": "resnet20", "budget_flops": "50%",
                                                                "results_dir": str(results), "name": "going"}}))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from autoprune.results import RunDir; "
                               "RunDir(sys.argv[1]).hold(); print('held', flush=True); time.sleep(600)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(results)
        code, out, err, _ = run_in_process(["search", "--budget-flops", "50%", "--resume", "--name", "going",
                                            "--results-dir", str(results)], capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "is being searched now" in err and f"pid {holder.pid}" in err, err
        assert _snapshot(results) == before
        code, out, err, _ = run_in_process(["report", str(run)], capsys)  # reads, leaves the front to the search
        assert code == 0 and "a search of this run is going on" in out + err, out + err
        assert _snapshot(results) == before
    finally:
        holder.kill()
        holder.wait()
    freed = RunDir(run)
    freed.hold()  # the killed holder's lock went with it
    freed.release()


def test_a_new_run_two_searches_start_at_once_is_written_by_one(tmp_path: Path) -> None:
    """Two searches of the same new --name both passed the 'already exists' check while they prepared:
    the second to write finds the first's writer lock, or its files, and writes nothing."""
    from autoprune.config import SearchConfig
    from autoprune.errors import RunError
    from autoprune.prepare import _write
    from autoprune.results import _HELD, RunDir

    config = SearchConfig(budget_flops="50%", name="r", results_dir=str(tmp_path))
    run = RunDir(tmp_path / "r")
    _write(config, run, torch.nn.Linear(2, 2), {"val_acc": 0.5}, [], [], None, [], None)  # the first: holds it
    try:
        before = _snapshot(run.path)
        second = subprocess.run([sys.executable, "-c", "import sys, torch; from autoprune.config import SearchConfig; "
                                 "from autoprune.prepare import _write; from autoprune.results import RunDir; "
                                 "config = SearchConfig(budget_flops='50%', name='r', results_dir=sys.argv[1]); "
                                 "_write(config, RunDir(sys.argv[1] + '/r'), torch.nn.Linear(2, 2), {'val_acc': 0.7}, "
                                 "[], [], None, [], None)", str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert second.returncode != 0 and f"pid {os.getpid()}" in second.stderr, second.stderr[-800:]
        assert "is being searched now" in second.stderr
        assert _snapshot(run.path) == before
    finally:
        run.release()
    with pytest.raises(RunError, match="started by another search meanwhile"):
        _write(config, run, torch.nn.Linear(2, 2), {"val_acc": 0.9}, [], [], None, [], None)
    assert _snapshot(run.path) == before
    assert run.path not in _HELD  # given back after the refusal
    taker = []
    with pytest.raises(RunError, match="started by another search meanwhile"):  # handed on: the taker's to free
        _write(config, run, torch.nn.Linear(2, 2), {"val_acc": 0.9}, [], [], None, [], None, on_held=taker.append)
    assert taker == [run] and run.held()
    taker[0].release()
    run.hold()  # a search of the run on another thread of this process
    try:
        with pytest.raises(RunError, match="being searched now by this process"):
            _write(config, RunDir(run.path), torch.nn.Linear(2, 2), {"val_acc": 0.9}, [], [], None, [], None)
        assert run.held() and _snapshot(run.path) == before  # the first search keeps its lock
    finally:
        run.release()


def test_a_search_interrupted_right_after_writing_a_new_run_gives_its_lock_back(
        small_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C between prepare taking a new run's writer lock and returning: the search gives it back
    (a notebook that goes on could otherwise never search or report that run again)."""
    import autoprune.driver
    from autoprune.driver import search
    from autoprune.results import RunDir

    def interrupted(prepared):
        raise KeyboardInterrupt

    config = small_config(trials=1)
    monkeypatch.setattr(autoprune.driver, "for_trials", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search(config, log=lambda line: None)
    run = RunDir(Path(config.results_dir) / config.name)
    assert run.exists() and not run.held()
    run.hold()  # free for a --resume
    run.release()


def test_report_of_a_read_only_run_rewrites_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    import autoprune.cli

    run = _fake_run(tmp_path / "results" / "done")
    before = _snapshot(run)
    monkeypatch.setattr(autoprune.cli.os, "access", lambda path, mode: False)  # as a read-only mount says
    code, out, err, _ = run_in_process(["report", str(run)], capsys)
    assert code == 0 and "read-only; pareto.csv and pareto.png were not rewritten" in out + err, out + err
    assert _snapshot(run) == before


def test_train_refuses_to_overwrite_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture, guarded: None) -> None:
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    (out_dir / "model.pt").write_bytes(b"precious weights")
    before = _snapshot(out_dir)
    code, out, err, _ = run_in_process(["train", "--epochs", "1", "--out", str(out_dir)], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "model.pt" in err and "already exists" in err and "--out" in err
    assert _snapshot(out_dir) == before


# --------------------------------------------------------------------------------------- safe defaults


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: any callable could run the same way."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_load_checkpoint_refuses_code_in_pickle(tmp_path: Path) -> None:
    from autoprune.models import create_model, load_checkpoint

    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(create_model("resnet20"), path)
    assert not marker.exists(), "load_checkpoint ran code from the pickle: weights_only=True is not in force"
    # The file is a real threat: an unrestricted load runs the code.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_ctrl_c_while_preparing_names_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture, guarded: None) -> None:
    """Interrupted before anything is saved: the message names the run and says there is nothing to
    resume (a resume command would fail: the folder does not exist yet)."""
    import autoprune.data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(autoprune.data, "load_dataset", interrupted)
    code, out, err, _ = run_in_process(["search", "--budget-flops", "50%", "--results-dir", str(tmp_path)], capsys)
    assert code == 130 and "Traceback" not in err and "<run>" not in err
    assert "interrupted while preparing run 'resnet20-digits-flops50pct-" in err and "nothing to resume" in err
    assert not any(tmp_path.iterdir())
