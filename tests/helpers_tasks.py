"""Users' tasks, loaded by tests through ``--task helpers_tasks:<function>`` and ``search_task``."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "segmentation_task.py"


def segmentation_example():
    """examples/segmentation_task.py as a module (it is a script, not a package)."""
    if "segmentation_task" not in sys.modules:
        spec = importlib.util.spec_from_file_location("segmentation_task", _EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["segmentation_task"] = module
        spec.loader.exec_module(module)
    return sys.modules["segmentation_task"]


def small_segmentation():
    """The example's LR-ASPP task on a small generated set and a short baseline (seconds, not minutes)."""
    return segmentation_example().task(n_train=48, n_val=24, baseline_epochs=2)


class TinySegmenter(nn.Module):
    """Three conv-BatchNorm layers and a 1x1 head that returns ``{"out": logits}``, as torchvision's do."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Conv2d(32, classes, 1)

    def forward(self, x):
        return {"out": self.head(self.body(x))}


def _pixels(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    y = (x[:, 0] > 0.5).long() + (x[:, 1] > 0.7).long()
    return x, y


def _loop(model, x, y, epochs: float) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    steps = max(1, round(epochs * len(x) / 8))
    dev = next(model.parameters()).device
    for i in range(steps):
        j = (i * 8) % len(x)
        loss = F.cross_entropy(model(x[j:j + 8].to(dev))["out"], y[j:j + 8].to(dev))
        opt.zero_grad()
        loss.backward()
        opt.step()


def _pixel_acc(model, x, y) -> float:
    dev = next(model.parameters()).device
    return float((model(x.to(dev))["out"].argmax(1).cpu() == y).float().mean())


def tiny_pieces(broken_finetune: bool = False) -> dict:
    """A tiny segmenter's task as a dict (the other form ``--task`` accepts); ``broken_finetune``: a
    user loop that raises whenever it trains a pruned model."""

    torch.manual_seed(0)
    x, y = _pixels(64, 1)
    vx, vy = _pixels(32, 2)
    model = TinySegmenter()
    _loop(model, x, y, 2)

    def finetune(m, epochs):
        if broken_finetune:
            raise RuntimeError("the user's loop exploded on purpose")
        _loop(m, x, y, epochs)

    return {"model": model, "example_input": torch.zeros(1, 3, 16, 16), "evaluate": lambda m: _pixel_acc(m, vx, vy),
            "finetune": finetune, "calib_batches": [x[i:i + 8] for i in range(0, 32, 8)], "metric": "pixel_acc"}


def tiny_task():
    return tiny_pieces()


def not_a_task():
    return 42


def _example(name: str):
    """An example script of examples/ as a module."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _EXAMPLE.parent / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def small_detection():
    """The example's SSDlite task at 64 px on 16 generated images, one epoch of baseline."""
    return _example("detection_task").task(n_train=16, n_val=8, baseline_epochs=1, size=64)
