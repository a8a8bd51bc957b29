from __future__ import annotations

import json
import math

import pytest

from autoprune.errors import ConfigError
from autoprune.policy import Policy, kept_channels


@pytest.fixture
def policy() -> Policy:
    # Floats that JSON must carry exactly: a rounded copy would change channel counts at an edge.
    return Policy(
        "resnet20",
        {"layer1.0.conv1": 0.5, "layer2.0.conv1": 1 / 3, "conv1": 0.1 + 0.2, "layer3.0.conv1": 0.0},
        {"layer1.0.conv1": 16, "layer2.0.conv1": 32, "conv1": 16, "layer3.0.conv1": 64},
    )


def test_json_round_trip(policy):
    text = policy.to_json()
    back = Policy.from_json(text)
    assert back == policy
    assert hash(back) == hash(policy)
    assert back.sparsity["layer2.0.conv1"] == 1 / 3
    assert json.loads(text)["model"] == "resnet20"


def test_dict_round_trip_and_order(policy):
    back = Policy.from_dict(policy.to_dict())
    assert back == policy
    # names are kept sorted, so equal policies print and serialise the same way
    assert list(back.sparsity) == sorted(back.sparsity)
    shuffled = Policy("resnet20", dict(reversed(list(policy.sparsity.items()))), dict(policy.channels))
    assert shuffled == policy and shuffled.to_json() == policy.to_json()


def test_save_load(policy, tmp_path):
    path = tmp_path / "policies" / "7.json"
    policy.save(path)
    assert Policy.load(path) == policy
    assert [p.name for p in path.parent.iterdir()] == ["7.json"]  # no temporary file left behind


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Policy.load(tmp_path / "nope.json")


@pytest.mark.parametrize("text", ["not json", "{}", '{"model": "x"}', "[1, 2]"])
def test_from_json_bad(text):
    with pytest.raises(ConfigError):
        Policy.from_json(text)


@pytest.mark.parametrize("bad", [1.0, -0.1, math.nan, math.inf, 1.5])
def test_bad_sparsity(bad):
    with pytest.raises(ConfigError, match="layer1.0.conv1"):
        Policy("resnet20", {"layer1.0.conv1": bad}, {"layer1.0.conv1": 16})


def test_missing_channel_counts():
    with pytest.raises(ConfigError, match="b"):
        Policy("m", {"a": 0.5, "b": 0.5}, {"a": 16})


def test_kept(policy):
    assert policy.kept() == {"conv1": 11, "layer1.0.conv1": 8, "layer2.0.conv1": 21, "layer3.0.conv1": 64}
    assert policy.mean_sparsity() == pytest.approx((0.5 + 1 / 3 + 0.3 + 0.0) / 4)


def test_kept_round_to(policy):
    # 11 -> 16, 8 -> 8, 21 -> 24, 64 -> 64: rounded up, never above the unpruned width
    rounded = Policy(policy.model, policy.sparsity, policy.channels, round_to=8)
    assert rounded.kept() == {"conv1": 16, "layer1.0.conv1": 8, "layer2.0.conv1": 24, "layer3.0.conv1": 64}
    assert Policy.from_json(rounded.to_json()) == rounded and rounded.round_to == 8


@pytest.mark.parametrize("channels, sparsity, round_to, kept", [
    (16, 0.5, 1, 8),
    (16, 0.99, 1, 1),  # at least one channel survives
    (16, 0.99, 8, 8),  # at least one multiple
    (10, 0.5, 8, 8),
    (12, 0.1, 8, 12),  # never above the unpruned width
    (64, 0.25, 8, 48),
    (3, 0.4, 1, 2),
])
def test_kept_channels(channels, sparsity, round_to, kept):
    assert kept_channels(channels, sparsity, round_to) == kept


def test_importance_is_recorded_and_round_trips(policy):
    import dataclasses

    tagged = dataclasses.replace(policy, importance="bn_scale")
    back = Policy.from_json(tagged.to_json())
    assert back.importance == "bn_scale" and back == tagged
    assert back != policy and hash(back) != hash(policy)  # same sizes, other channels: another policy
    assert "importance" not in policy.to_dict()  # untagged policies (and older files) stay as they were
    assert Policy.from_dict(policy.to_dict()).importance is None
    with pytest.raises(ConfigError, match="'magic'.*bn_scale"):
        dataclasses.replace(policy, importance="magic")


def test_kept_indices_round_trip_and_are_checked(policy):
    import dataclasses

    recorded = dataclasses.replace(policy, indices={"layer1.0.conv1": [7, 0, 3, 1, 2, 4, 5, 6]})
    back = Policy.from_json(recorded.to_json())
    assert back == recorded and back.indices == {"layer1.0.conv1": (0, 1, 2, 3, 4, 5, 6, 7)}
    assert "indices" not in policy.to_dict()
    for bad in ({"layer1.0.conv1": [0, 16]},  # beyond the group's 16 channels
                {"layer1.0.conv1": [1, 1]},  # twice
                {"layer1.0.conv1": []},
                {"no.such.group": [0]}):
        with pytest.raises(ConfigError, match="indices"):
            dataclasses.replace(policy, indices=bad)
