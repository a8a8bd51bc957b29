"""The searcher: Optuna behind Ray Tune's OptunaSearch, its sampler, its study on disk, and its repairs.

The study lives in the run folder (``study/journal.log``), so a resumed run continues it and
``optuna-dashboard`` can read it. Infeasible trials reach Optuna as constraint violations.

Example:
    >>> searcher = make_searcher(config, run, ranges, warm_points, offset=0, target=(0.125, 0.5))
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from .config import SearchConfig
from .results import RunDir
from .space import IMPORTANCE_PARAM, PARAM_PREFIX, TARGET_PARAM

__all__ = ["make_searcher", "close_stale_trials", "constraint", "study_storage", "STUDY_NAME"]

STUDY_NAME = "autoprune"
TRIAL_ATTR = "autoprune_trial"  # the Optuna trial's user attribute: the trial's number in trials.csv


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def constraint(config: SearchConfig, status: str, latency_ms: Any = None, latency_ratio: Any = None) -> float:
    """Optuna's constraint value: <= 0 within every budget, else how far over (1.0 when unmeasured)."""
    if status == "ok":
        return 0.0
    budget = config.budget("latency")
    if budget is not None and _finite(latency_ms) and _finite(latency_ratio) and latency_ratio:
        limit = budget.cap(latency_ms / latency_ratio)
        return max(1e-3, latency_ms / limit - 1.0)
    return 1.0


def _sampler(config: SearchConfig, seed: int):
    import optuna

    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                          n_startup_trials=max(2, min(10, config.trials // 4)))
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, config.trials // 4)))
    return optuna.samplers.RandomSampler(seed=seed)


def _study_size(run: RunDir) -> int:
    """Trials already in the run's Optuna study (0 for a new run)."""
    import optuna

    if not (run.study_dir / "journal.log").is_file():
        return 0
    try:
        return len(optuna.load_study(study_name=STUDY_NAME, storage=study_storage(run)).get_trials(deepcopy=False))
    except KeyError:
        return 0


def study_storage(run: RunDir):
    import optuna

    run.study_dir.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run.study_dir / "journal.log")))


def make_searcher(config: SearchConfig, run: RunDir, ranges: dict, warm: Sequence[Any], offset: int,
                  target: tuple[float, float] | None = None):
    """Ray Tune's OptunaSearch over ``ranges`` (and the target size), the ``warm`` starts first."""
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class ConstrainedOptunaSearch(OptunaSearch):
        """OptunaSearch that tells Optuna which trials broke a budget, and fails the failed ones.

        An infeasible trial is told with its constraint value (``Trial.set_constraint``), so the
        samplers treat it as infeasible rather than as a good trial. A failed or metric-less trial
        ends as FAIL: stock OptunaSearch leaves it RUNNING for ever in multi-objective mode. That
        needs the pending Optuna trial, which OptunaSearch keeps in ``_ot_trials``: Ray Tune offers
        no public hook between a result and Optuna's ``tell``. Trials are numbered in the order
        they are proposed (Ray's trial ids are random).
        """

        next_number = offset

        def suggest(self, trial_id: str) -> dict | None:
            cfg = super().suggest(trial_id)
            if isinstance(cfg, dict):
                cfg["trial"] = self.next_number
                # so that a resume can tell a trial whose row was written before a kill (close_stale_trials)
                self._ot_trials[trial_id].set_user_attr(TRIAL_ATTR, self.next_number)
                self.next_number += 1
            return cfg

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return None
            values = [result.get(m) for m in self.metric] if result else [None]
            if error or not result or result.get("status") == "failed" or not all(_finite(v) for v in values):
                self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.FAIL)
                self._completed_trials.add(trial_id)
                return None
            self._ot_trials[trial_id].set_constraint("budget", float(result.get("constraint", 0.0)))
            return super().on_trial_complete(trial_id, result, error)

    objective = f"{config.size_measure}_ratio"
    choose = len(config.importances) > 1
    points = [{**({TARGET_PARAM: w.target} if target is not None and w.target is not None else {}),
               **({IMPORTANCE_PARAM: w.importance} if choose else {}),
               **{PARAM_PREFIX + g: v for g, v in w.point.items()}} for w in warm]
    # A resumed study gets a seed of its own: the same seed would draw the first session's proposals again.
    seed = config.seed + _study_size(run)
    return ConstrainedOptunaSearch(config.space.sampler(ranges, config.importances, target),
                                   metric=["val_acc", objective],
                                   mode=["max", "min"], points_to_evaluate=points or None, sampler=_sampler(config, seed),
                                   study_name=STUDY_NAME, storage=study_storage(run), seed=seed)


def close_stale_trials(run: RunDir, config: SearchConfig) -> tuple[int, int]:
    """Repair the study a killed search left behind; returns (trials told from trials.csv, trials failed).

    trials.csv is written before Optuna is told, so a kill in between leaves a trial RUNNING whose
    row exists: it is told now with that row's result, as the search would have told it. Other RUNNING
    trials never finished and become FAIL, so the sampler ignores them.
    """
    import optuna
    from optuna.trial import TrialState

    if not (run.study_dir / "journal.log").is_file():
        return 0, 0
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(run))
    except KeyError:
        return 0, 0
    rows = run.read_trials()
    if len(rows) and "parent" in rows:
        rows = rows[rows["parent"].isna()]  # reruns (rungs, confirmation) are never Optuna's trials
    rows = {int(r["trial"]): r for _, r in rows.iterrows()} if len(rows) else {}
    objective = f"{config.size_measure}_ratio"
    told = failed = 0
    for t in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        row = rows.get(t.user_attrs.get(TRIAL_ATTR, -1))  # None: the trial never wrote its row
        if row is None or row["status"] not in ("ok", "infeasible"):
            study.tell(t.number, state=TrialState.FAIL)
            failed += 1
            continue
        values = [float(row["val_acc"]), float(row.get(objective))]
        values = [values[0] if _finite(values[0]) else 0.0, values[1] if _finite(values[1]) else 1.0]
        optuna.Trial(study, t._trial_id).set_constraint(
            "budget", constraint(config, row["status"], row.get("latency_ms"), row.get("latency_ratio")))
        study.tell(t.number, values)
        told += 1
    # Enqueued warm starts that never ran: the resumed search enqueues the missing ones again, so
    # these are asked out (WAITING cannot be told) and failed rather than run twice.
    waiting = len(study.get_trials(deepcopy=False, states=[TrialState.WAITING]))
    for _ in range(waiting):
        study.tell(study.ask(), state=TrialState.FAIL)
    return told, failed + waiting
