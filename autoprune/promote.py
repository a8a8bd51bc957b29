"""Reruns of trials' policies at longer finetunes: the promotion rungs of a multi-fidelity search
(``--rungs``) and the confirmation of the best candidates before ``best`` is named (``--confirm``).

A rerun is a new row of trials.csv with the policy (the channels kept) of its ``parent`` and the
finetune epochs it trained (``epochs``). The front and the pick read them through ``front.py``.

Example:
    >>> promote_rungs(prepared, log=print, faults={}, timings={}, ray_starter=starter)
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

from .cluster import RayStarter
from .front import CONFIRM_PREFIX, confirmations_due, promotions
from .prepare import Prepared
from .results import number_or_none
from .trial import run_trial
from .workers import (
    context,
    lap,
    report,
    row_writer,
    run_config,
    set_threads,
    size_range,
)

__all__ = ["promote_rungs", "confirm", "run_policy"]


def promote_rungs(prepared: Prepared, *, log: Callable[[str], None], faults: Mapping[str, int], timings: dict,
                  ray_starter: RayStarter) -> bool:
    """Fill each promotion rung in turn: the candidates ``front.promotions`` names, rerun at its epochs.
    False when a rung was left unfinished (a resume finishes it)."""
    config = prepared.config
    while True:
        step = promotions(prepared.run.read_trials(), config.size_measure, config.rung_epochs, config.reduction,
                          config.promote_criteria)
        if step is None:
            return True
        epochs, parents = step
        log(f"promoting {len(parents)} trial(s) to a {epochs:g}-epoch finetune: {', '.join(map(str, parents))}")
        if not _rerun(prepared, parents, epochs, "", log=log, faults=faults, timings=timings, ray_starter=ray_starter):
            return False


def confirm(prepared: Prepared, *, log: Callable[[str], None], faults: Mapping[str, int], timings: dict,
            ray_starter: RayStarter) -> bool:
    """Rerun the best candidates and the uniform policy at the budget with the confirmation finetune
    (``--confirm``, ``--confirm-epochs``); ``best`` is then the best of these. False when unfinished."""
    config = prepared.config
    parents = confirmations_due(prepared.run.read_trials(), config.size_measure, config.confirm)
    if not parents:
        return True
    epochs = config.confirm_at
    log(f"confirming {len(parents)} candidate(s) with a {epochs:g}-epoch finetune (the first is the uniform "
        f"policy at the budget): {', '.join(map(str, parents))}")
    return _rerun(prepared, parents, epochs, CONFIRM_PREFIX, log=log, faults=faults, timings=timings,
                  ray_starter=ray_starter)


def _rerun(prepared: Prepared, parents: Sequence[int], epochs: float, prefix: str, *, log, faults, timings,
           ray_starter: RayStarter) -> bool:
    """Rerun ``parents``' policies at ``epochs`` as new trials (origin ``prefix`` + the parent's)."""
    config, run = prepared.config, prepared.run
    _, top = size_range(prepared)
    t = time.perf_counter()
    ray_starter.wait(config, prepared.payload_bytes)
    lap(timings, "ray_start", t)
    trials = run.read_trials()
    rows = trials.set_index("trial")
    offset = int(trials["trial"].max()) + 1
    # The parents' policies travel with the plan: a worker on another machine has no run folder.
    plan = {offset + i: {"parent": p, "origin": prefix + str(rows.loc[p, "origin"]),
                         "target": number_or_none(rows.loc[p].get("target_ratio")),
                         "policy": run_policy(run, p).to_dict()}
            for i, p in enumerate(parents)}
    t = time.perf_counter()
    try:
        run_reruns(prepared, plan, epochs, faults, (config.size_measure, top), log=log,
                   reuse=ray_starter.reuse_workers)
    finally:
        lap(timings, "tuner", t)
    missing = set(plan) - set(run.read_trials()["trial"].astype(int))
    if missing:
        # Interrupted (Ctrl-C ends Tune's run early) or lost: stop here, the run stays unfinished
        # and a resume reruns the rest.
        log(f"reruns stopped with {len(missing)} of {len(plan)} not recorded; resume the run to finish them")
        return False
    return True


def run_policy(run, trial: int):
    from .policy import Policy

    return Policy.load(run.path / "policies" / f"{int(trial)}.json")


def rerun_trainable(cfg: dict, prepared: Prepared, plan: Mapping[int, Mapping[str, Any]], epochs: float,
                    faults: Mapping[str, int]) -> None:
    """A rerun: the parent trial's policy (the channels it kept) with a longer finetune."""
    from .policy import Policy

    config = prepared.config.replace(finetune_epochs=epochs, rungs=None, confirm=0, confirm_epochs=None)
    set_threads(config)
    trial = int(cfg["trial"])
    item = plan[trial]
    if faults.get("fail_on_trial") == trial:
        raise RuntimeError(f"injected failure in trial {trial}")
    policy = Policy.from_dict(item["policy"])
    start = time.perf_counter()
    ctx = context(prepared)
    context_s = time.perf_counter() - start
    result = run_trial(config, {}, ctx, trial=trial, origin=item["origin"], importance=policy.importance,
                       target=item["target"], policy=policy)
    report(config, result.replace(parent=int(item["parent"])), context_s, faults)


def run_reruns(prepared: Prepared, plan: Mapping[int, Mapping[str, Any]], epochs: float,
               faults: Mapping[str, int], reference: tuple[str, float], *, log, reuse: bool) -> None:
    """One Tune run over fixed trials (no searcher): each reruns its parent's policy at ``epochs``;
    ``reuse``: whether a finished trial's worker may run the next (``RayStarter.reuse_workers``)."""
    from ray import tune

    config, run = prepared.config, prepared.run

    def describe(cfg):
        item = plan[int(cfg["trial"])]
        return int(cfg["trial"]), item["origin"], item["target"], int(item["parent"]), float(epochs)

    writer = row_writer(run, config, reference, log, describe, total=len(plan))
    job = tune.with_resources(
        tune.with_parameters(rerun_trainable, prepared=prepared, plan=dict(plan), epochs=float(epochs),
                             faults=dict(faults)),
        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    tuner = tune.Tuner(
        job,
        param_space={"trial": tune.grid_search(sorted(plan))},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=config.concurrency,
                                    reuse_actors=reuse),
        run_config=run_config(run, f"tune-{min(plan)}", writer),
    )
    tuner.fit()

