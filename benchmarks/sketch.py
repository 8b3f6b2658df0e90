"""Time and memory of a Frequent Directions sketch of a wide map (issue 24 item 4).

The map: ``roi_heads.box_head.fc6:in`` of torchvision's ``fasterrcnn_resnet50_fpn`` (random
weights, eval, ``torch.no_grad``, 640x480 random images resized to ``--min-size``), 12,544
wide (its exact float64 covariance is 1.26 GB), 1,000 RoI rows per image. Its rows are
captured from ``--images`` forwards (each timed), then streamed image by image into a
sketch of each rank, as the collector streams them (median of ``--repeats``): seconds per
image, against the forward's, the sketch's error bound on the top normalised eigenvalues
(its shrinkage over its top eigenvalue) and the map's intrinsic dim (a lower bound). Peak
memory of the sketch: in a fresh process per rank, the growth of the resident set while
sketching 1,000 rows already held (what the sketch itself adds).

Usage: ``python benchmarks/sketch.py [--images 4] [--ranks 64,256] [--min-size 800]``
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch
import torchvision

from eigenarch.spectrum.sketch import FrequentDirections
from eigenarch.spectrum.spectra import Sketched

WIDTH = 12544


def capture(images: int, min_size: int) -> tuple[list[torch.Tensor], list[float]]:
    """fc6's input rows of each image, and each forward's seconds."""
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=min_size
    ).eval()
    rows: list[torch.Tensor] = []
    model.roi_heads.box_head.fc6.register_forward_hook(lambda m, a, o: rows.append(a[0].clone()))
    g = torch.Generator().manual_seed(1)
    seconds = []
    with torch.no_grad():
        for _ in range(images):
            image = torch.rand(3, 480, 640, generator=g)
            start = time.perf_counter()
            model([image])
            seconds.append(time.perf_counter() - start)
    return rows, seconds


def resident_mb() -> float:
    """This process's resident set now (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_growth_mb(rank: int) -> float:
    """In this (fresh) process: the growth of the resident set (sampled every millisecond)
    while sketching 1,000 rows already held at ``rank``."""
    rows = torch.rand(1000, WIDTH, generator=torch.Generator().manual_seed(0))
    before, peak, done = resident_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sketch = FrequentDirections(WIDTH, rank)
    sketch.add_gram(rows.T, 1.0)
    sketch.sketch()
    done.set()
    sampler.join()
    return max(peak[0], resident_mb()) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--ranks", default="64,256")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory is not None:
        print(peak_growth_mb(args.memory))
        return
    rows, forward = capture(args.images, args.min_size)
    per_image = statistics.median(forward)
    samples = sum(len(r) for r in rows)
    print(f"fc6:in, {args.images} images ({samples} rows), min_size {args.min_size}, "
          f"{torch.get_num_threads()} torch threads; forward {per_image:.2f} s/image "
          f"(median; min {min(forward):.2f})")  # fmt: skip
    print("| rank | sketch s/image (median) | of the forward | buffer MB | peak growth MB "
          "| error bound | dim >= |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rank in [int(r) for r in args.ranks.split(",")]:
        times = []
        for _ in range(args.repeats):
            sketch = FrequentDirections(WIDTH, rank)
            start = time.perf_counter()
            for part in rows:
                sketch.add_gram(part.T, 1.0)
            b = sketch.sketch()
            times.append((time.perf_counter() - start) / args.images)
        bound = sketch.shrinkage / torch.linalg.eigvalsh(b @ b.T)[-1].item()
        dim = int((Sketched(b, sketch.shrinkage).eigenvalues() > 1e-3).sum())
        command = [sys.executable, __file__, "--memory", str(rank)]
        growth = float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        buffer = 2 * rank * WIDTH * 8 / 2**20
        print(f"| {rank} | {statistics.median(times):.2f} | "
              f"{statistics.median(times) / per_image:.0%} | {buffer:.0f} | {growth:.0f} | "
              f"{bound:.2e} | {dim} |")  # fmt: skip


if __name__ == "__main__":
    main()
