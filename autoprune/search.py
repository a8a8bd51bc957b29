"""The search: Optuna proposes per-group sparsities, Ray Tune runs the trials, the front is written.

The only module that imports Ray. The driver prepares everything once (data, baseline, groups,
the uniform policy), ships the baseline weights and in-memory data to the workers through the
object store, and writes each trial's row as it ends. Workers build one :class:`TrialContext` per
process and reuse it for every trial they run.

Example:
    >>> outcome = search(SearchConfig(budget_flops="50%", trials=8))
    >>> outcome.front[["trial", "val_acc", "flops_ratio"]]
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch

from .errors import ConfigError, RunError
from .policy import Policy
from .results import RunDir, best_trial
from .space import IMPORTANCE_PARAM, PARAM_PREFIX, load_space
from .trial import SearchConfig, TrialContext, TrialResult, run_trial

__all__ = ["search", "SearchOutcome", "prepare_run", "run_name"]

STUDY_NAME = "autoprune"


@dataclass
class SearchOutcome:
    """What a search left: its folder, the tables, and whether it finished."""

    path: Path
    trials: pd.DataFrame
    front: pd.DataFrame
    requested: int
    finished: bool
    seconds: float
    baseline: dict = field(default_factory=dict)
    # driver-side seconds: prepare, driver_context, ray_start, tuner, ray_shutdown, front (overhead studies)
    timings: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {s: int((self.trials["status"] == s).sum()) for s in ("ok", "infeasible", "failed")}

    @property
    def best(self) -> pd.Series | None:
        return best_trial(self.front)


def run_name(config: SearchConfig) -> str:
    budgets = "-".join(f"{b.kind}{b.text.replace('%', 'pct').replace('.', 'p')}" for b in config.budgets())
    model = config.model.replace(":", "_").replace(".", "_").replace("/", "_")
    return f"{model}-{config.dataset.replace(':', '_').replace('/', '_')}-{budgets}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run(config: SearchConfig, *, resume: bool, argv: list[str] | None = None,
                log: Callable[[str], None] = print,
                on_checked: Callable[[SearchConfig, int], None] | None = None) -> tuple[SearchConfig, RunDir, dict]:
    """Check the run folder and the inputs, then load data and baseline; no Ray yet.

    ``on_checked(config, payload_bytes)`` is called once every input has been checked, before the
    baseline is loaded or trained (``search`` starts Ray there, in the background).
    Returns the effective config (a resumed run's own), the run folder and the prepared payload.
    Raises :class:`RunError` for a finished run, an existing unfinished run without ``--resume``,
    or ``--resume`` of a folder that is not a run.
    """
    if resume:
        if config.name is None:
            raise RunError("--resume needs --name of the run to continue (a folder under --results-dir).")
        run = RunDir(Path(config.results_dir) / config.name)
        if not run.exists():
            raise RunError(f"Cannot resume {str(run.path)!r}: no such run (no config.yaml there).")
        saved = run.read_config().get("search", {})
        config = SearchConfig.from_dict({**saved, "results_dir": config.results_dir, "name": config.name})
        if run.is_finished():
            raise RunError(f"Run {str(run.path)!r} is already finished; nothing to resume.")
    else:
        name = config.name or run_name(config)
        run = RunDir(Path(config.results_dir) / name)
        if run.exists():
            state = "finished" if run.is_finished() else "unfinished"
            hint = "pick a new --name" if state == "finished" else "add --resume to continue it, or pick a new --name"
            raise RunError(f"Run {str(run.path)!r} already exists ({state}); {hint}.")
        config = config.replace(name=name)
    if not config.budgets():
        raise ConfigError("Give at least one budget: --budget-flops, --budget-params or --budget-latency (e.g. 50%).")
    space = load_space(config.search_space)  # a malformed file fails here, before any work
    payload = _prepare_payload(config, run, space, resume=resume, argv=argv, log=log, on_checked=on_checked)
    return config, run, payload


def _prepare_payload(config: SearchConfig, run: RunDir, space, *, resume: bool, argv, log, on_checked=None) -> dict:
    from .baseline import ensure_baseline
    from .data import load_dataset
    from .models import create_model, load_checkpoint
    from .train import evaluate, resolve_device

    device = resolve_device(config.device)
    splits = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                          image_size=config.image_size, val_fraction=config.val_fraction, seed=config.split_seed)
    model = create_model(config.model, num_classes=splits.num_classes, in_channels=splits.input_shape[0])

    def checked() -> None:
        if on_checked is not None:
            on_checked(config, _tensor_bytes(model.state_dict().values(), splits.train, splits.val))

    if resume:
        checked()
        load_checkpoint(model, run.path / "baseline.pt")
        baseline = json.loads((run.path / "baseline.json").read_text())
    else:
        if config.checkpoint:
            load_checkpoint(model, config.checkpoint)
        example = splits.example_input()
        from .prune import count_flops, count_params, prunable_groups

        # Sizes, latency and groups do not depend on the weights: check them before a baseline is
        # trained, so an absolute budget above the model or an unsupported model fails in seconds.
        sizes = {"flops": count_flops(model, example), "params": count_params(model)}
        if config.budget_latency is not None:
            from .latency import measure_latency

            sizes["latency_ms"] = measure_latency(model, example, device=device, batch_size=config.latency_batch)
            sizes["latency_device"] = str(device)
            model.cpu()  # measuring left it on the device; the graph is traced with a CPU example
        for b in config.budgets():  # an absolute budget above the unpruned model fails before any training
            if b.kind in ("flops", "params"):
                b.limit(sizes[b.kind])
            elif not b.relative and "latency_ms" in sizes:
                b.limit(sizes["latency_ms"])
        groups = prunable_groups(model, example, space.exclude)  # an unsupported model fails here
        if not groups:
            raise ConfigError(f"Model {config.model!r} has no prunable group outside the excluded layers "
                              f"{list(space.exclude)}.")
        checked()
        if config.checkpoint:
            info = {"source": str(Path(config.checkpoint).resolve()), "test_acc": None}
        else:
            info = ensure_baseline(model, splits, config, device=device, log=log)
        baseline = {
            "model": config.model, "dataset": config.dataset, "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), **sizes,
            "val_acc": evaluate(model, splits.val, device=device),
            "test_acc": info.get("test_acc"), "source": info.get("source"), "groups": len(groups),
        }
        model.cpu()  # evaluation left it on the device; workers get CPU weights and move them themselves
        run.path.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), run.path / "baseline.pt")
        run.write_baseline(baseline)
        run.write_config(config, {"space": space.to_dict(), "versions": _versions(),
                                  "command": " ".join(argv) if argv else None})
        run.write_state(finished=False)
    return {"config": config.to_dict(), "state_dict": model.state_dict(), "train": splits.train,
            "val": splits.val, "input_shape": list(splits.input_shape), "num_classes": splits.num_classes,
            "exclude": list(space.exclude), "run": str(run.path), "baseline": baseline}


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("autoprune", "torch", "torchvision", "torch-pruning", "optuna", "ray", "pandas"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


# --------------------------------------------------------------------------------------------- workers

_CONTEXTS: dict[str, TrialContext] = {}


def _context(payload: Mapping) -> TrialContext:
    """The worker's context for this run, built on first use and kept for later trials."""
    key = payload["run"]
    if key not in _CONTEXTS:
        from .models import create_model
        from .train import resolve_device

        config = SearchConfig.from_dict(payload["config"])
        shape = payload["input_shape"]
        model = create_model(config.model, num_classes=payload["num_classes"], in_channels=shape[0])
        model.load_state_dict(payload["state_dict"])
        wants_gpu = config.gpus_per_trial > 0 and config.device != "cpu"
        device = resolve_device("cuda" if wants_gpu and torch.cuda.is_available() else
                                ("cpu" if config.device == "auto" else config.device))
        train_ds, val_ds = payload["train"], payload["val"]
        if hasattr(train_ds, "to"):  # in-memory tensors: move once, every batch is then a slice
            train_ds, val_ds = train_ds.to(device), val_ds.to(device)
        _CONTEXTS.clear()
        _CONTEXTS[key] = TrialContext(config, model, train_ds, val_ds, torch.zeros(1, *shape), device=device,
                                      exclude=payload["exclude"])
    return _CONTEXTS[key]


def evaluate_proposal(payload: Mapping, proposal: Mapping[str, float], *, trial: int, origin: str,
                      importance: str | None = None) -> TrialResult:
    """Fit a proposal to the budgets and run it as a trial (no Ray: callable from tests and scripts).

    ``importance`` is the trial's channel criterion (default: the config's first).
    """
    from .prune import InfeasibleError

    start = time.perf_counter()
    ctx = _context(payload)
    config = ctx.config
    context_s = time.perf_counter() - start  # non-zero only on a worker's first trial
    try:
        policy = ctx.fit(proposal, importance)
    except InfeasibleError as e:
        return TrialResult(trial=trial, status="infeasible", origin=origin, error=str(e),
                           trial_s=time.perf_counter() - start,
                           timings={"context": context_s, "fit": time.perf_counter() - start - context_s})
    fit_s = time.perf_counter() - start - context_s
    result = run_trial(config, policy, ctx, trial=trial, origin=origin)
    timings = {"context": context_s, "fit": fit_s, **result.timings}
    return TrialResult(**{**result.__dict__, "trial_s": result.trial_s + context_s + fit_s, "timings": timings})


def _trainable(cfg: dict, payload: dict) -> None:
    from ray import tune

    config = SearchConfig.from_dict(payload["config"])
    threads = max(1, int(config.cpus_per_trial))
    if torch.get_num_threads() != threads:
        # Trials side by side must not fight over cores. Set once per process: changing the
        # thread pool again from a later trial's thread has crashed workers (munmap_chunk).
        torch.set_num_threads(threads)
    proposal = {g: float(v) for g, v in _flatten(cfg.get("s", {})).items()}
    importance = str(cfg.get(IMPORTANCE_PARAM) or config.importances[0])
    trial = int(cfg["trial"])
    origin = "optuna"
    for name, point, imp in payload["warm"]:
        if imp == importance and all(math.isclose(proposal.get(g, -1.0), v, abs_tol=1e-9) for g, v in point.items()):
            origin = name
            break
    if payload.get("fail_on_trial") == trial:  # fault injection for tests
        raise RuntimeError(f"injected failure in trial {trial}")
    result = evaluate_proposal(payload, proposal, trial=trial, origin=origin, importance=importance)
    if payload.get("nan_on_trial") == trial:  # fault injection for tests: a NaN metric
        result = TrialResult(**{**result.__dict__, "val_acc": float("nan")})
    if result.status == "ok" and _finite_or(result.val_acc, None) is None:
        result = TrialResult(**{**result.__dict__, "status": "failed",
                                "error": result.error or "validation accuracy is NaN or missing"})
    objective = f"{config.objective}_ratio"
    # Both objectives are always finite: a NaN would leave the Optuna trial RUNNING. The guarded
    # searcher turns status "failed" into an Optuna FAIL instead of these placeholder values.
    tune.report({"val_acc": _finite_or(result.val_acc, 0.0), objective: _finite_or(getattr(result, objective), 1.0),
                 "status": result.status, "result": _result_json(result)})


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _finite_or(x: Any, default: Any) -> Any:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else default


def _result_json(r: TrialResult) -> str:
    d = {k: v for k, v in r.__dict__.items() if k != "policy"}
    if _finite_or(d.get("val_acc"), None) is None:
        d["val_acc"] = None  # JSON has no NaN
    d["timings"] = dict(r.timings)
    d["policy"] = r.policy.to_dict() if r.policy is not None else None
    return json.dumps(d)


def result_from_json(text: str) -> TrialResult:
    d = json.loads(text)
    d["policy"] = Policy.from_dict(d["policy"]) if d.get("policy") else None
    return TrialResult(**d)


# --------------------------------------------------------------------------------------------- driver


def _sampler(config: SearchConfig):
    import optuna

    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=config.seed, multivariate=True,
                                          n_startup_trials=max(2, min(10, config.trials // 4)))
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=config.seed, population_size=max(4, min(50, config.trials // 4)))
    return optuna.samplers.RandomSampler(seed=config.seed)


def _searcher(config: SearchConfig, run: RunDir, ranges: dict, space, warm: list, offset: int):
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class GuardedOptunaSearch(OptunaSearch):
        """OptunaSearch whose failed, NaN or metric-less results end the Optuna trial as FAIL.

        Stock OptunaSearch leaves such a trial RUNNING for ever in multi-objective mode. It also
        numbers the trials in the order it proposes them (Ray's trial ids are random).
        """

        next_number = offset

        def suggest(self, trial_id: str) -> dict | None:
            cfg = super().suggest(trial_id)
            if isinstance(cfg, dict):
                cfg["trial"] = self.next_number
                self.next_number += 1
            return cfg

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            values = [result.get(m) for m in self.metric] if result else [None]
            bad = (error or not result or result.get("status") == "failed"
                   or any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values))
            if not bad:
                return super().on_trial_complete(trial_id, result, error)
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return None
            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return None

    run.study_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run.study_dir / "journal.log")))
    objective = f"{config.objective}_ratio"
    choose = len(config.importances) > 1
    points = [{**({IMPORTANCE_PARAM: imp} if choose else {}), **{PARAM_PREFIX + g: v for g, v in point.items()}}
              for _, point, imp in warm]
    return GuardedOptunaSearch(space.sampler(ranges, config.importances), metric=["val_acc", objective], mode=["max", "min"],
                               points_to_evaluate=points or None, sampler=_sampler(config),
                               study_name=STUDY_NAME, storage=storage, seed=config.seed)


def _close_stale_optuna_trials(run: RunDir) -> int:
    """A killed search leaves Optuna trials RUNNING; mark them FAIL so the sampler ignores them."""
    import optuna
    from optuna.trial import TrialState

    journal = run.study_dir / "journal.log"
    if not journal.is_file():
        return 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    except KeyError:
        return 0
    stale = study.get_trials(deepcopy=False, states=[TrialState.RUNNING, TrialState.WAITING])
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
    return len(stale)


def _init_ray(config: SearchConfig, payload_bytes: int) -> bool:
    """Join a cluster (``--address`` or RAY_ADDRESS) or start a small local Ray; True if we started it."""
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # trials.csv is our log
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(config.concurrency))
    import logging

    import ray

    if ray.is_initialized():
        return False
    address = config.address or os.environ.get("RAY_ADDRESS")
    package = Path(__file__).resolve().parent
    if address:
        ray.init(address=address, runtime_env={"py_modules": [str(package)]}, logging_level=logging.WARNING,
                 log_to_driver=False)
        return True
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
    return True


def _quiet_tune_logs() -> None:
    import logging

    # Tune's end-of-run analysis looks for per-trial logs that trials.csv replaces; its warnings
    # about them are noise for users.
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _tensor_bytes(weights, *datasets) -> int:
    """Bytes of the weights and of in-memory datasets: what the payload puts in Ray's object store."""
    total = sum(t.numel() * t.element_size() for t in weights)
    for ds in datasets:
        for attr in ("x", "y"):
            t = getattr(ds, attr, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


class _RayStarter:
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
                self._started = _init_ray(config, payload_bytes)
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


def search(config: SearchConfig, *, resume: bool = False, argv: list[str] | None = None,
           log: Callable[[str], None] = print, faults: Mapping[str, int] | None = None) -> SearchOutcome:
    """Run (or resume) a search and write its results folder.

    Args:
        config: the resolved settings (a resumed run takes its own saved config, except the name).
        resume: continue the run ``config.name`` under ``config.results_dir``.
        argv: the command line, recorded in config.yaml.
        log: where progress lines go (the CLI prints them).
        faults: test hooks, ``{"fail_on_trial": n}`` or ``{"nan_on_trial": n}``.
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    ray_starter = _RayStarter()
    try:
        config, run, payload = prepare_run(config, resume=resume, argv=argv, log=log, on_checked=ray_starter.start)
        timings["prepare"] = time.perf_counter() - start
        done = run.read_trials()
        remaining = config.trials - len(done)
        space = load_space(config.search_space) if not resume else _saved_space(run)
        baseline = payload["baseline"]
        if remaining > 0:
            _search_trials(config, run, payload, space, done, remaining, log=log, faults=faults or {},
                           timings=timings, ray_starter=ray_starter)
    finally:
        t = time.perf_counter()
        ray_starter.close()  # shuts down the Ray this search started, whatever happened
        _lap(timings, "ray_shutdown", t)
    t = time.perf_counter()
    trials = run.read_trials()
    front = run.write_front(config.budgets(), config.objective, baseline)
    finished = len(trials) >= config.trials
    run.write_state(finished=finished)
    timings["front"] = time.perf_counter() - t
    return SearchOutcome(run.path, trials, front, config.trials, finished, time.perf_counter() - start, baseline,
                         timings)


def _saved_space(run: RunDir):
    from .space import SearchSpace

    return SearchSpace.from_dict(run.read_config().get("space", {}))


def _search_trials(config: SearchConfig, run: RunDir, payload: dict, space, done: pd.DataFrame, remaining: int,
                   *, log: Callable[[str], None], faults: Mapping[str, int], timings: dict,
                   ray_starter: _RayStarter) -> None:
    """Run ``remaining`` trials through Ray Tune; Ray is left running (``ray_starter.close()`` stops it)."""
    t = time.perf_counter()
    ctx = _context(payload)  # the driver's own copy: groups, uniform policy
    ranges = space.ranges(ctx.group_names)
    # Warm starts: the uniform policy once per criterion (origin "uniform" for the first, the plain
    # uniform L1 baseline by default, "uniform:<criterion>" for the others), unless already run.
    warm = []
    origins = {imp: "uniform" if i == 0 else f"uniform:{imp}" for i, imp in enumerate(config.importances)}
    missing = [imp for imp, origin in origins.items() if not (done["origin"] == origin).any()]
    if missing:
        from .prune import InfeasibleError

        try:
            uniform = ctx.uniform()
            point = {g: space.snap(uniform.sparsity[g], g) if space.step else uniform.sparsity[g]
                     for g in ctx.group_names}
            warm.extend((origins[imp], point, imp) for imp in missing)
        except InfeasibleError as e:
            log(f"note: the uniform policy cannot meet the budget ({e})")
    stale = _close_stale_optuna_trials(run)
    if stale:
        log(f"resume: marked {stale} interrupted Optuna trial(s) as failed")
    offset = int(done["trial"].max()) + 1 if len(done) else 0
    payload = {**payload, "warm": warm, "trial_offset": offset, **faults}
    t = _lap(timings, "driver_context", t)
    # Started in the background once the inputs were checked; what is left of its start-up is waited for here.
    ray_starter.wait(config, _tensor_bytes(payload["state_dict"].values(), payload["train"], payload["val"]))
    t = _lap(timings, "ray_start", t)
    try:
        _run_tuner(config, run, payload, ranges, space, warm, remaining, log=log)
    finally:
        _lap(timings, "tuner", t)


def _lap(timings: dict, part: str, t0: float) -> float:
    now = time.perf_counter()
    timings[part] = timings.get(part, 0.0) + now - t0
    return now


def _run_tuner(config, run, payload, ranges, space, warm, remaining, *, log) -> None:
    from ray import tune

    searcher = _searcher(config, run, ranges, space, warm, payload["trial_offset"])
    objective = f"{config.objective}_ratio"
    best = {"val_acc": -1.0}
    known = run.read_trials()
    if len(known):
        ok = known[known["status"] == "ok"]
        best["val_acc"] = float(ok["val_acc"].max()) if len(ok) else -1.0

    class RowWriter(tune.Callback):
        """Appends each finished trial to trials.csv (driver side, one writer) and logs a line."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            r = result_from_json(result["result"])
            run.append(r)
            if r.status == "ok":
                best["val_acc"] = max(best["val_acc"], r.val_acc)
            ratio = getattr(r, objective)
            line = (f"trial {r.trial:>3} {r.origin:<8} {r.status:<10} "
                    + (f"val_acc {r.val_acc:.4f}  {objective} {ratio:.3f}  " if r.val_acc is not None else "")
                    + f"best {best['val_acc']:.4f}  {r.trial_s:.1f}s" + (f"  ({r.error})" if r.error else ""))
            log(line)

        def on_trial_error(self, iteration, trials, trial, **info):
            number = int(trial.config.get("trial", -1))
            message = "the trial's worker raised or died"
            if getattr(trial, "error_file", None) and os.path.isfile(trial.error_file):
                lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
                message = lines[-1][:300] if lines else message
            run.append(TrialResult(trial=number, status="failed", origin="optuna", error=message))
            log(f"trial {number:>3} failed: {message}")

    trainable = tune.with_resources(tune.with_parameters(_trainable, payload=payload),
                                    {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                    max_concurrent_trials=config.concurrency, reuse_actors=True),
        run_config=tune.RunConfig(name=f"tune-{payload['trial_offset']}", storage_path=str(run.path / "ray"), callbacks=[RowWriter()],
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)),
    )
    tuner.fit()
