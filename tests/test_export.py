"""Exports that are safe to load: safetensors + policy + metadata rebuilt without unpickling, older
model.pt folders still read (with a warning), and model.onnx that runs without autoprune or torch."""
from __future__ import annotations

import importlib.metadata
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_runs import SIZE, make_run

import autoprune.export as export_mod
from autoprune import Budget, apply_policy, create_model, load_pruned, save_pruned, uniform_policy
from autoprune.cli import main
from autoprune.errors import AutopruneError, RunError


@pytest.fixture(scope="module")
def run_path(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def applied(run_path) -> tuple[Path, list[str]]:
    """``autoprune apply --pick best --save-module``: the new files and, beside them, the pickled module."""
    lines: list[str] = []
    import autoprune.cli

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(autoprune.cli, "_log", lines.append)
        code = main(["apply", str(run_path), "--pick", "best", "--epochs", "1", "--device", "cpu", "--save-module"])
    assert code == 0, lines
    return run_path / "apply-best", lines


def _inputs() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.zeros(1, 3, SIZE, SIZE), torch.randn(4, 3, SIZE, SIZE)]


def test_apply_writes_weights_policy_and_metadata(applied, run_path):
    out, lines = applied
    for name in ("model.safetensors", "policy.json", "metadata.json", "metrics.json", "log.csv", "model.onnx",
                 "model.pt"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "metadata.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert meta["model"] == "resnet20" and meta["num_classes"] == 10 and meta["input_shape"] == [3, SIZE, SIZE]
    assert meta["exclude"] == ["conv1"] and meta["dataset"] == "digits" and meta["trial"] == 1
    assert meta["metrics"]["test_acc"] == metrics["test_acc"] and meta["metrics"]["flops"] == metrics["flops"]
    assert meta["versions"]["torch"] == importlib.metadata.version("torch")
    assert {"autoprune", "python", "safetensors"} <= set(meta["versions"])
    policy = json.loads((out / "policy.json").read_text())
    assert policy["indices"] == json.loads((run_path / "policies" / "1.json").read_text())["indices"]
    assert any("model.safetensors" in line and "model.pt" in line for line in lines)


def test_load_pruned_rebuilds_the_same_model(applied):
    out, _ = applied
    model, metrics = load_pruned(out)
    with pytest.warns(UserWarning, match="pickled module"):
        pickled, _ = load_pruned(out / "model.pt")  # the module apply trained, as it was in memory
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == metrics["params"]
    with torch.no_grad():
        for x in _inputs():
            assert torch.equal(model(x), pickled(x))
    assert model.autoprune_policy.indices == pickled.autoprune_policy.indices
    assert model.conv1.out_channels == 16  # excluded: never pruned


def test_load_pruned_reads_no_pickle(applied, monkeypatch):
    out, _ = applied
    calls = []

    def refuse(name):
        def f(*a, **kw):
            calls.append(name)
            raise AssertionError(f"load_pruned unpickled something: {name}")
        return f

    monkeypatch.setattr(torch, "load", refuse("torch.load"))
    monkeypatch.setattr(pickle, "load", refuse("pickle.load"))
    monkeypatch.setattr(pickle, "loads", refuse("pickle.loads"))
    monkeypatch.setattr(pickle, "Unpickler", refuse("pickle.Unpickler"))
    monkeypatch.setattr(pickle, "_Unpickler", refuse("pickle._Unpickler"))
    model, _ = load_pruned(out)  # model.pt lies beside it; the new files are preferred
    assert model(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 10)
    assert calls == []
    with pytest.raises(RunError, match="unpickled something: torch.load"), pytest.warns(UserWarning):
        load_pruned(out / "model.pt")  # the guard has teeth: the old path is caught
    assert calls == ["torch.load"]


def test_a_folder_from_before_still_loads_with_the_warning(applied, tmp_path):
    out, _ = applied
    old = tmp_path / "apply-best"
    old.mkdir()
    for name in ("model.pt", "policy.json", "metrics.json", "log.csv"):  # what apply wrote before
        shutil.copy(out / name, old / name)
    with pytest.warns(UserWarning, match=r"torch.load\(weights_only=False\).*trust"):
        model, metrics = load_pruned(old)
    assert metrics["trial"] == 1 and not model.training
    new, _ = load_pruned(out)
    x = _inputs()[1]
    with torch.no_grad():
        assert torch.equal(model(x), new(x))


def test_onnx_runs_without_autoprune_or_torch_and_matches(applied, tmp_path):
    pytest.importorskip("onnxruntime")
    out, _ = applied
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["export"] == "model.onnx" and metrics["export_error"] is None
    assert 0 <= metrics["export_max_abs_diff"] <= 1e-4
    model, _ = load_pruned(out)
    for i, x in enumerate(_inputs()):
        np.save(tmp_path / f"x{i}.npy", x.numpy())
        with torch.no_grad():
            np.save(tmp_path / f"y{i}.npy", model(x).numpy())
    code = (
        "import sys\n"
        "sys.modules['autoprune'] = sys.modules['torch'] = None  # any import of them fails\n"
        "import numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "name = s.get_inputs()[0].name\n"
        "d = max(float(np.abs(s.run(None, {name: np.load(f'{sys.argv[2]}/x{i}.npy')})[0]"
        " - np.load(f'{sys.argv[2]}/y{i}.npy')).max()) for i in range(2))\n"
        "print(d, [m for m in sys.modules if m.split('.')[0] in ('autoprune', 'torch') and sys.modules[m]])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out / "model.onnx"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    diff, loaded = proc.stdout.split(maxsplit=1)
    assert float(diff) <= 1e-4 and loaded.strip() == "[]"


def test_a_failed_onnx_export_is_recorded_not_raised(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")

    def broken(*a, **kw):
        raise RuntimeError("unsupported operator aten::frobnicate\nmore detail")

    monkeypatch.setattr(export_mod, "onnx_bytes", broken)
    model = create_model("resnet20").eval()
    result = export_mod.export_onnx(model, torch.zeros(1, 3, SIZE, SIZE), tmp_path / "model.onnx")
    assert result == {"export": None, "export_max_abs_diff": None,
                      "export_error": "RuntimeError: unsupported operator aten::frobnicate"}
    assert not (tmp_path / "model.onnx").exists()


def test_a_missing_onnx_package_is_recorded(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # find_spec then reports the package as absent
    result = export_mod.export_onnx(torch.nn.Linear(2, 2), torch.zeros(1, 2), tmp_path / "model.onnx")
    assert result["export"] is None and "pip install onnxruntime" in result["export_error"]


def test_save_and_load_a_users_builder(tmp_path):
    """A ``package.module:function`` model is rebuilt by importing the user's builder, not unpickled."""
    x = torch.zeros(1, 3, SIZE, SIZE)
    model = create_model("helpers_models:tiny", num_classes=4, in_channels=3).eval()
    small = apply_policy(model, uniform_policy(model, x, [Budget.parse("flops", "50%")]), x).eval()
    assert small.autoprune_policy.indices  # something was pruned
    files = save_pruned(small, tmp_path / "out", x, num_classes=4)
    assert files == ["model.safetensors", "policy.json", "metadata.json"]
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["model"] == "helpers_models:tiny"
    loaded, metrics = load_pruned(tmp_path / "out")
    assert metrics == {}
    x = _inputs()[1]
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


def test_a_broken_folder_is_one_clear_error(applied, tmp_path):
    out, _ = applied
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "metadata.json").unlink()
    with pytest.raises(RunError, match="metadata.json.*is missing"):
        load_pruned(broken)
    shutil.copy(out / "metadata.json", broken / "metadata.json")
    policy = json.loads((broken / "policy.json").read_text())
    policy["sparsity"], policy["indices"] = {}, {}  # the unpruned architecture: the weights cannot fit
    (broken / "policy.json").write_text(json.dumps(policy))
    with pytest.raises(RunError, match="do not fit the model rebuilt from policy.json"):
        load_pruned(broken)
    with pytest.raises(AutopruneError, match="No pruned model"):
        load_pruned(tmp_path / "nothing")
    with pytest.raises(AutopruneError, match="save_pruned needs a model pruned by autoprune.apply_policy"):
        save_pruned(torch.nn.Linear(2, 2), tmp_path / "x", torch.zeros(1, 2), num_classes=2)
