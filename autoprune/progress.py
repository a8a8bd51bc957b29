"""Progress of long work: how much is done, the running best, and an estimate of the time left.

A search's trials, a baseline's epochs and ``apply``'s epochs all count through :class:`Progress`.
With a terminal on stderr it draws a tqdm bar; in plain output (a file, CI) the same count and
estimate end each logged line, so a log read later says how far the work had come. The estimate
itself is :func:`time_left`, a pure function of the finish times, testable without Ray or training.

Example:
    >>> progress = Progress(24, concurrency=2, unit="trial", log=print)
    >>> progress.write(f"trial 0 ok  {progress.step(best=0.93)}")   # after each finished trial
    >>> progress.close()
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Sequence

__all__ = ["time_left", "format_duration", "Progress"]


def time_left(finished: Sequence[float], total: int, concurrency: int = 1) -> float | None:
    """Seconds until all ``total`` units are done, from when the finished ones ended.

    Args:
        finished: for each finished unit, the seconds from the start of the work to its end.
        total: units in all (finished, running and not started).
        concurrency: how many units run side by side (trials; 1 for epochs).

    Returns:
        The estimate, 0 when everything is done, or None before anything finished.

    The estimate is ``(total - done) x`` the time between completions in the steady state, where
    ``c = min(concurrency, total)`` slots are kept busy: each completion frees a slot that is refilled
    at once, so completions come at the rate ``c / (mean time a trial holds a slot)``. That interval
    is measured as ``(mean of the last c finish times - mean of the first c) / (done - c)``. Why this
    and not the obvious ones:

    - ``remaining x mean trial time / concurrency`` misses what happens between trials (the
      sampler, scheduling, writing the row) and trusts the nominal concurrency, which Ray may not
      reach (fewer free cores or GPUs than ``--concurrency`` asks for). The interval between
      completions includes both.
    - ``elapsed / done x remaining`` charges the start-up (each worker builds its context on its
      first trial; a first epoch warms caches) to every remaining unit, and is ``c`` times too high
      on the first completions, while the other ``c - 1`` trials that started with the first are
      nearly done. The first ``c`` finish times carry the start-up and cancel in the difference.
    - The plain interval ``(t_k - t_c) / (k - c)`` swings with the phase of the slots: trials that
      started together finish in bunches, so a single interval is either near 0 or near a whole
      trial. Averaging ``c`` finish times at each end spans whole turns of every slot.

    Before ``c`` units have finished, those that did ran from the start side by side, so their
    finish times are their durations: the estimate is ``remaining x their mean / c``. When every
    completion came at once (no interval yet), it is ``elapsed / done x remaining``.
    ``tests/test_progress.py`` checks it on simulated demo searches: at the half-way trial it is
    within 25% of the time that remained in nearly every run, and closer than ``elapsed / done``.

    Example:
        >>> time_left([10, 10, 20, 20], total=8, concurrency=2)   # two at a time, 10 s each
        20.0
    """
    total, concurrency = int(total), int(concurrency)
    if total < 0:
        raise ValueError(f"`total >= 0` must hold, but got {total=}.")
    if concurrency < 1:
        raise ValueError(f"`concurrency >= 1` must hold, but got {concurrency=}.")
    times = sorted(float(t) for t in finished)
    done = len(times)
    if done >= total:
        return 0.0
    if done == 0:
        return None
    remaining = total - done
    c = min(concurrency, total)
    if done <= c:
        return remaining * (sum(times) / done) / c
    interval = (sum(times[-c:]) - sum(times[:c])) / c / (done - c)
    if interval > 0:
        return remaining * interval
    return remaining * times[-1] / done


def format_duration(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``1h02m``; ``?`` for an unknown duration."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts finished units of one piece of work and estimates the time left.

    Args:
        total: units this piece of work will finish (a resumed search: those still to run).
        done: units finished before (a resumed search's earlier trials): counted in ``done/total``,
            not in the timing.
        concurrency: units that run side by side.
        unit: what is counted (``trial``, ``epoch``), for the bar.
        log: where lines go (:meth:`write`).
        bar: draw a tqdm bar on stderr; None: when stderr is a terminal.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, total: int, *, done: int = 0, concurrency: int = 1, unit: str = "trial",
                 log: Callable[[str], None] = print, bar: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if int(total) < 0 or int(done) < 0:
            raise ValueError(f"`total >= 0` and `done >= 0` must hold, but got {total=}, {done=}.")
        self.total, self.before, self.concurrency = int(total), int(done), max(1, int(concurrency))
        self._log, self._clock = log, clock
        self._start = clock()
        self._finished: list[float] = []
        self._bar = _tqdm_bar(self.before + self.total, self.before, unit) \
            if (_terminal() if bar is None else bar) else None

    @property
    def done(self) -> int:
        """Units finished in all (before this piece of work and in it)."""
        return self.before + len(self._finished)

    def left(self) -> float | None:
        """Seconds left, by :func:`time_left` (None before the first unit finished)."""
        return time_left(self._finished, self.total, self.concurrency)

    def step(self, **postfix: Any) -> str:
        """Count one finished unit; return what a logged line ends with: ``12/24, 1m40s left``.

        ``postfix`` (``best=0.95``) is shown on the bar beside the estimate.
        """
        self._finished.append(self._clock() - self._start)
        left = self.left()
        text = f"{self.done}/{self.before + self.total}"
        if left is not None and left > 0:
            text += f", {format_duration(left)} left"
        if self._bar is not None:
            shown = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in postfix.items()]
            if left is not None and left > 0:
                shown.append(f"{format_duration(left)} left")
            self._bar.set_postfix_str(", ".join(shown), refresh=False)
            self._bar.update(1)
        return text

    def write(self, line: str) -> None:
        """Log ``line`` without breaking the bar (cleared, then redrawn below the line)."""
        if self._bar is None:
            self._log(line)
            return
        with type(self._bar).external_write_mode(file=sys.stdout):
            self._log(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _tqdm_bar(total: int, initial: int, unit: str):
    try:
        from tqdm import tqdm
    except ImportError:  # no bar without tqdm; the lines still carry the estimate
        return None
    # tqdm's own time-left assumes one unit at a time; ours (in the postfix) knows the concurrency.
    return tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {unit}s [{elapsed}{postfix}]")
