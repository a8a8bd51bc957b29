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
    """torchvision's VisionTransformer at 16x16 pixels (2 heads of 16 dimensions, 2 layers)."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=num_classes)


def timm_tiny_vit(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """timm's VisionTransformer at 32x32 pixels (4 heads of 12 dimensions, 2 blocks, a gated attention
    with a norm over its heads in the second block)."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, in_chans=in_channels, num_classes=num_classes,
                              embed_dim=48, depth=2, num_heads=4)
    from timm.layers import Attention

    model.blocks[1].attn = Attention(48, num_heads=4, qkv_bias=True, scale_norm=True, gated=True,
                                     norm_layer=nn.LayerNorm)
    return model


class WildCNN(nn.Module):
    """A small CNN built the way many recent models are (issue 26): GroupNorm instead of BatchNorm, a
    channel split with ``torch.chunk`` and a concatenation, a dilated convolution, and a
    squeeze-excitation on pooled features. Seven groups of coupled channels."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.GroupNorm(8, 32), nn.SiLU())
        self.conv_a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.GroupNorm(4, 16), nn.SiLU())
        self.conv_b = nn.Sequential(nn.Conv2d(16, 32, 3, padding=2, dilation=2, bias=False), nn.GroupNorm(8, 32),
                                    nn.SiLU())
        self.se_reduce = nn.Conv2d(48, 12, 1)
        self.se_expand = nn.Conv2d(12, 48, 1)
        self.down = nn.Sequential(nn.Conv2d(48, 64, 3, stride=2, padding=1, bias=False), nn.GroupNorm(16, 64),
                                  nn.SiLU())
        self.res = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.GroupNorm(16, 64), nn.SiLU(),
                                 nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.GroupNorm(16, 64))
        self.post = nn.Sequential(nn.Conv2d(64, 96, 1, bias=False), nn.GroupNorm(8, 96), nn.SiLU())
        self.post2 = nn.Sequential(nn.Conv2d(96, 128, 3, padding=1, bias=False), nn.GroupNorm(16, 128), nn.SiLU())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.stem(x)
        a, b = torch.chunk(x, 2, dim=1)
        x = torch.cat([self.conv_a(a), self.conv_b(b)], 1)
        x = x * torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = self.down(x)
        x = torch.relu(x + self.res(x))
        return self.head(self.post2(self.post(x)).mean((2, 3)))


def wild_cnn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return WildCNN(num_classes, in_channels)


class GNResidual(nn.Module):
    """A residual block with GroupNorm (ResNet-GN style), and an instance-norm-like GroupNorm of one
    channel per group."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.GroupNorm(4, 32), nn.ReLU())
        self.conv1 = nn.Conv2d(32, 48, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(48, 48)  # one channel per group
        self.conv2 = nn.Conv2d(48, 32, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(4, 32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        y = self.gn2(self.conv2(torch.relu(self.gn1(self.conv1(x)))))
        return self.head(torch.relu(x + y).mean((2, 3)))


def gn_residual(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return GNResidual(num_classes, in_channels)


class SplitConcat(nn.Module):
    """A split-and-concat block: ``torch.split`` into unequal parts, one transformed, concatenated back."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.part = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.post = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stem(x)
        a, b = torch.split(x, [16, 8], dim=1)  # fixed sizes: the stem's channels cannot be pruned
        return self.head(self.post(self.mix(torch.cat([self.part(a), b], 1))).mean((2, 3)))


def split_concat(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return SplitConcat(num_classes, in_channels)


class ShuffleBlock(nn.Module):
    """A ShuffleNetV2-style unit: split in halves, one half transformed, concatenated and channel-shuffled."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                    nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.conv(x).mean((2, 3)))


def shuffle_block(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ShuffleBlock(num_classes, in_channels)
