"""Saving a pruned model so that loading it runs no stored code, and a portable ONNX copy of it.

A pruned model is an ordinary ``nn.Module`` of its own architecture, and the obvious way to save
one, ``torch.save(model)``, pickles it: loading runs whatever code the file names. Here the
architecture is not stored at all. It is rebuilt, as the search built it, from the model's name
(or the user's ``package.module:function`` builder) and the policy with its kept channels; only
the weights are stored, as safetensors, which hold tensors and nothing that runs::

    model.safetensors   the weights of the pruned model (its state dict)
    policy.json         the policy, with the channels each group kept (``indices``)
    metadata.json       how to rebuild it: model, num_classes, input_shape, exclude; metrics, versions
    model.pt            with save_module=True only: the pickled module (torch.save), as apply wrote before

:func:`export_onnx` writes ``model.onnx``, which runs in ONNX Runtime without autoprune and without
the model's code, and checks it against PyTorch's outputs. ``latency`` times ONNX Runtime on the
same export (:func:`onnx_bytes`).

Example:
    >>> save_pruned(small, "out", x, num_classes=10)
    >>> export_onnx(small, x, "out/model.onnx")["export_max_abs_diff"]
    >>> model, metrics = load_pruned("out")
"""
from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .atomic import write_json
from .errors import ConfigError, RunError
from .models import create_model
from .policy import Policy
from .prune import apply_policy

__all__ = ["save_pruned", "load_pruned", "export_onnx", "onnx_bytes", "onnx_missing", "EXPORT_TOLERANCE"]

FORMAT = "autoprune-pruned-model"
FORMAT_VERSION = 1
EXPORT_TOLERANCE = 1e-4  # largest |ONNX - PyTorch| output difference that counts as the same model
_WEIGHTS, _POLICY, _METADATA, _MODULE = "model.safetensors", "policy.json", "metadata.json", "model.pt"
_VERSIONS = ("torch", "torchvision", "torch-pruning", "safetensors", "onnx", "onnxruntime", "timm")
_SUMMARY = ("test_acc", "val_acc", "flops", "flops_ratio", "params", "params_ratio", "latency_ms", "latency_ratio",
            "export_max_abs_diff")


# ------------------------------------------------------------------------------------------- saving


def save_pruned(model: nn.Module, folder: str | os.PathLike, example_input: torch.Tensor, *, num_classes: int,
                model_name: str | None = None, exclude: Sequence[str] = (), metrics: Mapping[str, Any] | None = None,
                extra: Mapping[str, Any] | None = None, save_module: bool = False) -> list[str]:
    """Write ``model`` (a module from :func:`~autoprune.prune.apply_policy`) into ``folder``, loadable
    by :func:`load_pruned` without unpickling anything.

    Args:
        model: the pruned model; it carries ``autoprune_policy`` with the kept channels.
        example_input: one input of the size the model was pruned at (only its shape is recorded).
        num_classes, model_name: what :func:`~autoprune.models.create_model` needs to rebuild the
            unpruned model; ``model_name`` defaults to the name the policy records.
        exclude: the layer patterns the policy was fitted with, so the rebuild sees the same groups.
        metrics: their headline figures are copied into metadata.json.
        extra: more fields for metadata.json (dataset, run, pick, ...).
        save_module: also write ``model.pt``, the pickled module (loading that one runs code).

    Returns:
        The names of the files written.

    Example:
        >>> save_pruned(small, "out", torch.zeros(1, 3, 32, 32), num_classes=10)
        ['model.safetensors', 'policy.json', 'metadata.json']
    """
    from safetensors.torch import save_model

    policy = getattr(model, "autoprune_policy", None)
    if not isinstance(policy, Policy):
        raise ConfigError(f"save_pruned needs a model pruned by autoprune.apply_policy (it records the kept channels "
                          f"in .autoprune_policy), but got a {type(model).__name__} without one.")
    name = model_name or policy.model
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        save_model(model, str(folder / _WEIGHTS), metadata={"format": "pt", "autoprune_model": name},
                   force_contiguous=True)
        policy.save(folder / _POLICY)
        write_json(folder / _METADATA, {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model": name, "num_classes": int(num_classes), "input_shape": list(example_input.shape[1:]),
            "exclude": list(exclude), "weights": _WEIGHTS, "policy": _POLICY, **(extra or {}),
            "metrics": {k: metrics[k] for k in _SUMMARY if k in (metrics or {})},
            "versions": _versions(),
        })
        if save_module:
            torch.save(model, folder / _MODULE)
    finally:
        model.train(was_training)
    return [_WEIGHTS, _POLICY, _METADATA] + ([_MODULE] if save_module else [])


def _versions() -> dict[str, str | None]:
    from . import __version__

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"autoprune": __version__, "python": platform.python_version(), **{p: version(p) for p in _VERSIONS}}


# ------------------------------------------------------------------------------------------ loading


def load_pruned(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load a pruned model saved by :func:`save_pruned` (``autoprune apply``): ``(module, metrics)``.

    The model is rebuilt from metadata.json and policy.json (``create_model``, then ``apply_policy``,
    which keeps exactly the recorded channels) and its weights read from model.safetensors: nothing
    is unpickled. The model's code must be importable (autoprune's own models, torchvision, timm, or
    the user's builder module). The module comes back on the CPU in eval mode; ``metrics`` is the
    folder's metrics.json (``{}`` without one).

    Folders written before safetensors (only ``model.pt``), or a ``model.pt`` given by name, are read
    with ``torch.load(weights_only=False)``, which runs pickled code: a warning says so; load only
    files you trust.

    Example:
        >>> model, metrics = load_pruned("results/r1/apply-best")
        >>> metrics["test_acc"], metrics["flops_ratio"]
    """
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if (p.is_dir() and (p / _WEIGHTS).is_file()) or (p.name == _WEIGHTS and p.is_file()):
        model = _rebuild(folder)
    elif (p.is_dir() and (p / _MODULE).is_file()) or (p.suffix == ".pt" and p.is_file()):
        model = _unpickle(p / _MODULE if p.is_dir() else p)
    else:
        raise RunError(f"No pruned model at {str(p)!r}; give an apply folder (RUN/apply-best) holding "
                       f"{_WEIGHTS} (or, from older versions, {_MODULE}), or one of those files.")
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return model.eval(), metrics


def _read_json(file: Path) -> dict:
    if not file.is_file():
        raise RunError(f"{str(file)!r} is missing; {file.parent.name}/ needs {_WEIGHTS}, {_POLICY} and {_METADATA} "
                       "to rebuild the pruned model.")
    try:
        return json.loads(file.read_text())
    except ValueError as e:
        raise RunError(f"{str(file)!r} is not valid JSON: {e}.") from None


def _rebuild(folder: Path) -> nn.Module:
    from safetensors.torch import load_model

    meta = _read_json(folder / _METADATA)
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise RunError(f"{str(folder / _METADATA)!r} is format {meta.get('format')!r} version "
                       f"{meta.get('format_version')!r}; this autoprune reads {FORMAT!r} up to version "
                       f"{FORMAT_VERSION}.")
    policy = Policy.from_dict(_read_json(folder / _POLICY))
    shape = list(meta["input_shape"])
    # seed: the weights are overwritten below; it only keeps the caller's random state as it was
    model = create_model(meta["model"], num_classes=meta["num_classes"], in_channels=shape[0], seed=0)
    x = torch.zeros(1, *shape)
    # Recorded channels need no criterion; a policy that removed none has no indices to go by.
    small = apply_policy(model.eval(), policy, x, importance=None if policy.indices else "l1",
                         exclude=tuple(meta.get("exclude", ())))
    try:
        load_model(small, str(folder / _WEIGHTS), strict=True)
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RunError(f"The weights in {str(folder / _WEIGHTS)!r} do not fit the model rebuilt from {_POLICY} "
                       f"({meta['model']!r}): {type(e).__name__}: {text[:200]}") from None
    return small


def _unpickle(file: Path) -> nn.Module:
    warnings.warn(f"{str(file)!r} is a pickled module, read with torch.load(weights_only=False), which can run "
                  f"code: load only files you trust. autoprune apply now writes {_WEIGHTS}, which loads without "
                  "unpickling.", UserWarning, stacklevel=3)
    try:
        model = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RunError(f"Cannot load {str(file)!r}: {type(e).__name__}: {text[:160]}") from None
    if not isinstance(model, nn.Module):
        raise RunError(f"{str(file)!r} holds a {type(model).__name__}, not a pruned model (nn.Module); "
                       "is it a state dict? Load those with autoprune.load_checkpoint.")
    return model


# --------------------------------------------------------------------------------------------- ONNX


def onnx_missing() -> str | None:
    """Why an ONNX export cannot be written and checked here (a package to install), or None."""
    absent = [p for p in ("onnx", "onnxruntime") if importlib.util.find_spec(p) is None]
    if not absent:
        return None
    return (f"the ONNX export needs the {' and '.join(absent)} package{'s' if len(absent) > 1 else ''}: "
            f"pip install {' '.join(absent)} (or pip install 'autoprune[onnx]')")


def onnx_bytes(model: nn.Module, x: torch.Tensor, *, dynamic_batch: bool = True) -> bytes:
    """``model`` (in eval mode) as an ONNX model, with input ``input`` and output ``logits``.

    The TorchScript exporter is used: it needs only the onnx package (the torch.export-based one
    also needs onnxscript) and writes to memory, which latency timing wants.
    """
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes=axes)
    finally:
        model.train(was_training)
    return buf.getvalue()


def export_onnx(model: nn.Module, x: torch.Tensor, path: str | os.PathLike) -> dict:
    """Write ``model.onnx`` (dynamic batch axis) and check it in ONNX Runtime against PyTorch.

    The check runs the example input ``x`` and a random batch of two through both. A model that
    cannot be exported, or whose export does not run, is not an error: the reason comes back (and
    no file is left), so the caller can record it and go on.

    Returns:
        ``export`` (the file name, or None), ``export_max_abs_diff`` (largest absolute output
        difference; compare with :data:`EXPORT_TOLERANCE`) and ``export_error`` (None, or why).
    """
    path = Path(path)
    missing = onnx_missing()
    if missing:
        return {"export": None, "export_max_abs_diff": None, "export_error": f"not exported: {missing}"}
    # a model elsewhere is exported as a CPU copy: the caller's stays where it is
    net = model if all(t.device.type == "cpu" for t in model.state_dict().values()) else copy.deepcopy(model).cpu()
    x = x.detach().cpu()
    try:
        data = onnx_bytes(net, x)
        path.write_bytes(data)
        diff = _max_abs_diff(net, data, x)
    except Exception as e:
        path.unlink(missing_ok=True)
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"export": None, "export_max_abs_diff": None, "export_error": f"{type(e).__name__}: {text[:200]}"}
    return {"export": path.name, "export_max_abs_diff": diff, "export_error": None}


def _max_abs_diff(model: nn.Module, data: bytes, x: torch.Tensor) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # a check, not a benchmark: leave the cores to the caller
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        batch = torch.randn(2, *x.shape[1:])
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for inp in (x, batch):
            with torch.no_grad():
                expected = _tensors(model(inp))
            got = session.run(None, {"input": inp.numpy()})
            if len(got) != len(expected):
                raise RuntimeError(f"ONNX Runtime gave {len(got)} outputs, PyTorch {len(expected)}")
            for a, b in zip(got, expected):
                worst = max(worst, float((torch.from_numpy(a) - b.float()).abs().max()))
    finally:
        model.train(was_training)
    return worst


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    return [t for o in out for t in _tensors(o)]
