"""A user model builder, loaded by tests through the ``module:function`` model spec."""
from __future__ import annotations

import torch
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


class ConcatGrouped(nn.Module):
    """Two 32-channel branches concatenated into a grouped convolution (groups=4): a user's model
    whose branch groups Torch-Pruning cannot prune safely (the grouped conv's input groups would
    lose unequal channels)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.branch_a = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], 1)
        return self.head(self.mix(x).mean((2, 3)))


def concat_grouped(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ConcatGrouped(num_classes, in_channels)


def tiny_vit(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's VisionTransformer at 16x16 pixels: its hidden width is reshaped by a constant,
    so only the MLP groups can be pruned."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=num_classes)
