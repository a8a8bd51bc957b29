from __future__ import annotations

import math
import socket
import sys
import types

import numpy as np
import pytest
import torch

from autoprune.data import Splits, TensorData, list_datasets, load_dataset, register_dataset
from autoprune.loader import make_loader
from autoprune.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_dataset("digits")


def _ids(ds: TensorData) -> set[int]:
    return set(ds.index.tolist())


def test_digits_loads_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "socket", no_network)
    s = load_dataset("digits")
    assert s.name == "digits"
    assert s.num_classes == 10
    assert s.input_shape == (3, 32, 32)
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert tuple(s.train.x.shape[1:]) == (3, 32, 32)
    assert s.train.x.dtype == torch.float32 and s.train.y.dtype == torch.int64
    assert s.example_input(2).shape == (2, 3, 32, 32)
    assert not s.example_input().any()
    # about 20% test, then 10% of the rest for validation
    assert len(s.test) == pytest.approx(0.2 * 1797, abs=5)
    assert len(s.val) == pytest.approx(0.1 * (1797 - len(s.test)), abs=5)
    assert set(s.test.y.tolist()) == set(range(10))


def test_digits_normalised_with_train_statistics(digits):
    x = digits.train.x
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    # the three channels are copies of the grey image
    assert torch.equal(x[:, 0], x[:, 2])


def test_digits_splits_disjoint_and_cover_all(digits):
    train, val, test = _ids(digits.train), _ids(digits.val), _ids(digits.test)
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(1797))


def test_digits_splits_seeded():
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.val.index, b.val.index)
    assert torch.equal(a.val.x, b.val.x)
    assert not torch.equal(a.val.index, c.val.index)
    # the test set never depends on the seed
    assert torch.equal(a.test.index, c.test.index)


def test_digits_options():
    s = load_dataset("digits", image_size=16, val_fraction=0.25)
    assert s.input_shape == (3, 16, 16) and s.train.x.shape[-2:] == (16, 16)
    assert len(s.val) == pytest.approx(0.25 * (len(s.train) + len(s.val)), abs=5)
    none = load_dataset("digits", val_fraction=0)
    assert len(none.val) == 0 and len(none.train) + len(none.test) == 1797
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("digits", image_size=0)


def test_registry():
    assert {"digits", "cifar10", "cifar100", "imagefolder"} <= set(list_datasets())
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]
    with pytest.raises(DataError, match="registered twice"):
        register_dataset("digits")(lambda **kw: None)


def test_unknown_dataset_names_choices():
    with pytest.raises(DataError, match="digits") as err:
        load_dataset("digitz")
    assert "'digitz'" in str(err.value) and "module:function" in str(err.value)


def test_cifar_needs_data_dir(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar100", data_dir=tmp_path, download=False)


def test_cifar_converted_to_tensors(monkeypatch):
    import torchvision.datasets as tvd

    class FakeCIFAR10:
        classes = [str(i) for i in range(10)]

        def __init__(self, root, train, download):
            n = 50 if train else 20
            rng = np.random.default_rng(int(train))
            self.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(n)]

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    s = load_dataset("cifar10", data_dir="/nonexistent", val_fraction=0.2, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (40, 10, 20)
    assert s.num_classes == 10 and s.input_shape == (3, 32, 32)
    assert isinstance(s.train, TensorData)
    raw = FakeCIFAR10(None, True, False).data[s.train.index[0].item()]
    from autoprune.datasets import CIFAR_STATS

    mean, std = CIFAR_STATS["cifar10"]
    expected = (raw[0, 0, 0] / 255.0 - mean[0]) / std[0]
    assert s.train.x[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-5)


def _write_pngs(root, classes, per_class):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_imagefolder_loads(tmp_path):
    _write_pngs(tmp_path / "train", ["cat", "dog"], 6)
    _write_pngs(tmp_path / "val", ["cat", "dog"], 2)
    s = load_dataset("imagefolder", data_dir=tmp_path, image_size=8, val_fraction=0.5, seed=1)
    assert s.num_classes == 2 and s.input_shape == (3, 8, 8)
    assert (len(s.train), len(s.val), len(s.test)) == (6, 6, 4)
    assert not set(s.train.indices) & set(s.val.indices)
    loader = make_loader(s.train, 4, shuffle=True, seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    assert batches[0][0].shape == (4, 3, 8, 8)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0, 0, 0, 1, 1, 1]


def test_imagefolder_trains_on_augmented_crops_and_evaluates_on_centre_crops_with_workers(tmp_path):
    """The training part of train/ gives a different random crop or flip of an image at each read; the
    validation part carved from it, and val/, give the same centre crop every time. Loaders decode in
    worker processes (set_workers, --workers) and give the batches the main process would."""
    from autoprune.loader import set_workers
    from autoprune.training import TrainConfig, train

    _write_pngs(tmp_path / "train", ["cat", "dog"], 6)
    _write_pngs(tmp_path / "val", ["cat", "dog"], 2)
    s = load_dataset("imagefolder", data_dir=tmp_path, image_size=8, val_fraction=0.5, seed=1)
    assert getattr(s.train, "augments", False) and not getattr(s.val, "augments", False)
    torch.manual_seed(0)
    reads = [s.train[0][0] for _ in range(6)]
    assert any(not torch.equal(reads[0], r) for r in reads[1:])  # random resized crop and flip
    assert torch.equal(s.val[0][0], s.val[0][0]) and torch.equal(s.test[0][0], s.test[0][0])
    from autoprune.criteria import gradient_batch
    from autoprune.data import carve_validation

    assert torch.equal(gradient_batch(s.train, 4)[0], gradient_batch(s.train, 4)[0])  # Taylor's batch is fixed
    assert getattr(carve_validation(s.train, 0.5, 0)[0], "augments", False)  # carving again keeps the flag
    plain = [torch.cat([x for x, _ in make_loader(s.val, 4, shuffle=False, num_workers=0)])]
    set_workers(2)
    try:
        loader = make_loader(s.val, 4, shuffle=False)
        assert loader._loader.num_workers == 2 and loader._loader.persistent_workers
        assert torch.equal(plain[0], torch.cat([x for x, _ in loader]))
        rows = train(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)), s.train,
                     TrainConfig(epochs=1, batch_size=4, lr=0.01), device="cpu")
        assert rows[-1]["step"] == 1 and math.isfinite(rows[-1]["train_loss"])
    finally:
        set_workers(0)
    with pytest.raises(ConfigError, match="--workers"):
        set_workers(-1)


def test_imagefolder_missing_or_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("imagefolder", data_dir=tmp_path / "nope")
    with pytest.raises(DataError, match="train/"):
        load_dataset("imagefolder", data_dir=tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="holds no images") as err:
        load_dataset("imagefolder", data_dir=tmp_path)
    assert str(tmp_path / "train") in str(err.value)
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("imagefolder")


@pytest.fixture
def user_module(monkeypatch):
    mod = types.ModuleType("autoprune_test_user_data")
    seen = {}

    def as_tuple(data_dir=None, image_size=None):
        seen.update(data_dir=data_dir, image_size=image_size)
        size = image_size or 4
        x = torch.randn(30, 1, size, size)
        y = torch.arange(30) % 3
        return TensorData(x, y), TensorData(x[:6], y[:6]), 3

    def as_splits():
        t = TensorData(torch.zeros(4, 2, 5, 5), torch.zeros(4))
        return Splits("mine", t, t, t, 1, (2, 5, 5))

    mod.as_tuple, mod.as_splits, mod.seen = as_tuple, as_splits, seen
    mod.not_data = lambda: 42
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod


def test_module_function_tuple(user_module, tmp_path):
    s = load_dataset("autoprune_test_user_data:as_tuple", data_dir=tmp_path, image_size=6, seed=0)
    assert user_module.seen == {"data_dir": tmp_path, "image_size": 6}
    assert s.num_classes == 3 and s.input_shape == (1, 6, 6)
    assert (len(s.train), len(s.val), len(s.test)) == (27, 3, 6)
    assert not _ids(s.train) & _ids(s.val)


def test_module_function_splits_and_errors(user_module):
    s = load_dataset("autoprune_test_user_data:as_splits")
    assert s.name == "mine" and s.input_shape == (2, 5, 5)
    with pytest.raises(DataError, match="not_data.*must return Splits"):
        load_dataset("autoprune_test_user_data:not_data")
    with pytest.raises(DataError, match="no_such_module_xyz:fn"):
        load_dataset("no_such_module_xyz:fn")
    with pytest.raises(DataError, match="autoprune_test_user_data:missing"):
        load_dataset("autoprune_test_user_data:missing")


def test_make_loader_tensor_data():
    ds = TensorData(torch.randn(10, 1, 2, 2), torch.arange(10))
    loader = make_loader(ds, 4, shuffle=False)
    assert len(loader) == 3
    assert [y.tolist() for _, y in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(make_loader(ds, 4, shuffle=False, drop_last=True)) == 2
    assert len(list(make_loader(ds, 4, shuffle=True, drop_last=True))) == 2

    def order(seed):
        loader = make_loader(ds, 4, shuffle=True, seed=seed)
        return [torch.cat([y for _, y in loader]).tolist() for _epoch in range(2)]

    first, second = order(0)
    assert sorted(first) == list(range(10))  # every sample once per pass
    assert first != list(range(10)) and first != second  # shuffled, and anew each pass
    assert order(0) == [first, second]  # seeded
    assert order(1)[0] != first
    x, y = next(iter(make_loader(ds, 4, shuffle=True)))
    assert torch.equal(x, ds.x[y])  # images stay with their labels


def test_make_loader_other_dataset():
    ds = torch.utils.data.TensorDataset(torch.randn(9, 1, 2, 2), torch.arange(9))
    loader = make_loader(ds, 4, shuffle=True, seed=0)
    assert len(loader) == math.ceil(9 / 4)
    assert sorted(torch.cat([y for _, y in loader]).tolist()) == list(range(9))
    ys = [torch.cat([y for _, y in make_loader(ds, 4, shuffle=True, seed=5)]).tolist() for _ in range(2)]
    assert ys[0] == ys[1]
    with pytest.raises(ConfigError, match="batch_size"):
        make_loader(ds, 0, shuffle=False)


def test_tensor_data_basics():
    ds = TensorData(torch.zeros(3, 1, 2, 2), torch.tensor([2, 0, 1]))
    assert len(ds) == 3 and ds[0][1].item() == 2
    sub = ds.take([2, 0])
    assert sub.index.tolist() == [2, 0] and sub.y.tolist() == [1, 2]
    assert sub.to("cpu").device.type == "cpu"
    with pytest.raises(DataError, match="N,C,H,W"):
        TensorData(torch.zeros(3, 4), torch.zeros(3))


# ------------------------------------------------------------------------------------ Fashion-MNIST


def _write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    """An IDX file as Zalando ships them: 0, 0, type 0x08 (unsigned byte), ndim, big-endian sizes, data."""
    import gzip

    raw = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw += array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def _fake_fashion(folder, n_train=60, n_test=20, compress=True):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28)), compress)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10, compress)
    return folder


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path, compress):
    folder = _fake_fashion(tmp_path / "fm", compress=compress)
    s = load_dataset("fashion_mnist", data_dir=folder, val_fraction=0.2, seed=1)
    assert (len(s.train), len(s.val), len(s.test)) == (50, 10, 20)  # 6 per class, round(0.2 x 6) held out
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert set(s.train.index.tolist()).isdisjoint(s.val.index.tolist())
    assert s.train.x.mean().item() == pytest.approx(0.0, abs=1e-5)  # normalised with training statistics
    assert sorted(s.val.y.tolist()) == list(range(10))  # stratified: every class gives up its share
    assert load_dataset("fashion_mnist", data_dir=folder, image_size=32).input_shape == (1, 32, 32)
    same = load_dataset("fashion_mnist", data_dir=folder, val_fraction=0.2, seed=1)
    assert torch.equal(same.val.index, s.val.index)


def test_fashion_mnist_found_where_debian_puts_it(tmp_path, monkeypatch):
    import autoprune.datasets

    monkeypatch.setattr(autoprune.datasets, "FASHION_MNIST_DIRS", (tmp_path / "absent", _fake_fashion(tmp_path / "deb")))
    assert len(load_dataset("fashion_mnist").test) == 20


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    import autoprune.datasets

    monkeypatch.setattr(autoprune.datasets, "FASHION_MNIST_DIRS", (tmp_path / "absent",))
    for kwargs in ({}, {"data_dir": tmp_path}):
        with pytest.raises(DataError) as info:
            load_dataset("fashion_mnist", **kwargs)
        message = str(info.value)
        assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
        assert "--download" in message and str(kwargs.get("data_dir", tmp_path / "absent")) in message
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / f"{stem}.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="unreadable"):
        load_dataset("fashion_mnist", data_dir=tmp_path)
