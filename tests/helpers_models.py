"""A user model builder, loaded by tests through the ``module:function`` model spec."""
from __future__ import annotations

import torch.nn as nn


def tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def no_args() -> nn.Module:
    """A builder that takes neither num_classes nor in_channels."""
    return tiny(10, 3)


def not_a_module(num_classes: int = 10) -> str:
    return "oops"
