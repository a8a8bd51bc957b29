"""Torch-Pruning's dependency graph of a model: built (with two patches to Torch-Pruning, installed
once per process), its groups of coupled channels listed one root at a time, failures named.

``prune.py`` prunes with what this module builds; ``probe.py`` checks each group it lists.

Example:
    >>> graph, groups = build_graph(model, torch.zeros(1, 3, 32, 32), exclude=())
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import warnings
from typing import Sequence

import torch
import torch.nn as nn

from .costs import ROOT_TYPES
from .errors import PruningError

__all__ = ["output_leaves"]


def _tp():
    import torch_pruning as tp  # late: the package is heavy and only this module needs it

    _guard_reshape_mapping()
    _index_pruning_ops()
    return tp


def _index_pruning_ops() -> None:
    """Torch-Pruning's ``Group.has_pruning_op`` compares a candidate dependency with every one already
    in the group, index lists included: quadratic in the group, each comparison as long as the indices.
    Through a detector's heads (outputs reshaped per anchor and concatenated) the lists run to thousands
    and building SSDlite's graph took 5-6 minutes on this machine, 90% of it there. The same test
    against a set of (target, handler, indices) kept beside the group, built from the items appended
    since the last call (the loop that calls it only appends), answers identically: the groups of
    resnet20, MobileNetV2, ViT-B/16 and SSDlite come out the same, SSDlite's in 2 s. Installed once per
    process, like the reshape guard."""
    from torch_pruning.dependency.group import Group

    if getattr(Group.has_pruning_op, "autoprune_indexed", False):
        return

    def has_pruning_op(self, dep, idxs) -> bool:
        seen = self.__dict__.setdefault("_autoprune_ops", [0, set()])
        for _dep, _idxs in self._group[seen[0]:]:
            seen[1].add((_dep.target, _dep.handler, tuple(_idxs)))
        seen[0] = len(self._group)
        return (dep.target, dep.handler, tuple(idxs)) in seen[1]

    has_pruning_op.autoprune_indexed = True
    Group.has_pruning_op = has_pruning_op


def _guard_reshape_mapping() -> None:
    """Torch-Pruning divides by a channel count it infers as 0 across some reshapes (ShuffleNetV2's
    channel shuffle, ``view(b, g, c // g, h, w)``), and the whole graph fails with ZeroDivisionError.
    Such a reshape keeps its default (channel-for-channel) mapping instead; that mapping is wrong
    across a shuffle, and the probe, which compares each pruned group's output with the original
    model's with the removed channels zeroed, leaves out every group it would break, with the reason.
    Installed once per process, for good: Torch-Pruning recomputes the mappings whenever it builds a
    graph and whenever it gathers a group, so a guard around one call would not cover the others. Other
    users of Torch-Pruning in the same process get the default mapping there instead of the error."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_reshape_index_mapping
    if getattr(original, "autoprune_guard", False):
        return

    def guarded(graph, node):
        try:
            return original(graph, node)
        except ZeroDivisionError:  # raised before the mapping is touched: nothing half-written
            return None

    guarded.autoprune_guard = True
    index_mapping.update_reshape_index_mapping = guarded


def _model_label(model: nn.Module) -> str:
    return getattr(model, "autoprune_name", type(model).__name__)


def _ignored_modules(model: nn.Module, out_dim: int, exclude: Sequence[str]) -> list[nn.Module]:
    """The classifier (the last layer, and any linear layer producing the output width) and ``exclude``.

    Only linear layers are matched by width: a conv whose width happens to equal the number of
    classes (16 classes, 16-channel stage) is an ordinary prunable layer.
    """
    ignored = []
    last_root = None
    for name, m in model.named_modules():
        if isinstance(m, ROOT_TYPES):
            last_root = m
            head = isinstance(m, nn.Linear) and m.out_features == out_dim
            if head or any(fnmatch.fnmatch(name, p) for p in exclude):
                ignored.append(m)
    if last_root is not None and last_root not in ignored:
        ignored.append(last_root)  # the output layer, whatever its width
    return ignored


@contextlib.contextmanager
def _memory_headroom(model: nn.Module):
    """Cap this process's address space a few GB above what it uses now, while Torch-Pruning traces.

    On some models (swin_t, maxvit_t) its index mapping grows without bound and would take all the
    machine's memory; capped, it fails with a MemoryError within seconds, which becomes a PruningError.
    """
    try:
        import resource

        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        yield  # not Linux: no cap
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cap = used + _HEADROOM + 3 * weights  # the probe holds copies of the model
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        yield  # already capped lower by the caller
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


_HEADROOM = 6 * 2**30  # bytes a dependency graph and the probe may take beyond the model's copies


def output_leaves(out) -> list[torch.Tensor]:
    """The tensors of a model's output, in order: a tensor, or the tensors inside the tuples, lists
    and dicts a segmenter (``{"out": ...}``) or a detector (a list of dicts) returns."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in output_leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in output_leaves(v)]
    return []


def _out_dim(out) -> int:
    """The output width the classifier heads are matched by: the first output tensor's dimension 1."""
    leaves = [t for t in output_leaves(out) if t.dim() >= 2]
    return int(leaves[0].shape[1]) if leaves else -1


def _build_graph(model: nn.Module, x: torch.Tensor, exclude: Sequence[str]):
    tp = _tp()
    was_training = model.training
    paths = {m: n for n, m in model.named_modules() if n}  # for naming a failure, before memory runs short
    model.eval()
    try:
        with torch.no_grad():
            out_dim = _out_dim(model(x))
        with warnings.catch_warnings():
            # Torch-Pruning warns about every bare parameter (ConvNeXt's layer_scale, ViT's class token);
            # pruning them along their channel dimension is what the probe checks and the cost model prices.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            warnings.filterwarnings("ignore", message="Maximum recursive depth reached")
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
            ignored = _ignored_modules(model, out_dim, exclude)
            groups, unfollowed = _all_groups(model, graph, ignored)
            graph.autoprune_unfollowed = unfollowed
    except (ZeroDivisionError, IndexError, KeyError, RuntimeError, ValueError, AttributeError, TypeError,
            MemoryError) as e:
        layer = _culprit(e.__traceback__, paths)
        why = ("its index mapping outgrew the memory cap" if isinstance(e, MemoryError) else
               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise PruningError(
            f"Torch-Pruning cannot build the dependency graph of model {_model_label(model)!r}"
            + (f" at {layer}" if layer else "") + f": {why} (unsupported layer or operation)."
        ) from None
    finally:
        model.train(was_training)
    return graph, groups


def _all_groups(model: nn.Module, graph, ignored: Sequence[nn.Module]) -> tuple[list, dict[str, str]]:
    """Torch-Pruning's ``get_all_groups``, one root layer at a time: a root whose channels it cannot
    follow (an index mapping it got wrong, as at ShuffleNetV2's channel split after a shuffle) is
    returned with the reason instead of failing the whole model; the probe then checks the rest."""
    names = {m: n for n, m in model.named_modules()}
    ignored = [*ignored, *graph.IGNORED_LAYERS_IN_TRACING]
    visited: set[int] = set()
    groups, unfollowed = [], {}
    for m in list(graph.module2node):
        if m in ignored or not isinstance(m, ROOT_TYPES) or id(m) in visited:
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        try:
            group = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except (IndexError, ZeroDivisionError, KeyError, ValueError) as e:
            where = _culprit(e.__traceback__, names)
            unfollowed[names.get(m, type(m).__name__)] = (
                f"Torch-Pruning cannot follow its channels{f' through {where}' if where else ''} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            continue
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(id(dep.target.module))
                prunable = prunable and dep.target.module not in ignored
        if prunable:
            groups.append(group)
    # a root that failed on its own but whose layer another root's group prunes is not left out
    modules = dict(model.named_modules())
    unfollowed = {n: why for n, why in unfollowed.items() if id(modules.get(n)) not in visited}
    return groups, unfollowed


def _culprit(tb, names: dict) -> str | None:
    """The dependency-graph node Torch-Pruning was handling when it failed, read from its frames."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if type(value).__name__ == "Node" and hasattr(value, "name"):
                return str(value.name)
    # no node at hand (tracing, or following one root layer's channels): the autograd operation or
    # the layer it was handling, by its path (never the module's repr: the memory cap may still hold)
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, torch.autograd.graph.Node):
                return f"{value.name()}()"
            if isinstance(value, nn.Module) and value in names:
                return f"the channels of {names[value]} ({type(value).__name__})"
    return None
