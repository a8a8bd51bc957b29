"""Headroom: how much better than uniform pruning can any layer shape do in a cell? (issue 24)

A cell is (model, measure, budget) on Fashion-MNIST. Every method prunes the cell's trained baseline
(10 epochs, split seed 0) to the budget and gets the evidence benchmark's final recipe (BatchNorm
recalibration on 10 batches, 1 epoch of finetune at lr 0.01, batch 128; ``bench_quality.py``):

- ``candidate`` (seed 0): at least 24 policies fitted to the budget (``fill``: each at the budget),
  from the families below, fixed before the first run. Shapes are relative keep shares per group,
  scaled to the budget by the fit; their channels are ranked by the criterion that won the uniform
  screening (so the families differ in shape only), except the global rankings and the search's picks,
  which carry their own. The uniform policy with each criterion is screened here too (family
  ``uniform``), and is never the best candidate.
- ``uniform_best``: the uniform policy with the criterion that scored best on validation at seed 0.
- ``tp_global`` (seed 0): Torch-Pruning's global L1 ranking, its ratio bisected to the cell's measure.
- ``best_candidate``: the candidate with the highest seed-0 validation accuracy, and ``uniform_best``,
  retrained from the pruned baseline on three fresh seeds (1, 2, 3): ``headroom`` is the mean
  paired difference on validation over those seeds with its 95% interval (test beside it, deciding
  nothing), written to ``headroom_summary.csv``.
- ``autoprune`` (``--with-autoprune``): the default search's pick at each fresh seed, same recipe.

The families (FAMILIES; written before the first run):
  depth     keep share graded by depth, 2x and 4x from first group to last, in both directions  (4)
  stage     per stage (groups binned by output resolution, at most 3 bins): one stage kept 2x, or
            kept 0.5x, against the others                                                       (6)
  sensitivity  the shape group_sensitivity suggests (each group alone at 50%, BatchNorm
            recalibrated), at spans 0.75 and 0.5                                                  (2)
  global    Torch-Pruning's global ranking by l1, bn_scale and taylor, bisected to the measure    (3)
  search5x  the 3 best trials (validation) of a default search 5x longer (120 trials), refitted
            to the budget with their own criterion                                               (3)
  random    log-normal keep shares (sigma 0.5), seeded                                           (6)

Cost (measured before the first run on these 2 cores, 1-epoch finetune of the unpruned models at
28 px: resnet20 112 s, vgg11_cifar 34 s, mobilenetv2_cifar 199 s; pruned models are cheaper):
about 34 finals and one 120-trial search per cell. Estimated before running, from those figures (a
pruned model's epoch costs less than these upper bounds): vgg11_cifar, each cell ~45 min (baseline
~6 min once, 34 finals <= 25 min, the 5x search ~15 min); resnet20 at 6.25% ~1.5 h (baseline ~19 min,
finals <= 68 min, search ~25 min); mobilenetv2_cifar ~2.5 h (baseline ~33 min, finals <= 113 min,
search ~40 min); ``--with-autoprune`` adds 3 default searches and 3 finals per cell; ``--judge`` (goal 3,
``headroom_judge.csv``) 5 default searches and 10 finals per cell, on seeds 5-9 that no decision looked at. Rows are appended as they finish and a rerun skips
what is there, so the study runs in parts.

    python scripts/bench_headroom.py                               # every cell, in the order below
    python scripts/bench_headroom.py --cells vgg11_cifar:params:12.5
    python scripts/bench_headroom.py --summarise-only
"""
from __future__ import annotations

import argparse
import json
import csv
import dataclasses
import math
import os
import random
import time
from pathlib import Path

import torch

import autoprune as ap
import benchrows  # scripts/ is on sys.path when a script runs

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks"
_RUNS = _ROOT / "results" / "bench" / "headroom"

# The required cells first, the vgg cells (cheapest, most headroom expected) ahead of the rest.
CELLS = ("vgg11_cifar:params:12.5", "vgg11_cifar:flops:12.5", "resnet20:flops:6.25", "mobilenetv2_cifar:flops:12.5")
FAMILIES = ("uniform", "depth", "stage", "sensitivity", "global", "random", "search5x")
CRITERIA = ("l1", "bn_scale", "taylor")
FRESH_SEEDS = (1, 2, 3)
JUDGE_SEEDS = (5, 6, 7, 8, 9)  # goal 3 is judged once on these: no decision looked at them
SPLIT_SEED = 0
DATASET = ["fashion_mnist"]  # --quick: digits, for a smoke test of the script
RECIPE = dict(final_epochs=1.0, final_lr=0.01, batch_size=128, bn_batches=10, baseline_epochs=10,
              search_epochs=0.1, search_trials=24)
COLUMNS = ["model", "dataset", "measure", "budget", "method", "seed", "family", "candidate", "criterion", "val_acc",
           "test_acc", "val_acc_bn", "flops_ratio", "params_ratio", "search_images", "search_cost", "final_epochs",
           "seconds", "commit", "note"]



class Table:
    """headroom.csv: rows appended as they finish; a rerun skips the keys already there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = list(csv.DictReader(open(path, newline=""))) if path.is_file() else []

    def get(self, **key) -> dict | None:
        return next((r for r in self.rows if all(str(r.get(k)) == str(v) for k, v in key.items())), None)

    def add(self, row: dict) -> None:
        row = {c: (f"{row[c]:.5f}" if isinstance(row.get(c), float) else row.get(c, "")) for c in COLUMNS}
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerow(row)
        self.rows.append(row)


class Cell:
    """One (model, measure, budget): the baseline, its groups, and the final recipe for any pruned copy."""

    def __init__(self, spec: str, splits, args) -> None:
        self.model_name, self.measure, pct = spec.split(":")
        self.budget = float(pct) / 100
        self.splits, self.args = splits, args
        self.x = splits.example_input()
        self.base = ap.create_model(self.model_name, num_classes=splits.num_classes,
                                    in_channels=splits.input_shape[0])
        cfg = ap.SearchConfig(model=self.model_name, dataset=DATASET[0], split_seed=SPLIT_SEED,
                              baseline_epochs=RECIPE["baseline_epochs"], results_dir=str(_ROOT / "results"))
        self.source = ap.ensure_baseline(self.base, splits, cfg, device="cpu", log=print)["source"]
        self.base.eval()
        self.flops, self.params = ap.count_flops(self.base, self.x), ap.count_params(self.base)
        self.groups = [g.name for g in ap.prunable_groups(self.base, self.x)]
        self.grad = ap.gradient_batch(splits.train)
        self.budgets = [ap.Budget.parse(self.measure, f"{pct}%")]
        self.key = dict(model=self.model_name, dataset=DATASET[0], measure=self.measure, budget=f"{pct}%")

    def fit(self, keep: dict[str, float]) -> ap.Policy:
        """A shape of relative keep shares, scaled to the budget."""
        top = max(keep.values())
        proposal = {g: 1 - 0.9 * keep[g] / top for g in self.groups}
        return ap.fit_policy(self.base, self.x, proposal, self.budgets, groups=self.groups, fill=True,
                             max_sparsity=0.95)

    def final(self, small: torch.nn.Module, seed: int) -> dict:
        recipe = ap.TrainConfig(epochs=RECIPE["final_epochs"], lr=RECIPE["final_lr"], batch_size=RECIPE["batch_size"],
                                weight_decay=5e-4, seed=seed)
        done = ap.finetune_pruned(small, self.splits, recipe, device="cpu", bn_batches=RECIPE["bn_batches"])
        return {"val_acc": done["val_acc"], "test_acc": done["test_acc"], "val_acc_bn": done["val_acc_bn"],
                "flops_ratio": ap.count_flops(small, self.x) / self.flops,
                "params_ratio": ap.count_params(small) / self.params, "final_epochs": RECIPE["final_epochs"]}


# ------------------------------------------------------------------------------------------ families


def _stages(cell: Cell) -> list[list[str]]:
    """Groups binned by the output resolution of their root layer, in depth order, at most 3 bins."""
    sizes: dict[str, int] = {}
    hooks = [cell.base.get_submodule(g).register_forward_hook(
        lambda m, i, o, g=g: sizes.__setitem__(g, o.shape[-1] if o.dim() == 4 else 1)) for g in cell.groups]
    with torch.no_grad():
        cell.base(cell.x)
    for h in hooks:
        h.remove()
    by_res: dict[int, list[str]] = {}
    for g in cell.groups:
        by_res.setdefault(sizes.get(g, 1), []).append(g)
    stages = [by_res[r] for r in sorted(by_res, reverse=True)]
    while len(stages) > 3:  # merge the two smallest neighbours
        i = min(range(len(stages) - 1), key=lambda k: len(stages[k]) + len(stages[k + 1]))
        stages[i:i + 2] = [stages[i] + stages[i + 1]]
    return stages


def shapes(cell: Cell, seed: int = 0) -> list[tuple[str, str, dict[str, float]]]:
    """(family, name, keep shares) of every fixed-shape candidate: depth, stage, sensitivity, random."""
    n = len(cell.groups)
    out = []
    # Graded along cell.groups, Torch-Pruning's order of the groups, which is not depth order: a VGG's
    # deepest layer comes first, so on the VGG "deeper_kept" keeps the earlier layers (docs/benchmarks.md).
    # Left as run, so that the study's rows and their rebuilt candidates stay the same shapes.
    for span in (2.0, 4.0):
        for direction, sign in (("deeper_kept", 1), ("earlier_kept", -1)):
            out.append(("depth", f"{direction}_{span:g}x",
                        {g: span ** (sign * (i / max(n - 1, 1) - 0.5)) for i, g in enumerate(cell.groups)}))
    for k, stage in enumerate(_stages(cell)):
        for factor, label in ((2.0, "kept"), (0.5, "cut")):
            out.append(("stage", f"stage{k}_{label}", {g: factor if g in stage else 1.0 for g in cell.groups}))
    acc = ap.group_sensitivity(cell.base, cell.x, cell.groups, cell.splits.train, cell.splits.val, sparsity=0.5)
    for high in (0.75, 0.5):
        s = ap.sensitivity_shape(acc, high=high)
        out.append(("sensitivity", f"span{high:g}", {g: 1 - s.get(g, 0.0) for g in cell.groups}))
    rng = random.Random(1000 + seed)
    for k in range(6):
        out.append(("random", f"r{k}", {g: math.exp(rng.gauss(0, 0.5)) for g in cell.groups}))
    return out


def _search5x(cell: Cell) -> list[tuple[str, ap.Policy]]:
    """The 3 best trials (validation) of a default search 5x longer, each refitted to the budget."""
    name = f"{cell.model_name}-{cell.measure}{cell.key['budget'].rstrip('%').replace('.', 'p')}-5x"
    cfg = ap.SearchConfig(model=cell.model_name, dataset=DATASET[0], checkpoint=cell.source,
                          **{f"budget_{cell.measure}": cell.key["budget"]}, trials=5 * RECIPE["search_trials"],
                          finetune_epochs=RECIPE["search_epochs"], concurrency=2,
                          seed=0, split_seed=SPLIT_SEED, results_dir=str(_RUNS), name=name)
    folder = _RUNS / name
    resume = (folder / "config.yaml").is_file()
    if not resume or not _finished(folder):
        ap.search(cfg, resume=resume, given={} if resume else None, log=lambda line: None)
    run = ap.load_run(folder)
    ok = run.trials[run.trials["status"] == "ok"].sort_values("val_acc", ascending=False).head(3)
    out = []
    for _, row in ok.iterrows():
        policy = run.policy(int(row["trial"]))
        fitted = ap.fit_policy(cell.base, cell.x, dict(policy.sparsity), cell.budgets, groups=list(policy.sparsity),
                               fill=True, max_sparsity=0.95)
        out.append((f"trial{int(row['trial'])}_{policy.importance}",
                    dataclasses.replace(fitted, importance=policy.importance)))
    return out


# ------------------------------------------------------------------------------------------------ run


def run_cell(cell: Cell, table: Table, args) -> None:
    key, commit = cell.key, benchrows.commit()

    def done(**more) -> dict | None:
        return table.get(**key, **more)

    def record(method: str, seed: int, make, **extra) -> dict:
        row = done(method=method, seed=seed, candidate=extra.get("candidate", ""),
                   **({"note": extra["note"]} if "note" in extra else {}))
        if row is not None:
            return row
        start = time.perf_counter()
        row = {**key, "method": method, "seed": seed, "commit": commit, **extra}
        try:
            row.update(cell.final(make(), seed))
        except Exception as e:  # noqa: BLE001 - one failed candidate must not lose the cell
            row["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        row["seconds"] = round(time.perf_counter() - start, 1)
        table.add(row)
        print(f"{key['model']} {key['measure']} {key['budget']} {method:<14} {extra.get('candidate', ''):<28} seed {seed}: "
              + (f"val {row['val_acc']:.4f} test {row['test_acc']:.4f} {cell.measure} "
                 f"{row[cell.measure + '_ratio']:.3f}" if "val_acc" in row else row["note"])
              + f"  {row['seconds']:.0f}s", flush=True)
        return table.rows[-1]

    def uniform(crit: str):
        return lambda: ap.apply_policy(cell.base, ap.uniform_policy(cell.base, cell.x, cell.budgets), cell.x,
                                       importance=crit, grad_batch=cell.grad)

    for crit in CRITERIA:
        record("candidate", 0, uniform(crit), family="uniform", candidate=f"uniform_{crit}", criterion=crit)
    scored = [(float(r["val_acc"]), r["criterion"]) for r in table.rows
              if all(r[k] == v for k, v in key.items()) and r["family"] == "uniform" and r["val_acc"]]
    best_crit = max(scored)[1]
    record("tp_global", 0, lambda: ap.global_prune(cell.base, cell.x, cell.budget, measure=cell.measure)[0],
           criterion="l1")
    for family, name, keep in shapes(cell):
        record("candidate", 0, lambda keep=keep: ap.apply_policy(cell.base, cell.fit(keep), cell.x, importance=best_crit,
                                                                 grad_batch=cell.grad),
               family=family, candidate=f"{family}_{name}", criterion=best_crit)
    for crit in CRITERIA:
        record("candidate", 0, lambda crit=crit: ap.global_prune(cell.base, cell.x, cell.budget, importance=crit,
                                                                 measure=cell.measure, grad_batch=cell.grad)[0],
               family="global", candidate=f"global_{crit}", criterion=crit)
    if not args.no_search5x:
        for name, policy in _search5x(cell):
            record("candidate", 0, lambda p=policy: ap.apply_policy(cell.base, p, cell.x, grad_batch=cell.grad),
                   family="search5x", candidate=f"search5x_{name}", criterion=policy.importance)
    # The best candidate (never a uniform one) and uniform_best on fresh seeds: the headroom.
    cands = [r for r in table.rows if all(r[k] == v for k, v in key.items()) and r["method"] == "candidate"
             and r["family"] != "uniform" and r["val_acc"]]
    best = max(cands, key=lambda r: float(r["val_acc"]))
    rebuild = _rebuild(cell, best)
    record("uniform_best", 0, uniform(best_crit), candidate=f"uniform_{best_crit}", criterion=best_crit)
    for seed in FRESH_SEEDS:
        record("best_candidate", seed, rebuild, family=best["family"], candidate=best["candidate"],
               criterion=best["criterion"])
        record("uniform_best", seed, uniform(best_crit), candidate=f"uniform_{best_crit}", criterion=best_crit)
    if args.with_autoprune:
        for seed in FRESH_SEEDS:
            _autoprune(cell, seed, record, args.search_epochs, args.pick_near)
    if args.judge:
        for seed in args.judge_seeds:
            record("uniform_best", seed, uniform(best_crit), candidate=f"uniform_{best_crit}", criterion=best_crit)
            _autoprune(cell, seed, record, args.search_epochs, args.pick_near)


def _rebuild(cell: Cell, best: dict):
    """The pruned model of a candidate row, made again (every family is deterministic)."""
    family, crit = best["family"], best["criterion"]
    if family == "global":
        return lambda: ap.global_prune(cell.base, cell.x, cell.budget, importance=crit, measure=cell.measure,
                                       grad_batch=cell.grad)[0]
    if family == "search5x":
        policy = dict(_search5x(cell))[best["candidate"].removeprefix("search5x_")]
        return lambda: ap.apply_policy(cell.base, policy, cell.x, grad_batch=cell.grad)
    keep = {f"{f}_{n}": k for f, n, k in shapes(cell)}[best["candidate"]]
    return lambda: ap.apply_policy(cell.base, cell.fit(keep), cell.x, importance=crit, grad_batch=cell.grad)


def _finished(folder: Path) -> bool:
    """A search folder that finished (state.json says so): resuming it would be refused."""
    state = folder / "state.json"
    return (folder / "pareto.csv").is_file() and state.is_file() and bool(json.loads(state.read_text()).get("finished"))


def variant(epochs: float, near: float | None = None) -> str:
    """The ``note`` of an ``autoprune`` row: the search's finetune epochs per trial (0: BatchNorm only),
    and the pick's smallest size as a share of the budget when it is not the front's best (``--pick-near``)."""
    return f"search_epochs={epochs:g}" + (f",pick_near={near:g}" if near else "")


def _near_budget(run, budget: float, share: float):
    """The best ok trial (highest fidelity) whose size in the run's measure lies in [share x budget, budget]."""
    from autoprune.front import best_trial, top_rung

    col = f"{run.config.size_measure}_ratio"
    t = top_rung(run.trials)
    return best_trial(t[(t["status"] == "ok") & t["val_acc"].notna()
                        & t[col].between(share * budget, budget + 1e-12)])


def _autoprune(cell: Cell, seed: int, record, epochs: float, near: float | None = None) -> None:
    suffix = "" if epochs == RECIPE["search_epochs"] else f"-e{epochs:g}"
    name = f"{cell.model_name}-{cell.measure}{cell.key['budget'].rstrip('%').replace('.', 'p')}-s{seed}{suffix}"
    cfg = ap.SearchConfig(model=cell.model_name, dataset=DATASET[0], checkpoint=cell.source,
                          **{f"budget_{cell.measure}": cell.key["budget"]}, trials=RECIPE["search_trials"],
                          finetune_epochs=epochs, concurrency=2,
                          seed=seed, split_seed=SPLIT_SEED, results_dir=str(_RUNS), name=name)
    folder = _RUNS / name
    resume = (folder / "config.yaml").is_file()
    if not resume or not _finished(folder):
        ap.search(cfg, resume=resume, given={} if resume else None, log=lambda line: None)
    run = ap.load_run(folder)
    best = _near_budget(run, cell.budget, near) if near else run.best()
    policy = run.policy(int(best["trial"]))
    cost = run.search_cost()
    record("autoprune", seed, lambda: ap.apply_policy(cell.base, policy, cell.x), family="search",
           candidate=f"trial{int(best['trial'])}_{best['origin']}", criterion=policy.importance,
           search_images=cost["train"], search_cost=round(cost["cost"]), note=variant(epochs, near))


# -------------------------------------------------------------------------------------------- summary


def summarise(rows: list[dict]) -> list[dict]:
    """Per cell: best_candidate minus uniform_best on the fresh seeds, paired, on validation (test beside)."""
    out = []
    cells = sorted({(r["model"], r["measure"], r["budget"]) for r in rows})
    for model, measure, budget in cells:
        mine = [r for r in rows if (r["model"], r["measure"], r["budget"]) == (model, measure, budget) and r["val_acc"]]
        by = {(r["method"], r["seed"]): r for r in mine}
        seeds = [s for s in map(str, FRESH_SEEDS) if ("best_candidate", s) in by and ("uniform_best", s) in by]
        if not seeds:
            continue
        row = {"model": model, "measure": measure, "budget": budget, "seeds": len(seeds),
               "n_candidates": sum(r["method"] == "candidate" and r["family"] != "uniform" for r in mine),
               "best_candidate": by[("best_candidate", seeds[0])]["candidate"]}
        for split in ("val", "test"):
            diffs = [100 * (float(by[("best_candidate", s)][f"{split}_acc"]) - float(by[("uniform_best", s)][f"{split}_acc"]))
                     for s in seeds]
            mean, lo, hi = ap.paired_interval(diffs)
            prefix = "" if split == "val" else "test_"
            row.update({f"{prefix}headroom": mean, f"{prefix}ci95_low": lo, f"{prefix}ci95_high": hi})
        out.append(row)
    return out


def judge(rows: list[dict], summary: list[dict]) -> list[dict]:
    """Per cell and search variant: the decision seeds (FRESH_SEEDS) and the judging ones (5 and above:
    JUDGE_SEEDS, or later seeds for a variant judged after another, so that no seed is looked at twice)."""
    out = []
    variants = sorted({r["note"] or variant(RECIPE["search_epochs"]) for r in rows if r["method"] == "autoprune"})
    for v in variants:
        mine = [r for r in rows if r["method"] != "autoprune" or (r["note"] or variant(RECIPE["search_epochs"])) == v]
        for label, seeds in (("decision", FRESH_SEEDS), ("judged", range(min(JUDGE_SEEDS), 100))):
            out += [{"variant": v, "seed_set": label, **j} for j in _judge(mine, summary, seeds)]
    return out


def _judge(rows: list[dict], summary: list[dict], judge_seeds) -> list[dict]:
    """Goal 3, per cell: the default pick (``autoprune``) minus ``uniform_best`` on JUDGE_SEEDS, paired.
    A cell with headroom >= 0.5 val points passes when the pick captures >= 60% of it on validation and
    the test interval is above 0; a cell without, when the pick is not significantly behind (its val
    interval reaches 0 or above)."""
    heads = {(h["model"], h["measure"], h["budget"]): h["headroom"] for h in summary}
    out = []
    for (model, measure, budget), headroom in sorted(heads.items()):
        mine = [r for r in rows if (r["model"], r["measure"], r["budget"]) == (model, measure, budget) and r["val_acc"]]
        by = {(r["method"], r["seed"]): r for r in mine}
        seeds = [s for s in map(str, judge_seeds) if ("autoprune", s) in by and ("uniform_best", s) in by]
        if not seeds:
            continue
        row = {"model": model, "measure": measure, "budget": budget, "headroom": headroom, "seeds": len(seeds)}
        for split in ("val", "test"):
            diffs = [100 * (float(by[("autoprune", s)][f"{split}_acc"]) - float(by[("uniform_best", s)][f"{split}_acc"]))
                     for s in seeds]
            mean, lo, hi = ap.paired_interval(diffs)
            row.update({f"{split}_gain": mean, f"{split}_ci95_low": lo, f"{split}_ci95_high": hi,
                        f"{split}_seeds_won": sum(d > 0 for d in diffs)})
        picks = [by[("autoprune", s)]["candidate"] for s in seeds]
        row["non_uniform_picks"] = sum(not p.split("_", 1)[1].startswith("uniform") for p in picks)
        costs = [float(by[("autoprune", s)]["search_cost"]) for s in seeds if by[("autoprune", s)].get("search_cost")]
        row["search_cost"] = sum(costs) / len(costs) if costs else ""
        if headroom >= 0.5:
            row["captured"] = row["val_gain"] / headroom
            row["goal"] = "met" if row["captured"] >= 0.6 and row["test_ci95_low"] > 0 else "missed"
        else:
            row["captured"] = ""
            row["goal"] = "met (not behind)" if row["val_ci95_high"] >= 0 else "missed (behind)"
        out.append(row)
    return out


def report(out_dir: Path) -> None:
    rows = Table(out_dir / "headroom.csv").rows
    summary = summarise(rows)
    if summary:
        benchrows.write_table(out_dir / "headroom_summary.csv", summary, 4)
    for s in summary:
        print(f"{s['model']} {s['measure']} {s['budget']}: headroom {s['headroom']:+.2f} "
              f"[{s['ci95_low']:+.2f}, {s['ci95_high']:+.2f}] val points over {s['seeds']} seeds "
              f"({s['best_candidate']} of {s['n_candidates']}); test {s['test_headroom']:+.2f}")
    judged = judge(rows, summary)
    if judged:
        benchrows.write_table(out_dir / "headroom_judge.csv", judged, 4)
    for j in judged:
        print(f"{j['model']} {j['measure']} {j['budget']} [{j['variant']}, {j['seed_set']} seeds]: pick vs uniform_best {j['val_gain']:+.2f} "
              f"[{j['val_ci95_low']:+.2f}, {j['val_ci95_high']:+.2f}] val ({j['val_seeds_won']}/{j['seeds']} won), "
              f"test {j['test_gain']:+.2f} [{j['test_ci95_low']:+.2f}, {j['test_ci95_high']:+.2f}]; "
              f"headroom {j['headroom']:+.2f}: goal {j['goal']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default=",".join(CELLS), help="model:measure:budget%%, comma-separated")
    p.add_argument("--with-autoprune", action="store_true", help="also the default search's pick on the fresh seeds")
    p.add_argument("--judge", action="store_true",
                   help="goal 3: the default search's pick and uniform_best on seeds 5-9 (headroom_judge.csv)")
    p.add_argument("--judge-seeds", default=",".join(map(str, JUDGE_SEEDS)),
                   help="the seeds --judge runs (default 5-9; a second variant is judged on seeds no look has used)")
    p.add_argument("--search-epochs", type=float, default=RECIPE["search_epochs"],
                   help="finetune epochs of each default-search trial in --with-autoprune/--judge (0: BatchNorm only)")
    p.add_argument("--pick-near", type=float, default=None, metavar="SHARE",
                   help="the autoprune rows pick the best trial sized within [SHARE x budget, budget], not the "
                        "front's best (issue 24's cost lever: BatchNorm-only scores do not compare across sizes)")
    p.add_argument("--no-search5x", action="store_true", help="leave out the 5x search's picks (the costliest family)")
    p.add_argument("--out-dir", default=str(_OUT))
    p.add_argument("--summarise-only", action="store_true")
    p.add_argument("--quick", action="store_true", help="a smoke test: digits, tiny finetunes (give --out-dir)")
    args = p.parse_args(argv)
    args.judge_seeds = [int(v) for v in args.judge_seeds.split(",") if v]
    if args.quick:
        global _RUNS
        _RUNS = Path(args.out_dir) / "runs"  # never beside a real study's searches (a rerun resumes them)
        DATASET[0] = "digits"
        RECIPE.update(final_epochs=0.05, baseline_epochs=1, search_trials=3, search_epochs=0.05)
    torch.set_num_threads(2)
    out = Path(args.out_dir)
    start = time.perf_counter()
    if not args.summarise_only:
        table = Table(out / "headroom.csv")
        splits = ap.load_dataset(DATASET[0], seed=SPLIT_SEED)
        for spec in [c for c in args.cells.split(",") if c]:
            run_cell(Cell(spec, splits, args), table, args)
            report(out)
    report(out)
    print(f"({time.perf_counter() - start:.0f}s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
