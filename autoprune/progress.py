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

__all__ = ["time_left", "size_scale", "format_duration", "Progress"]


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


def size_scale(finished: Sequence[tuple[float, float]], pending: Sequence[float]) -> float:
    """How long the ``pending`` units take against the ``finished`` ones, from their sizes.

    A pruned model's trial takes about ``a + b x size`` seconds (a fixed part, and a finetune that
    costs in proportion to the model). The line is fitted to the finished units' ``(size, seconds)``
    (``a, b >= 0``) and the ratio of its mean over the pending sizes to its mean over the finished
    ones is returned, so that :func:`time_left`, which assumes the remaining units take as long as the
    finished ones, can be scaled. 1 when the sizes say nothing: fewer than 3 finished units, sizes
    that barely differ, or no pending sizes. Clipped to [0.25, 4].

    Example:
        >>> size_scale([(0.5, 20), (0.5, 20), (0.125, 8)], pending=[0.25, 0.25])   # 4 + 32 x size
        0.75
    """
    pairs = [(float(s), float(d)) for s, d in finished if s is not None and d is not None
             and math.isfinite(s) and math.isfinite(d)]
    if len(pairs) < 3 or not pending:
        return 1.0
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if max(xs) - min(xs) < 0.05 or sxx <= 0:
        return 1.0
    b = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx)
    a = max(0.0, my - b * mx)
    before = a + b * mx
    after = a + b * (sum(pending) / len(pending))
    if before <= 0:
        return 1.0
    return min(4.0, max(0.25, after / before))


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
        sizes: the expected size of each unit still to run, in the order they start (a search's warm
            starts have known targets; None for a proposal not made yet), so that the estimate knows
            when the units to come are smaller or larger than those done (:func:`size_scale`).
        prior: the expected size of a proposal before any finished (the middle of the target range);
            it is averaged with the sizes of the proposals that finished.
    """

    def __init__(self, total: int, *, done: int = 0, concurrency: int = 1, unit: str = "trial",
                 log: Callable[[str], None] = print, bar: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter, sizes: Sequence[float | None] | None = None,
                 prior: float | None = None) -> None:
        if int(total) < 0 or int(done) < 0:
            raise ValueError(f"`total >= 0` and `done >= 0` must hold, but got {total=}, {done=}.")
        self.total, self.before, self.concurrency = int(total), int(done), max(1, int(concurrency))
        self._log, self._clock = log, clock
        self._start = clock()
        self._finished: list[float] = []
        self._sizes = list(sizes) if sizes is not None else None
        self._prior = prior
        self._measured: list[tuple[float, float]] = []  # (size, seconds) of finished units
        self._proposed: list[float] = []  # sizes of finished proposals (units with no size known ahead)
        self._bar = _tqdm_bar(self.before + self.total, self.before, unit) \
            if (_terminal() if bar is None else bar) else None

    @property
    def done(self) -> int:
        """Units finished in all (before this piece of work and in it)."""
        return self.before + len(self._finished)

    def left(self) -> float | None:
        """Seconds left, by :func:`time_left`, scaled by :func:`size_scale` when sizes are known
        (None before the first unit finished)."""
        left = time_left(self._finished, self.total, self.concurrency)
        if left is None or self._sizes is None:
            return left
        guesses = [*([] if self._prior is None else [self._prior]), *self._proposed]
        guess = sum(guesses) / len(guesses) if guesses else None
        pending = [s if s is not None else guess for s in self._sizes[len(self._finished):]]
        if any(p is None for p in pending):
            return left
        return left * size_scale(self._measured, pending)

    def step(self, *, size: float | None = None, seconds: float | None = None, proposed: bool = False,
             **postfix: Any) -> str:
        """Count one finished unit; return what a logged line ends with: ``12/24, 1m40s left``.

        ``size`` and ``seconds`` (the unit's size and how long it ran) feed :func:`size_scale`;
        ``proposed``: a unit whose size was not known ahead. ``postfix`` (``best=0.95``) is shown on
        the bar beside the estimate.
        """
        self._finished.append(self._clock() - self._start)
        if size is not None and seconds is not None and math.isfinite(size) and math.isfinite(seconds):
            self._measured.append((float(size), float(seconds)))
            if proposed:
                self._proposed.append(float(size))
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
