"""Timing a model on a device, robustly: warm-up, repeated runs, median, CUDA synchronisation.

Relative figures are measured side by side in one process (interleaved rounds), so drift of a
shared machine affects both models alike and cancels in the ratio.

Example:
    >>> pruned_ms, base_ms = relative_latency(small, model, torch.randn(1, 3, 32, 32), device="cpu")
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn

__all__ = ["measure_latency", "relative_latency"]


def _prepare(model: nn.Module, x: torch.Tensor, device: str | torch.device, batch_size: int):
    device = torch.device(device)
    model = model.to(device).eval()
    inp = x[:1].to(device).expand(batch_size, *x.shape[1:]).contiguous()
    return model, inp, device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _time_once(model: nn.Module, inp: torch.Tensor, device: torch.device, runs: int) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(runs):
        model(inp)
    _sync(device)
    return (time.perf_counter() - start) * 1000.0 / runs


def _runs_per_sample(model: nn.Module, inp: torch.Tensor, device: torch.device, target_ms: float = 20.0) -> int:
    """How many forward passes make one timed sample last about ``target_ms`` (timer noise < 1%)."""
    one = _time_once(model, inp, device, 1)
    return max(1, min(100, int(target_ms / max(one, 1e-3))))


@torch.no_grad()
def measure_latency(model: nn.Module, x: torch.Tensor, device: str | torch.device = "cpu", batch_size: int = 1,
                    *, warmup: int = 5, repeats: int = 15) -> float:
    """Median milliseconds of one forward pass of a batch of ``batch_size`` copies of ``x[:1]``."""
    model, inp, device = _prepare(model, x, device, batch_size)
    for _ in range(warmup):
        model(inp)
    runs = _runs_per_sample(model, inp, device)
    return statistics.median(_time_once(model, inp, device, runs) for _ in range(repeats))


@torch.no_grad()
def relative_latency(pruned: nn.Module, original: nn.Module, x: torch.Tensor, device: str | torch.device = "cpu",
                     batch_size: int = 1, *, warmup: int = 5, repeats: int = 15) -> tuple[float, float]:
    """(pruned ms, original ms): medians of interleaved timing rounds in this process."""
    a, inp, dev = _prepare(pruned, x, device, batch_size)
    b, _, _ = _prepare(original, x, device, batch_size)
    for _ in range(warmup):
        a(inp)
        b(inp)
    runs_a = _runs_per_sample(a, inp, dev)
    runs_b = _runs_per_sample(b, inp, dev)
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_time_once(a, inp, dev, runs_a))
        tb.append(_time_once(b, inp, dev, runs_b))
    return statistics.median(ta), statistics.median(tb)
