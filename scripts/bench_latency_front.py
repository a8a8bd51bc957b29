"""The latency-objective search against the uniform curve in latency, measured where the model runs (issue 25).

Design (written before its first run). Fashion-MNIST at ``--image-size 64`` (one channel), ONNX Runtime's
CPU execution provider, batch 1, one thread. Models: ``timm:mobilenetv3_small_100``, torchvision
``mobilenet_v2`` and ``resnet18``. (The first design had issue 24's ``mobilenetv2_cifar``; before any of
its runs it gave way to torchvision's ``mobilenet_v2``, which the issue allows: with its stride-1 stem it
counts 191 MFLOPs at 64 px against 48, so its seeds would cost about four times as much on 2 cores.) Each has a baseline trained once
(``--baseline-epochs``, cached) and a latency budget of 50% of its unpruned latency. Per seed (0-4,
paired: one search seed and one final-finetune seed shared by every method of that seed):

- ``autoprune``: the pick of ``--budget-latency 50%`` (24 trials of 0.1 epoch, the evidence benchmark's
  search) with ``--latency-backend onnxruntime --latency-threads 1``;
- ``uniform``: the uniform policy fitted to the pick's *re-timed* latency ratio, with free channel counts
  and with multiples of 8, keeping the one with more FLOPs (the faster at equal channels), ranked by
  the criterion that led the search's own uniform trials;
- ``uniform_compute``: the same policy finetuned on the search's extra compute (its ``search_cost`` in
  training images, as extra epochs);
- ``uniform_x1.25``, ``uniform_x1.6``: the same uniform policy fitted to 1.25 and 1.6 times the pick's
  re-timed latency ratio (at most 0.95): with ``uniform`` they are the uniform curve above the pick, so
  that speed at equal accuracy can be read off it (added before the first full run);
- ``flops_only``: the pick of a ``--budget-flops`` search at the autoprune pick's FLOPs ratio (same
  trials and seed), so that both searches spend the same and differ in what they measure.

Every method's model gets the final recipe (BatchNorm recalibration on 10 batches, 1 epoch at lr 0.01,
batch 128) and is re-timed against the unpruned model (``ap.relative_latency``, interleaved, 5
repeats, median). Rows go to ``results/benchmarks/latency_front.csv`` (``model, seed, method,
latency_ms, latency_ratio, flops_ratio, val_acc, test_acc, search_cost``, plus the round_to, the
criterion and the commit) as each finishes; a rerun skips what is there. ``--summarise-only`` writes
``latency_front_summary.csv``: per model and method, ``autoprune`` minus it on test (paired, 95%
interval, seeds won) and the mean latency ratios, and against the uniform curve's test accuracy
interpolated at the pick's measured latency (``uniform_curve_at_pick_latency``: the ``uniform`` row's
policy is fitted up to 5% under the pick's latency, so it runs a little faster than the pick; added
after the first two seeds, before any summary was looked at); and ``latency_front_speed.csv``: per model and seed,
speed at equal accuracy, the uniform curve's latency ratio where it reaches the pick's accuracy
(validation and test), interpolated linearly, over the pick's (``where`` says ``inside``, or ``below``
/ ``above`` when the pick lies outside the curve and the figure is a bound). Decisions belong to validation; the test column is
reported, deciding nothing.

Cost, estimated before any run (2 CPU cores, 64 px): a 24-trial search is 10-30 minutes per model
(resnet18 the slowest), so a seed costs two searches and four finals, about 1-1.5 hours per model and
seed; the full design (3 models x 5 seeds) is 15-20 hours of this machine, and is meant to run in
parts (``--models``, ``--seeds``). ``--quick`` is a smoke test on digits.

    python scripts/bench_latency_front.py --models mobilenet_v2 --seeds 0
    python scripts/bench_latency_front.py --summarise-only
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import time
from pathlib import Path

import torch

import autoprune as ap
from autoprune.results import RunDir
import benchrows  # scripts/ is on sys.path when a script runs

_OUT = benchrows.ROOT / "results" / "benchmarks"
_RUNS = benchrows.ROOT / "results" / "bench" / "latency_front"
MODELS = ("timm:mobilenetv3_small_100", "mobilenet_v2", "resnet18")  # cheapest first
COLUMNS = ["model", "seed", "method", "latency_ms", "latency_ratio", "flops_ratio", "val_acc", "test_acc",
           "search_cost", "round_to", "criterion", "pick", "seconds", "commit"]
DESIGN = dict(dataset="fashion_mnist", image_size=64, baseline_epochs=5, trials=24, search_epochs=0.1,
              final_epochs=1.0, final_lr=0.01, batch_size=128, bn_batches=10, budget="50%", repeats=5)
CURVE = (1.25, 1.6)  # uniform points at these multiples of the pick's latency ratio
TIMING = dict(backend="onnxruntime", threads=1, batch_size=1)


def _table(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path, newline=""))) if path.is_file() else []


def _retime(small: torch.nn.Module, base: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(pruned ms, pruned / unpruned), the median ratio of interleaved measurements."""
    pairs = [ap.relative_latency(small, base, x, warmup=3, repeats=7, **TIMING) for _ in range(DESIGN["repeats"])]
    ratios = sorted(p / b for p, b in pairs)
    ms = sorted(p for p, _ in pairs)
    return ms[len(ms) // 2], ratios[len(ratios) // 2]


class Model:
    """One model: its data, baseline, example input and the final recipe."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.splits = ap.load_dataset(DESIGN["dataset"], image_size=DESIGN["image_size"], seed=0)
        self.x = self.splits.example_input()
        self.base = ap.create_model(name, num_classes=self.splits.num_classes, in_channels=self.splits.input_shape[0])
        cfg = ap.SearchConfig(model=name, dataset=DESIGN["dataset"], image_size=DESIGN["image_size"],
                              baseline_epochs=DESIGN["baseline_epochs"], results_dir=str(benchrows.ROOT / "results"))
        self.source = ap.ensure_baseline(self.base, self.splits, cfg, device="cpu", log=print)["source"]
        self.base.eval()
        self.flops = ap.count_flops(self.base, self.x)

    def search(self, seed: int, **budget) -> ap.Policy:
        kind = "latency" if "budget_latency" in budget else "flops"
        name = f"{self.name.replace(':', '_')}-{kind}-s{seed}"
        cfg = ap.SearchConfig(model=self.name, dataset=DESIGN["dataset"], image_size=DESIGN["image_size"],
                              checkpoint=self.source, trials=DESIGN["trials"], finetune_epochs=DESIGN["search_epochs"],
                              concurrency=2, seed=seed, latency_backend=TIMING["backend"],
                              latency_threads=TIMING["threads"], results_dir=str(_RUNS), name=name, **budget)
        folder = _RUNS / name
        resume = RunDir(folder).exists()
        if not (resume and RunDir(folder).is_finished()):  # a finished search is read: a resume is refused
            ap.search(cfg, resume=resume, given={} if resume else None, log=lambda line: None)
        return ap.load_run(folder)

    def final(self, small: torch.nn.Module, seed: int, extra_epochs: float = 0.0) -> dict:
        recipe = ap.TrainConfig(epochs=DESIGN["final_epochs"] + extra_epochs, lr=DESIGN["final_lr"],
                                batch_size=DESIGN["batch_size"], weight_decay=5e-4, seed=seed)
        done = ap.finetune_pruned(small, self.splits, recipe, device="cpu", bn_batches=DESIGN["bn_batches"])
        ms, ratio = _retime(small, self.base, self.x)
        return {"val_acc": done["val_acc"], "test_acc": done["test_acc"], "latency_ms": ms, "latency_ratio": ratio,
                "flops_ratio": ap.count_flops(small, self.x) / self.flops}


def _uniform_at(m: Model, ratio: float, criterion: str) -> ap.Policy:
    """The uniform policy at a latency ratio: free counts or multiples of 8, whichever keeps more FLOPs."""
    best = None
    for round_to in (1, 8):
        try:
            p = ap.fit_policy(m.base, m.x, {}, [ap.Budget("latency", ratio, True, f"{ratio:.4f}")], round_to=round_to,
                              latency_backend=TIMING["backend"], latency_threads=TIMING["threads"], model_name=m.name)
        except ap.InfeasibleError:
            continue
        flops = ap.count_flops(ap.apply_policy(m.base, p, m.x), m.x)
        if best is None or flops > best[0]:
            best = (flops, p)
    if best is None:
        raise ap.InfeasibleError(f"the uniform policy cannot reach a latency ratio of {ratio:.3f}")
    return dataclasses.replace(best[1], importance=criterion)


def run_seed(m: Model, seed: int, out: Path) -> None:
    rows = _table(out)

    def done(method: str) -> bool:
        return any(r["model"] == m.name and r["seed"] == str(seed) and r["method"] == method for r in rows)

    def record(method: str, make, **extra) -> None:
        if done(method):
            return
        start = time.perf_counter()
        small, policy = make()
        row = {"model": m.name, "seed": seed, "method": method, **m.final(small, seed, extra.pop("extra_epochs", 0.0)),
               "round_to": policy.round_to, "criterion": policy.importance, **extra,
               "seconds": round(time.perf_counter() - start, 1), "commit": benchrows.commit()}
        benchrows.append_rows(out, COLUMNS, [row])
        rows.append({k: str(v) for k, v in row.items()})
        print(f"{m.name} seed {seed} {method:<16} latency {row['latency_ratio']:.3f} ({row['latency_ms']:.3g} ms) "
              f"flops {row['flops_ratio']:.3f} val {row['val_acc']:.4f} test {row['test_acc']:.4f}", flush=True)

    run = m.search(seed, budget_latency=DESIGN["budget"])
    best = run.best()
    pick = run.policy(int(best["trial"]))
    cost = run.search_cost()["cost"]
    record("autoprune", lambda: (ap.apply_policy(m.base, pick, m.x), pick), search_cost=round(cost),
           pick=f"trial {int(best['trial'])} ({best['origin']})")
    mine = next(r for r in _table(out) if r["model"] == m.name and r["seed"] == str(seed) and r["method"] == "autoprune")
    ratio, flops = float(mine["latency_ratio"]), float(mine["flops_ratio"])
    uniforms = run.trials[(run.trials["status"] == "ok") & run.trials["origin"].astype(str).str.startswith("uniform:")]
    criterion = str(uniforms.sort_values("val_acc").iloc[-1]["importance"]) if len(uniforms) else pick.importance
    uniform = _uniform_at(m, ratio, criterion)
    grad = ap.gradient_batch(m.splits.train) if criterion == "taylor" else None
    make_uniform = lambda: (ap.apply_policy(m.base, uniform, m.x, grad_batch=grad), uniform)  # noqa: E731
    record("uniform", make_uniform)
    for factor in CURVE:  # the uniform curve above the pick, for speed at equal accuracy
        slower = _uniform_at(m, min(0.95, ratio * factor), criterion)
        record(f"uniform_x{factor}", lambda p=slower: (ap.apply_policy(m.base, p, m.x, grad_batch=grad), p))
    record("uniform_compute", make_uniform, extra_epochs=cost / len(m.splits.train), search_cost=round(cost))
    other = m.search(seed, budget_flops=f"{100 * flops:.2f}%")
    ob = other.best()
    op = other.policy(int(ob["trial"]))
    record("flops_only", lambda: (ap.apply_policy(m.base, op, m.x), op), search_cost=round(other.search_cost()["cost"]),
           pick=f"trial {int(ob['trial'])} ({ob['origin']})")


def speed_at_equal(curve: list[tuple[float, float]], ratio: float, acc: float) -> tuple[float, str]:
    """How much faster the pick (latency ``ratio``, accuracy ``acc``) is than the uniform ``curve`` (its
    (latency ratio, accuracy) points) at the pick's accuracy: the curve's latency ratio where it first
    reaches ``acc``, linearly interpolated, over ``ratio``; with ``'inside'``, or ``'below'`` (the curve's
    fastest point is already as accurate: a bound, at most that) or ``'above'`` (the curve never reaches
    it: a bound, at least its slowest point)."""
    points = sorted(curve)
    if points[0][1] >= acc:
        return points[0][0] / ratio, "below"
    for (r0, a0), (r1, a1) in zip(points, points[1:]):
        if a0 < acc <= a1:
            return (r0 + (acc - a0) * (r1 - r0) / (a1 - a0)) / ratio, "inside"
    return points[-1][0] / ratio, "above"


def accuracy_at(curve: list[tuple[float, float]], ratio: float) -> tuple[float, str]:
    """The uniform ``curve``'s accuracy at latency ``ratio``, linearly interpolated between its points
    (``'inside'``); outside it, its nearest point's (``'below'``: the curve's fastest point is slower
    than ``ratio``, so the uniform policy at ``ratio`` would be at most that accurate; ``'above'``)."""
    points = sorted(curve)
    if ratio <= points[0][0]:
        return points[0][1], "below" if ratio < points[0][0] else "inside"
    for (r0, a0), (r1, a1) in zip(points, points[1:]):
        if r0 <= ratio <= r1:
            return a0 + (ratio - r0) * (a1 - a0) / (r1 - r0) if r1 > r0 else max(a0, a1), "inside"
    return points[-1][1], "above"


def summarise(out_dir: Path) -> None:
    rows = [r for r in _table(out_dir / "latency_front.csv") if r["test_acc"]]
    summary = []
    for model in sorted({r["model"] for r in rows}):
        by = {(r["method"], r["seed"]): r for r in rows if r["model"] == model}
        for method in ("uniform", "uniform_compute", "flops_only"):
            seeds = sorted({s for (mm, s) in by if mm == method} & {s for (mm, s) in by if mm == "autoprune"})
            if not seeds:
                continue
            diffs = [100 * (float(by[("autoprune", s)]["test_acc"]) - float(by[(method, s)]["test_acc"])) for s in seeds]
            mean, lo, hi = ap.paired_interval(diffs)
            summary.append({"model": model, "against": method, "seeds": len(seeds), "test_gain": round(mean, 3),
                            "ci95_low": round(lo, 3), "ci95_high": round(hi, 3),
                            "seeds_won": sum(d > 0 for d in diffs),
                            "autoprune_latency_ratio": round(sum(float(by[("autoprune", s)]["latency_ratio"])
                                                                 for s in seeds) / len(seeds), 4),
                            "other_latency_ratio": round(sum(float(by[(method, s)]["latency_ratio"])
                                                             for s in seeds) / len(seeds), 4)})
    speed = []
    for model in sorted({r["model"] for r in rows}):
        for seed in sorted({r["seed"] for r in rows if r["model"] == model}):
            by = {r["method"]: r for r in rows if r["model"] == model and r["seed"] == seed}
            curve = [by[m] for m in ("uniform", *(f"uniform_x{f}" for f in CURVE)) if m in by]
            if "autoprune" not in by or len(curve) < 2:
                continue
            pick = by["autoprune"]
            row = {"model": model, "seed": seed, "pick_latency_ratio": float(pick["latency_ratio"]),
                   "curve_points": len(curve)}
            for split in ("val", "test"):
                acc, where = accuracy_at([(float(c["latency_ratio"]), float(c[f"{split}_acc"])) for c in curve],
                                         float(pick["latency_ratio"]))
                row.update({f"uniform_{split}_at_pick_latency": round(acc, 4), f"where_latency_{split}": where,
                            f"gain_{split}_at_equal_latency": round(100 * (float(pick[f"{split}_acc"]) - acc), 3)})
                x, where = speed_at_equal([(float(c["latency_ratio"]), float(c[f"{split}_acc"])) for c in curve],
                                          float(pick["latency_ratio"]), float(pick[f"{split}_acc"]))
                row.update({f"speedup_{split}": round(x, 3), f"where_{split}": where})
            speed.append(row)
    for model in sorted({r["model"] for r in speed}):
        diffs = [r["gain_test_at_equal_latency"] for r in speed if r["model"] == model]
        mean, lo, hi = ap.paired_interval(diffs)
        mine = [r["pick_latency_ratio"] for r in speed if r["model"] == model]
        summary.append({"model": model, "against": "uniform_curve_at_pick_latency", "seeds": len(diffs),
                        "test_gain": round(mean, 3), "ci95_low": round(lo, 3), "ci95_high": round(hi, 3),
                        "seeds_won": sum(d > 0 for d in diffs),
                        "autoprune_latency_ratio": round(sum(mine) / len(mine), 4),
                        "other_latency_ratio": round(sum(mine) / len(mine), 4)})
    if summary:
        benchrows.write_table(out_dir / "latency_front_summary.csv", summary)
    if speed:
        benchrows.write_table(out_dir / "latency_front_speed.csv", speed)
    for r in speed:
        print(f"{r['model']} seed {r['seed']}: the uniform curve reaches the pick's accuracy at "
              f"{r['speedup_val']:.2f}x its latency on validation ({r['where_val']}), "
              f"{r['speedup_test']:.2f}x on test ({r['where_test']})")
    for s in summary:
        print(f"{s['model']}: autoprune - {s['against']} {s['test_gain']:+.2f} [{s['ci95_low']:+.2f}, {s['ci95_high']:+.2f}] "
              f"test points ({s['seeds_won']}/{s['seeds']} won); latency {s['autoprune_latency_ratio']:.3f} vs "
              f"{s['other_latency_ratio']:.3f}")


def main(argv: list[str] | None = None) -> int:
    global _RUNS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--out-dir", default=str(_OUT))
    p.add_argument("--summarise-only", action="store_true")
    p.add_argument("--quick", action="store_true", help="a smoke test: digits, tiny searches (give --out-dir)")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    if args.quick:
        _RUNS = out_dir / "runs"
        DESIGN.update(dataset="digits", image_size=32, baseline_epochs=1, trials=4, search_epochs=0.05,
                      final_epochs=0.05, repeats=1)
    torch.set_num_threads(2)
    if not args.summarise_only:
        for name in [n for n in args.models.split(",") if n]:
            m = Model(name)
            for seed in [int(s) for s in args.seeds.split(",") if s]:
                run_seed(m, seed, out_dir / "latency_front.csv")
    summarise(out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
