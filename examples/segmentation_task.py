"""Prune a semantic segmenter for your own task: LR-ASPP on a MobileNetV3 backbone, scored by mean IoU.

Everything here is what a user brings: a model (torchvision's, built without weights), data (generated
shapes: squares are class 1, discs class 2, the rest background), a training loop and a metric.
autoprune searches per-group sparsities under the FLOPs budget with them.

    python examples/segmentation_task.py --trials 16            # the search, then its front in mean IoU
    autoprune search --task examples.segmentation_task:task --budget-flops 50% --trials 12 \\
        --finetune-epochs 0.5                                   # the same task from the command line
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

NUM_CLASSES = 3
SIZE = 48


def make_data(n: int, seed: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy images with one square (class 1) and one disc (class 2) each, and their masks."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 0.3
    masks = torch.zeros(n, size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        r = int(torch.randint(size // 8, size // 4, (1,), generator=g))
        cy, cx = (int(v) for v in torch.randint(r, size - r, (2,), generator=g))
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        s = int(torch.randint(size // 8, size // 4, (1,), generator=g))
        y0, x0 = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
        square = torch.zeros(size, size, dtype=torch.bool)
        square[y0:y0 + s, x0:x0 + s] = True
        masks[i][square] = 1
        masks[i][disc] = 2  # a disc drawn over a square wins
        colour = torch.rand(2, 3, generator=g) * 0.7 + 0.3
        for c in range(3):
            images[i, c][square] = colour[0, c]
            images[i, c][disc] = colour[1, c]
    return images, masks


def build_model() -> torch.nn.Module:
    """LR-ASPP on a MobileNetV3-Small backbone (torchvision's parts, no weights), as torchvision builds
    its MobileNetV3-Large one: the low branch at stride 8, the high at stride 16 (dilated after it)."""
    from torchvision.models import mobilenet_v3_small
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.lraspp import LRASPP

    features = mobilenet_v3_small(weights=None, dilated=True).features
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    low, high = stages[-4], stages[-1]
    backbone = IntermediateLayerGetter(features, {str(low): "low", str(high): "high"})
    return LRASPP(backbone, features[low].out_channels, features[high].out_channels, NUM_CLASSES, 128)


def mean_iou(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, batch: int = 32) -> float:
    """Mean over classes of intersection over union, on the whole set (the usual semantic-segmentation score)."""
    device = next(model.parameters()).device
    inter = torch.zeros(NUM_CLASSES)
    union = torch.zeros(NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            pred = model(images[i:i + batch].to(device))["out"].argmax(1).cpu()
            truth = masks[i:i + batch]
            for c in range(NUM_CLASSES):
                inter[c] += ((pred == c) & (truth == c)).sum()
                union[c] += ((pred == c) | (truth == c)).sum()
    return float((inter / union.clamp(min=1)).mean())


def train(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, epochs: float, lr: float = 0.01,
          batch: int = 16, seed: int = 0) -> None:
    """Adam on per-pixel cross-entropy for ``epochs`` passes (fractional: that share of the batches)."""
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, math.ceil(epochs * math.ceil(len(images) / batch)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.randperm(len(images), generator=g)
    for step in range(steps):
        start = (step * batch) % len(images)
        if start + batch > len(images):
            order = torch.randperm(len(images), generator=g)
        idx = order[start:start + batch]
        loss = F.cross_entropy(model(images[idx].to(device))["out"], masks[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def task(n_train: int = 256, n_val: int = 128, baseline_epochs: float = 15, finetune_lr: float = 0.003):
    """The task's pieces (what ``--task examples.segmentation_task:task`` calls): a trained baseline, an
    example input, the training loop, the metric on a validation set, calibration batches and a loss."""
    import autoprune as ap

    torch.manual_seed(0)
    train_x, train_y = make_data(n_train, seed=1)
    val_x, val_y = make_data(n_val, seed=2)
    model = build_model()
    train(model, train_x, train_y, baseline_epochs)
    return ap.TaskSpec(
        model=model,
        example_input=torch.zeros(1, 3, SIZE, SIZE),
        evaluate=lambda m: mean_iou(m, val_x, val_y),
        finetune=lambda m, epochs: train(m, train_x, train_y, epochs, lr=finetune_lr),
        calib_batches=[(train_x[i:i + 16], train_y[i:i + 16]) for i in range(0, 160, 16)],
        loss=lambda m, batch: F.cross_entropy(m(batch[0])["out"], batch[1]),
        metric="miou",
    )


def main(argv: list[str] | None = None) -> int:
    import autoprune as ap
    from torch.utils.flop_counter import FlopCounterMode

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--budget-flops", default="50%")
    p.add_argument("--finetune-epochs", type=float, default=0.5)
    p.add_argument("--results-dir", default="results")
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    spec = task()
    print(f"baseline mean IoU {spec.evaluate(spec.model):.3f}")
    outcome = ap.search_spec(spec, "", {"flops": args.budget_flops}, trials=args.trials,
                             finetune_epochs=args.finetune_epochs, results_dir=args.results_dir, name=args.name)
    print(outcome.counts)

    def flops(m):  # PyTorch's own counter, independent of autoprune's
        with torch.no_grad(), FlopCounterMode(display=False) as c:
            m.eval()(spec.example_input)
        return c.get_total_flops()

    base = flops(spec.model)
    ok = outcome.trials[outcome.trials["status"] == "ok"]
    limit = float(args.budget_flops.rstrip("%")) / 100
    within = sum(flops(ap.apply_policy(spec.model, outcome.policy(int(t)), spec.example_input)) <= limit * base
                 for t in ok["trial"])
    print(f"{within} of {len(ok)} ok trials within {args.budget_flops} FLOPs by FlopCounterMode")
    print(outcome.front[["trial", "val_acc", "flops_ratio"]].rename(columns={"val_acc": "miou"}).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
