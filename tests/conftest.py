"""Shared fixtures: a baseline checkpoint that costs no training, and small search configs."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Two shared cores: a second intra-op thread stalls at every op whenever a neighbour holds a
    # core (tests ran 7-20x slower and latency timings became noise); one thread is steady.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def rand20(tmp_path_factory) -> str:
    """A resnet20 state dict with its random initial weights (enough to exercise a search)."""
    from autoprune.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet20.pt"
    torch.save(create_model("resnet20").state_dict(), path)
    return str(path)


@pytest.fixture
def small_config(rand20, tmp_path):
    """A search that runs in seconds: 16x16 digits, a tenth of an epoch of finetune."""
    from autoprune.config import SearchConfig

    def make(**changes):
        base = dict(model="resnet20", dataset="digits", checkpoint=rand20, budget_flops="50%", trials=4,
                    finetune_epochs=0.1, bn_batches=2, image_size=16, concurrency=2, results_dir=str(tmp_path / "results"),
                    name="run")
        base.update(changes)
        return SearchConfig(**base)

    return make
