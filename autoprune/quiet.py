"""Quiet latency measurements: the trials of a search on one machine pause training while one of them times.

A trial under a latency budget times candidates in the middle of a search, while the other trials on the
same machine train. Their load does not cancel in a pruned/unpruned ratio: a larger model suffers more
from a neighbour that shares the caches and memory bandwidth, so the ratio measured beside training comes
out lower than on the quiet machine where the model will run, and a shape fitted just under its limit
measures over it when re-timed (``scripts/bench_quiet_timing.py``). So, per run folder and host:

- one measurement at a time (:func:`measuring`, held by a trial around its fit and its re-measure);
- while samples are taken (:func:`timing`, called by ``latency.py``), every trial of the run on this host
  that is training or evaluating (:func:`training`) waits at its model's next forward pass.

The two sides meet in lock files on this host (in the temporary directory, named after the run folder, so
a node without the run folder takes part too and only the driver writes the run folder): a turnstile that
a timer holds exclusively (a trainer that finds it held gives way before its next forward pass) and a
gate that trainers hold shared while they compute and a timer takes exclusively, so it starts once every
step in flight has ended (a trainer on CUDA synchronises first). A trainer checks the turnstile with one
non-blocking ``flock`` per forward pass. A timer waits at most ``GATE_WAIT_S`` for the gate, then times
anyway: a user's task whose loop never calls the model object (only its submodules, or a compiled copy)
cannot be paused and must not stall the run. Not paused: whatever a neighbour does outside its model's
forward passes (pruning, counting FLOPs, a criterion's gradient pass on the unpruned model). Pauses count
in the paused trial's time; :func:`training` also says how long it waited (``t:paused`` in trials.csv).
Nothing happens outside a search's trials (no run folder set) or on a platform without ``fcntl``.
:func:`forget` removes a finished run's lock files on this host.

Example:
    >>> with measuring(Path("results/run")):        # a trial that times
    ...     relative_latency(small, model, x)        # -> takes timing() around its samples
    >>> with training(small, Path("results/run")) as waited:  # another trial, in another process
    ...     finetune(small, ...)
    >>> waited.seconds                                # how long its forward passes were held
"""
from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no pausing
    fcntl = None  # type: ignore[assignment]

__all__ = ["measuring", "timing", "training", "forget", "Waited", "GATE_WAIT_S"]

GATE_WAIT_S = 30.0  # the longest a timer waits for the trainers' steps in flight to end

_FOLDER: Path | None = None  # the run folder of the measurement this process is making, if any
_TRAINING = 0  # training() blocks open in this process: a timer here would wait for itself
_TIMING = False  # this process is taking samples (a nested timing() would wait for itself)


def _lock(folder: Path, kind: str) -> Path:
    """This host's lock file of ``kind`` for the run in ``folder``."""
    key = hashlib.sha1(str(Path(folder).absolute()).encode()).hexdigest()[:16]
    where = Path(tempfile.gettempdir()) / "autoprune-locks"
    where.mkdir(exist_ok=True)
    return where / f"{key}.{kind}"


_KINDS = ("latency", "turn", "gate")


def forget(folder: Path | None) -> None:
    """Remove this host's lock files of the run in ``folder`` (call when none of its trials is running)."""
    if folder is None:
        return
    for kind in _KINDS:
        _lock(folder, kind).unlink(missing_ok=True)


@contextlib.contextmanager
def measuring(folder: Path | None) -> Iterator[None]:
    """One measurement at a time per run on this host; while inside, :func:`timing` in this process pauses
    the run's trainers on this host."""
    global _FOLDER
    if fcntl is None or folder is None:
        yield
        return
    with open(_lock(folder, "latency"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        previous, _FOLDER = _FOLDER, Path(folder)
        try:
            yield
        finally:
            _FOLDER = previous
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def timing() -> Iterator[None]:
    """Inside :func:`measuring`: no trainer of the run on this host computes until the block ends (after at
    most ``GATE_WAIT_S`` of waiting for the steps in flight; then the samples are taken regardless)."""
    global _TIMING
    folder = _FOLDER
    if fcntl is None or folder is None or _TRAINING or _TIMING:
        yield
        return
    with open(_lock(folder, "turn"), "a") as turn, open(_lock(folder, "gate"), "a") as gate:
        fcntl.flock(turn, fcntl.LOCK_EX)  # trainers give way at their next forward pass...
        held = _wait_for(gate, time.monotonic() + GATE_WAIT_S)  # ...and the steps in flight end
        _TIMING = True
        try:
            yield
        finally:
            _TIMING = False
            if held:
                fcntl.flock(gate, fcntl.LOCK_UN)
            fcntl.flock(turn, fcntl.LOCK_UN)


def _wait_for(gate, deadline: float) -> bool:
    while True:
        try:
            fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)


class Waited:
    """How long the forward passes inside one :func:`training` block were held for a timer, in seconds."""

    def __init__(self) -> None:
        self.seconds = 0.0


@contextlib.contextmanager
def training(model: nn.Module, folder: Path | None) -> Iterator[Waited]:
    """While inside, ``model``'s forward passes (training, BatchNorm recalibration, evaluation: any loop,
    a user's task included, as long as it calls ``model``) wait while a trial of the run on this host
    takes timing samples. Yields a :class:`Waited` that counts the time they waited."""
    global _TRAINING
    waited = Waited()
    if fcntl is None or folder is None:
        yield waited
        return
    with open(_lock(folder, "turn"), "a") as turn, open(_lock(folder, "gate"), "a") as gate:
        fcntl.flock(gate, fcntl.LOCK_SH)

        def give_way(module: nn.Module, args) -> None:
            try:
                fcntl.flock(turn, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # a timer is waiting or timing: let it have the machine
                start = time.monotonic()
                _settle(module)
                fcntl.flock(gate, fcntl.LOCK_UN)
                fcntl.flock(turn, fcntl.LOCK_SH)  # until it is done
                fcntl.flock(gate, fcntl.LOCK_SH)
                waited.seconds += time.monotonic() - start
            fcntl.flock(turn, fcntl.LOCK_UN)

        handle = model.register_forward_pre_hook(give_way)
        _TRAINING += 1
        try:
            yield waited
        finally:
            _TRAINING -= 1
            handle.remove()
            fcntl.flock(gate, fcntl.LOCK_UN)


def _settle(model: nn.Module) -> None:
    """Let the kernels a trainer queued on a GPU finish before it says it is idle."""
    for p in model.parameters():
        if p.is_cuda:
            torch.cuda.synchronize(p.device)
        return
