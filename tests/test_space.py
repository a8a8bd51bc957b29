"""Search-space files: built-ins load, malformed files name the file and the key."""
from __future__ import annotations

import pytest

from autoprune.errors import SearchSpaceError
from autoprune.space import IMPORTANCE_PARAM, PARAM_PREFIX, SearchSpace, list_spaces, load_space


def test_builtin_spaces_load():
    assert {"default", "cifar_resnet", "mobilenet"} <= set(list_spaces())
    d = load_space("default")
    assert (d.low, d.high, d.step) == (0.0, 0.9, None)
    c = load_space("cifar_resnet")
    assert c.range_of("layer2.0.shortcut.0") == (0.0, 0.6)
    assert c.range_of("layer2.1.conv1") == (0.0, 0.9)
    assert load_space("mobilenet").exclude == ("features.0.0",)


def test_snap_to_grid_and_range():
    c = load_space("cifar_resnet")
    assert c.snap(0.333, "layer1.0.conv1") == pytest.approx(0.35)
    assert c.snap(0.95, "conv1") == pytest.approx(0.6)


def test_sampler_only_suggests_one_float_per_group():
    import optuna

    space = load_space("cifar_resnet")
    sample = space.sampler(space.ranges(["conv1", "layer1.0.conv1"]))
    study = optuna.create_study()
    trial = study.ask()
    sample(trial)
    assert set(trial.params) == {PARAM_PREFIX + "conv1", PARAM_PREFIX + "layer1.0.conv1"}
    assert 0.0 <= trial.params[PARAM_PREFIX + "conv1"] <= 0.6


def test_sampler_chooses_the_criterion_only_when_there_is_a_choice():
    import optuna

    space = load_space("default")
    ranges = space.ranges(["conv1"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        space.sampler(ranges, ("l1", "bn_scale", "taylor"))(trial)
        seen.add(trial.params[IMPORTANCE_PARAM])
    assert seen == {"l1", "bn_scale", "taylor"}
    single = study.ask()
    space.sampler(ranges, ("l1",))(single)
    assert set(single.params) == {PARAM_PREFIX + "conv1"}


@pytest.mark.parametrize("text,key", [
    ("range: [0.5, 0.2]\n", "range"),
    ("range: [0, 1.5]\n", "range"),
    ("step: 2\n", "step"),
    ("exclude: conv1\n", "exclude"),
    ("overrides: {conv1: [0.9]}\n", "overrides.conv1"),
    ("rnage: [0, 0.5]\n", "rnage"),
    ("range: [0, 0.5\n", "YAML"),
    ("- a\n- b\n", "mapping"),
    ("centre: middle\n", "centre"),
    ("centre: uniform\nspread: 1\n", "spread"),
])
def test_malformed_files_name_file_and_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SearchSpaceError) as e:
        load_space(path)
    assert str(path) in str(e.value) and key in str(e.value)


def test_centred_space_searches_keep_multipliers_around_the_uniform_policy():
    import math

    import optuna

    space = load_space("centred")
    groups = ["conv1", "layer1.0.conv1", "layer2.0.conv1"]
    assert space.centre == "uniform" and space.param_ranges(groups) == {g: (-math.log(2), math.log(2)) for g in groups}
    uniform = space.to_proposal(space.uniform_point(groups))
    assert len(set(uniform.values())) == 1  # one sparsity everywhere: the uniform shape
    extremes = space.to_proposal({"conv1": math.log(2), "layer1.0.conv1": -math.log(2), "layer2.0.conv1": 0.0})
    assert extremes["conv1"] == 0.0 and extremes["layer1.0.conv1"] == pytest.approx(0.75)  # not clipped before the fit
    keep = {g: 1 - s for g, s in extremes.items()}
    assert keep["conv1"] / keep["layer1.0.conv1"] == pytest.approx(4.0)  # spread squared, end to end
    assert keep["conv1"] / keep["layer2.0.conv1"] == pytest.approx(2.0)
    trial = optuna.create_study().ask()
    space.sampler(space.param_ranges(groups))(trial)
    assert all(-math.log(2) <= v <= math.log(2) for v in trial.params.values())
    wanted = {"conv1": 0.0, "layer1.0.conv1": 0.75, "layer2.0.conv1": 0.3}  # a warm start given as sparsities
    assert space.to_proposal(space.point_of(wanted)) == pytest.approx(wanted)
    # a sparsity space is unchanged: its parameters are the sparsities
    default = load_space("default")
    assert default.to_proposal({"conv1": 0.3}) == {"conv1": 0.3}
    assert default.uniform_point(groups) == {g: 0.0 for g in groups}


def test_unknown_space_lists_choices():
    with pytest.raises(SearchSpaceError, match="cifar_resnet"):
        load_space("nosuchspace")


def test_space_round_trips_through_a_run_config():
    for name in list_spaces():
        space = load_space(name)
        assert SearchSpace.from_dict(space.to_dict()) == space


def test_builtin_spaces_ship_in_the_package_and_match_the_examples(tmp_path, monkeypatch):
    """A wheel install has no repository around it: the spaces are read from the package, and the
    top-level search_spaces/ examples are the same files."""
    from pathlib import Path

    import autoprune
    from autoprune.space import builtin_space_text

    monkeypatch.chdir(tmp_path)
    repo = Path(autoprune.__file__).resolve().parent.parent / "search_spaces"
    shipped = list_spaces()
    assert shipped == sorted(p.stem for p in repo.glob("*.yaml"))
    for name in shipped:
        assert builtin_space_text(name) == (repo / f"{name}.yaml").read_text()
        assert load_space(name).name == name
