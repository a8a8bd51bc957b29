from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from autoprune import models
from autoprune.errors import CheckpointError, ModelError
from autoprune.models import create_model, list_models, load_checkpoint, register_model
from helpers_registry import OWN_MODELS, small_models, timm_models

CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
NAMES = small_models() + list(OWN_MODELS) + timm_models()
HERE = Path(__file__).resolve().parent



@pytest.fixture
def helpers_on_path(monkeypatch):
    # The spec names a top-level module, like a user's own `my_models:build`.
    monkeypatch.syspath_prepend(str(HERE))


@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    """Every model builds for 1 and 3 input channels and maps 32x32 images to 10 logits."""
    torch.manual_seed(0)
    for in_channels in (1, 3):
        model = create_model(name, num_classes=10, in_channels=in_channels)
        assert isinstance(model, nn.Module)
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(2, in_channels, 32, 32))
        assert out.shape == (2, 10), (name, in_channels)
        assert torch.isfinite(out).all()


def test_list_models():
    names = list_models()
    assert "resnet56" in names and "mobilenet_v2" in names
    assert len(names) == len(set(names))
    assert names[: len(CIFAR)] == CIFAR  # the CIFAR ResNets come first
    # timm models are listed on request only; our own test models are module:function specs
    assert set(NAMES) - set(timm_models()) - set(OWN_MODELS) <= set(names)


def test_list_models_pattern():
    found = list_models("resnet1*")
    assert {"resnet110", "resnet18"} <= set(found)
    assert all(n.startswith("resnet1") for n in found)
    assert "resnet20" not in found
    assert list_models("resnet2*") == ["resnet20"]
    assert list_models("no_such_model*") == []


def test_timm_models_build_without_weights_and_are_listed_on_request(monkeypatch):
    pytest.importorskip("timm")
    import timm.models._builder

    def no_download(*a, **k):
        raise AssertionError("timm tried to fetch weights")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", no_download)  # what create_model would call
    model = create_model("timm:resnet10t", num_classes=7, in_channels=1)
    assert model.autoprune_name == "timm:resnet10t"
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    found = list_models("timm:resnet1*")
    assert "timm:resnet10t" in found and all(n.startswith("timm:resnet1") for n in found)
    assert "timm:resnet10t" not in list_models()
    with pytest.raises(ModelError, match="Unknown timm model 'resnet10x'.*timm:\\*"):
        create_model("timm:resnet10x")


@pytest.mark.parametrize("bad, near", [("resnet5", ("resnet56", "resnet50")), ("mobilenetv2", ("mobilenet_v2",))])
def test_unknown_model(bad, near):
    with pytest.raises(ModelError) as info:
        create_model(bad)
    msg = str(info.value)
    assert repr(bad) in msg
    assert any(n in msg for n in near), msg
    assert "module:function" in msg


def test_spec(helpers_on_path):
    model = create_model("helpers_models:tiny", num_classes=7, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    # a builder may ignore the arguments it does not take
    assert create_model("helpers_models:no_args")(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("spec", ["no_such_module_xyz:build", "helpers_models:no_such_function"])
def test_spec_bad(helpers_on_path, spec):
    with pytest.raises(ModelError, match="module:function"):
        create_model(spec)


def test_spec_not_a_module(helpers_on_path):
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        create_model("helpers_models:not_a_module")


def test_register_model(monkeypatch):
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))  # leave the real registry as it was

    @register_model("tiny_for_test")
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 32 * 32, num_classes))

    assert "tiny_for_test" in list_models()
    assert create_model("tiny_for_test", num_classes=4)(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ModelError, match="tiny_for_test"):
        register_model("tiny_for_test")(build)
    with pytest.raises(ModelError, match="resnet56"):
        register_model("resnet56")(build)


def test_bad_cifar_depth():
    with pytest.raises(ModelError, match="6n\\+2"):
        models.CifarResNet(21)


# ---------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return create_model("resnet20").state_dict()


def _assert_same(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], weights[k]) for k in weights)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "model_state_dict", "module_prefix", "ckpt_prefix"])
def test_load_checkpoint_forms(tmp_path, weights, wrap):
    prefixed = {f"module.{k}": v for k, v in weights.items()}
    obj = {
        "plain": weights,
        "state_dict": {"state_dict": weights, "epoch": 3},
        "model": {"model": weights, "optimizer": {"lr": 0.1}},
        "model_state_dict": {"model_state_dict": weights},
        "module_prefix": prefixed,
        "ckpt_prefix": {"state_dict": prefixed},
    }[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    model = create_model("resnet20")
    assert load_checkpoint(model, path) is model
    _assert_same(model, weights)


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(create_model("resnet20"), tmp_path / "nope.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(create_model("resnet20"), tmp_path)  # a folder is not a checkpoint


def test_load_checkpoint_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_checkpoint(create_model("resnet20"), path)


@pytest.mark.parametrize("obj", [argparse.Namespace(lr=0.1), {"epoch": 3, "lr": [0.1]}, [1, 2, 3]],
                         ids=["object", "dict_of_numbers", "list"])
def test_load_checkpoint_not_a_state_dict(tmp_path, obj):
    path = tmp_path / "obj.pt"
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)
    with pytest.raises(CheckpointError, match="obj.pt"):
        load_checkpoint(create_model("resnet20"), path)


def test_load_checkpoint_mismatch(tmp_path, weights):
    path = tmp_path / "resnet20.pt"
    torch.save(weights, path)
    model = create_model("resnet32")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    msg = str(info.value)
    assert "missing" in msg and "layer1.3" in msg, msg
    # nothing was half-loaded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_checkpoint_unexpected_and_shape(tmp_path, weights):
    extra = dict(weights, **{"head.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="unexpected: head.weight"):
        load_checkpoint(create_model("resnet20"), tmp_path / "extra.pt")
    torch.save(weights, tmp_path / "ten.pt")
    with pytest.raises(CheckpointError, match="wrong shape: fc"):
        load_checkpoint(create_model("resnet20", num_classes=100), tmp_path / "ten.pt")



def test_seeded_model_is_reproducible_and_leaves_the_global_rng():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = create_model("resnet20", seed=4), create_model("resnet20", seed=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = create_model("resnet20", seed=5)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_checkpoint_metadata_round_trip(tmp_path, weights):
    from autoprune.models import checkpoint_meta, save_checkpoint

    model = create_model("resnet20")
    model.load_state_dict(weights)
    meta = {"split": {"dataset": "digits", "val_fraction": 0.1, "split_seed": 3}}
    save_checkpoint(model, tmp_path / "m.pt", meta)
    assert checkpoint_meta(tmp_path / "m.pt") == meta
    _assert_same(load_checkpoint(create_model("resnet20"), tmp_path / "m.pt"), weights)
    torch.save(weights, tmp_path / "plain.pt")
    assert checkpoint_meta(tmp_path / "plain.pt") is None  # a user's own checkpoint records nothing


def test_checkpoint_keeps_layer_versions(tmp_path):
    """torchvision's MNASNet checks its state dict's format version when loading: a checkpoint
    autoprune saved (the cached baseline) must load back into it."""
    from autoprune.models import save_checkpoint

    model = create_model("mnasnet0_5", num_classes=10, seed=0)
    save_checkpoint(model, tmp_path / "m.pt", {})
    back = load_checkpoint(create_model("mnasnet0_5", num_classes=10, seed=1), tmp_path / "m.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    stripped = {k: v.clone() for k, v in model.state_dict().items()}  # a plain dict: no versions at all
    torch.save(stripped, tmp_path / "plain.pt")
    load_checkpoint(create_model("mnasnet0_5", num_classes=10), tmp_path / "plain.pt")
