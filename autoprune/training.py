"""Training, finetuning, BatchNorm recalibration and evaluation, on the CPU or one GPU.

One loop serves a baseline's full training and a pruned candidate's short finetune: SGD with
Nesterov momentum and a per-step cosine schedule, optional warm-up, and augmentation done on
batches of tensors so that the in-memory datasets of ``data.py`` are never copied per sample. On
CUDA the loop runs under bf16 autocast with channels-last tensors; on the CPU it runs plain fp32.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from .config import DEVICES
from .data import TensorData
from .loader import make_loader
from .errors import ConfigError, DataError

__all__ = [
    "TrainConfig",
    "evaluate",
    "finetune_pruned",
    "recalibrate_bn",
    "resolve_device",
    "set_threads",
    "train",
]

_PAD = 4  # pixels of padding for random-crop augmentation, the usual CIFAR recipe


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a usable ``torch.device``.

    ``auto`` picks CUDA when it is available and the CPU otherwise.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"Device {device!r} was asked for, but CUDA is not available here; "
                              f"use --device cpu or auto.")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"Device {device!r} does not exist; this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s).")
        return torch.device(name)
    raise ConfigError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)} (or cuda:N).")


def set_threads(n: int) -> None:
    """Limit the CPU threads torch uses, e.g. when several trials share a machine's cores."""
    if int(n) != n or n < 1:
        raise ConfigError(f"Thread count must be a whole number >= 1, but got {n!r}.")
    torch.set_num_threads(int(n))
    try:
        torch.set_num_interop_threads(int(n))
    except RuntimeError:
        pass  # torch allows this only once, before any parallel work has started


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training or finetuning run.

    Augmentation happens on each batch: ``augment`` pads by 4 pixels and crops at random, ``hflip``
    flips half the images left-right. Flipping is off by default because it harms digits and text.

    ``distill`` > 0 adds knowledge distillation from a teacher (the unpruned model, passed to
    :func:`train`): the loss is ``(1 - distill) * cross-entropy + distill * T^2 * KL(teacher || student)``
    on logits softened by the temperature ``T = distill_temperature`` (Hinton et al., 2015). The
    teacher sees the same augmented batch and is never updated.

    Example:
        >>> cfg = TrainConfig(epochs=2, lr=0.05, batch_size=64)
        >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    epochs: float = 30  # may be fractional: total steps are ceil(epochs * batches per epoch)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    label_smoothing: float = 0.0
    warmup_epochs: float = 0
    augment: bool = True
    hflip: bool = False
    seed: int = 0
    distill: float = 0.0
    distill_temperature: float = 4.0

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 0, ">= 0"),
            ("lr", self.lr > 0, "> 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("batch_size", int(self.batch_size) == self.batch_size and self.batch_size >= 1,
             "a whole number >= 1"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
            ("distill", 0 <= self.distill <= 1, "in [0, 1]"),
            ("distill_temperature", self.distill_temperature > 0, "> 0"),
        ]
        for field, ok, rule in checks:
            value = getattr(self, field)
            # `ok` is False for NaN as well, since every comparison with NaN is False.
            if not ok or not math.isfinite(value):
                raise ConfigError(f"TrainConfig {field} must be {rule}, but got {value!r}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"Unknown TrainConfig field(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(sorted(known))}.")
        return cls(**d)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Channels-last lets cuDNN use its fastest convolution kernels under bf16.
    if device.type == "cuda" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad each image by ``pad`` pixels and crop it back at a random offset, all in one gather."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # N, H+2p, W+2p, C
    oy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=x.device)
    rows = oy + torch.arange(h, device=x.device).view(1, h, 1)
    cols = ox + torch.arange(w, device=x.device).view(1, 1, w)
    out = padded[torch.arange(n, device=x.device).view(n, 1, 1), rows, cols]  # N, H, W, C
    # Back to plain NCHW memory: a channels-last batch sends CPU convolutions down oneDNN's
    # channels-last backward, which crashed (double free, SIGSEGV) on pruned odd channel widths.
    return out.permute(0, 3, 1, 2).contiguous()


def _augment(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    if x.ndim != 4:
        return x
    if cfg.augment:
        x = _random_crop(x, _PAD)
    if cfg.hflip:
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    return x


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then a cosine decay towards zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    model: nn.Module,
    train_ds: Dataset,
    cfg: TrainConfig,
    *,
    device: str | torch.device,
    val_ds: Dataset | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    teacher: nn.Module | None = None,
    deadline: float | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``train_ds`` and return one log row per (possibly partial) epoch.

    Each row holds ``epoch`` (epochs done, fractional for a partial last epoch), ``step``,
    ``train_loss``, ``train_acc``, ``val_acc`` (when ``val_ds`` is given), ``lr`` and ``seconds``
    (training time of that epoch). The model is left on ``device`` in eval mode. Training draws
    from the random generators seeded with ``cfg.seed``; the caller's generator states are restored
    after, so training leaves no trace on the global RNG.

    With ``cfg.distill > 0``, ``teacher`` (the unpruned model) is required; it is moved to
    ``device`` and kept in eval mode, and the caller's model is not changed otherwise.

    ``deadline`` (a ``time.monotonic()`` value) stops training with :class:`TimeoutError` at the
    first step that starts after it: a search's ``--trial-timeout``.

    Raises:
        FloatingPointError: the loss became NaN or infinite; the model's weights are then unusable.
        ConfigError: ``cfg.distill > 0`` without a teacher.

    Example:
        >>> rows = train(model, splits.train, TrainConfig(epochs=2), device="cpu", val_ds=splits.val)
        >>> rows[-1]["val_acc"]
    """
    dev = resolve_device(device)
    if len(train_ds) == 0:
        raise DataError("Cannot train on an empty dataset.")
    if cfg.distill > 0 and teacher is None:
        raise ConfigError(f"Distillation (distill={cfg.distill:g}) needs a teacher model; pass teacher=, "
                          "or set distill=0.")
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        return _train(model, train_ds, cfg, dev, val_ds, on_epoch, teacher if cfg.distill > 0 else None, deadline)


def _distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


def _train(model: nn.Module, train_ds: Dataset, cfg: TrainConfig, dev: torch.device, val_ds: Dataset | None,
           on_epoch: Callable[[dict], None] | None, teacher: nn.Module | None = None,
           deadline: float | None = None) -> list[dict]:
    model.to(dev)
    if teacher is not None:
        teacher.to(dev).eval()
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    # Dropping the ragged last batch keeps BatchNorm away from tiny batches; a dataset smaller than
    # one batch still gives one.
    loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed, device=dev,
                         drop_last=len(train_ds) >= cfg.batch_size)
    if isinstance(val_ds, TensorData):
        val_ds = val_ds.to(dev)  # moved once rather than at every epoch's evaluation
    # A dataset that augments its own images (imagefolder: random resized crop and flip, decoded by the
    # loader's workers) gets no second augmentation here.
    augmented = bool(getattr(train_ds, "augments", False))
    per_epoch = len(loader)
    total = math.ceil(cfg.epochs * per_epoch)
    warmup = min(total, round(cfg.warmup_epochs * per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.momentum > 0)
    rows: list[dict] = []
    step = 0
    while step < total:
        model.train()
        start = time.perf_counter()
        loss_sum, correct, seen = 0.0, torch.zeros((), device=dev, dtype=torch.long), 0
        for x, y in loader:
            if step >= total:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"stopped at step {step} of {total}: the time allowed ran out")
            lr = _lr_at(step, total, warmup, cfg.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            x = _prepare(x if augmented else _augment(x, cfg), dev)
            with _autocast(dev):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if teacher is not None:
                with torch.no_grad(), _autocast(dev):
                    soft = teacher(x)
                loss = (1 - cfg.distill) * loss + cfg.distill * _distill_loss(logits.float(), soft.float(),
                                                                              cfg.distill_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # Reading the loss syncs with the GPU once per step, after the step's work is queued;
            # it is what lets a diverging trial fail at once instead of wasting its budget.
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {step}")
            loss_sum += value * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            step += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        row = {"epoch": round(step / per_epoch, 4), "step": step, "train_loss": loss_sum / seen,
               "train_acc": correct.item() / seen}
        seconds = time.perf_counter() - start
        if val_ds is not None:
            row["val_acc"] = evaluate(model, val_ds, device=dev)
        row.update(lr=lr, seconds=round(seconds, 4))
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
    model.eval()
    return rows


def finetune_pruned(model: nn.Module, splits, cfg: TrainConfig, *, device: str | torch.device, bn_batches: int,
                    on_epoch: Callable[[dict], None] | None = None, test: bool = True,
                    teacher: nn.Module | None = None) -> dict:
    """The final recipe for a pruned model: BatchNorm recalibration, a finetune of ``cfg``, evaluation.

    ``apply`` and the benchmarks train every pruned model this way, so methods differ only in their
    policy. ``teacher`` is the unpruned model when ``cfg.distill > 0``. Returns ``val_acc_bn`` (validation accuracy right after recalibration), ``val_acc``,
    ``test_acc`` (None with ``test=False``), ``seconds`` and the epoch ``log``.

    Example:
        >>> finetune_pruned(small, splits, TrainConfig(epochs=30, lr=0.01), device="cpu", bn_batches=10)
    """
    from .task import Classification  # the built-in task holds the recipe; this name stays for scripts

    return Classification.of(splits).final_recipe(model, cfg, device=device, bn_batches=bn_batches,
                                                  on_epoch=on_epoch, test=test, teacher=teacher)


def evaluate(model: nn.Module, ds: Dataset, *, device: str | torch.device, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``ds``, in [0, 1]; the model's train/eval mode is restored.

    Example:
        >>> evaluate(model, splits.val, device="cpu")
        0.97
    """
    dev = resolve_device(device)
    if len(ds) == 0:
        raise DataError("Cannot evaluate on an empty dataset; is val_fraction 0?")
    was_training = model.training
    model.to(dev).eval()
    correct = torch.zeros((), device=dev, dtype=torch.long)
    with torch.no_grad(), _autocast(dev):
        for x, y in make_loader(ds, batch_size, shuffle=False, device=dev):
            correct += (model(_prepare(x, dev)).argmax(1) == y).sum()
    model.train(was_training)
    return correct.item() / len(ds)


def recalibrate_bn(
    model: nn.Module,
    ds: Dataset,
    *,
    device: str | torch.device,
    batches: int = 20,
    batch_size: int = 128,
    seed: int = 0,
) -> None:
    """Re-estimate every BatchNorm layer's running statistics from ``batches`` training batches.

    After pruning, the stored statistics describe channels that no longer see the same inputs;
    fresh estimates recover most of the lost accuracy before any finetuning. The statistics are a
    plain average over the batches (momentum ``None``); each layer's momentum is restored after,
    and the model is left in eval mode. Weights are not touched. A model without BatchNorm is left
    as it is.

    Example:
        >>> recalibrate_bn(pruned, splits.train, device="cpu", batches=20)
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    if batches < 1:
        raise ConfigError(f"BatchNorm recalibration needs batches >= 1, but got {batches!r}.")
    dev = resolve_device(device)
    model.to(dev)
    need = batches * batch_size
    if isinstance(ds, TensorData) and len(ds) > need:
        # Draw the samples first, so only they are copied to the device, not the whole dataset.
        ds = ds.take(torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:need])
    with fresh_bn_statistics(model), torch.no_grad(), _autocast(dev):
        for i, (x, _) in enumerate(make_loader(ds, batch_size, shuffle=True, seed=seed, device=dev)):
            if i >= batches:
                break
            model(_prepare(x, dev))


@contextlib.contextmanager
def fresh_bn_statistics(model: nn.Module):
    """Inside: every BatchNorm layer's running statistics reset and averaged over the batches that pass
    (momentum ``None``), and only those layers in train mode, so dropout and the like do not disturb
    them. After: each layer's momentum restored, the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        yield
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
