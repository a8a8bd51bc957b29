"""Prune an object detector for your own task: SSDlite on a MobileNetV3 backbone, scored by mAP@0.5.

What a user brings: torchvision's detector built without weights, generated data (red squares are
class 1, blue ones class 2, on noise), a training loop that feeds targets in train mode, and mean
average precision at IoU 0.5. Groups the pruner cannot follow safely (the detection heads' outputs,
which are reshaped per anchor) are left out with their reasons; the backbone and extra layers are
searched.

    python examples/detection_task.py --trials 8
    autoprune search --task examples.detection_task:task --budget-flops 60% --trials 8 --finetune-epochs 0.5
"""
from __future__ import annotations

import argparse
import math

import torch

NUM_CLASSES = 3  # background, red, blue
SIZE = 128


def make_data(n: int, seed: int, size: int = SIZE) -> tuple[torch.Tensor, list[dict]]:
    """``n`` noisy images with one or two coloured squares each, and their boxes and labels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 0.3
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            s = int(torch.randint(size // 6, size // 3, (1,), generator=g))
            y0, x0 = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
            label = int(torch.randint(1, NUM_CLASSES, (1,), generator=g))
            images[i, :, y0:y0 + s, x0:x0 + s] = 0.1
            images[i, 0 if label == 1 else 2, y0:y0 + s, x0:x0 + s] = 0.9
            boxes.append([x0, y0, x0 + s, y0 + s])
            labels.append(label)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


def build_model(size: int = SIZE) -> torch.nn.Module:
    """torchvision's SSDlite320 on MobileNetV3-Large, no weights, resized to ``size`` px inputs."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                          detections_per_img=20, topk_candidates=50)
    model.transform.min_size, model.transform.max_size = (size,), size
    return model


def _targets_to(targets: list[dict], device) -> list[dict]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def train(model, images, targets, epochs: float, lr: float = 0.01, batch: int = 8, seed: int = 0) -> None:
    """SGD with momentum on SSD's own losses (the model returns them in train mode, given targets)."""
    device = next(model.parameters()).device
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5)
    steps = max(1, math.ceil(epochs * math.ceil(len(images) / batch)))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    model.train()
    for step in range(steps):
        idx = order[(step * batch) % len(images):][:batch]
        losses = model(list(images[idx].to(device)), _targets_to([targets[int(i)] for i in idx], device))
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def mean_ap(model, images, targets, iou: float = 0.5, batch: int = 16) -> float:
    """Mean over classes of average precision at IoU ``iou`` (all-point interpolation, VOC style)."""
    from torchvision.ops import box_iou

    device = next(model.parameters()).device
    model.eval()
    scored: dict[int, list[tuple[float, bool]]] = {c: [] for c in range(1, NUM_CLASSES)}
    truths = {c: 0 for c in range(1, NUM_CLASSES)}
    with torch.no_grad():
        for i in range(0, len(images), batch):
            outs = model(list(images[i:i + batch].to(device)))
            for out, truth in zip(outs, targets[i:i + batch]):
                for c in scored:
                    gt = truth["boxes"][truth["labels"] == c]
                    truths[c] += len(gt)
                    keep = out["labels"].cpu() == c
                    boxes, scores = out["boxes"].cpu()[keep], out["scores"].cpu()[keep]
                    used = torch.zeros(len(gt), dtype=torch.bool)
                    for j in scores.argsort(descending=True):
                        hit = False
                        if len(gt):
                            overlaps = box_iou(boxes[j:j + 1], gt)[0]
                            overlaps[used] = -1
                            best = int(overlaps.argmax())
                            if overlaps[best] >= iou:
                                used[best], hit = True, True
                        scored[c].append((float(scores[j]), hit))
    aps = []
    for c, hits in scored.items():
        if truths[c] == 0:
            continue
        hits.sort(key=lambda h: -h[0])
        tp = torch.tensor([h for _, h in hits], dtype=torch.float32).cumsum(0)
        precision = tp / torch.arange(1, len(hits) + 1)
        recall = tp / truths[c]
        ap, prev = 0.0, 0.0
        for k in range(len(hits)):
            if hits[k][1]:
                ap += float(precision[k:].max()) * (float(recall[k]) - prev)
                prev = float(recall[k])
        aps.append(ap)
    return sum(aps) / len(aps) if aps else 0.0


def task(n_train: int = 96, n_val: int = 48, baseline_epochs: float = 10, finetune_lr: float = 0.005,
         size: int = SIZE):
    """The task's pieces (what ``--task examples.detection_task:task`` calls)."""
    import autoprune as ap

    torch.manual_seed(0)
    images, targets = make_data(n_train, seed=1, size=size)
    val_images, val_targets = make_data(n_val, seed=2, size=size)
    model = build_model(size)
    train(model, images, targets, baseline_epochs)
    return ap.TaskSpec(
        model=model,
        example_input=torch.zeros(1, 3, size, size),
        evaluate=lambda m: mean_ap(m, val_images, val_targets),
        finetune=lambda m, epochs: train(m, images, targets, epochs, lr=finetune_lr),
        calib_batches=[images[i:i + 8] for i in range(0, min(64, n_train), 8)],  # eval mode: no targets needed
        loss=lambda m, batch: sum(m(list(batch), _targets_to(targets[:len(batch)], batch.device)).values()),
        metric="map50",
    )


def main(argv: list[str] | None = None) -> int:
    import autoprune as ap

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--budget-flops", default="60%")
    p.add_argument("--finetune-epochs", type=float, default=0.5)
    p.add_argument("--results-dir", default="results")
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    spec = task()
    print(f"baseline mAP@0.5 {spec.evaluate(spec.model):.3f}")
    outcome = ap.search_spec(spec, "", {"flops": args.budget_flops}, trials=args.trials,
                             finetune_epochs=args.finetune_epochs, results_dir=args.results_dir, name=args.name)
    print(outcome.counts)
    print(f"left out {len(outcome.left_out)} groups:")
    for group, why in outcome.left_out.items():
        print(f"  {group}: {why}")
    print(outcome.front[["trial", "val_acc", "flops_ratio"]].rename(columns={"val_acc": "map50"}).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
