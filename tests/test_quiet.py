"""Trials that train give way while another trial of the run takes latency samples (quiet.py)."""
import multiprocessing
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from autoprune import quiet

pytestmark = pytest.mark.skipif(quiet.fcntl is None, reason="no fcntl on this platform")


class _Slow(nn.Module):
    """A 'training step' of 50 ms whose start and end go to a file."""

    def __init__(self, log: str) -> None:
        super().__init__()
        self.log = log

    def forward(self, x):
        start = time.monotonic()
        time.sleep(0.05)
        with open(self.log, "a") as f:
            f.write(f"{start} {time.monotonic()}\n")
        return x


def _train(folder: str, log: str, stop) -> None:
    model = _Slow(log)
    with quiet.training(model, folder) as waited:
        while not stop.is_set():
            model(torch.zeros(1))
    Path(log + ".waited").write_text(str(waited.seconds))


def _steps(log) -> list[tuple[float, float]]:
    return [tuple(map(float, line.split())) for line in open(log)] if log.exists() else []


def test_a_trainer_of_the_run_pauses_while_another_trial_takes_samples(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    logs = [tmp_path / f"steps{i}.log" for i in range(2)]
    workers = [ctx.Process(target=_train, args=(str(run), str(log), stop)) for log in logs]
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + 30
        while any(len(_steps(log)) < 3 for log in logs) and time.monotonic() < deadline:
            time.sleep(0.02)
        with quiet.measuring(run), quiet.timing():
            began = time.monotonic()
            time.sleep(0.5)
            ended = time.monotonic()
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
    for log in logs:
        steps = _steps(log)
        assert not [s for s in steps if s[0] < ended and s[1] > began], "a step ran while samples were taken"
        assert any(s[0] >= ended for s in steps), "the trainer did not resume"
        assert any(s[1] <= began for s in steps)
        assert 0.3 < float(Path(str(log) + ".waited").read_text()) < ended - began + 0.3  # held ~0.5 s, counted


def test_outside_a_measurement_nothing_waits_and_a_trainer_that_times_does_not_wait_for_itself(tmp_path):
    model = _Slow(str(tmp_path / "log"))
    with quiet.timing():  # no measurement in this process: no lock taken
        with quiet.training(model, None):
            model(torch.zeros(1))
    with quiet.training(model, tmp_path):  # its own shared gate would block its exclusive one
        with quiet.measuring(tmp_path), quiet.timing():
            model(torch.zeros(1))
    assert len(_steps(tmp_path / "log")) == 2


def test_forget_removes_the_runs_lock_files_on_this_host_and_no_other_runs(tmp_path):
    one, other = tmp_path / "one", tmp_path / "other"
    for folder in (one, other):
        with quiet.measuring(folder), quiet.timing():
            pass
    files = {kind: quiet._lock(one, kind) for kind in ("latency", "turn", "gate")}
    assert all(f.exists() for f in files.values())
    quiet.forget(one)
    assert not any(f.exists() for f in files.values())
    assert quiet._lock(other, "gate").exists()
    quiet.forget(other)


def test_a_timer_waits_at_most_gate_wait_s_for_a_trainer_that_never_calls_its_model(tmp_path, monkeypatch):
    """A user's loop that calls only submodules never reaches the hook: the samples are taken anyway."""
    ctx = multiprocessing.get_context("fork")
    stop, inside = ctx.Event(), ctx.Event()

    def stuck():
        with quiet.training(_Slow(str(tmp_path / "log")), tmp_path):
            inside.set()
            stop.wait(30)

    worker = ctx.Process(target=stuck)
    worker.start()
    try:
        assert inside.wait(30)
        monkeypatch.setattr(quiet, "GATE_WAIT_S", 0.3)
        start = time.monotonic()
        with quiet.measuring(tmp_path), quiet.timing():
            waited = time.monotonic() - start
    finally:
        stop.set()
        worker.join(10)
    assert 0.3 <= waited < 5


def test_every_latency_measurement_takes_its_samples_inside_the_gate(monkeypatch):
    """relative_latency and measure_latency (torch and ONNX Runtime alike) time inside quiet.timing()."""
    import contextlib

    import autoprune.latency as latency

    entered = []

    @contextlib.contextmanager
    def timing():
        entered.append(True)
        yield

    monkeypatch.setattr(quiet, "timing", timing)
    net, x = nn.Sequential(nn.Conv2d(1, 2, 3)), torch.randn(1, 1, 8, 8)
    latency.relative_latency(net, net, x, warmup=1, repeats=1)
    latency.measure_latency(net, x, warmup=1, repeats=1)
    assert entered == [True, True]
