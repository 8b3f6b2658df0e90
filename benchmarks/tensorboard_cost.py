"""What TensorBoard's event files cost a training run.

1. The same tiny detector run (``train_detector``, in one process) with and without
   ``tensorboard``, alternating (on, off, on, off, ...) so that drift in machine load hits both
   alike; wall seconds of each run, its final evaluation included.
2. The writer hook alone: opening (with the import of tensorboard), one step of the 8 scalars
   a Faster R-CNN step writes, closing.

    python benchmarks/tensorboard_cost.py [--iters 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from eigenarch.data.shapes import ShapesConfig, generate_shapes
from eigenarch.train.loop import TrainConfig, train_detector
from eigenarch.train.tensorboard import TensorBoardWriter

TINY = dict(
    backbone="16,16,32,16,32,32,64,32,64", gn_groups=8, fpn_channels=32, head_channels=32,
    representation=64, min_size=128, max_size=128, anchor_sizes=(16, 32, 64, 128, 256),
    roi_batch=64, rpn_batch=64, workers=0, batch_size=2, lr=0.01,
)  # fmt: skip


def run_seconds(data: Path, out: Path, iters: int, tensorboard: bool) -> float:
    cfg = TrainConfig(data=str(data), out=str(out), iters=iters, checkpoint_every=iters // 2,
                      tensorboard=tensorboard, **TINY)  # fmt: skip
    start = time.perf_counter()
    train_detector(cfg)
    return time.perf_counter() - start


def hook_costs(folder: Path, steps: int = 2000) -> dict[str, float]:
    """Seconds to open the writer, to write one step, to close it."""
    hook = TensorBoardWriter(folder)
    trainer = SimpleNamespace(iter=0, metrics={}, data_time=0.01, step_time=0.2)
    start = time.perf_counter()
    hook.before_train(trainer)
    opened = time.perf_counter() - start
    losses = ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
    start = time.perf_counter()
    for step in range(steps):
        trainer.iter = step
        trainer.metrics = {"iteration": step + 1, **dict.fromkeys(losses, 0.5), "lr": 0.01}
        hook.after_step(trainer)
    per_step = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    hook.after_train(trainer)
    return {"open_s": opened, "step_s": per_step, "close_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_shapes(root / "data", ShapesConfig(train=12, val=6, size=128, seed=0), workers=1)
        hook = hook_costs(root / "hook")  # first: it pays tensorboard's import
        seconds: dict[str, list[float]] = {"on": [], "off": []}
        for k in range(args.repeats):
            for mode in ("on", "off"):
                out = root / f"{mode}{k}"
                seconds[mode].append(run_seconds(root / "data", out, args.iters, mode == "on"))
        print(json.dumps({"iters": args.iters, "run_s": seconds, "hook": hook}, indent=2))


if __name__ == "__main__":
    main()
