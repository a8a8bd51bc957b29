"""The searcher (searcher.py) in process (Ray's OptunaSearch with autoprune's sampler; no Ray started)."""
from __future__ import annotations

from autoprune.config import SearchConfig
from autoprune.results import RunDir
from autoprune.searcher import STUDY_NAME, make_searcher
from autoprune.workers import WarmStart

GROUPS = [f"g{i}" for i in range(6)]


def _drive(tmp_path, config: SearchConfig, results, name: str = "run") -> list[dict]:
    """Ask the searcher for one proposal per entry of ``results`` and tell it that result."""
    run = RunDir(tmp_path / name)
    warm = (WarmStart("uniform", {g: 0.3 for g in GROUPS}, config.importances[0]),)
    searcher = make_searcher(config, run, config.space.ranges(GROUPS), warm, offset=0)
    proposals = []
    for i, result in enumerate(results):
        cfg = searcher.suggest(f"t{i}")
        proposals.append(cfg)
        searcher.on_trial_complete(f"t{i}", result=result(cfg) if callable(result) else result)
    return proposals


def _ok(cfg: dict) -> dict:
    mean = sum(cfg["s"].values()) / len(cfg["s"])
    return {"val_acc": 1.0 - mean, "flops_ratio": 0.5, "constraint": 0.0, "status": "ok"}


def test_same_seed_same_proposals_other_seed_others(tmp_path):
    config = SearchConfig(budget_flops="50%", trials=8, seed=0)
    a = _drive(tmp_path, config, [_ok] * 8, "a")
    b = _drive(tmp_path, config, [_ok] * 8, "b")
    c = _drive(tmp_path, config.replace(seed=1), [_ok] * 8, "c")
    assert a == b
    assert [p["trial"] for p in a] == list(range(8))
    assert a[0]["s"] == {g: 0.3 for g in GROUPS} and a[0]["importance"] == "l1"  # the warm start first
    assert a[1:] != c[1:]


def test_infeasible_trials_reach_optuna_as_constraint_violations(tmp_path):
    """An infeasible trial is told to Optuna as COMPLETE with a positive constraint, so samplers and
    the study's best trials treat it as infeasible; a failed one is FAIL."""
    import optuna

    config = SearchConfig(budget_flops="50%", trials=4)
    infeasible = {"val_acc": 0.99, "flops_ratio": 1.0, "constraint": 1.0, "status": "infeasible"}
    failed = {"val_acc": 0.0, "flops_ratio": 1.0, "constraint": 0.0, "status": "failed"}
    _drive(tmp_path, config, [_ok, infeasible, failed, _ok])
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study" / "journal.log")))
    trials = optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert [t.constraints for t in trials[:2]] == [{"budget": 0.0}, {"budget": 1.0}]
    best = optuna.load_study(study_name=STUDY_NAME, storage=storage).best_trials
    assert 1 not in [t.number for t in best]  # the infeasible trial's 0.99 is not on Optuna's front


def test_sampler_suggests_every_group_within_its_range(tmp_path):
    config = SearchConfig(budget_flops="50%", search_space="cifar_resnet", importance="l1")
    proposals = _drive(tmp_path, config, [_ok] * 4)
    for p in proposals:
        assert set(p["s"]) == set(GROUPS) and all(0.0 <= v <= 0.9 for v in p["s"].values())
        assert "importance" not in p  # one criterion: nothing to choose


def test_resume_fails_trials_a_killed_search_left_running_or_waiting(tmp_path):
    """A kill can leave a trial RUNNING and enqueued warm starts WAITING; a resume ends both as FAIL
    (the warm starts that never ran are enqueued again by the resumed search)."""
    import optuna

    from autoprune.searcher import close_stale_trials, study_storage

    run = RunDir(tmp_path / "killed")
    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(run), directions=["maximize", "minimize"])
    study.enqueue_trial({"s/g0": 0.3})
    study.enqueue_trial({"s/g0": 0.4})
    study.ask()  # the first warm start was running when the search was killed; the second never ran
    assert close_stale_trials(run, SearchConfig(budget_flops="50%")) == (0, 2)
    states = [t.state.name for t in optuna.load_study(study_name=STUDY_NAME, storage=study_storage(run)).get_trials()]
    assert states == ["FAIL", "FAIL"]


def test_resume_tells_optuna_the_trials_recorded_before_a_kill(tmp_path):
    """trials.csv is written before Optuna is told: a kill in between leaves the trial RUNNING with
    its row on disk. A resume tells Optuna that row's result (an infeasible one with its constraint),
    and fails the trials that have no row of their own."""
    import optuna

    from autoprune.searcher import close_stale_trials, study_storage
    from autoprune.trial import TrialResult

    config = SearchConfig(budget_flops="50%", trials=4)
    run = RunDir(tmp_path / "killed")
    searcher = make_searcher(config, run, config.space.ranges(GROUPS), (), offset=5)
    numbers = [searcher.suggest(f"t{i}")["trial"] for i in range(4)]  # all four RUNNING when killed
    assert numbers == [5, 6, 7, 8]
    run.append(TrialResult(trial=5, origin="optuna", status="ok", val_acc=0.75, flops_ratio=0.42, flops=1, params=1))
    run.append(TrialResult(trial=6, origin="optuna", status="infeasible", val_acc=0.9, flops_ratio=0.61, flops=1, params=1))
    run.append(TrialResult(trial=7, origin="optuna", status="failed", error="boom"))
    # trial 8 never wrote its row; a rerun (a later rung) took its number: not the Optuna trial's result
    run.append(TrialResult(trial=8, origin="optuna", status="ok", val_acc=0.99, flops_ratio=0.42, flops=1, params=1,
                           parent=5, epochs=0.5))
    assert close_stale_trials(run, config) == (2, 2)
    trials = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(run)).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    assert [t.values for t in trials[:2]] == [[0.75, 0.42], [0.9, 0.61]]
    assert [t.constraints for t in trials[:2]] == [{"budget": 0.0}, {"budget": 1.0}]


def test_the_size_is_searched_between_the_floor_and_the_budget(tmp_path):
    config = SearchConfig(budget_flops="50%", importance="l1", trials=12)
    run = RunDir(tmp_path / "sized")
    warm = tuple(WarmStart(f"uniform:l1@{t:.3f}", {g: 0.0 for g in GROUPS}, "l1", t) for t in (0.5, 0.25, 0.375))
    searcher = make_searcher(config, run, config.space.ranges(GROUPS), warm, offset=0, target=(0.25, 0.5))
    targets = []
    for i in range(12):
        cfg = searcher.suggest(f"t{i}")
        targets.append(cfg["target"])
        searcher.on_trial_complete(f"t{i}", result={**_ok(cfg), "flops_ratio": cfg["target"]})
    assert targets[:3] == [0.5, 0.25, 0.375]  # the uniform curve's sizes first
    assert all(0.25 <= t <= 0.5 for t in targets) and len({round(t, 3) for t in targets[3:]}) > 3


def test_a_resumed_study_draws_new_proposals(tmp_path):
    """The sampler of a resumed run is seeded anew: the first session's proposals are not drawn again."""
    config = SearchConfig(budget_flops="50%", sampler="random", importance="l1", trials=6)
    run = RunDir(tmp_path / "resumed")

    def session(n: int) -> list[dict]:
        searcher = make_searcher(config, run, config.space.ranges(GROUPS), (), offset=0)
        out = []
        for i in range(n):
            cfg = searcher.suggest(f"t{len(out)}-{n}")
            out.append(cfg["s"])
            searcher.on_trial_complete(f"t{len(out) - 1}-{n}", result=_ok(cfg))
        return out

    first, second = session(3), session(3)
    assert not any(p in first for p in second)


def test_a_centred_space_proposes_multipliers_and_names_its_uniform_start(tmp_path):
    from autoprune.space import load_space
    from autoprune.workers import candidate

    space = load_space("centred")
    config = SearchConfig(budget_flops="50%", importance="l1", trials=10, space=space)
    warm = (WarmStart("uniform:l1@0.500", space.uniform_point(GROUPS), "l1", 0.5),)
    searcher = make_searcher(config, RunDir(tmp_path / "centred"), space.param_ranges(GROUPS), warm, offset=0,
                             target=(0.125, 0.5))
    candidates = []
    for i in range(10):
        cfg = searcher.suggest(f"t{i}")
        candidates.append(candidate(cfg, warm, config))
        searcher.on_trial_complete(f"t{i}", result={**_ok(cfg), "flops_ratio": cfg["target"]})
    proposal, importance, target, origin = candidates[0]
    assert origin == "uniform:l1@0.500" and target == 0.5 and len(set(proposal.values())) == 1
    assert all(c[3] == "optuna" for c in candidates[1:])
    for proposal, *_ in candidates[1:]:
        keep = [1 - s for s in proposal.values()]
        assert max(keep) / min(keep) <= 4.0 + 1e-9  # within spread^2 = 4 of each other
        assert len(set(proposal.values())) > 1
