"""Measure search levers one at a time: fixed candidate policies through the final recipe.

A search can only find what its space holds and its trials can tell apart. This script checks the
first half directly: for a model and FLOPs budget it prunes the trained baseline with a set of
hand-written candidates (a *shape*, i.e. how the budget is spread over the groups, and a channel
*criterion*), gives each the same final recipe as ``bench_quality.py`` (BatchNorm recalibration,
then ``--final-epochs`` of finetune) and records validation and test accuracy per seed.

Shapes (CIFAR ResNets; each is a proposal scaled to the budget, so only the proportions matter):

- ``uniform``: one sparsity everywhere;
- ``keep_res``, ``keep_res2``: the residual-stage groups (``conv1``, ``layerN.0.shortcut.0``)
  keep twice / four times the share of channels the block-internal groups keep;
- ``keep_int``: the reverse (block-internal groups keep twice the share);
- ``late_more``: sparsity rising with depth (stages 1/2/3 proposed at 0/0.3/0.6);
- ``early_more``: sparsity falling with depth (0.6/0.3/0);
- ``late_more_keep_res``: ``late_more`` on the internal groups, residual groups kept;
- ``mid_keep``: the middle stage kept, the outer ones pruned more (0.3/0/0.3);
- ``tp_global``: the shape Torch-Pruning's global L1 ranking picks (its own pruned model).

Criteria: ``l1``, ``l2``, ``bn_scale``, ``taylor`` (one gradient batch), ``random``.

Run from the repository root::

    python scripts/bench_levers.py                          # the default study below
    python scripts/bench_levers.py --models resnet20 --budgets 12.5 --seeds 0 \\
        --candidates uniform:l1,uniform:bn_scale            # one comparison

Writes ``results/benchmarks/levers.csv`` (one row per model, budget, candidate and seed; appended
to, so separate runs accumulate) and prints the mean per candidate.
"""
from __future__ import annotations

import argparse
import copy
import csv
import re
import statistics
import time
from pathlib import Path

import torch

import autoprune as ap
from autoprune import IMPORTANCES, SearchConfig, TrainConfig

_ROOT = Path(__file__).resolve().parent.parent
DATASET, SPLIT_SEED = "digits", 0  # the baseline and split bench_quality.py uses
BATCH_SIZE = 64

_OUT = _ROOT / "results" / "benchmarks" / "levers.csv"
COLUMNS = ["model", "budget", "shape", "importance", "seed", "flops_ratio", "val_acc_bn", "val_acc", "test_acc",
           "final_epochs", "seconds"]
SHAPES = ("uniform", "keep_res", "keep_res2", "keep_int", "late_more", "early_more", "late_more_keep_res",
          "mid_keep", "tp_global")
# The default study: every shape with L1 on resnet20, every criterion on the uniform shape on both models.
DEFAULT = {
    "resnet20": [f"{s}:l1" for s in SHAPES] + [f"uniform:{c}" for c in ("l2", "bn_scale", "taylor", "random")],
    "resnet56": [f"uniform:{c}" for c in ("l1", "bn_scale", "taylor")],
}


def _stage(group: str) -> int:
    m = re.match(r"layer(\d)", group)
    return int(m.group(1)) if m else 1  # conv1 sets the width of stage 1


def _residual(group: str) -> bool:
    return group == "conv1" or "shortcut" in group


def proposal(shape: str, groups: list[str]) -> dict[str, float]:
    """The proposal (group -> sparsity) of a named shape; the fit scales it to the budget."""
    by_stage = {"late_more": (0.0, 0.3, 0.6), "early_more": (0.6, 0.3, 0.0), "mid_keep": (0.3, 0.0, 0.3)}
    if shape == "uniform":
        return {g: 0.0 for g in groups}
    split = {"keep_res": (0.0, 0.5), "keep_res2": (0.0, 0.75), "keep_int": (0.5, 0.0)}  # (residual, internal)
    if shape in split:
        residual, internal = split[shape]
        return {g: residual if _residual(g) else internal for g in groups}
    if shape in by_stage:
        return {g: by_stage[shape][_stage(g) - 1] for g in groups}
    if shape == "late_more_keep_res":
        return {g: 0.0 if _residual(g) else by_stage["late_more"][_stage(g) - 1] for g in groups}
    raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def _baseline(model_name: str, splits) -> torch.nn.Module:
    model = ap.create_model(model_name, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    cfg = SearchConfig(model=model_name, dataset=DATASET, baseline_epochs=15, split_seed=SPLIT_SEED,
                       results_dir=str(_ROOT / "results"))
    ap.ensure_baseline(model, splits, cfg, device="cpu")
    return model.cpu().eval()


def run(models: list[str], budgets: list[float], seeds: list[int], candidates: dict[str, list[str]] | None,
        final_epochs: float, out: Path) -> list[dict]:
    splits = ap.load_dataset(DATASET, seed=SPLIT_SEED)
    x = splits.example_input()
    grad_batch = ap.gradient_batch(splits.train)
    rows: list[dict] = []
    new = not out.is_file()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        for model_name in models:
            base = _baseline(model_name, splits)
            groups = [g.name for g in ap.prunable_groups(base, x)]
            base_flops = ap.count_flops(base, x)
            for budget in budgets:
                limit = [ap.Budget.parse("flops", f"{budget * 100:g}%")]
                tp_model = None
                for seed in seeds:
                    for cand in candidates or DEFAULT.get(model_name, [f"{s}:l1" for s in SHAPES]):
                        shape, importance = cand.split(":")
                        start = time.perf_counter()
                        if shape == "tp_global":
                            if tp_model is None:
                                tp_model = ap.global_magnitude_prune(base, x, budget)[0]
                            small = copy.deepcopy(tp_model)
                        else:
                            policy = ap.fit_policy(base, x, proposal(shape, groups), limit, fill=True)
                            small = ap.apply_policy(base, policy, x, importance=importance, seed=seed,
                                                    grad_batch=grad_batch if importance == "taylor" else None)
                        flops = ap.count_flops(small, x) / base_flops
                        res = ap.finetune_pruned(small, splits, TrainConfig(epochs=final_epochs, lr=0.01,
                                                                            batch_size=BATCH_SIZE, seed=seed),
                                                 device="cpu", bn_batches=10)
                        row = {"model": model_name, "budget": f"{budget * 100:g}%", "shape": shape,
                               "importance": importance, "seed": seed, "flops_ratio": round(flops, 4),
                               "val_acc_bn": round(res["val_acc_bn"], 4), "val_acc": round(res["val_acc"], 4),
                               "test_acc": round(res["test_acc"], 4), "final_epochs": final_epochs,
                               "seconds": round(time.perf_counter() - start, 1)}
                        w.writerow(row)
                        f.flush()
                        rows.append(row)
                        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20,resnet56")
    p.add_argument("--budgets", default="25,12.5", help="FLOPs budgets in %% (default 25,12.5)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--candidates", default=None,
                   help="shape:criterion pairs, comma-separated (default: the study in the module docstring)")
    p.add_argument("--final-epochs", type=float, default=3.0)
    p.add_argument("--out", default=str(_OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # two of these can share the 2-core machine
    models = [m for m in args.models.split(",") if m]
    budgets = [float(b) / 100 for b in args.budgets.split(",") if b]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    candidates = [c for c in args.candidates.split(",") if c] if args.candidates else None
    for c in candidates or []:
        shape, _, importance = c.partition(":")
        if shape not in SHAPES or importance not in IMPORTANCES:
            p.error(f"bad candidate {c!r}: shape one of {', '.join(SHAPES)}, criterion one of "
                    f"{', '.join(IMPORTANCES)}")
    rows = run(models, budgets, seeds, candidates, args.final_epochs, Path(args.out))
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["budget"], r["shape"], r["importance"]), []).append(r["test_acc"])
    print("\nmean test accuracy over seeds (%):")
    for (model, budget, shape, importance), accs in groups.items():
        print(f"{model:<9} {budget:>6} {shape:<19} {importance:<9} {statistics.fmean(accs) * 100:6.2f}  (n={len(accs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
