"""Quiet latency measurements: the trials of a search on one machine pause training while one of them times.

A trial under a latency budget times candidates in the middle of a search, while the other trials on the
same machine train. Their load does not cancel in a pruned/unpruned ratio: a larger model suffers more
from a neighbour that shares the caches and memory bandwidth, so the ratio measured beside training comes
out lower than on the quiet machine where the model will run, and a shape fitted just under its limit
measures over it when re-timed (``scripts/bench_quiet_timing.py``). So, per run folder and host:

- one measurement at a time (:func:`measuring`, held by a trial around its fit and its re-measure);
- while samples are taken (:func:`timing`, called by ``latency.py``), every trial of the run on this host
  that is training or evaluating (:func:`training`) waits at its model's next forward pass.

The two sides meet in two lock files: a turnstile that a timer holds exclusively (a trainer that finds it
held gives way before its next forward pass) and a gate that trainers hold shared while they compute and a
timer takes exclusively, so it starts once every step in flight has ended. A trainer checks the turnstile
with one non-blocking ``flock`` per forward pass. Nothing happens outside a search's trials (no run folder
set), on a platform without ``fcntl``, or when the run folder does not exist on this host.

Example:
    >>> with measuring(Path("results/run")):        # a trial that times
    ...     relative_latency(small, model, x)        # -> takes timing() around its samples
    >>> with training(small, Path("results/run")):  # another trial, in another process
    ...     finetune(small, ...)
"""
from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Iterator

import torch.nn as nn

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no pausing
    fcntl = None  # type: ignore[assignment]

__all__ = ["measuring", "timing", "training"]

_FOLDER: Path | None = None  # the run folder of the measurement this process is making, if any


def _usable(folder: Path | None) -> bool:
    return fcntl is not None and folder is not None and Path(folder).is_dir()


def _path(folder: Path, kind: str) -> Path:
    return Path(folder) / f".{kind}-{socket.gethostname()}.lock"


@contextlib.contextmanager
def measuring(folder: Path | None) -> Iterator[None]:
    """One measurement at a time per run (held across processes through ``.latency.lock`` in ``folder``);
    while inside, :func:`timing` in this process pauses the run's trainers on this host."""
    global _FOLDER
    if not _usable(folder):
        yield
        return
    with open(Path(folder) / ".latency.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        previous, _FOLDER = _FOLDER, Path(folder)
        try:
            yield
        finally:
            _FOLDER = previous
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def timing() -> Iterator[None]:
    """Inside :func:`measuring`: no trainer of the run on this host computes until the block ends."""
    folder = _FOLDER
    if not _usable(folder):
        yield
        return
    with open(_path(folder, "turn"), "a") as turn, open(_path(folder, "gate"), "a") as gate:
        fcntl.flock(turn, fcntl.LOCK_EX)  # trainers give way at their next forward pass...
        fcntl.flock(gate, fcntl.LOCK_EX)  # ...and the steps in flight end
        try:
            yield
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
            fcntl.flock(turn, fcntl.LOCK_UN)


@contextlib.contextmanager
def training(model: nn.Module, folder: Path | None) -> Iterator[None]:
    """While inside, ``model``'s forward passes (training, BatchNorm recalibration, evaluation: any loop,
    a user's task included) wait while a trial of the run on this host takes timing samples."""
    if not _usable(folder):
        yield
        return
    with open(_path(folder, "turn"), "a") as turn, open(_path(folder, "gate"), "a") as gate:
        fcntl.flock(gate, fcntl.LOCK_SH)

        def give_way(module: nn.Module, args) -> None:
            try:
                fcntl.flock(turn, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # a timer is waiting or timing: let it have the machine
                fcntl.flock(gate, fcntl.LOCK_UN)
                fcntl.flock(turn, fcntl.LOCK_SH)  # until it is done
                fcntl.flock(gate, fcntl.LOCK_SH)
            fcntl.flock(turn, fcntl.LOCK_UN)

        handle = model.register_forward_pre_hook(give_way)
        try:
            yield
        finally:
            handle.remove()
            fcntl.flock(gate, fcntl.LOCK_UN)
