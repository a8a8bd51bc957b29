"""Full training of a chosen policy from a run, test accuracy against the baseline, export.

``apply_run`` is the last step of the journey: it prunes the run's baseline with one policy of the
run (the best on the front, the uniform policy, or any ok trial), finetunes it for many epochs with
the baseline's recipe at a tenth of its rate, and reports test accuracy, FLOPs, params and latency
next to the unpruned model's, measured in the same process. Together with ``train`` it is the only
step that reads the test split; the search never does.

Each apply writes ``RUN/apply-<pick>/`` (``apply-best-2/`` and so on when that folder exists: an
earlier apply is never overwritten)::

    model.safetensors  the pruned model's weights
    policy.json        the policy applied, with the channels it kept
    metadata.json      model, num_classes, input shape, metrics, versions: with the two above, what
                       load_pruned rebuilds the model from without unpickling anything (export.py)
    model.onnx         a portable copy, checked against PyTorch (when onnx and onnxruntime are installed)
    metrics.json       test_acc, val_acc, flops, params, latency_ms and their ratios, baseline, recipe,
                       export_max_abs_diff (or export_error: why there is no model.onnx)
    log.csv            one row per epoch
    model.pt           with save_module=True: the pickled nn.Module (torch.save(model))

Example:
    >>> result = apply_run("results/resnet20-digits-flops50", pick="best", epochs=30, log=print)
    >>> model, metrics = load_pruned("results/resnet20-digits-flops50/apply-best")
"""
from __future__ import annotations

import dataclasses
import errno
import io
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from .atomic import write_json
from .baseline import baseline_recipe
from .costs import count_flops, count_params
from .criteria import needs_gradients
from .data import load_dataset
from .errors import ConfigError, RunError
from .export import EXPORT_TOLERANCE, export_onnx, load_pruned, onnx_missing, save_pruned
from .latency import check_backend, relative_latency, slower_note
from .loader import workers as loader_workers
from .progress import Progress
from .picks import Choice, resolve_pick, uniform_choices
from .prune import apply_policy
from .results import Run, load_run
from .task import Classification
from .training import TrainConfig, resolve_device

__all__ = ["apply_run", "load_pruned"]

def apply_run(
    run: str | os.PathLike | Run,
    *,
    pick: str | int = "best",
    epochs: int = 30,
    lr: float | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    compare_uniform: bool = False,
    onnx: bool | None = None,
    save_module: bool = False,
    distill: float = 0.0,
    latency_backend: str | None = None,
    latency_threads: int | None = None,
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Finetune one policy of a run fully, report test accuracy against the baseline, save the model.

    Every argument is checked, and the pick resolved, before any data is loaded or any training runs.

    Args:
        run: a results folder of ``autoprune search`` (or a :class:`~autoprune.results.Run`).
        pick: ``best`` (highest validation accuracy on the front), ``uniform`` (the run's uniform
            policy) or the number of an ok trial.
        epochs: finetuning epochs (a whole number >= 1), cosine schedule.
        lr: learning rate; default a tenth of the baseline recipe's rate.
        batch_size: default the baseline recipe's.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; training and latency both run there.
        seed: seeds training (the same seed for the uniform comparison).
        compare_uniform: also train the uniform policy at the pick's size with the identical recipe and
            seed, and compare: with the pick's criterion (like for like), and with the criterion that
            scored best on the run's uniform curve at the nearest measured size (when it differs).
        onnx: ``model.onnx`` is written (and checked against PyTorch) when the onnx and onnxruntime
            packages are installed, and the reason recorded when it cannot be; ``True`` insists
            (a missing package fails before training), ``False`` skips it.
        save_module: also write ``model.pt``, the pickled module (loading it runs code); the
            weights are always in ``model.safetensors``, which :func:`load_pruned` reads.
        distill: weight of distillation from the unpruned model during the finetune, in [0, 1]
            (0: off); the uniform comparison gets the same.
        latency_backend, latency_threads: how latency is timed (``torch`` on ``device``, or
            ``onnxruntime`` on the CPU); default: as the run's search timed it.
        workers: processes decoding a disk-backed dataset (default: the run's ``--workers``).
        log: receives one line per epoch and the summary; this module never prints.

    Returns:
        The pick's metrics (as in metrics.json) plus ``path``; with ``compare_uniform`` also
        ``uniform`` (the uniform policy with the pick's criterion: metrics and path), ``uniform_best``
        (with the run's best uniform criterion; the same dict when the criteria agree) and ``comparison``.

    Raises:
        RunError: the run folder is missing or the pick is not an ok trial of the run.
        ConfigError: a bad ``epochs``, ``lr``, ``batch_size`` or ``device``, or ``onnx=True`` without
            the onnx and onnxruntime packages.

    Example:
        >>> r = apply_run("results/r1", pick="best", epochs=30, compare_uniform=True)
        >>> r["test_acc"], r["comparison"]["test_acc_diff_points"]
    """
    run = run if isinstance(run, Run) else load_run(run)
    from .task_apply import task_of

    if task_of(run):
        raise RunError(f"Run {str(run.path)!r} searched a user's task ({task_of(run)}); its own loop trains the pick: "
                       "autoprune apply RUN (for a --task run) or autoprune.apply_task_run(run, spec=...).")
    _check_numbers(epochs, lr, batch_size, distill)
    latency = {"backend": latency_backend or run.config.latency_backend,
               "threads": latency_threads if latency_threads is not None else run.config.latency_threads}
    check_backend(latency["backend"])
    if latency["threads"] is not None and (isinstance(latency["threads"], bool) or not isinstance(latency["threads"], int)
                                           or latency["threads"] < 1):
        raise ConfigError(f"--latency-threads must be a whole number >= 1, but got {latency['threads']!r}.")
    if onnx and onnx_missing():
        raise ConfigError(f"--onnx: {onnx_missing()}.")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"--workers must be a whole number >= 0, but got {workers!r}.")
    dev = resolve_device(device)
    choice = resolve_pick(run, pick)
    exclude = tuple(run.config.space.exclude)
    config = run.config
    base_model = run.model()
    x = run.example_input()
    uniforms = uniform_choices(run, choice, base_model, x, exclude) if compare_uniform else []

    recipe = baseline_recipe(config.dataset, epochs, seed)
    cfg = dataclasses.replace(recipe, lr=lr if lr is not None else recipe.lr / 10,
                              batch_size=batch_size if batch_size is not None else recipe.batch_size,
                              distill=float(distill))

    with loader_workers(workers if workers is not None else config.loader_workers):  # restored after
        splits = load_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                              val_fraction=config.val_fraction, seed=config.split_seed)
        shape = list(run.baseline.get("input_shape", splits.input_shape))
        if list(splits.input_shape) != shape:
            raise RunError(f"Dataset {config.dataset!r} now gives inputs of shape {list(splits.input_shape)}, but the "
                           f"run's baseline was searched at {shape}; was --image-size or the data changed?")
        log(f"apply: run {run.path}  model {config.model} on {config.dataset}  device {dev}")
        base = _measure_baseline(base_model, splits, x, dev)
        log(f"unpruned baseline: test_acc {base['test_acc']:.4f}  val_acc {base['val_acc']:.4f}  "
            f"flops {base['flops']:,}  params {base['params']:,}")

        common = dict(run=run, splits=splits, base_model=base_model, x=x, dev=dev, cfg=cfg, base=base,
                      exclude=exclude, onnx=onnx, save_module=save_module, latency=latency, log=log)
        result = _apply_one(choice, **common)
        if not uniforms:
            return result
        others = []
        for u in uniforms:
            if u is choice:
                log(f"--compare-uniform: the pick is the uniform policy with its criterion ({u.policy.importance}); "
                    "nothing else to train for it")
                others.append(dict(result))
            else:
                others.append(_apply_one(u, **common))
        result["uniform"], result["uniform_best"] = others[0], others[-1]
        result["comparison"] = _compare(result, others, log)
        return result


# ------------------------------------------------------------------------------------------ checks


def _check_numbers(epochs: Any, lr: Any, batch_size: Any, distill: Any = 0.0) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"--epochs must be a whole number >= 1, but got {epochs!r}.")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                           or lr <= 0):
        raise ConfigError(f"--lr must be a number > 0, but got {lr!r}.")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"--batch-size must be a whole number >= 1, but got {batch_size!r}.")
    if isinstance(distill, bool) or not isinstance(distill, (int, float)) or not 0 <= distill <= 1:
        raise ConfigError(f"--distill must be a weight in [0, 1] (0 = off), but got {distill!r}.")


# ----------------------------------------------------------------------------------------- training


def _measure_baseline(model: nn.Module, splits, x: torch.Tensor, dev: torch.device) -> dict:
    task = Classification.of(splits)
    return {"test_acc": task.evaluate(model, device=dev, split="test"), "val_acc": task.evaluate(model, device=dev),
            "flops": count_flops(model.cpu(), x), "params": count_params(model), "latency_ms": None}


def _prune(run: Run, choice: Choice, model: nn.Module, x: torch.Tensor, splits, exclude: tuple[str, ...],
           log: Callable[[str], None]) -> tuple[nn.Module, int]:
    """Prune as the search did: the policy carries the channels its trial kept (older runs: the
    criterion and rounding the trial used, which select the same channels)."""
    config = run.config
    importance = choice.policy.importance or config.importances[0]
    ranked = needs_gradients(importance) and not choice.policy.indices
    grad_batch = Classification.of(splits).gradient_source() if ranked else None
    small = apply_policy(model, choice.policy, x, importance=importance, exclude=exclude,
                         seed=config.seed + (choice.trial or 0), grad_batch=grad_batch)
    if choice.search_flops is not None and count_flops(small, x) != int(choice.search_flops):
        log(f"note: the pruned model has {count_flops(small, x):,} FLOPs, the search recorded "
            f"{int(choice.search_flops):,} for trial {choice.trial}")
    return small, choice.policy.round_to


def _apply_one(choice: Choice, *, run: Run, splits, base_model: nn.Module, x: torch.Tensor, dev: torch.device,
               cfg: TrainConfig, base: dict, exclude: tuple[str, ...], onnx: bool | None, save_module: bool,
               latency: Mapping[str, Any], log: Callable[[str], None]) -> dict:
    import pandas as pd

    log(f"apply-{choice.label}: " + (f"trial {choice.trial}" if choice.trial is not None else
                                      f"fitted to the pick's size, criterion {choice.policy.importance}")
        + (f" (val_acc {choice.search_val_acc:.4f} in the search)" if choice.search_val_acc is not None else "")
        + f", {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, lr {cfg.lr:g}, batch {cfg.batch_size}, seed {cfg.seed}")
    small, round_to = _prune(run, choice, base_model, x, splits, exclude, log)

    progress = Progress(math.ceil(cfg.epochs), unit="epoch", log=log)

    def on_epoch(row: dict) -> None:
        progress.write(f"  epoch {row['epoch']:>5.1f}/{cfg.epochs}  loss {row['train_loss']:.4f}  train_acc "
                       f"{row['train_acc']:.4f}  val_acc {row['val_acc']:.4f}  lr {row['lr']:.2e}  "
                       f"{row['seconds']:.1f}s  [{progress.step(val_acc=row['val_acc'])}]")

    # as in the search: fresh BatchNorm statistics before the first step
    try:
        done = Classification.of(splits).final_recipe(small, cfg, device=dev, bn_batches=run.config.bn_batches,
                                                      on_epoch=on_epoch, teacher=base_model if cfg.distill else None)
    finally:
        progress.close()
    rows, seconds, test_acc, val_acc = done["log"], done["seconds"], done["test_acc"], done["val_acc"]
    # Pruned and unpruned are timed side by side (interleaved) so machine drift cancels in the ratio.
    latency_ms, base_ms = relative_latency(small, base_model, x, device=dev, batch_size=1, **latency)
    small.cpu().eval()
    base_model.cpu().eval()
    flops, params = count_flops(small, x), count_params(small)
    metrics = {
        "pick": choice.label, "trial": choice.trial, "test_acc": test_acc, "val_acc": val_acc,
        "flops": flops, "flops_ratio": flops / base["flops"], "params": params, "params_ratio": params / base["params"],
        "latency_ms": latency_ms, "latency_ratio": latency_ms / base_ms,
        "latency_device": str(dev) if latency["backend"] == "torch" else "onnxruntime-cpu",
        "latency_backend": latency["backend"],
        "latency_batch": 1, "latency_threads": _threads(dev, latency),
        "input_size": list(x.shape[1:]), "epochs": cfg.epochs, "seconds": round(seconds, 2),
        "search_val_acc": choice.search_val_acc, "round_to": round_to, "recipe": cfg.to_dict(),
        "model": run.config.model, "dataset": run.config.dataset, "run": str(run.path),
        "baseline": {**base, "latency_ms": base_ms},
    }
    with io.StringIO() as buf:
        pd.DataFrame(rows).to_csv(buf, index=False)
        log_csv = buf.getvalue()
    saving = dict(num_classes=run.baseline["num_classes"], model_name=run.config.model, exclude=exclude,
                  save_module=save_module, extra={"dataset": run.config.dataset, "run": str(run.path),
                                                  "pick": choice.label, "trial": choice.trial})
    out, files = _write(run.path, choice.label, small, metrics, log_csv, x, onnx, saving)
    if out.name != f"apply-{choice.label}":
        log(f"apply-{choice.label}/ already exists and is kept; this apply is in {out.name}/")
    b = metrics["baseline"]
    log(f"apply-{choice.label}" + (f" (trial {choice.trial})" if choice.trial is not None else "") + f": test_acc {test_acc:.4f} (unpruned {b['test_acc']:.4f}, "
        f"{(test_acc - b['test_acc']) * 100:+.2f} points)  val_acc {val_acc:.4f}")
    log(f"  flops {flops:,} ({metrics['flops_ratio']:.3f}x)  params {params:,} ({metrics['params_ratio']:.3f}x)  "
        f"latency {latency_ms:.3f}ms vs {base_ms:.3f}ms ({metrics['latency_ratio']:.3f}x, {_where(dev, latency)})  "
        f"trained in {seconds:.0f}s")
    log(f"  written: {out}/ {', '.join(files)}")
    slower = slower_note(metrics["latency_ratio"], round_to, _where(dev, latency))
    if slower:
        log(f"  {slower}")
    if metrics["export_error"]:
        log(f"  no model.onnx ({metrics['export_error']}); the model is saved all the same")
    elif metrics["export_max_abs_diff"] is not None:
        close = metrics["export_max_abs_diff"] <= EXPORT_TOLERANCE
        log(f"  model.onnx matches PyTorch to {metrics['export_max_abs_diff']:.2e}"
            + ("" if close else f", MORE than {EXPORT_TOLERANCE:g}: check it before deploying"))
    return {**metrics, "path": str(out)}


def _threads(dev: torch.device, latency: Mapping[str, Any]) -> int | None:
    if latency["backend"] == "onnxruntime":
        return latency["threads"] or 1
    return (latency["threads"] or torch.get_num_threads()) if dev.type == "cpu" else None


def _where(dev: torch.device, latency: Mapping[str, Any]) -> str:
    # CPU timings depend on the thread count, and on a shared machine on what else is running.
    if latency["backend"] == "onnxruntime":
        return f"onnxruntime cpu batch 1, {_threads(dev, latency)} thread(s)"
    return f"cpu batch 1, {_threads(dev, latency)} threads" if dev.type == "cpu" else f"{dev} batch 1"


# ------------------------------------------------------------------------------------------- output


def _write(run_path: Path, label: str, model: nn.Module, metrics: dict, log_csv: str, x: torch.Tensor,
           onnx: bool | None, saving: Mapping[str, Any]) -> tuple[Path, list[str]]:
    """Write the files into a hidden folder, then rename it to the first free ``apply-<label>[-N]``.

    ``metrics`` gains the export's fields. Returns the folder and the names of the files in it.

    The rename is atomic, so a kill never leaves a half-written apply folder, and an existing
    folder is never replaced (renaming onto a non-empty folder fails; an empty one holds nothing).
    """
    tmp = run_path / f".apply-{label}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        skipped = {"export": None, "export_max_abs_diff": None, "export_error": "not exported: onnx=False"}
        metrics.update(export_onnx(model, x, tmp / "model.onnx") if onnx is not False else skipped)
        files = save_pruned(model, tmp, x, metrics=metrics, **saving)
        (tmp / "log.csv").write_text(log_csv)
        files += ["metrics.json", "log.csv"] + ([metrics["export"]] if metrics["export"] else [])
        n = 1
        while True:
            out = run_path / (f"apply-{label}" if n == 1 else f"apply-{label}-{n}")
            if not out.exists() or (out.is_dir() and not any(out.iterdir())):
                write_json(tmp / "metrics.json", {**metrics, "folder": out.name})
                try:
                    os.rename(tmp, out)
                    return out, files
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    # taken meanwhile by another apply: try the next number
            n += 1
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _compare(a: dict, others: list[dict], log: Callable[[str], None]) -> dict:
    keys = ("test_acc", "val_acc", "flops_ratio", "params_ratio", "latency_ratio")

    def name(r: dict) -> str:
        return r["pick"] + (f" (trial {r['trial']})" if r.get("trial") is not None else "")

    rows = [a] + [o for i, o in enumerate(others) if o["pick"] not in [p["pick"] for p in others[:i]] + [a["pick"]]]
    width = max(len(name(r)) for r in rows)
    log("comparison, same recipe and seed (ratios against the unpruned model):")
    log(f"  {'':<{width}}  " + "  ".join(f"{k:>13}" for k in keys))
    for r in rows:
        log(f"  {name(r):<{width}}  " + "  ".join(f"{r[k]:>13.4f}" for k in keys))
    out = {"pick": {k: a[k] for k in ("trial", *keys)}}
    for field, other in (("uniform", others[0]), ("uniform_best", others[-1])):
        out[field] = {k: other[k] for k in ("pick", "trial", *keys)}
    out["test_acc_diff_points"] = (a["test_acc"] - others[0]["test_acc"]) * 100
    out["test_acc_diff_best_points"] = (a["test_acc"] - others[-1]["test_acc"]) * 100
    for other in rows[1:]:
        log(f"  {a['pick']} - {other['pick']}: {(a['test_acc'] - other['test_acc']) * 100:+.2f} points of test accuracy"
            f" ({(a['val_acc'] - other['val_acc']) * 100:+.2f} on validation)")
    return out
