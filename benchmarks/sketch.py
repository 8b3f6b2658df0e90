"""Time and memory of a Frequent Directions sketch of a wide map (issue 24 item 4).

The map: ``roi_heads.box_head.fc6:in`` of torchvision's ``fasterrcnn_resnet50_fpn`` (random
weights, eval, ``torch.no_grad``), 12,544 wide (its exact float64 covariance is 1.26 GB),
1,000 RoI rows per image. Each configuration runs in a fresh process: rank 0 is the plain
forward (no collector), a rank ``l > 0`` the forward under a collector of that one map
sketched at rank ``l``. Reported per configuration: wall time of the whole pass, its
per-image cost over the plain forward, the process's peak RSS (and over the plain
forward's), and the sketch's error bound on the top normalised eigenvalues (its shrinkage
over its top eigenvalue).

Usage: ``python benchmarks/sketch.py [--images 4] [--ranks 0,64,256] [--min-size 800]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torchvision

from eigenarch.spectrum import SpectrumCollector

MAP = "roi_heads.box_head.fc6:in"


def one(rank: int, images: int, min_size: int) -> dict[str, float]:
    """One configuration, in this process."""
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=min_size
    ).eval()
    g = torch.Generator().manual_seed(1)
    batches = [[torch.rand(3, 480, 640, generator=g)] for _ in range(images)]
    collector = SpectrumCollector(model, include=[MAP + "*"], sketch_rank=rank) if rank else None
    start = time.perf_counter()
    with torch.no_grad():
        if collector is None:
            for batch in batches:
                model(batch)
        else:
            with collector:
                for batch in batches:
                    model(batch)
    result = {"seconds": time.perf_counter() - start}
    if collector is not None:
        spectra = collector.spectra()
        assert collector.sketched == [MAP], collector.sketched
        sketch = spectra._sketches[MAP]
        top = float(torch.linalg.eigvalsh(sketch.rows @ sketch.rows.T)[-1])
        result.update(error_bound=sketch.shrinkage / top, dim=spectra.intrinsic_dim(MAP),
                      samples=spectra.samples(MAP))  # fmt: skip
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--ranks", default="0,64,256")
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.images, args.min_size)))
        return
    rows = {}
    for rank in [int(r) for r in args.ranks.split(",")]:
        command = [sys.executable, __file__, "--one", str(rank), "--images", str(args.images),
                   "--min-size", str(args.min_size)]  # fmt: skip
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows[rank] = json.loads(out.splitlines()[-1])
    plain = rows.get(0)
    print(f"{MAP}, {args.images} images, min_size {args.min_size}, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    print("| rank | wall s | s/image over plain | peak RSS MB | over plain MB | error bound | "
          "dim (lower bound) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rank, row in rows.items():
        extra = (row["seconds"] - plain["seconds"]) / args.images if plain and rank else 0.0
        more = row["peak_rss_mb"] - plain["peak_rss_mb"] if plain else 0.0
        bound = f"{row['error_bound']:.2e}" if rank else "-"
        print(f"| {rank or 'plain'} | {row['seconds']:.1f} | {extra:.2f} | "
              f"{row['peak_rss_mb']:.0f} | {more:.0f} | {bound} | {row.get('dim', '-')} |")  # fmt: skip


if __name__ == "__main__":
    main()
