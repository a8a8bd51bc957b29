"""Model registry: CIFAR-style ResNets, every torchvision classifier, ``timm:<name>`` and ``package.module:function``.

Example:
    >>> m = create_model("resnet20", num_classes=10, in_channels=3)
    >>> list_models("resnet2*")
    ['resnet20']
"""
from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CheckpointError, ModelError, close_matches

__all__ = ["register_model", "list_models", "create_model", "load_checkpoint", "save_checkpoint", "checkpoint_meta",
           "MODELS"]

_META_KEY = "autoprune"  # checkpoints autoprune writes: {"state_dict": ..., "autoprune": {split, recipe}}

# name -> constructor(num_classes, in_channels) -> nn.Module
MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Decorator that adds a constructor ``fn(num_classes, in_channels)`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ModelError(f"Model {name!r} is registered twice.")
        MODELS[name] = fn
        return fn

    return deco


# ---------------------------------------------------------------------------------------------
# CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels, 6n+2 layers.
# The shortcut of a block that changes width is a 1x1 conv + BN ("option B"), not zero padding,
# so every channel dimension is a real tensor dimension that the dependency graph can prune.


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2, but got {depth}.")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, planes = [], 16
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(planes, width, stride))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def _cifar(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels)

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016)."
    return build


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}")(_cifar(_depth))


# ---------------------------------------------------------------------------------------------
# Models on which the literature finds that layer shapes matter (issue 24): a VGG, whose parameters
# sit in its last layers while its FLOPs sit in its first, and a MobileNetV2 with a CIFAR stem.

# VGG-11's widths (Simonyan & Zisserman 2015, configuration A) with 4 max-pools instead of 5: a 28 px
# Fashion-MNIST image would vanish after the fifth (28 -> 14 -> 7 -> 3 -> 1), global pooling follows.
VGG11_CIFAR = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)
VGG16_CIFAR = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class CifarVGG(nn.Module):
    """3x3 convolutions with BatchNorm and ReLU, max-pools, global average pooling, one linear layer."""

    def __init__(self, layout: tuple, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        planes = in_channels
        for v in layout:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, int(round(v * width)))
            layers += [nn.Conv2d(planes, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            planes = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# Half width (32 ... 256 channels): a full-width VGG-11 costs about 4x resnet20's FLOPs at 28 px, which
# the 2-core benchmark machines cannot train often enough; half width keeps VGG's shape (parameters in
# the last layers at 1-3 px, FLOPs in the first) at about resnet20's cost. `vgg11_cifar_w1` is full width.
@register_model("vgg11_cifar")
def vgg11_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-11 for 28-32 px inputs at half width (BatchNorm, 4 max-pools, global pooling)."""
    return CifarVGG(VGG11_CIFAR, num_classes, in_channels, width=0.5)


@register_model("vgg11_cifar_w1")
def vgg11_cifar_w1(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-11 for 28-32 px inputs at full width (64 ... 512 channels)."""
    return CifarVGG(VGG11_CIFAR, num_classes, in_channels, width=1.0)


@register_model("vgg16_cifar")
def vgg16_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """VGG-16 for 28-32 px inputs at half width, as ``vgg11_cifar``."""
    return CifarVGG(VGG16_CIFAR, num_classes, in_channels, width=0.5)


@register_model("mobilenetv2_cifar")
def mobilenetv2_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's MobileNetV2 (width 1.0) with a CIFAR stem: the first convolution at stride 1, so a
    28 px image leaves the last stage at 2 px instead of 1."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None, num_classes=num_classes)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    return model


# ---------------------------------------------------------------------------------------------
# torchvision classifiers, built without weights; first conv and classifier adapted.


def _torchvision_names() -> list[str]:
    from torchvision import models as tvm

    return sorted(tvm.list_models(module=tvm))


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            if mod.in_channels == in_channels:
                return
            new = nn.Conv2d(in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, mod.groups if mod.groups == 1 else in_channels,
                            mod.bias is not None, mod.padding_mode)
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise ModelError(f"Found no Conv2d to adapt to {in_channels} input channels.")


def _build_torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    from torchvision import models as tvm

    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if name.startswith("inception") or name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    model = tvm.get_model(name, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


# ---------------------------------------------------------------------------------------------
# timm models (``timm:<name>``, the optional extra autoprune[timm]), built without weights.

TIMM_PREFIX = "timm:"


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need the timm package: pip install timm (or pip install 'autoprune[timm]')."
                         ) from None
    return timm


def _build_timm(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    timm = _timm()
    name = spec[len(TIMM_PREFIX):]
    if not timm.is_model(name):
        raise ModelError(f"Unknown timm model {name!r}; choose one of "
                         f"{close_matches(name, timm.list_models())} (see `autoprune list-models 'timm:*'`).")
    # No download: the weights come from --checkpoint (or a baseline autoprune trains).
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names (CIFAR ResNets first, then torchvision), filtered by a glob pattern.

    A pattern starting ``timm:`` lists timm's models instead (``timm:resnet*``), as ``timm:<name>``.
    """
    if pattern is not None and pattern.startswith(TIMM_PREFIX):
        return [TIMM_PREFIX + n for n in _timm().list_models(pattern[len(TIMM_PREFIX):] or "*")]
    names = list(MODELS) + [n for n in _torchvision_names() if n not in MODELS]
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def _from_spec(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    module_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"Cannot load model {spec!r}: {e}; give an importable package.module:function.") from None
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if k in params}
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"Model function {spec!r} returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, *, seed: int | None = None) -> nn.Module:
    """Build a model by registered name, torchvision name, ``timm:<name>`` or ``package.module:function``.

    With ``seed`` the initial weights are drawn from a generator seeded with it (the caller's random
    state is left as it was), so a baseline trained from them is reproducible.

    Example:
        >>> create_model("mobilenet_v2", num_classes=10, in_channels=1)
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_model(name, num_classes, in_channels)
    if name.startswith(TIMM_PREFIX):
        model = _build_timm(name, num_classes, in_channels)
    elif ":" in name:
        model = _from_spec(name, num_classes, in_channels)
    elif name in MODELS:
        model = MODELS[name](num_classes=num_classes, in_channels=in_channels)
    elif name in _torchvision_names():
        model = _build_torchvision(name, num_classes, in_channels)
    else:
        model = None
    if model is not None:
        model.autoprune_name = name  # policies and error messages name the model as the user did
        return model
    raise ModelError(
        f"Unknown model {name!r}; choose one of {close_matches(name, list_models())} "
        f"(see `autoprune list-models`) or give package.module:function."
    )


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights into ``model`` from a state dict or a common wrapper, with ``weights_only=True``.

    Accepts a plain state dict, ``{"state_dict": ...}``, ``{"model": ...}`` or ``{"model_state_dict": ...}``,
    and strips a ``module.`` prefix left by DataParallel.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and format errors all mean: not a checkpoint we can read safely
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"Checkpoint {str(path)!r} is not a readable PyTorch state dict ({first[:160]}).") from None
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != _META_KEY}
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"Checkpoint {str(path)!r} holds no state dict; expected a dict of tensors or "
            "{'state_dict': ...} / {'model': ...}."
        )
    own = model.state_dict()
    state = OrderedDict((k.removeprefix("module."), v) for k, v in obj.items())
    # Layers' format versions (torchvision's MNASNet refuses a state dict without them): the
    # checkpoint's where it kept them, else the model's own, the same architecture by the check below.
    kept = getattr(obj, "_metadata", None)
    state._metadata = own._metadata if kept is None else {k.removeprefix("module."): v for k, v in kept.items()}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        parts = [f"{label}: {few(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise CheckpointError(f"Checkpoint {str(path)!r} does not match the model; " + "; ".join(parts) + ".")
    model.load_state_dict(state)
    return model


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict) -> None:
    """Save ``model``'s weights with autoprune's metadata (the data split it trained on, its recipe).

    The file is an ordinary ``{"state_dict": ...}`` checkpoint that :func:`load_checkpoint` and plain
    PyTorch read; :func:`checkpoint_meta` reads the metadata back.
    """
    from .atomic import atomic_path

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, _META_KEY: dict(meta)}, tmp)


def checkpoint_meta(path: str | os.PathLike) -> dict | None:
    """The metadata :func:`save_checkpoint` stored, or None for a checkpoint from elsewhere."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:
        return None  # load_checkpoint reports unreadable files
    meta = obj.get(_META_KEY) if isinstance(obj, dict) else None
    return dict(meta) if isinstance(meta, dict) else None
