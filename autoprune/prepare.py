"""Preparing a run before any trial (and before Ray is needed): its folder checked or created, its
inputs checked, the data loaded, the baseline loaded or trained and measured, the groups probed.

Example:
    >>> prepared = prepare_run(config, resume=False)
    >>> prepared.groups, prepared.baseline["val_acc"]
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .atomic import atomic_path
from .config import SearchConfig, resume_config
from .errors import CheckpointError, ConfigError, ModelError, RunError
from .front import proposed_count
from .reach import left_out_text, smallest_reach
from .results import RunDir

__all__ = ["Prepared", "prepare_run", "run_name", "for_trials"]


@dataclass
class Prepared:
    """What a search needs from preparation: everything its trials share, shipped once to workers."""

    config: SearchConfig
    run: RunDir
    state_dict: dict
    train: Any
    val: Any
    input_shape: tuple[int, ...]
    num_classes: int
    groups: list[str]  # the groups trials may prune (probed)
    baseline: dict
    left_out: dict = field(default_factory=dict)
    latency_table: dict | None = None  # the per-layer latency table the trials fit with (latency_model.py)
    task: Any = None  # a user's task (task.UserTask): its functions, pickled to the workers; None: classification
    model: Any = None  # a user's task's model object (its weights are ``state_dict``)
    example: Any = None  # a user's task's example input; None: zeros of ``input_shape``
    task_bytes: int = 0  # a user's task pickled (functions, calibration batches, what their closures hold)

    @property
    def payload_bytes(self) -> int:
        """What a search ships to its workers through Ray's object store, in bytes."""
        from .data import memory_bytes

        return memory_bytes(self.state_dict.values(), self.train, self.val) + self.task_bytes


def run_name(config: SearchConfig) -> str:
    budgets = "-".join(f"{b.kind}{b.text.replace('%', 'pct').replace('.', 'p')}" for b in config.budgets)
    model = config.model.replace(":", "_").replace(".", "_").replace("/", "_")
    return f"{model}-{config.dataset.replace(':', '_').replace('/', '_')}-{budgets}-{time.strftime('%Y%m%d-%H%M%S')}"


def resumable_run(config: SearchConfig, given: Mapping[str, Any] | None = None) -> tuple[RunDir, SearchConfig]:
    """The run ``--resume`` continues and its config with the settings ``given`` again; raises
    :class:`RunError` when there is nothing to resume (no name, no such run, a finished run and no
    larger ``--trials``). Reads the run folder only: nothing is imported or built."""
    if config.name is None:
        raise RunError("--resume needs --name of the run to continue (a folder under --results-dir).")
    run = RunDir(Path(config.results_dir) / config.name)
    if not run.exists():
        raise RunError(f"Cannot resume {str(run.path)!r}: no such run (no config.yaml there).")
    if given is None:
        default = SearchConfig()
        given = {k: v for k, v in config.to_dict().items() if k != "space" and v != getattr(default, k)}
    config = resume_config(run.saved_config(), {**given, "results_dir": config.results_dir, "name": config.name})
    if run.is_finished() and ("trials" not in given or proposed_count(run.read_trials()) >= config.trials):
        raise RunError(f"Run {str(run.path)!r} is already finished; nothing to resume "
                       f"(give a larger --trials to run more).")
    return run, config


def prepare_run(config: SearchConfig, *, resume: bool, given: Mapping[str, Any] | None = None,
                argv: list[str] | None = None, log: Callable[[str], None] = print,
                on_checked: Callable[[SearchConfig, int], None] | None = None, task=None,
                on_held: Callable[[RunDir], None] | None = None) -> Prepared:
    """Check the run folder and the inputs, then load data and baseline; no Ray yet.

    ``given`` holds the settings given again on ``--resume`` (see
    :func:`~autoprune.config.resume_config`); by default every field of ``config`` that differs
    from the defaults. ``on_checked(config, payload_bytes)`` is called once every input has been
    checked, before the baseline is loaded or trained (``search`` starts Ray there).

    Raises :class:`RunError` for a finished run, an existing unfinished run without ``--resume``,
    or ``--resume`` of a folder that is not a run. A new run's folder is written under its writer lock
    (:meth:`RunDir.hold`), which the caller gives back with ``prepared.run.release()`` (``search``
    does); ``on_held(run)``, if given, is called the moment it is taken, and from then on the caller
    gives it back on every way out, an error or Ctrl-C inside this call included. On resume, ``search``
    takes it before calling this.

    ``task`` is a user's task as ``(model, example_input, task.UserTask)``: no dataset is loaded and no
    baseline trained; the model is the baseline, scored by the task's ``evaluate``.
    """
    if resume:
        run, config = resumable_run(config, given)
    else:
        name = config.name or run_name(config)
        run = RunDir(Path(config.results_dir) / name)
        if run.exists():
            state = "finished" if run.is_finished() else "unfinished"
            hint = "pick a new --name" if state == "finished" else "add --resume to continue it, or pick a new --name"
            raise RunError(f"Run {str(run.path)!r} already exists ({state}); {hint}.")
        config = config.replace(name=name)
    if not config.budgets:
        raise ConfigError("Give at least one budget: --budget-flops, --budget-params or --budget-latency (e.g. 50%).")
    if task is not None:
        return _prepare_task(config, run, task, resume=resume, argv=argv, log=log, on_checked=on_checked,
                             on_held=on_held)
    return _prepare(config, run, resume=resume, argv=argv, log=log, on_checked=on_checked, on_held=on_held)


def for_trials(prepared: Prepared) -> Prepared:
    """``prepared`` as the trials get it: the run folder by its absolute path, since they name their
    timing locks after it (``quiet.py``) and a Ray worker may run in another working directory than the
    driver's. (config.yaml keeps ``--results-dir`` as given.)"""
    return dataclasses.replace(prepared, config=prepared.config.replace(results_dir=str(prepared.run.path.parent)))


def _prepare_task(config: SearchConfig, run: RunDir, task, *, resume: bool, argv, log, on_checked,
                  on_held=None) -> Prepared:
    """``_prepare`` for a user's task: the given model is the baseline; its metric the task's."""
    import copy

    import torch

    from .costs import count_flops
    from .data import memory_bytes
    from .models import load_checkpoint
    from .training import resolve_device

    model, example, user = task
    model = copy.deepcopy(model).cpu().eval()
    example = example.detach().cpu()
    device = resolve_device(config.device)
    if config.gpus_per_trial > 0 and not config.address and not torch.cuda.is_available():
        raise ConfigError(f"--gpus-per-trial {config.gpus_per_trial:g} needs a CUDA GPU, and this machine has none; "
                          "drop the flag to run the trials on the CPU, or join a GPU cluster with --address.")
    task_bytes = _pickled_size(user)
    payload = memory_bytes(model.state_dict().values(), None, None) + task_bytes
    if on_checked is not None and resume:
        on_checked(config, payload)
    if resume:
        load_checkpoint(model, run.path / "baseline.pt")
        baseline, groups, left, table = _saved(run)
    else:
        try:
            count_flops(model, example)
        except Exception as e:  # a model that cannot take its own example input: say so, not a traceback
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelError(f"The task's model {type(model).__name__} cannot take its example input of shape "
                             f"{list(example.shape)} ({type(e).__name__}: {text[:160]}).") from None
        sizes, groups, left, table = _measure(config, model, example, device, log)
        if on_checked is not None:
            on_checked(config, payload)
        baseline = {"model": config.model, "dataset": config.dataset, "num_classes": None,
                    "input_shape": list(example.shape[1:]), **sizes, "metric": user.metric,
                    "direction": user.direction, "val_acc": user.evaluate(model, device=device),
                    "test_acc": None, "source": user.spec or "python", "task": user.spec or "python",
                    "groups": len(groups)}
        model.cpu()
        _write(config, run, model, baseline, groups, left, table, [], argv,
               {"task": user.spec or "python", "metric": user.metric, "direction": user.direction}, on_held)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return Prepared(config, run, state, None, None, tuple(example.shape[1:]), 0, groups, baseline, left, table,
                    task=user, model=model, example=example, task_bytes=task_bytes)


def _pickled_size(task) -> int:
    """Bytes of a user's task as Ray will pickle it (closures and calibration batches included)."""
    try:
        import cloudpickle
    except ImportError:
        try:
            from ray import cloudpickle
        except ImportError:
            return 0
    try:
        return len(cloudpickle.dumps(task))
    except Exception:  # noqa: BLE001 - an estimate only; Ray reports what it cannot pickle itself
        return 0


def _saved(run: RunDir) -> tuple[dict, list[str], dict, dict | None]:
    """A run folder's baseline.json, probed groups, left-out groups and latency table, for a resume."""
    baseline = json.loads((run.path / "baseline.json").read_text())
    saved = run.read_config()
    table = run.path / "latency_model.json"
    return (baseline, list(saved.get("groups") or []), dict(saved.get("left_out") or {}),
            json.loads(table.read_text()) if table.is_file() else None)


def _measure(config: SearchConfig, model, example, device, log) -> tuple[dict, list[str], dict, dict | None]:
    """Sizes (FLOPs, params, latency), budgets against them, the probed groups, the budget's reach and
    the latency table: what depends on the architecture, not the weights."""
    from .costs import count_flops, count_params
    from .probe import left_out_groups, prunable_groups
    from .training import resolve_device

    sizes = {"flops": count_flops(model, example), "params": count_params(model)}
    if config.budget("latency") is not None:
        from .latency import measure_latency

        trial_device = resolve_device(config.trial_device)  # where the trials run and measure
        sizes["latency_ms"] = measure_latency(model, example, device=trial_device,
                                              batch_size=config.latency_batch, backend=config.latency_backend,
                                              threads=config.latency_threads)
        sizes["latency_backend"] = config.latency_backend
        sizes["latency_device"] = str(trial_device)
    for b in config.budgets:  # an absolute budget above the unpruned model fails before any training
        if b.kind in ("flops", "params"):
            b.limit(sizes[b.kind])
        elif not b.relative and "latency_ms" in sizes:
            b.limit(sizes["latency_ms"])
    space = config.space
    left = left_out_groups(model, example, space.exclude, space.max_sparsity)  # unsupported models fail here
    groups = [g.name for g in prunable_groups(model, example, space.exclude, max_sparsity=space.max_sparsity)]
    if not groups:
        raise ConfigError(
            f"Model {config.model!r} has no prunable group outside the excluded layers {list(space.exclude)}"
            + (f"; left out as unsafe: {left_out_text(left)}" if left else "") + ".")
    if left:
        log(f"left out {len(left)} of {len(left) + len(groups)} groups that cannot be pruned safely: "
            f"{left_out_text(left)}")
    sizes.update(smallest_reach(config, model, example, groups, left, sizes, log))
    table = _latency_table(config, model, example, groups, log, sizes.get("latency_ms"))
    return sizes, groups, left, table


def _write(config: SearchConfig, run: RunDir, model, baseline: dict, groups, left, table, warnings, argv,
           task: Mapping[str, str] | None = None, on_held: Callable[[RunDir], None] | None = None) -> None:
    """The run folder's baseline.pt, baseline.json, config.yaml (``task``: a user task's import path,
    metric and direction), state and latency table."""
    import torch

    run.path.mkdir(parents=True, exist_ok=True)
    run.hold()  # the writer lock (``search`` gives it back), then: did another search start this run meanwhile?
    handed = False  # once handed to ``on_held``'s caller, only the caller gives it back (a second release
    try:  # could free a lock another thread of this process took on the run in between)
        if on_held is not None:
            on_held(run)
            handed = True
        if run.exists():
            raise RunError(f"Run {str(run.path)!r} was started by another search meanwhile; pick a new --name.")
        with atomic_path(run.path / "baseline.pt") as tmp:
            torch.save(model.state_dict(), tmp)
        run.write_baseline(baseline)
        run.write_config(config, {"groups": groups, "left_out": left, "warnings": warnings,
                                  "versions": _versions(), "command": " ".join(argv) if argv else None,
                                  **(task or {})})
        run.write_state(finished=False)
        if table is not None:
            with atomic_path(run.path / "latency_model.json") as tmp:
                Path(tmp).write_text(json.dumps(table))
    except BaseException:
        if not handed:
            run.release()
        raise


def _prepare(config: SearchConfig, run: RunDir, *, resume: bool, argv, log, on_checked, on_held=None) -> Prepared:
    import torch

    from .baseline import ensure_baseline
    from .costs import count_flops
    from .data import load_dataset, memory_bytes
    from .models import create_model, load_checkpoint
    from .probe import prunable_groups
    from .task import Classification
    from .training import resolve_device

    device = resolve_device(config.device)
    if config.gpus_per_trial > 0 and not config.address and not torch.cuda.is_available():
        raise ConfigError(f"--gpus-per-trial {config.gpus_per_trial:g} needs a CUDA GPU, and this machine has none; "
                          "drop the flag to run the trials on the CPU, or join a GPU cluster with --address.")
    splits = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                          image_size=config.image_size, val_fraction=config.val_fraction, seed=config.split_seed)
    model = create_model(config.model, num_classes=splits.num_classes, in_channels=splits.input_shape[0],
                         seed=config.split_seed)

    def checked() -> None:
        if on_checked is not None:
            on_checked(config, memory_bytes(model.state_dict().values(), splits.train, splits.val))

    if resume:
        checked()
        load_checkpoint(model, run.path / "baseline.pt")
        baseline, groups, left, table = _saved(run)
        if not groups:  # runs written before the probe: every group of the graph
            groups = [g.name for g in prunable_groups(model, splits.example_input(), config.space.exclude,
                                                      probe=False)]
    else:
        warnings = []
        if config.checkpoint:
            load_checkpoint(model, config.checkpoint)
            warning = _check_split(config)
            if warning:
                log(f"warning: {warning}")
                warnings.append(warning)
        example = splits.example_input()
        # Sizes, latency and groups do not depend on the weights: check them before a baseline is
        # trained, so an absolute budget above the model or an unsupported model fails in seconds.
        try:
            count_flops(model, example)
        except Exception as e:  # a model that cannot take the data's inputs: say which, not a traceback
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelError(f"Model {config.model!r} cannot take inputs of shape {list(splits.input_shape)} from "
                             f"dataset {config.dataset!r} ({type(e).__name__}: {text[:160]}); give the --image-size "
                             f"it was built for.") from None
        sizes, groups, left, table = _measure(config, model, example, device, log)
        checked()
        if config.checkpoint:
            info = {"source": str(Path(config.checkpoint).resolve()), "test_acc": None}
        else:
            from .loader import workers

            with workers(config.loader_workers):
                info = ensure_baseline(model, splits, config, device=device, log=log)
        baseline = {
            "model": config.model, "dataset": config.dataset, "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), **sizes,
            "val_acc": Classification.of(splits).evaluate(model, device=device), "val_images": len(splits.val),
            "train_images": len(splits.train),
            "test_acc": info.get("test_acc"), "source": info.get("source"), "groups": len(groups),
        }
        model.cpu()  # evaluation left it on the device; workers get CPU weights and move them themselves
        _write(config, run, model, baseline, groups, left, table, warnings, argv, on_held=on_held)
    return Prepared(config, run, model.state_dict(), splits.train, splits.val, tuple(splits.input_shape),
                    splits.num_classes, groups, baseline, left, table)


def _latency_table(config: SearchConfig, model, example, groups, log, base_ms: float | None) -> dict | None:
    """With a latency budget, the per-layer latency table the trials fit candidates with (measured
    here once, or read from this machine's cache), as plain data for the workers."""
    if config.budget("latency") is None or not config.latency_model:
        return None
    from .costs import default_round_to
    from .latency_model import LatencyModel

    lm = LatencyModel.build(model, example, backend=config.latency_backend, threads=config.latency_threads,
                            batch=config.latency_batch, device=config.trial_device, base_ms=base_ms,
                            round_to=config.round_to or default_round_to(model, config.trial_device),
                            exclude=config.space.exclude, groups=groups, log=log)
    return lm.to_dict()


def _check_split(config: SearchConfig) -> str | None:
    """Refuse a checkpoint trained on another split; a warning (returned) for one that records none."""
    from .baseline import SPLIT_KEYS, split_of
    from .models import checkpoint_meta

    meta = checkpoint_meta(config.checkpoint)
    split = (meta or {}).get("split")
    if not isinstance(split, Mapping):
        return (f"checkpoint {config.checkpoint!r} does not record the data split it trained on; if it saw "
                f"the validation images (split seed {config.split_seed}, {config.val_fraction:g} of the "
                f"training set) the search's accuracies are optimistic")
    ours = split_of(config.dataset, config.val_fraction, config.split_seed)
    differ = [k for k in SPLIT_KEYS if split.get(k) != ours[k]]
    if differ:
        theirs = ", ".join(f"{k}={split.get(k)!r}" for k in differ)
        mine = ", ".join(f"{k}={ours[k]!r}" for k in differ)
        raise CheckpointError(
            f"Checkpoint {config.checkpoint!r} was trained on another data split ({theirs}) than this search "
            f"validates on ({mine}), so it has seen validation images; train it with --split-seed "
            f"{config.split_seed} or give the search the checkpoint's split.")
    return None


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("autoprune", "torch", "torchvision", "torch-pruning", "optuna", "ray", "pandas"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out

