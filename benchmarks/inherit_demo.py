"""Resizing the demo's trained base network with its weights (issue 23 item 2): SPEC §6c's
channels and reconstruction against random channels and Torch-Pruning's L1 choice.

Run: ``PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/inherit_demo.py --out DIR``
(``--quick``: the demo's quick sizes). The demo's first five steps (``eigenarch.demo.STEPS``:
data, pre-training, the I and S trainings, their spectra, the search) run at the demo's sizes
and are skipped when ``DIR/steps.json`` has them. Then the fine-tuned I run's last checkpoint
is resized, with the spectra of that checkpoint (the demo's own, on training images), to
ResiaNet S (MACs), ResiaNet I (MACs) and the base network at x0.5. On held-out (val) images,
each resized detector is compared with the original: the relative error of the backbone's
feature maps (the FPN's outputs P2-P6, whose width does not change) and of the detector's
training losses (same seed, so the same anchors and RoIs are sampled).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from eigenarch.data.coco import CocoDetection
from eigenarch.demo import MULTIPLE, STEPS, Demo, DemoSizes
from eigenarch.models.backbone import load_backbone
from eigenarch.models.detector import inherit_detector
from eigenarch.report.compare import final_spectra
from eigenarch.spectrum import Spectra
from eigenarch.train.checkpoint import detector_from_checkpoint
from eigenarch.train.rundir import RunDir
from eigenarch.widths import trace_model

RANDOM_SEEDS = 5


def run_steps(demo: Demo) -> dict:
    """The demo's steps up to the search, resumable through ``steps.json``."""
    path = demo.out / "steps.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    for step in STEPS[:5]:
        if step.name not in done:
            start = time.perf_counter()
            done[step.name] = step.run(demo, done)
            print(f"{step.name}: {time.perf_counter() - start:.0f} s", flush=True)
            path.write_text(json.dumps(done, indent=2))
    return done


def held_out(demo: Demo, count: int) -> tuple[list, list]:
    """The first ``count`` val images and their targets, as training reads them."""
    data = CocoDetection.from_root(demo.data, "val", verbose=False)
    samples = [data[i] for i in range(min(count, len(data)))]
    return [s[0] for s in samples], [s[1] for s in samples]


def shrinking(graph, resized: nn.Module) -> dict[str, int]:
    """``{group: new width}`` of the groups that ``resized`` narrows."""
    modules = dict(resized.named_modules())
    out = {}
    for g in graph.groups:
        width = modules[g.producers[0]].weight.shape[0]
        if width < g.width:
            out[g.name] = width
    return out


def l1_kept(backbone: nn.Module, graph, widths: dict[str, int]) -> dict[str, torch.Tensor]:
    """Torch-Pruning's default choice (magnitude, p = 1): the largest L1 norms of the
    producers' output filters, summed over the group's producers."""
    modules = dict(backbone.named_modules())
    kept = {}
    for g in graph.groups:
        if g.name in widths:
            norms = sum(modules[p].weight.detach().abs().flatten(1).sum(1) for p in g.producers)
            kept[g.name] = norms.topk(widths[g.name]).indices.sort().values
    return kept


def random_kept(graph, widths: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.randperm(g.width, generator=gen)[: widths[g.name]].sort().values
            for g in graph.groups if g.name in widths}  # fmt: skip


def errors(model: nn.Module, reference: dict, images: list, targets: list) -> tuple[float, float]:
    """Relative error of the FPN outputs and of the summed training losses vs ``reference``."""
    with torch.no_grad():
        transformed, _ = model.transform(images)
        maps = model.eval().backbone(transformed.tensors)
        num = sum(float((maps[k] - reference["maps"][k]).square().sum()) for k in maps)
        den = sum(float(reference["maps"][k].square().sum()) for k in maps)
        torch.manual_seed(0)
        loss = float(sum(model.train()(images, targets).values()))
    return (num / den) ** 0.5, abs(loss - reference["loss"]) / reference["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=50, help="held-out val images")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    demo = Demo(args.out, DemoSizes.make(args.quick), jobs=args.jobs)
    steps = run_steps(demo)
    checkpoint = RunDir(demo.run("I")).checkpoints()[-1][1]
    spectra = Spectra.load(final_spectra(demo.run("I")))
    detector, _ = detector_from_checkpoint(checkpoint)
    source = demo.base
    images, targets = held_out(demo, args.images)
    reference = {}
    with torch.no_grad():
        transformed, _ = detector.transform(images)
        reference["maps"] = detector.eval().backbone(transformed.tensors)
        torch.manual_seed(0)
        reference["loss"] = float(sum(detector.train()(images, targets).values()))
    graph = trace_model(detector.backbone, torch.zeros(1, 3, 224, 224))
    specs = steps["search"]["specs"]
    targets_ = {
        "ResiaNet S (MACs)": load_backbone(specs["ResiaNet S (MACs)"]),
        "ResiaNet I (MACs)": load_backbone(specs["ResiaNet I (MACs)"]),
        "uniform x0.5": source.scaled(0.5, MULTIPLE),
    }
    print(f"checkpoint {checkpoint}, {len(images)} val images, base loss {reference['loss']:.4f}")
    for label, target in targets_.items():
        start = time.perf_counter()
        ours = inherit_detector(detector, source, target, spectra)
        seconds = time.perf_counter() - start
        widths = shrinking(graph, ours.backbone)
        rows = {"§6c (pivoted Cholesky + reconstruction)": [errors(ours, reference, images,
                                                                  targets)]}  # fmt: skip
        for name, option in (
            ("§6c, eps 1e-4", {"eps": 1e-4}),
            ("§6c, eps 1e-2", {"eps": 1e-2}),
            ("§6c channels, no reconstruction", {"reconstruct": False}),
        ):
            new = inherit_detector(detector, source, target, spectra, **option)
            rows[name] = [errors(new, reference, images, targets)]  # fmt: skip
        l1 = l1_kept(detector.backbone, graph, widths)
        for name, recon in (("L1, no reconstruction", False), ("L1 + reconstruction", True)):
            new = inherit_detector(detector, source, target, spectra, kept=l1, reconstruct=recon)
            rows[name] = [errors(new, reference, images, targets)]
        for name, recon in (("random, no reconstruction", False),
                            ("random + reconstruction", True)):  # fmt: skip
            rows[name] = [
                errors(inherit_detector(detector, source, target, spectra,
                                        kept=random_kept(graph, widths, seed),
                                        reconstruct=recon), reference, images, targets)
                for seed in range(RANDOM_SEEDS)
            ]  # fmt: skip
        print(f"\n{label}: widths {target.searched_widths()} ({len(widths)} of "
              f"{len(graph.groups)} groups shrink), §6c resize {seconds:.1f} s")  # fmt: skip
        for name, values in rows.items():
            maps, losses = [v[0] for v in values], [v[1] for v in values]
            if len(values) == 1:
                print(f"| {name} | {maps[0]:.3f} | {losses[0]:.3f} |")
            else:
                print(f"| {name} ({RANDOM_SEEDS} seeds) | {statistics.mean(maps):.3f} "
                      f"({min(maps):.3f}-{max(maps):.3f}) | {statistics.mean(losses):.3f} "
                      f"({min(losses):.3f}-{max(losses):.3f}) |")  # fmt: skip


if __name__ == "__main__":
    main()
