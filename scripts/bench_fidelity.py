"""How well does a trial's score rank candidates by what they become after the final recipe?

A search decides on a proxy (validation accuracy after a short finetune); a user keeps the model that
the final recipe trains. For one (dataset, model, FLOPs budget) cell this script takes the policies
real default searches proposed, scores each with every proxy through ``ap.run_trial`` (the search's
own trial code: fit to the budget, prune, BatchNorm recalibration, finetune, validation accuracy),
trains each with the final recipe, and measures how well each proxy's ranking agrees with the final
validation accuracy: Spearman's rho, Kendall's tau-b, and the top-1 regret (final accuracy of the
truly best policy minus that of the proxy's best). Test accuracy is reported beside it and decides
nothing.

The policies (fixed before any score is seen): from the default searches at the cell's budget, every
``ok`` trial that Optuna proposed is a candidate shape (with its channel criterion); 21 are drawn at
random (seed 0), and the uniform policy with each of the three criteria the search chooses among is
added: 24 in all. Each is scaled to the budget (the trial's fit with ``fill``), so all 24 have the
budget's size and differ only in shape and criterion. The searches are ``bench_quality.py``'s on
fashion_mnist (``results/bench/quality/``) where they exist; otherwise this script runs default
searches itself (seeds 0 and 1) into ``results/bench/fidelity/``.

Proxies (rows of ``fidelity.csv``):

- ``bn``: BatchNorm recalibration only (EagleEye's adaptive BN), no finetune, on the search's
  default 10 batches;
- ``bn5``, ``bn2`` (fashion_mnist only): the same on 5 and 2 batches, the cheaper first rungs a
  multi-fidelity search at equal training images can afford (scored later, on policies whose final
  was already trained: their rows are completed in place);
- ``half``: a finetune half as long as the default;
- ``default``: the search's default trial (digits: 2 epochs, the CLI default; fashion_mnist: 0.1
  epoch, the trial length ``bench_quality.py`` searches with);
- ``double`` (fashion_mnist only): a finetune twice as long as the default (0.2 epoch), the longest
  proxy the 1-epoch final recipe is 5x of; a candidate length for a top rung;
- ``default_distill``: the default finetune with distillation from the unpruned model (weight 0.5,
  temperature 4).

The final recipe is ``bench_quality.py``'s: BatchNorm recalibration, then a cosine finetune at lr
0.01, at least 5x the default proxy (digits 10 epochs, batch 64; fashion_mnist 1 epoch, batch 128, as
``bench_quality.py``'s final finetune since it grew from 0.5 epoch), seed 0 for every policy. Rows go
to ``results/benchmarks/fidelity_policies.csv`` as each policy finishes (a rerun skips those done at
the same final length, and reuses the proxy scores of a policy done at another), and ``fidelity.csv``
is rebuilt from them, one row per (cell, proxy, final length).

    python scripts/bench_fidelity.py --dataset digits --budgets 25,12.5
    python scripts/bench_fidelity.py --dataset fashion_mnist --budgets 12.5
    python scripts/bench_fidelity.py --summarise-only
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import time
from pathlib import Path

import torch
from scipy import stats

import autoprune as ap

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "results" / "benchmarks"
_QUALITY_RUNS = _ROOT / "results" / "bench" / "quality"
_RUNS = _ROOT / "results" / "bench" / "fidelity"

SPLIT_SEED = 0
CRITERIA = ("l1", "bn_scale", "taylor")
N_DRAWN = 21  # shapes Optuna proposed, with the 3 uniform policies: 24 policies per cell
DISTILL = 0.5
# Per dataset: the default trial, the final recipe (5x the default) and the baseline.
DESIGNS = {
    "digits": dict(trial_epochs=2.0, trial_batch=64, final_epochs=10.0, final_batch=64, baseline_epochs=15,
                   search_seeds=(0, 1), proxies=("bn", "half", "default", "default_distill")),
    "fashion_mnist": dict(trial_epochs=0.1, trial_batch=64, final_epochs=1.0, final_batch=128, baseline_epochs=10,
                          search_seeds=(0, 1),
                          proxies=("bn", "bn5", "bn2", "half", "default", "double", "default_distill")),
}
PROXIES = ("bn", "bn5", "bn2", "half", "default", "double", "default_distill")  # every proxy of any design
POLICY_COLUMNS = ["dataset", "model", "budget", "policy", "source", "importance", "flops_ratio",
                  *(f"val_{p}" for p in PROXIES), "final_val", "final_test", "final_epochs", "proxy_s", "final_s"]


def _pct(budget: float) -> str:
    return f"{budget * 100:g}%"


def _slug(budget: float) -> str:
    return f"{budget * 100:g}".replace(".", "p")


def _baseline(model_name: str, splits, dataset: str, design: dict) -> tuple[torch.nn.Module, str]:
    model = ap.create_model(model_name, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    cfg = ap.SearchConfig(model=model_name, dataset=dataset, baseline_epochs=design["baseline_epochs"],
                          split_seed=SPLIT_SEED, results_dir=str(_ROOT / "results"))
    source = ap.ensure_baseline(model, splits, cfg, device="cpu", log=print)["source"]
    return model.cpu().eval(), source


def _search_config(model_name: str, dataset: str, source: str, budget: float, design: dict, **kw) -> ap.SearchConfig:
    return ap.SearchConfig(model=model_name, dataset=dataset, checkpoint=source, budget_flops=_pct(budget),
                           finetune_epochs=design["trial_epochs"], batch_size=design["trial_batch"],
                           split_seed=SPLIT_SEED, **kw)


def _searches(model_name: str, dataset: str, source: str, budget: float, design: dict) -> list[Path]:
    """The default searches at this budget: bench_quality's where they exist, else run here."""
    pattern = f"{model_name}-flops{_slug(budget)}pct-s*"
    found = sorted(p for p in (_QUALITY_RUNS / dataset).glob(pattern) if (p / "trials.csv").is_file())
    if dataset == "fashion_mnist" and found:
        return found
    runs = []
    for seed in design["search_seeds"]:
        folder, name = _RUNS / dataset, f"{model_name}-flops{_slug(budget)}pct-s{seed}"
        resume = (folder / name / "config.yaml").is_file()
        if not resume or len(ap.load_run(folder / name).trials) < ap.load_run(folder / name).config.trials:
            print(f"search: {name} (default search, {design['trial_epochs']:g}-epoch trials)", flush=True)
            cfg = _search_config(model_name, dataset, source, budget, design, seed=seed, results_dir=str(folder),
                                 name=name)
            ap.search(cfg, resume=resume, given={} if resume else None, log=lambda line: None)
        runs.append(folder / name)
    return runs


def _policies(runs: list[Path], cell: Path) -> list[dict]:
    """24 candidates, drawn once and kept in ``cell`` so that a rerun scores the same ones."""
    if cell.is_file():
        return json.loads(cell.read_text())
    pool = []
    for path in runs:
        run = ap.load_run(path)
        ok = run.trials[(run.trials["status"] == "ok") & (run.trials["origin"] == "optuna")]
        for _, row in ok.sort_values("trial").iterrows():
            policy = run.policy(int(row["trial"]))
            pool.append({"source": f"{path.name}/trial {int(row['trial'])}", "importance": policy.importance,
                         "shape": dict(policy.sparsity)})
    if len(pool) < N_DRAWN:
        raise RuntimeError(f"only {len(pool)} Optuna proposals in {[p.name for p in runs]}; need {N_DRAWN}")
    drawn = random.Random(0).sample(pool, N_DRAWN)
    chosen = [{"source": "uniform", "importance": c, "shape": {}} for c in CRITERIA] + drawn
    for i, c in enumerate(chosen):
        c["policy"] = i
    cell.parent.mkdir(parents=True, exist_ok=True)
    cell.write_text(json.dumps(chosen, indent=1))
    return chosen


def _done(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path, newline=""))) if path.is_file() else []


def _rewrite(path: Path, rows: list[dict]) -> None:
    """The whole table again, with the current columns (through a temporary file: never half written)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=POLICY_COLUMNS)
        w.writeheader()
        w.writerows({c: r.get(c, "") for c in POLICY_COLUMNS} for r in rows)
    os.replace(tmp, path)


def _append(path: Path, row: dict) -> None:
    new = not path.is_file()
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != POLICY_COLUMNS:  # written before a proxy was added: rewrite it with the new columns
            _rewrite(path, _done(path))
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=POLICY_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({c: row.get(c, "") for c in POLICY_COLUMNS})


def run_cell(model_name: str, dataset: str, budget: float, args) -> None:
    design = DESIGNS[dataset]
    out = Path(args.out_dir) / "fidelity_policies.csv"
    key = dict(dataset=dataset, model=model_name, budget=_pct(budget))
    rows = [r for r in _done(out) if all(r[k] == v for k, v in key.items())]
    done = {r["policy"]: r for r in rows if float(r["final_epochs"]) == float(design["final_epochs"])}
    scored = {r["policy"]: r for r in rows}  # proxy scores do not depend on the final length
    splits = ap.load_dataset(dataset, seed=SPLIT_SEED)
    base, source = _baseline(model_name, splits, dataset, design)
    runs = _searches(model_name, dataset, source, budget, design)
    chosen = _policies(runs, _RUNS / dataset / f"{model_name}-flops{_slug(budget)}pct-policies.json")[: args.policies]
    config = _search_config(model_name, dataset, source, budget, design)
    context = ap.TrialContext(config, base, splits.train, splits.val, splits.example_input(), device="cpu")
    every = {"bn": config.replace(finetune_epochs=0.0),
             "bn5": config.replace(finetune_epochs=0.0, bn_batches=5),
             "bn2": config.replace(finetune_epochs=0.0, bn_batches=2),
             "half": config.replace(finetune_epochs=design["trial_epochs"] / 2),
             "default": config,
             "double": config.replace(finetune_epochs=design["trial_epochs"] * 2),
             "default_distill": config.replace(distill=DISTILL)}
    proxies = {name: every[name] for name in design["proxies"]}
    final = ap.TrainConfig(epochs=design["final_epochs"], lr=0.01, batch_size=design["final_batch"],
                           weight_decay=5e-4, seed=0)
    for c in chosen:
        if str(c["policy"]) in done:
            _score_missing(out, done[str(c["policy"])], proxies, c, context)
            continue
        start = time.perf_counter()
        row = {**key, "policy": c["policy"], "source": c["source"], "importance": c["importance"],
               "final_epochs": final.epochs}
        known = scored.get(str(c["policy"]))
        recorded = {p for p in proxies if known and known.get(f"val_{p}")}
        # the proxies not yet recorded, and the default in any case: its channels are needed for the final
        names = [p for p in proxies if p not in recorded or p == "default"]
        results, spent = {}, {}
        for name in names:  # the same trial number, so pruning and batches are the same
            t = time.perf_counter()
            results[name] = ap.run_trial(proxies[name], c["shape"], context, trial=int(c["policy"]),
                                         origin=c["source"], importance=c["importance"])
            if results[name].status != "ok":
                raise RuntimeError(f"policy {c['policy']} ({c['source']}) is {results[name].status} under "
                                   f"proxy {name}: {results[name].error}")
            row[f"val_{name}"] = results[name].val_acc
            spent[name] = time.perf_counter() - t
        if known:
            if abs(float(known["val_default"]) - results["default"].val_acc) > 1e-9:  # threads, library versions
                print(f"note: policy {c['policy']}: the default proxy gave {results['default'].val_acc:.4f} now, "
                      f"{float(known['val_default']):.4f} when recorded; the recorded scores are kept", flush=True)
            row.update({f"val_{p}": float(known[f"val_{p}"]) for p in recorded})
            # the recorded proxies' time plus the new ones' (the default, rerun for its channels, not twice)
            new = sum(v for k, v in spent.items() if k not in recorded)
            row["proxy_s"] = round(float(known["proxy_s"]) + new, 1)
        else:
            row["proxy_s"] = round(time.perf_counter() - start, 1)
        row["flops_ratio"] = results["default"].flops_ratio
        t = time.perf_counter()
        small = ap.apply_policy(base, results["default"].policy, context.example)  # the trial's own channels
        done_final = ap.finetune_pruned(small, splits, final, device="cpu", bn_batches=config.bn_batches)
        row.update(final_val=done_final["val_acc"], final_test=done_final["test_acc"],
                   final_s=round(time.perf_counter() - t, 1))
        _append(out, row)
        print(f"{dataset} {model_name} {_pct(budget):>6} policy {c['policy']:>2} ({c['source']}, {c['importance']}): "
              + " ".join(f"{p} {row[f'val_{p}']:.4f}" for p in proxies)
              + f"  final val {row['final_val']:.4f} test {row['final_test']:.4f}  "
                f"{row['proxy_s'] + row['final_s']:.0f}s", flush=True)


def _score_missing(path: Path, row: dict, proxies: dict, c: dict, context) -> None:
    """A policy already trained with the final recipe, scored by the proxies added since: its row is
    rewritten in place (the final is not trained again)."""
    missing = [p for p in proxies if not row.get(f"val_{p}")]
    if not missing:
        return
    t = time.perf_counter()
    for name in missing:
        result = ap.run_trial(proxies[name], c["shape"], context, trial=int(c["policy"]), origin=c["source"],
                              importance=c["importance"])
        if result.status != "ok":
            raise RuntimeError(f"policy {c['policy']} ({c['source']}) is {result.status} under proxy {name}")
        row[f"val_{name}"] = result.val_acc
    row["proxy_s"] = round(float(row["proxy_s"]) + time.perf_counter() - t, 1)
    same = ("dataset", "model", "budget", "policy", "final_epochs")
    _rewrite(path, [row if all(r[k] == row[k] for k in same) else r for r in _done(path)])
    print(f"policy {c['policy']:>2}: " + " ".join(f"{p} {row[f'val_{p}']:.4f}" for p in missing), flush=True)


# ----------------------------------------------------------------------------------------- summary


def top1_regret(proxy: list[float], final: list[float]) -> float:
    """Final accuracy of the truly best policy minus that of the proxy's best (ties: the proxy's
    tied candidates' mean, so a proxy that cannot tell them apart gets no lucky pick)."""
    best = max(proxy)
    picked = [f for p, f in zip(proxy, final) if p == best]
    return max(final) - sum(picked) / len(picked)


def summarise(rows: list[dict]) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["dataset"], r["model"], r["budget"], float(r["final_epochs"])), []).append(r)
    out = []
    for (dataset, model, budget, _), rs in cells.items():
        design = DESIGNS.get(dataset, {})
        trial = design.get("trial_epochs", math.nan)
        epochs = {"bn": 0.0, "bn5": 0.0, "bn2": 0.0, "half": trial / 2, "default": trial, "double": trial * 2,
                  "default_distill": trial}
        for proxy in PROXIES:
            if not all(r.get(f"val_{proxy}") for r in rs):
                continue  # not measured for every policy of this cell (a proxy added later)
            scores = [float(r[f"val_{proxy}"]) for r in rs]
            row = {"dataset": dataset, "model": model, "budget": budget, "proxy": proxy}
            for split in ("val", "test"):
                final = [float(r[f"final_{split}"]) for r in rs]
                suffix = "" if split == "val" else "_test"
                row[f"spearman{suffix}"] = stats.spearmanr(scores, final).statistic
                row[f"kendall{suffix}"] = stats.kendalltau(scores, final).statistic
                row[f"top1_regret{suffix}"] = top1_regret(scores, final)
            row.update(n_policies=len(rs), proxy_epochs=epochs[proxy], final_epochs=float(rs[0]["final_epochs"]),
                       seconds_per_policy=sum(float(r["proxy_s"]) + float(r["final_s"]) for r in rs) / len(rs))
            out.append(row)
    return out


def report(out_dir: Path) -> None:
    rows = summarise(_done(out_dir / "fidelity_policies.csv"))
    if not rows:
        return
    order = ["dataset", "model", "budget", "proxy", "spearman", "kendall", "top1_regret", "n_policies",
             "spearman_test", "kendall_test", "top1_regret_test", "proxy_epochs", "final_epochs", "seconds_per_policy"]
    with open(out_dir / "fidelity.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=order)
        w.writeheader()
        w.writerows({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in order} for r in rows)
    print("\nrank agreement of each proxy with the final validation accuracy:")
    for r in rows:
        print(f"  {r['dataset']:<13} {r['model']:<9} {r['budget']:>6} {r['proxy']:<16} n={r['n_policies']:<3} "
              f"spearman {r['spearman']:+.3f}  kendall {r['kendall']:+.3f}  regret {r['top1_regret'] * 100:.2f} pts"
              f"  (test: spearman {r['spearman_test']:+.3f})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", choices=sorted(DESIGNS))
    p.add_argument("--models", default="resnet20")
    p.add_argument("--budgets", default="25,12.5", help="FLOPs budgets in %% (default 25,12.5)")
    p.add_argument("--policies", type=int, default=3 + N_DRAWN, help="score only the first N (a dry run)")
    p.add_argument("--out-dir", default=str(_OUT))
    p.add_argument("--summarise-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    start = time.perf_counter()
    if not args.summarise_only:
        for model_name in [m for m in args.models.split(",") if m]:
            for budget in [float(b) / 100 for b in args.budgets.split(",") if b]:
                run_cell(model_name, args.dataset, budget, args)
    report(Path(args.out_dir))
    print(f"({time.perf_counter() - start:.0f}s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
