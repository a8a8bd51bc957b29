"""The models the contract tests run over: every registered model, and the torchvision classifiers
small enough for a fast suite (scripts/bench_zoo.py runs them all)."""
from __future__ import annotations

MAX_PARAMS = 6_000_000


def small_models(max_params: int = MAX_PARAMS, max_min_size: int = 32) -> list[str]:
    """Registered names, then the torchvision classifiers with at most ``max_params`` parameters that
    accept ``max_min_size`` pixels, chosen from the figures torchvision records for each model."""
    from torchvision import models as tvm

    from autoprune.models import MODELS, list_models

    names = list(MODELS)
    for name in list_models():
        if name in MODELS:
            continue
        meta = tvm.get_model_weights(name).DEFAULT.meta
        if meta["num_params"] <= max_params and max(meta.get("min_size", (1, 1))) <= max_min_size:
            names.append(name)
    return names


# A handful of timm CNNs (issue 17: `--model timm:<name>`), small enough for the fast suite. GhostNet is
# not among them: its fixed slice after a concatenation makes pruned FLOPs differ from the cost model
# at some sparsities the probe does not try (trials count real FLOPs, so budgets still hold).
TIMM_CNNS = ("timm:resnet10t", "timm:mobilenetv3_small_050", "timm:regnetx_002", "timm:mnasnet_small",
             "timm:lcnet_050", "timm:resnet50_gn")

# Small models of our own in tests/helpers_models.py, built the way users' models are (issue 26):
# GroupNorm (with an instance-norm-like one), a chunk split with a dilated conv and a
# squeeze-excitation, a split of fixed sizes, and a ShuffleNetV2-style channel shuffle.
OWN_MODELS = ("helpers_models:wild_cnn", "helpers_models:gn_residual", "helpers_models:split_concat",
              "helpers_models:shuffle_block")


def timm_models() -> list[str]:
    """The timm CNNs above when timm is installed (the test extra installs it), else none."""
    import importlib.util

    return list(TIMM_CNNS) if importlib.util.find_spec("timm") is not None else []
