"""The only place Ray starts or is joined: a private local Ray, or a cluster (``--address``).

Ray's start-up (a few seconds of process launches) runs on a background thread while the driver
prepares the run, so it overlaps the baseline and the validation pass instead of adding to them.

Example:
    >>> starter = RayStarter()
    >>> starter.start(config, payload_bytes)    # returns at once
    >>> started = starter.wait(config, payload_bytes)
    >>> starter.close()                           # shuts down the Ray this search started
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from .config import SearchConfig

__all__ = ["RayStarter", "init_ray"]


def init_ray(config: SearchConfig, payload_bytes: int) -> str:
    """Join a cluster (``--address`` or RAY_ADDRESS) or start a small local Ray: ``"cluster"`` or
    ``"local"``, or ``""`` when Ray was running already (this search then leaves it running)."""
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # trials.csv is our log
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(config.concurrency))
    import ray

    if ray.is_initialized():
        return ""
    address = config.address or os.environ.get("RAY_ADDRESS")
    package = Path(__file__).resolve().parent
    user = _user_code_paths(config)
    if address:
        # The project's code, and a user's model or dataset package, travel with Ray's runtime
        # environment. (A single-file user module must be importable on the cluster's workers.)
        ray.init(address=address, runtime_env={"py_modules": [str(package), *(p for p, pkg in user if pkg)]},
                 logging_level=logging.WARNING, log_to_driver=False)
        return "cluster"
    # Local workers import a user's `module:function` from where the driver found it.
    folders = [str(Path(p).parent) if pkg else p for p, pkg in user]
    if folders:
        os.environ["PYTHONPATH"] = os.pathsep.join([*folders, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    kwargs: dict[str, Any] = {}
    if config.dashboard:
        kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1")
    else:
        kwargs.update(include_dashboard=False)
    cpus = max(os.cpu_count() or 1, math.ceil(config.cpus_per_trial))
    gpus = torch.cuda.device_count() if config.gpus_per_trial > 0 else 0
    # Enough object store for the baseline and the data, a few times over, not 30% of RAM.
    store = max(100 * 2**20, 4 * payload_bytes)
    # address="local": always a fresh private instance, never a cluster another `ray start` left running.
    ray.init(address="local", num_cpus=cpus, num_gpus=gpus, object_store_memory=store, logging_level=logging.ERROR,
             log_to_driver=False, configure_logging=True, **kwargs)
    return "local"


def _user_code_paths(config: SearchConfig) -> list[tuple[str, bool]]:
    """Where the driver imported the user's ``module:function`` model and dataset from.

    Returns ``(path, is_package)``: a package's own folder, or a single module file's folder. The
    workers rebuild the model from its name, so they must import the same module.
    """
    paths: list[tuple[str, bool]] = []
    for spec in (config.model, config.dataset):
        if ":" not in spec or spec.startswith("timm:"):  # timm models come from the installed package
            continue
        top = spec.partition(":")[0].split(".")[0]
        file = getattr(sys.modules.get(top), "__file__", None)
        if not file:
            continue
        path = Path(file).resolve().parent
        entry = (str(path), path.name == top and (path / "__init__.py").is_file())
        if entry not in paths:
            paths.append(entry)
    return paths


def _quiet_tune_logs() -> None:
    # Tune's end-of-run analysis looks for per-trial logs that trials.csv replaces; its warnings
    # about them are noise for users.
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


class RayStarter:
    """Starts Ray (and imports Tune) on a background thread while the driver prepares.

    Ray's start-up (a few seconds of process launches, mostly waiting) then overlaps the baseline,
    the validation pass and the driver's cost model instead of adding to them. ``wait()`` returns
    whether this search started Ray (and so must shut it down); ``close()`` always leaves no Ray
    behind that this search started, also when preparation failed or was interrupted.

    The thread lives until ``close()``: Ray's local processes are launched with a parent-death
    signal, which Linux sends when the launching *thread* ends, not only the process.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._started = False
        self._error: BaseException | None = None
        self._private = False  # this search started a Ray of its own on this machine (no cluster joined)

    def start(self, config: SearchConfig, payload_bytes: int) -> None:
        if self._thread is not None:
            return
        if threading.current_thread() is threading.main_thread():
            # What ray.init installs itself on the main thread (not from another): SIGTERM exits
            # through Python, so Ray's atexit shutdown runs.
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))

        def run() -> None:
            try:
                mode = init_ray(config, payload_bytes)
                self._started, self._private = bool(mode), mode == "local"
                _quiet_tune_logs()
                from ray import tune  # noqa: F401  (Tune's import, off the critical path too)
                from ray.tune.search.optuna import OptunaSearch  # noqa: F401
            except BaseException as e:  # handed to wait(), on the driver's thread
                self._error = e
            finally:
                self._ready.set()
            self._stop.wait()  # keep the launching thread alive while Ray runs (see the class doc)

        self._thread = threading.Thread(target=run, name="autoprune-ray", daemon=True)
        self._thread.start()

    @property
    def reuse_workers(self) -> bool:
        """Whether Tune may hand a finished trial's worker, with its context, to the next trial: only
        on a Ray this search started on this machine.

        On a cluster (or a Ray started before the search) each trial starts its own worker, about 2 s
        more per trial for resnet20. Ray Tune (2.60) fails a trial outright when the cached worker it
        was handed had died with its node: the failed reset first retries the PENDING trial, then its
        second callback errors it (``TuneController._process_trial_failure``), without the
        FailureConfig retries; CI saw it. A fresh worker that dies is retried."""
        return self._private

    def wait(self, config: SearchConfig, payload_bytes: int) -> bool:
        self.start(config, payload_bytes)  # not started yet (nothing called on_checked): start now
        self._ready.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._started

    def close(self) -> None:
        if self._thread is None:
            return
        self._ready.wait()
        try:
            if self._started:
                import ray

                ray.shutdown()
                self._started = False
        finally:
            self._stop.set()
            self._thread.join()
            self._thread = None

