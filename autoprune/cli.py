"""The ``autoprune`` command: list-models, list-datasets, train, search, report, apply.

The only module that prints for users or exits. Every :class:`AutopruneError` becomes one line on
stderr and exit status 2; argparse usage errors exit 2 as well.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import AutopruneError, ConfigError, RunError
from .flags import DISTILL, build_parser, cli_reference, join_dash_values

__all__ = ["main", "build_parser", "cli_reference"]


def _log(line: str) -> None:
    print(line, flush=True)


def _err(message: str) -> None:
    print(f"autoprune: error: {message}", file=sys.stderr, flush=True)


def _search_config(args: argparse.Namespace):
    """The config the flags (over a --config file) ask for, and the settings given explicitly."""
    import yaml

    from .config import SearchConfig

    values: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"Config file {args.config!r} does not exist.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            raise ConfigError(f"Config file {args.config!r} is not valid YAML.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"Config file {args.config!r} must be a mapping of flag names to values.")
        data = data.get("search", data)
        values.update({k.replace("-", "_"): v for k, v in data.items()})
    for f in dataclasses.fields(SearchConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    if args.distill_on or args.distill_weight is not None:
        if not args.distill_on:
            raise ConfigError("--distill-weight needs --distill; give both, e.g. --distill --distill-weight 0.5.")
        values["distill"] = DISTILL if args.distill_weight is None else args.distill_weight
    return SearchConfig.from_dict(values), values


def _cmd_search(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .front import front_table
    from .prepare import run_name
    from .results import RunDir

    config, given = _search_config(args)
    task = None
    if args.task:
        if args.resume:
            raise ConfigError("--resume reads the task from the run's config.yaml; drop --task.")
        clash = [f"--{k}" for k in ("model", "dataset", "checkpoint", "data_dir") if getattr(args, k, None)]
        if clash:
            raise ConfigError(f"--task {args.task} brings its own model and data; drop {', '.join(clash)}.")
        from .task import load_task
        from .task_search import task_config

        loaded = load_task(args.task)
        user = loaded.task(args.task)
        config = task_config(config, loaded.model, user)
        task = (loaded.model, loaded.example_input, user)
    if not args.resume and not config.budgets:
        raise ConfigError("Give at least one budget: --budget-flops, --budget-params or --budget-latency (e.g. 50%).")
    if not args.resume and config.name is None:
        config = config.replace(name=run_name(config))  # named now, so an interrupt can say which run
    from .driver import search

    try:
        outcome = search(config, resume=args.resume, given=given, argv=["autoprune", *argv], log=_log, task=task)
    except KeyboardInterrupt:
        where = f" --results-dir {config.results_dir}" if config.results_dir != "results" else ""
        if RunDir(Path(config.results_dir) / str(config.name)).exists():
            _err(f"interrupted; finished trials are kept. Continue with: autoprune search --resume "
                 f"--name {config.name}{where}")
        else:
            _err(f"interrupted while preparing run {config.name!r}, before anything was saved; nothing to resume, "
                 "start the search again")
        return 130
    from .front import proposed_count

    counts = outcome.counts
    promoted = len(outcome.trials) - proposed_count(outcome.trials)
    _log(f"\n{len(outcome.trials)} trials ({counts['ok']} ok, {counts['infeasible']} infeasible, "
         f"{counts['failed']} failed) in {outcome.seconds:.0f}s")
    if promoted:
        _log(f"{promoted} of them reran a trial's policy with a longer finetune (--rungs, --confirm); the front "
             "uses the longest rung")
    from .front import metric_label

    metric = metric_label(outcome.baseline)
    _log(f"Pareto front (validation {metric} in column val_acc, sizes relative to the unpruned model):")
    _log(front_table(outcome.front))
    _log_confirmed(outcome.trials, outcome.objective)
    best = outcome.best
    if best is not None:
        size = f"{outcome.objective}_ratio"
        name = "val_acc" if metric == "accuracy" else metric
        _log(f"best within budget{_confirmed_note(best)}: trial {int(best['trial'])} {name} {best['val_acc']:.4f} "
             f"{size} {best[size]:.3f}  (unpruned {name} {outcome.baseline.get('val_acc', float('nan')):.4f})")
        _log(_verdict(best, outcome.trials, outcome.objective, outcome.baseline))
    _log(f"written: {outcome.path}/trials.csv, pareto.csv, pareto.png, policies/")
    if not outcome.finished:
        where = f" --results-dir {config.results_dir}" if config.results_dir != "results" else ""
        _err(f"the run stopped after {proposed_count(outcome.trials)} of {outcome.requested} trials"
             + (f" and {promoted} reruns" if promoted else "") + " (finished ones are kept); "
             f"continue with: autoprune search --resume --name {outcome.path.name}{where}")
        return 1
    if counts["ok"] == 0:
        errors = outcome.trials["error"].dropna().astype(str)
        reason = errors.iloc[0] if len(errors) else "no trial succeeded"
        _err(f"every trial failed or was infeasible; first reason: {reason}")
        return 1
    return 0


def _log_slower(best, run) -> None:
    """report: the pick measured slower than the unpruned model (runs with a latency budget measure it)."""
    from .latency import slower_note
    from .results import number_or_none

    ratio = number_or_none(best.get("latency_ratio"))
    where = f"{run.config.latency_backend}, batch {run.config.latency_batch}"
    note = slower_note(ratio, int(run.policy(int(best["trial"])).round_to) if ratio and ratio > 1 else 1, where)
    if note:
        _log(note)


def _verdict(best, trials, objective: str, baseline) -> str:
    from .front import uniform_verdict

    return "against uniform pruning: " + uniform_verdict(best, trials, objective, baseline.get("val_images"))


def _confirmed_note(best) -> str:
    from .front import CONFIRM_PREFIX

    confirmed = str(best.get("origin", "")).startswith(CONFIRM_PREFIX)
    return f" (confirmed: trial {int(best['parent'])} rerun)" if confirmed else ""


def _log_confirmed(trials, objective: str) -> None:
    from .front import confirmation_table, is_confirmation

    if len(trials) and is_confirmation(trials).any():
        _log("confirmed (--confirm): each candidate's score in the search and after the longer finetune; "
             "best is the best confirmed")
        _log(confirmation_table(trials, objective))


def _cmd_report(args: argparse.Namespace) -> int:
    from .convergence import last_growth
    from .front import front_table, proposed_count, uniform_curve
    from .results import RunDir, load_run

    run = load_run(args.run)
    if run.trials.empty:
        _log(f"{run.path}: no finished trial yet")
        return _html_report(run) if args.html else 0
    folder = RunDir(run.path)
    # The front is rewritten unless a search of the run is going on (its own last write must stand) or
    # the folder is read-only.
    write, why_not = os.access(run.path, os.W_OK), "read-only; pareto.csv and pareto.png were not rewritten"
    if write:
        try:
            folder.hold()
        except RunError:
            write, why_not = False, ("a search of this run is going on; pareto.csv and pareto.png are left to "
                                     "it, the front below is of the trials finished so far")
    try:
        front = folder.write_front(run.config, run.baseline, write=write)
    finally:
        if write:
            folder.release()
    if not write:
        _log(f"{run.path}: {why_not}")
    promoted = len(run.trials) - proposed_count(run.trials)
    _log(f"run {run.path}  ({proposed_count(run.trials)} trials"
         + (f" and {promoted} reruns at longer finetunes; the front uses the longest" if promoted else "")
         + f", budgets: {', '.join(b.describe() for b in run.budgets)})")
    _log(f"unpruned: val_acc {run.baseline.get('val_acc', float('nan')):.4f}  flops {run.baseline.get('flops', 0):,}"
         f"  params {run.baseline.get('params', 0):,}")
    if run.left_out:
        _log(f"left out as unsafe to prune ({len(run.left_out)} groups): "
             + "; ".join(f"{g} ({why})" for g, why in run.left_out.items()))
    size = f"{run.config.size_measure}_ratio"
    from .front import metric_label

    _log(f"Pareto front (validation {metric_label(run.baseline)} in column val_acc; gain_vs_uniform: over the "
         f"uniform curve at the same {size}):")
    _log(front_table(front))
    _log_confirmed(run.trials, run.config.size_measure)
    best = run.best()
    if best is not None:
        name = run.baseline.get("metric") or "val_acc"
        _log(f"best within budget{_confirmed_note(best)}: trial {int(best['trial'])} ({name} {best['val_acc']:.4f}, "
             f"{size} {best[size]:.3f}); apply it with: autoprune apply {run.path} --pick {int(best['trial'])}"
             f" (or --pick 30% for the best at or under a size)")
        _log(_verdict(best, run.trials, run.config.size_measure, run.baseline))
        _log_slower(best, run)
    curve = uniform_curve(run.trials, run.config.size_measure)
    if len(curve):
        _log("uniform curve (best criterion per size): " + ", ".join(
            f"{r['size']:.3f}: {r['val_acc']:.4f} ({r['importance']}, trial {int(r['trial'])})"
            for _, r in curve.iterrows()))
    grown = last_growth(RunDir(run.path).read_trials())
    if grown is not None:
        _log(f"convergence: the front's hypervolume last grew by more than 1% after {grown[0]} of "
             f"{proposed_count(run.trials)} trials (trial {grown[1]})")
    _log(f"plot: {run.path / 'pareto.png'}")
    return _html_report(run) if args.html else 0


def _html_report(run) -> int:
    from .report import write_report

    _log(f"report: {write_report(run)}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .baseline import baseline_recipe, split_of, train_baseline
    from .data import load_dataset
    from .models import create_model
    from .training import resolve_device

    dataset = args.dataset or "digits"
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be a whole number >= 1, but got {args.epochs}.")
    if not 0 < args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in (0, 1), but got {args.val_fraction!r}.")
    device = resolve_device(args.device)
    out = Path(args.out or f"results/baselines/{args.model}-{dataset}-e{args.epochs}-s{args.seed}"
               f"-split{args.split_seed}".replace(":", "_"))
    if (out / "model.pt").exists():
        raise ConfigError(f"{out / 'model.pt'} already exists; pick another --out (nothing was overwritten).")
    # The split seed, not the training seed, decides the validation images: a search with the same
    # --split-seed can then use this checkpoint without having its validation images trained on.
    splits = load_dataset(dataset, data_dir=args.data_dir, download=bool(args.download), image_size=args.image_size,
                          val_fraction=args.val_fraction, seed=args.split_seed)
    model = create_model(args.model, num_classes=splits.num_classes, in_channels=splits.input_shape[0],
                         seed=args.seed)
    cfg = baseline_recipe(dataset, args.epochs, args.seed)
    changes = {k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size)) if v is not None}
    cfg = dataclasses.replace(cfg, **changes) if changes else cfg
    _log(f"training {args.model} on {dataset} ({len(splits.train)} train / {len(splits.val)} val images) "
         f"for {args.epochs} epochs on {device}")
    m = train_baseline(model, splits, cfg, out=out, device=device, evaluate_test=True, log=_log,
                       split=split_of(dataset, args.val_fraction, args.split_seed),
                       extra={"model": args.model, "dataset": dataset})
    _log(f"done in {m['seconds']:.1f}s: val_acc {m['val_acc']:.4f}  test_acc {m['test_acc']:.4f}  "
         f"flops {m['flops']:,}  params {m['params']:,}")
    _log(f"written: {out}/model.pt, metrics.json, log.csv")
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    from .apply import apply_run
    from .results import load_run
    from .task_apply import apply_task_run, task_of

    if task_of(load_run(args.run)):  # a user's task: its finetune trains, its evaluate judges
        given = {"--lr": args.lr, "--batch-size": args.batch_size, "--compare-uniform": args.compare_uniform,
                 "--onnx": args.onnx, "--save-module": args.save_module, "--distill": args.distill_on,
                 "--latency-backend": args.latency_backend, "--latency-threads": args.latency_threads,
                 "--workers": args.workers}
        bad = [flag for flag, value in given.items() if value not in (None, False)]
        if bad:
            raise ConfigError(f"{', '.join(bad)} cannot be used with a run of a user's task: its own finetune trains "
                              "the pick (give --pick, --epochs, --device and --seed only).")
        apply_task_run(args.run, pick=args.pick, epochs=args.epochs, device=args.device, seed=args.seed, log=_log)
        return 0
    apply_run(args.run, pick=args.pick, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
              device=args.device, seed=args.seed, compare_uniform=args.compare_uniform, onnx=args.onnx or None,
              save_module=args.save_module, distill=args.distill_weight if args.distill_on else 0.0,
              latency_backend=args.latency_backend, latency_threads=args.latency_threads, workers=args.workers,
              log=_log)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(join_dash_values(parser, argv))
    try:
        if args.command == "list-models":
            from .models import list_models

            names = list_models(args.pattern)
            _log("\n".join(names) if names else f"(no model matches {args.pattern!r})")
            return 0
        if args.command == "list-datasets":
            from .data import list_datasets

            _log("\n".join(list_datasets(args.pattern)))
            _log("or package.module:function")
            return 0
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "search":
            return _cmd_search(args, argv)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "apply":
            return _cmd_apply(args)
    except AutopruneError as e:
        _err(str(e))
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
