"""Timing a model on a device, robustly: warm-up, repeated samples, median, accelerator sync.

Timing goes through ``torch.utils.benchmark.Timer``, which synchronises the accelerator around each
sample and runs at the caller's thread count (``num_threads`` is passed explicitly: the Timer's own
default of one thread would time a different program from the one the user runs). Relative figures
are measured side by side in one process (interleaved samples, the ratio the median of the
sample-by-sample ratios), so drift of a shared machine affects both models alike and cancels in it.
Inside a search's trial, the other trials of the run on this machine pause while samples are taken
(``quiet.py``): their load does not cancel.

Measuring never moves or switches the mode of the caller's model: a model on another device is
timed as a copy on ``device``.

``backend="onnxruntime"`` times the model where many users deploy it: exported to ONNX in memory
(as ``export.onnx_bytes`` exports it for ``apply``'s model.onnx) and run by ONNX Runtime's CPU
execution provider with ``threads`` intra-op threads (default 1), at a fixed batch size. It needs
the ``onnx`` and ``onnxruntime`` packages (``autoprune[onnx]``).

Example:
    >>> pruned_ms, base_ms = relative_latency(small, model, torch.randn(1, 3, 32, 32), device="cpu")
    >>> relative_latency(small, model, x, backend="onnxruntime", threads=1)
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import statistics
import time
from typing import Any, Iterator

import torch
import torch.nn as nn

from . import quiet
from .config import LATENCY_BACKENDS as BACKENDS
from .errors import ConfigError

__all__ = ["measure_latency", "relative_latency", "BACKENDS", "check_backend", "slower_note"]

_SAMPLE_MS = 20.0  # one timed sample lasts about this long, so timer resolution is < 1% of it


def check_backend(backend: str) -> None:
    """Raise ConfigError for an unknown backend, or for onnxruntime without its packages."""
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown --latency-backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "onnxruntime" and not all(importlib.util.find_spec(p) for p in ("onnx", "onnxruntime")):
        raise ConfigError("--latency-backend onnxruntime needs the onnx and onnxruntime packages: "
                          "pip install onnx onnxruntime (or pip install 'autoprune[onnx]').")


def slower_note(ratio: float | None, round_to: int, where: str) -> str | None:
    """One line, with the fix, when a pruned model measured slower than the unpruned one (``ratio`` =
    pruned / unpruned latency > 1); None otherwise. Kernels of CPU runtimes work on blocks of channels
    (ONNX Runtime's MobileNetV2 at half its FLOPs: 0.77x the speed with free channel counts, 1.77x
    with multiples of 8, results/benchmarks/latency.csv), so free counts can cost more than they save."""
    if ratio is None or not ratio > 1.0:
        return None
    fix = ("search again with --round-to 8 (channel counts in multiples of 8)" if round_to < 8 else
           "this model gains no speed from pruning here; try another --latency-backend or a smaller budget")
    return (f"warning: the pruned model measured {ratio:.2f}x the unpruned model's latency ({where}), slower, "
            f"with channel counts in multiples of {round_to}; {fix}")


def _timer(stmt: str, threads: int | None = None, **names: Any):
    """A ``torch.utils.benchmark.Timer`` at ``threads`` threads (default: the caller's thread count)."""
    # Importing the benchmark utilities imports torch.utils.cpp_extension, which warns on a CPU
    # machine that has a CUDA toolkit but no GPU; that warning means nothing for timing.
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        log.setLevel(level)
    return benchmark.Timer(stmt=stmt, globals=names, num_threads=threads or torch.get_num_threads())


def _device_of(model: nn.Module) -> torch.device | None:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return None


def _standard_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _channels_last(model: nn.Module) -> bool:
    """Whether a 4-D weight of ``model`` is stored in another layout than PyTorch's default, as training.py leaves a
    model on CUDA (channels-last). Strides are compared exactly: a depthwise, 1x1 or one-input-channel weight is
    "contiguous" in both layouts to ``is_contiguous``, and a grayscale MobileNet has nothing else."""
    return any(p.dim() == 4 and p.stride() != _standard_strides(p.shape) for p in model.parameters())


def _default_layout(net: nn.Module) -> nn.Module:
    """``net`` (a copy) with every 4-D parameter and buffer re-strided to the default layout, in place."""
    with torch.no_grad():
        for t in (*net.parameters(), *net.buffers()):
            if t.dim() == 4:
                t.data = t.data.clone(memory_format=torch.contiguous_format)
    return net


@contextlib.contextmanager
def _timed_copy(model: nn.Module, x: torch.Tensor, device: str | torch.device, batch_size: int,
                threads: int | None = None, backend: str = "torch") -> Iterator[tuple[Any, int]]:
    """A Timer of one forward pass in eval mode on ``device``, and how many passes make one sample.

    The caller's model is used as it is when it already lives on ``device`` (its train/eval mode is
    restored after), and copied there otherwise. Every model is timed in PyTorch's default (NCHW)
    layout: a model that training on CUDA left in channels-last is timed as a contiguous copy, so that
    it is compared with an unpruned model on equal terms (on an H200 the layout alone made a pruned
    resnet56 time at 0.42 of the unpruned model instead of 0.62).
    """
    if backend == "onnxruntime":
        with _ort_timer(model, x, batch_size, threads) as timed:
            yield timed
        return
    device = torch.device(device)
    here = _device_of(model)
    same = here is None or (here.type == device.type and (device.index is None or here.index == device.index))
    relayout = _channels_last(model)
    net = model if same and not relayout else copy.deepcopy(model).to(device)
    if relayout:
        net = _default_layout(net)
    modes = {m: m.training for m in model.modules()} if net is model else {}
    net.eval()
    inp = x[:1].to(device).expand(batch_size, *x.shape[1:]).contiguous()
    timer = _timer("net(inp)", threads, net=net, inp=inp)
    try:
        with torch.no_grad():
            one = timer.timeit(1).median * 1000.0  # also warms up (the Timer runs 2 passes first)
            yield timer, max(1, min(100, int(_SAMPLE_MS / max(one, 1e-3))))
    finally:
        for m, training in modes.items():  # each module's own mode (a frozen BatchNorm stays frozen)
            m.train(training)


class _OrtTimer:
    """The Timer interface (``timeit(n).median`` in seconds) over an ONNX Runtime session."""

    def __init__(self, session: Any, feed: dict) -> None:
        self.session, self.feed = session, feed

    def timeit(self, number: int) -> Any:
        start = time.perf_counter()
        for _ in range(number):
            self.session.run(None, self.feed)
        return _Measured((time.perf_counter() - start) / max(1, number))


class _Measured:
    def __init__(self, seconds: float) -> None:
        self.median = seconds


@contextlib.contextmanager
def _ort_timer(model: nn.Module, x: torch.Tensor, batch_size: int, threads: int | None) -> Iterator[tuple[Any, int]]:
    """Export a CPU copy of ``model`` to ONNX in memory; time it in an ONNX Runtime CPU session."""
    check_backend("onnxruntime")
    import onnxruntime as ort

    from .export import onnx_bytes

    net = copy.deepcopy(model).cpu().eval()  # the caller's model is left as it is, modes included
    inp = x[:1].detach().cpu().expand(batch_size, *x.shape[1:]).contiguous()
    data = onnx_bytes(net, inp, dynamic_batch=False)  # the batch size timed is the one exported
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    timer = _OrtTimer(session, {"input": inp.numpy()})
    one = timer.timeit(3).median * 1000.0
    yield timer, max(1, min(100, int(_SAMPLE_MS / max(one, 1e-3))))


def _sample_ms(timer: Any, runs: int) -> float:
    return timer.timeit(runs).median * 1000.0


@torch.no_grad()
def measure_latency(model: nn.Module, x: torch.Tensor, device: str | torch.device = "cpu", batch_size: int = 1,
                    *, warmup: int = 5, repeats: int = 15, backend: str = "torch",
                    threads: int | None = None) -> float:
    """Median milliseconds of one forward pass of a batch of ``batch_size`` copies of ``x[:1]``.

    ``backend`` ``torch`` (eager, on ``device``) or ``onnxruntime`` (CPU); ``threads`` intra-op
    threads (default: the caller's for torch, 1 for ONNX Runtime).
    """
    with _timed_copy(model, x, device, batch_size, threads, backend) as (timer, runs), quiet.timing():
        timer.timeit(warmup)
        return statistics.median([_sample_ms(timer, runs) for _ in range(repeats)])


@torch.no_grad()
def relative_latency(pruned: nn.Module, original: nn.Module, x: torch.Tensor, device: str | torch.device = "cpu",
                     batch_size: int = 1, *, warmup: int = 5, repeats: int = 15, backend: str = "torch",
                     threads: int | None = None) -> tuple[float, float]:
    """(pruned ms, original ms) from interleaved timing samples in this process.

    The original's figure is the median of its samples; the pruned model's is that times the median of
    the sample-by-sample ratios, so ``pruned / original`` is the paired median ratio: on a shared
    machine its 95th-percentile deviation between measurements was 0.56-0.60 times that of the ratio of
    the two medians (``scripts/bench_timing_noise.py``).
    """
    with _timed_copy(pruned, x, device, batch_size, threads, backend) as (ta, runs_a), \
            _timed_copy(original, x, device, batch_size, threads, backend) as (tb, runs_b), quiet.timing():
        ta.timeit(warmup)
        tb.timeit(warmup)
        a, b = [], []
        for _ in range(repeats):
            a.append(_sample_ms(ta, runs_a))
            b.append(_sample_ms(tb, runs_b))
    base = statistics.median(b)
    return base * statistics.median(p / q for p, q in zip(a, b)), base
