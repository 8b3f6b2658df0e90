"""Time of ``eigenarch dynamics`` and ``eigenarch report`` on a ResNet-50 Faster R-CNN run.

A run folder like ``eigenarch train`` writes: the paper's detector (ResNet-50 widths, GN,
FPN 256, 4conv1fc box head 256 / 1024) with ``--checkpoints`` checkpoints whose weights
drift (each a random perturbation of the last), on the embedded shapes data. Measured:

* ``collect``   -- ``compute_dynamics``: every checkpoint through the data (``--images``
  images, every conv / fc map up to 4096 channels), spectra written under the run;
* ``rethreshold`` -- ``compute_dynamics`` again with a new threshold: spectra reused;
* ``report``    -- ``write_report`` of the run (plots, search, tables, HTML).

Usage: ``python benchmarks/report.py [--images 8] [--checkpoints 3] [--size 256] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from eigenarch.data.coco import CocoDetection
from eigenarch.data.shapes import ShapesConfig, generate_shapes
from eigenarch.report.dynamics import compute_dynamics
from eigenarch.report.html import write_report
from eigenarch.train.checkpoint import (
    DETECTOR_FORMAT,
    detector_from_config,
    save_checkpoint,
)
from eigenarch.train.loop import TrainConfig, model_config
from eigenarch.train.rundir import RunDir


def make_run(root: Path, checkpoints: int, size: int) -> Path:
    data = root / "data"
    generate_shapes(data, ShapesConfig(train=16, val=2, size=size, seed=0), workers=1)
    run = root / "run"
    cfg = TrainConfig(data=str(data), out=str(run), min_size=size, max_size=size,
                      iters=1000 * checkpoints, checkpoint_every=1000)  # fmt: skip
    dataset = CocoDetection.from_root(data, "train", verbose=False)
    config = model_config(cfg, dataset.num_classes)
    torch.manual_seed(0)
    model = detector_from_config(config)
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    state = model.state_dict()
    for k in range(checkpoints):
        payload = {"format": DETECTOR_FORMAT, "config": config, "train": cfg.to_dict(),
                   "data": {}, "model": state, "iteration": 1000 * k}  # fmt: skip
        save_checkpoint(RunDir(run).checkpoint(1000 * k), payload)
        state = {n: v + 0.02 * v.std() * torch.randn_like(v) if v.is_floating_point()
                 and v.numel() > 1 else v for n, v in state.items()}  # fmt: skip
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run = make_run(Path(folder), args.checkpoints, args.size)
        start = time.perf_counter()
        dyn = compute_dynamics(run, images=args.images)
        collect = time.perf_counter() - start
        start = time.perf_counter()
        compute_dynamics(run, images=args.images, threshold=10**-3.5)
        rethreshold = time.perf_counter() - start
        start = time.perf_counter()
        page = write_report([run], Path(folder) / "report")
        report = time.perf_counter() - start
        spectra_mb = sum(p.stat().st_size for p in (run / "spectra").iterdir()) / 2**20
        result = {
            "checkpoints": args.checkpoints,
            "images": args.images,
            "size": args.size,
            "maps": len(dyn.maps),
            "collect_s": round(collect, 1),
            "collect_per_checkpoint_s": round(collect / args.checkpoints, 1),
            "rethreshold_s": round(rethreshold, 1),
            "report_s": round(report, 1),
            "report_html_mb": round(page.stat().st_size / 2**20, 2),
            "spectra_mb_per_checkpoint": round(spectra_mb / args.checkpoints, 1),
        }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
