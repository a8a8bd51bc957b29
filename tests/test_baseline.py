"""`autoprune train`: a real baseline on the bundled digits, its files, and the search's cache."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from torch.utils.flop_counter import FlopCounterMode

from autoprune.cli import main
from autoprune.models import create_model


@pytest.mark.slow
def test_train_resnet20_on_digits_reaches_95_percent(tmp_path, capsys):
    out = tmp_path / "base"
    assert main(["train", "--model", "resnet20", "--dataset", "digits", "--epochs", "6", "--seed", "3",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_acc"] >= 0.95, metrics
    assert metrics["val_acc"] >= 0.9 and metrics["epochs"] == 6 and metrics["seconds"] > 0
    model = create_model("resnet20").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32))
    assert metrics["flops"] == counter.get_total_flops()
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    log = pd.read_csv(out / "log.csv")
    assert len(log) == 6 and {"epoch", "train_loss", "val_acc"} <= set(log.columns)
    from autoprune.models import checkpoint_meta

    state = torch.load(out / "model.pt", weights_only=True)
    assert "fc.weight" in state["state_dict"]
    # --seed seeds training only; the validation split is --split-seed's (default 0), as in search
    assert checkpoint_meta(out / "model.pt")["split"] == {"dataset": "digits", "val_fraction": 0.1, "split_seed": 0}
    printed = capsys.readouterr().out
    assert "epoch" in printed and "test_acc" in printed
