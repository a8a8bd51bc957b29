"""The command line's flags: the parser of every ``autoprune`` sub-command, and its reference page.

The flags are the CLI contract (DESIGN section 1): :class:`~autoprune.config.SearchConfig` fields map
one-to-one to ``search`` flags. ``cli.py`` runs the commands; ``docs/cli.md`` is generated from
:func:`cli_reference` (``python scripts/make_cli_docs.py``).
"""
from __future__ import annotations

import argparse
import functools
from typing import NoReturn

__all__ = ["build_parser", "cli_reference", "join_dash_values", "DISTILL"]

DISTILL = 0.5  # the distillation weight of a bare --distill (search and apply)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other autoprune error (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"autoprune: error: {message}; see `{self.prog} --help`.\n")


def join_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Read ``--budget-flops -10%`` as ``--budget-flops=-10%``.

    argparse takes a value that starts with '-' for a flag unless it is a plain negative number, and
    then says only 'expected one argument'; joined, the value reaches its own check, which names it.
    """
    takes_value: set[str] = set()
    known: set[str] = set()
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            known.update(action.option_strings)
            if action.option_strings and action.nargs is None:
                takes_value.update(action.option_strings)
    out: list[str] = []
    i = 0
    while i < len(argv):
        if (argv[i] in takes_value and i + 1 < len(argv) and argv[i + 1].startswith("-")
                and argv[i + 1] not in known and argv[i + 1] != "--"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            if argv[i] == "--":
                return out + argv[i:]
            out.append(argv[i])
            i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="autoprune",
        description="Search per-layer channel-pruning policies under FLOPs, params or latency budgets.",
        epilog="Start with: autoprune search --budget-flops 50%",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    lm = sub.add_parser("list-models", help="list the model names autoprune knows")
    lm.add_argument("pattern", nargs="?", default=None,
                    help="glob filter, e.g. 'resnet*'; 'timm:*' lists timm's models (pip install timm)")
    ld = sub.add_parser("list-datasets", help="list the dataset names autoprune knows")
    ld.add_argument("pattern", nargs="?", default=None)

    tr = sub.add_parser("train", help="train an unpruned baseline and report its test accuracy")
    _data_flags(tr)
    tr.add_argument("--model", default="resnet20", help="registered name, torchvision name or package.module:function")
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--lr", type=float, default=None, help="default 0.05 on digits, else 0.1")
    tr.add_argument("--batch-size", type=int, default=None)
    tr.add_argument("--device", default="auto", help="auto, cpu or cuda")
    tr.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of training")
    tr.add_argument("--split-seed", type=int, default=0,
                    help="seed of the validation split carved from training data (default 0, as in search)")
    tr.add_argument("--val-fraction", type=float, default=0.1, help="share of the training data held out (default 0.1)")
    tr.add_argument("--out", default=None, help="output folder (default results/baselines/<model>-<dataset>-eN-sS)")

    se = sub.add_parser("search", help="search a per-layer pruning policy under a budget")
    _search_flags(se)

    re_ = sub.add_parser("report", help="print a run's Pareto front and redraw pareto.png")
    re_.add_argument("run", help="a results folder, e.g. results/<run>")
    re_.add_argument("--html", action="store_true", help="also write RUN/report.html, one page that opens offline")

    ap_ = sub.add_parser("apply", help="train a chosen policy fully, report test accuracy, export the model")
    ap_.add_argument("run", help="a results folder, e.g. results/<run>")
    ap_.add_argument("--pick", default="best",
                     help="best (within the budget), uniform, a size such as 30%% (the best front point at or "
                          "under it), or a trial number (default best)")
    ap_.add_argument("--epochs", type=int, default=30)
    ap_.add_argument("--lr", type=float, default=None, help="default: a tenth of the baseline's rate")
    ap_.add_argument("--batch-size", type=int, default=None)
    ap_.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap_.add_argument("--seed", type=int, default=0)
    ap_.add_argument("--compare-uniform", action="store_true", help="also train the uniform policy, same recipe")
    ap_.add_argument("--onnx", action="store_true",
                     help="fail before training unless model.onnx can be written (it is whenever the onnx and "
                          "onnxruntime packages are installed)")
    ap_.add_argument("--save-module", action="store_true",
                     help="also write model.pt, the pickled module (loading it runs code; model.safetensors "
                          "loads without)")
    ap_.add_argument("--workers", type=int, default=None, metavar="N",
                     help="processes decoding a disk-backed dataset (default: the run's --workers)")
    ap_.add_argument("--latency-backend", default=None,
                     help="torch or onnxruntime, for the reported latency (default: the run's)")
    ap_.add_argument("--latency-threads", type=int, default=None, help="(default: the run's)")
    ap_.add_argument("--distill", dest="distill_on", action="store_true",
                     help="distil from the unpruned model during the finetune")
    ap_.add_argument("--distill-weight", type=float, default=DISTILL, metavar="W",
                     help=f"weight of the teacher's soft outputs with --distill (default {DISTILL})")
    return p


def _data_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--dataset", default=None,
                   help="digits (bundled), fashion_mnist, cifar10, cifar100, imagefolder or module:function")
    p.add_argument("--data-dir", default=None,
                   help="where the dataset lives (fashion_mnist: default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--download", action="store_true", default=None,
                   help="let torchvision download Fashion-MNIST or CIFAR")
    p.add_argument("--image-size", type=int, default=None, help="input height/width (digits default 32)")


# The experimental levers' help lines quote quality_levers.csv; rerun bench_quality.py before changing them.
_EXPERIMENTAL = ("levers the benchmark found no better than the default; all off by default. Each was paired with "
                 "the default search (resnet20, Fashion-MNIST, 25% FLOPs, 5 seeds); its figure is the final "
                 "validation accuracy minus the default's, in points, with the 95% interval "
                 "(results/benchmarks/quality_levers.csv)")


def _search_flags(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("model and data")
    data.add_argument("--model", default=None, help="default resnet20")
    data.add_argument("--task", default=None, metavar="PKG.MOD:FN",
                      help="your own task instead of --model/--dataset: a function returning autoprune.TaskSpec "
                           "(trained model, example input, finetune, evaluate, calibration batches, optional loss)")
    data.add_argument("--checkpoint", default=None,
                      help="trained weights of the model (else a baseline is trained once and cached)")
    _data_flags(data)
    a = data.add_argument
    a("--val-fraction", type=float, default=None, help="share of the training data held out to validate (default 0.1)")
    a("--split-seed", type=int, default=None, help="seed of the validation split carved from training data (default 0)")
    a("--baseline-epochs", type=int, default=None, help="epochs of the cached baseline (default 15)")

    a = p.add_argument_group("budgets", "a candidate must meet every budget given").add_argument
    a("--budget-flops", default=None, metavar="B", help="e.g. 50%% of the unpruned model, or 120M")
    a("--budget-params", default=None, metavar="B", help="e.g. 50%% or 1.5M")
    a("--budget-latency", default=None, metavar="B", help="e.g. 60%% or 4ms, measured on the trial device")
    a("--objective", default=None, choices=("flops", "params", "latency"),
      help="the budget whose measure the front, the pick and each trial's target size use (default: the "
           "first given of flops, params, latency), e.g. --budget-flops 50%% --budget-latency 60%% "
           "--objective latency; the other budgets stay hard limits")
    a("--front-from", default=None, metavar="S",
      help="the smallest size searched, in the objective's measure (default: a quarter of the budget), "
           "e.g. 20%%")

    a = p.add_argument_group("search").add_argument
    a("--trials", type=int, default=None, help="number of trials, the uniform one included (default 24)")
    a("--sampler", default=None, help="tpe (default), nsga2 or random")
    a("--search-space", default=None,
      help="default, centred (shapes around the uniform policy; a tie with the default, -0.03 [-0.11, +0.05] "
           "points), cifar_resnet, mobilenet, or a YAML file")
    a("--importance", default=None,
      help="channel criterion: auto (default: search l1, bn_scale and taylor per trial), one of l1, l2, "
           "bn_scale, taylor, random, or a comma-separated list to search over")
    a("--round-to", type=int, default=None, metavar="N",
      help="keep each group's channel count a multiple of N, in fitting, pruning and costs (default: 8 when "
           "trials run on a GPU or the model has depthwise convolutions, else 1); recorded in each policy")
    a("--no-fill-budget", dest="fill_budget", action="store_false", default=None,
      help="keep proposals under budget as they are (default: scale each proposal to the budget)")
    a("--seed", type=int, default=None)

    a = p.add_argument_group("trials", "what each candidate gets before it is scored on validation").add_argument
    a("--finetune-epochs", type=float, default=None, help="finetune per trial, may be fractional; 0 = BN only")
    a("--finetune-lr", type=float, default=None)
    a("--batch-size", type=int, default=None, help="finetune batch size per trial (default 64)")
    a("--bn-batches", type=int, default=None, help="batches of BatchNorm recalibration per trial (default 10)")
    a("--trial-timeout", type=float, default=None, metavar="SECONDS",
      help="a trial still running after this long is stopped and recorded as failed (default: none)")

    a = p.add_argument_group("latency", "how --budget-latency is measured").add_argument
    a("--latency-backend", default=None,
      help="torch (eager on the trial device, default) or onnxruntime (exported to ONNX, CPU execution "
           "provider; pip install 'autoprune[onnx]')")
    a("--latency-threads", type=int, default=None, metavar="N",
      help="intra-op threads when timing latency (default: torch's own; 1 for onnxruntime)")
    a("--latency-batch", type=int, default=None, help="batch size latency is measured at (default 1)")
    a("--no-latency-model", dest="latency_model", action="store_false", default=None,
      help="fit latency budgets by measuring candidates only (default: a per-layer latency table, timed once "
           "per model, backend, threads and batch, chooses each candidate's size; the budget is still measured)")

    a = p.add_argument_group("resources").add_argument
    a("--concurrency", type=int, default=None, help="trials running at once (default 2)")
    a("--cpus-per-trial", type=float, default=None)
    a("--gpus-per-trial", type=float, default=None, help="fractions pack trials on a GPU, e.g. 0.25")
    a("--workers", type=int, default=None, metavar="N",
      help="processes decoding a disk-backed dataset (imagefolder, a dataset of your own) for each trial, "
           "apply and the baseline (default: one per CPU a trial has; in-memory data uses none)")
    a("--device", default=None, help="auto, cpu or cuda")
    a("--address", default=None, help="join a Ray cluster: auto or HOST:PORT (or set RAY_ADDRESS)")
    a("--dashboard", action="store_true", default=None, help="start the Ray dashboard on 127.0.0.1")

    a = p.add_argument_group("run and resume").add_argument
    a("--config", default=None, help="a YAML file of defaults (keys as in a run's config.yaml 'search' section)")
    a("--results-dir", default=None, help="default results")
    a("--name", default=None, help="run folder name (default <model>-<dataset>-<budget>-<time>)")
    a("--resume", action="store_true", help="continue the interrupted run --name")

    a = p.add_argument_group("experimental", _EXPERIMENTAL).add_argument
    a("--rungs", default=None, metavar="E[,E...]",
      help="multi-fidelity: finetune epochs of promotion rungs, e.g. 0.5; each rung reruns the best "
           "1/--reduction of the rung below (by gain over the uniform curve) and the uniform curve's points. "
           "240 BatchNorm-only trials then --rungs 0.2 --reduction 34: a tie, -0.16 [-0.49, +0.17]")
    a("--reduction", type=int, default=None, help="with --rungs, share kept per rung is 1/reduction (default 3)")
    a("--promote-criteria", action="store_true", default=None,
      help="with --rungs, promote the uniform policy at the budget with every criterion, not only the one "
           "that led at the rung below; a tie, -0.23 [-0.56, +0.10]")
    a("--confirm", type=int, default=None, metavar="K",
      help="before naming best, rerun the K best candidates and the uniform policy at the budget with a longer "
           "finetune; best is then the best of these (default 0: off); --confirm 3: a tie, -0.10 [-0.48, +0.27]")
    a("--confirm-epochs", type=float, default=None, metavar="E",
      help="the confirmation finetune (default 5x the longest finetune of the search)")
    a("--no-depth-starts", dest="depth_starts", action="store_false", default=None,
      help="leave out the three warm starts at the budget whose shapes are graded by depth (earlier layers kept "
           "4x and 2x wider than the last, deeper kept 2x, with the first criterion); on by default (issue 24)")
    a("--sensitivity", action="store_true", default=None,
      help="one more warm start at the budget: a shape that keeps more of the groups whose pruning alone "
           "costs the most validation accuracy (measured once, BatchNorm recalibration only); a tie, "
           "-0.10 [-0.31, +0.11]")
    a("--distill", dest="distill_on", action="store_true", default=None,
      help="distil from the unpruned model in each trial's finetune (default off); a tie, +0.04 [-0.07, +0.14], "
           "at twice the training images")
    a("--distill-weight", type=float, default=None, metavar="W",
      help=f"weight of the teacher's soft outputs with --distill (default {DISTILL})")


def cli_reference(width: int = 100) -> str:
    """The ``--help`` of ``autoprune`` and of each sub-command as one Markdown page: ``docs/cli.md``.

    A fixed width (not the terminal's) and no colour, so the page is the same wherever it is made.

    Example:
        >>> Path("docs/cli.md").write_text(cli_reference())
    """
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = ["# Command-line reference", "",
             "Generated from the argument parser (`autoprune.flags.cli_reference`) by `python scripts/make_cli_docs.py`;",
             "`tests/test_docs.py` fails when this page and the parser differ. The options themselves are explained",
             "in the [guide](guide.md).", ""]
    for p in (parser, *sub.choices.values()):
        p.formatter_class = functools.partial(argparse.HelpFormatter, width=width)
        p.color = False  # Python 3.14 colours help on a terminal; older versions ignore the attribute
        lines += [f"## {p.prog}", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(lines)
