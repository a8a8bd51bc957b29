"""The run folder and its preparation, without Ray."""
from __future__ import annotations

import pytest


def test_prepare_keeps_a_warning_for_a_checkpoint_without_its_split(rand20, tmp_path):
    """A user's own checkpoint (no recorded split) is accepted with one warning line, kept in config.yaml;
    one that records the search's split gives none."""
    import yaml

    from autoprune.baseline import split_of
    from autoprune.config import SearchConfig
    from autoprune.models import create_model, load_checkpoint, save_checkpoint
    from autoprune.prepare import prepare_run

    lines = []
    cfg = SearchConfig(budget_flops="50%", checkpoint=rand20, image_size=16, results_dir=str(tmp_path), name="a")
    prepared = prepare_run(cfg, resume=False, log=lines.append)
    prepared.run.release()
    warned = [line for line in lines if line.startswith("warning:")]
    assert len(warned) == 1 and "split" in warned[0] and rand20 in warned[0]
    saved = yaml.safe_load((prepared.run.path / "config.yaml").read_text())
    assert saved["warnings"] == [warned[0].removeprefix("warning: ")]
    recorded = tmp_path / "recorded.pt"
    save_checkpoint(load_checkpoint(create_model("resnet20"), rand20), recorded,
                    {"split": split_of("digits", 0.1, 0)})
    lines.clear()
    prepare_run(cfg.replace(checkpoint=str(recorded), name="b"), resume=False, log=lines.append).run.release()
    assert not [line for line in lines if line.startswith("warning:")]


def test_a_relative_results_dir_reaches_the_trials_as_an_absolute_path(rand20, tmp_path, monkeypatch):
    """The trials name their timing locks after the run folder; a Ray worker in another working
    directory than the driver's must name the same folder. config.yaml keeps --results-dir as given."""
    import yaml

    from autoprune.config import SearchConfig
    from autoprune.prepare import for_trials, prepare_run
    from autoprune.trial import run_folder

    monkeypatch.chdir(tmp_path)
    cfg = SearchConfig(budget_flops="50%", checkpoint=rand20, image_size=16, results_dir="out", name="a")
    prepared = prepare_run(cfg, resume=False, log=lambda line: None)
    prepared.run.release()
    shipped = for_trials(prepared)
    monkeypatch.chdir("/")
    assert run_folder(shipped.config) == tmp_path.resolve() / "out" / "a" == prepared.run.path
    assert run_folder(prepared.config) != prepared.run.path  # relative: another folder seen from "/"
    saved = yaml.safe_load((prepared.run.path / "config.yaml").read_text())
    assert saved["search"]["results_dir"] == "out"


def test_a_latency_search_measures_the_smallest_model_and_starts_its_front_there(rand20, tmp_path, monkeypatch):
    """The smallest model the groups reach is timed once, side by side with the unpruned one; the front's
    floor is raised above it, so that no trial aims at a latency no shape reaches."""
    import autoprune.latency
    from autoprune.config import SearchConfig
    from autoprune.prepare import prepare_run
    from autoprune.workers import size_range

    timed = []

    def relative(pruned, original, x, **kwargs):  # the smallest model measured at 70% of the unpruned latency
        timed.append(sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in original.parameters()))
        return 0.7, 1.0

    monkeypatch.setattr(autoprune.latency, "relative_latency", relative)
    lines = []
    cfg = SearchConfig(budget_latency="90%", checkpoint=rand20, image_size=16, results_dir=str(tmp_path), name="a",
                       latency_model=False)
    prepared = prepare_run(cfg, resume=False, log=lines.append)
    prepared.run.release()
    assert len(timed) == 1 and timed[0] < 0.2  # the smallest model, every group at its highest sparsity
    assert prepared.baseline["reachable_latency"] == 0.7
    floor, top = size_range(prepared)
    assert floor >= 0.7 and top == pytest.approx(0.9)
    assert any("front starts at 70.0% of the latency" in line for line in lines)


def test_a_node_id_of_digits_stays_text_in_trials_csv(tmp_path):
    """Ray node ids are 12 hex digits; one such as 123456789012 or 4e1234567890 read back as a number made
    the same row differ between a run and its resume on a node with letters in its id."""
    import pandas as pd

    from autoprune.results import RunDir
    from autoprune.trial import TrialResult

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    for trial, node in enumerate(("123456789012", "4e1234567890")):
        run.append(TrialResult(trial=trial, status="ok", origin="optuna", val_acc=0.5, flops=1.0, flops_ratio=0.5,
                               params=1, params_ratio=0.5, node=node))
    first = run.read_trials()
    assert first["node"].tolist() == ["123456789012", "4e1234567890"]
    assert pd.read_csv(run.trials_csv)["node"].dtype.kind == "f"  # what a plain read makes of them
    run.append(TrialResult(trial=2, status="ok", origin="optuna", val_acc=0.6, flops=1.0, flops_ratio=0.5, params=1,
                           params_ratio=0.5, node="a1b2c3d4e5f6"))
    again = run.read_trials()
    assert again.iloc[:2].equals(first) and again["node"].tolist()[2] == "a1b2c3d4e5f6"
