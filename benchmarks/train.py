"""Training-step overhead: images/s of eigenarch's Trainer vs. a bare torchvision loop.

Both loops train the same detector (same initial weights), with the same optimizer, on the
same shapes images through a DataLoader with the same number of workers. Ours adds the
per-iteration seeding, the all-rank finiteness check, the learning-rate hook, the metrics
log, the progress bar and the checkpoint hook. Runs alternate (bare, ours, bare, ours, ...)
so that drift in machine load hits both alike; the best repeat of each is reported.

    python benchmarks/train.py [--iters 20] [--repeats 3] [--batch-size 4] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from eigenarch.data.coco import CocoDetection, collate_detection
from eigenarch.data.shapes import ShapesConfig, generate_shapes
from eigenarch.models.detector import build_detector
from eigenarch.train.engine import Trainer
from eigenarch.train.hooks import LRScheduler, MetricsWriter, PeriodicCheckpointer, ProgressBar
from eigenarch.train.loop import IterationBatches
from eigenarch.train.schedule import make_schedule

MODEL = dict(
    kind="faster_rcnn",
    backbone="32,32,64,32,128,64,256,128,512",
    num_classes=9,
    min_size=256,
    max_size=256,
    gn_groups=8,
    fpn_channels=64,
    head_channels=64,
    representation=256,
    anchor_sizes=(16, 32, 64, 128, 256),
    box_batch_size_per_image=64,
    rpn_batch_size_per_image=128,
)


def fresh(state: dict) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build_detector(**MODEL)
    model.load_state_dict(state)
    model.train()
    return model, torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)


def bare(dataset, state, iters, batch_size, workers) -> float:
    """A plain loop: DataLoader -> forward -> sum losses -> backward -> step."""
    model, optimizer = fresh(state)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size, shuffle=True, num_workers=workers, collate_fn=collate_detection
    )
    batches = iter(loader)
    start = time.perf_counter()
    for _ in range(iters):
        images, targets = next(batches)
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return iters * batch_size / (time.perf_counter() - start)


def ours(dataset, state, iters, batch_size, workers, folder: Path) -> float:
    """eigenarch's Trainer with the hooks `eigenarch train` uses (no checkpoint payload)."""
    model, optimizer = fresh(state)
    schedule = make_schedule("1x", batch_size, iterations=iters)
    hooks = [
        LRScheduler(schedule),
        MetricsWriter(folder / "metrics.jsonl"),
        ProgressBar(),
        PeriodicCheckpointer(0),
    ]
    trainer = Trainer(
        model,
        optimizer,
        IterationBatches(dataset, batch_size, 0, 0, iters),
        iters,
        hooks,
        torch.device("cpu"),
        seed=0,
    )
    start = time.perf_counter()
    trainer.train(workers)
    return iters * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_shapes(root / "data", ShapesConfig(train=200, val=0, size=256))
        dataset = CocoDetection.from_root(root / "data", "train")
        torch.manual_seed(0)
        state = build_detector(**MODEL).state_dict()
        bare(dataset, state, 2, args.batch_size, 0)  # warm-up (allocator, oneDNN kernels)
        rates = {"bare": [], "ours": []}
        for repeat in range(args.repeats):
            rates["bare"].append(bare(dataset, state, args.iters, args.batch_size, args.workers))
            rates["ours"].append(
                ours(
                    dataset, state, args.iters, args.batch_size, args.workers, root / f"run{repeat}"
                )
            )
    best = {k: max(v) for k, v in rates.items()}
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "iters": args.iters,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "images_per_s": rates,
        "best": best,
        "ratio": best["ours"] / best["bare"],
        "target": ">= 0.95",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
