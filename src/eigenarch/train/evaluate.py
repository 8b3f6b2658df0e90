"""Detector inference over a data set and COCO evaluation, sharded across ranks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from eigenarch.data.coco import CocoDetection, collate_detection
from eigenarch.distributed import all_gather_objects, is_main, rank, world_size
from eigenarch.evaluation import evaluate_detections, predictions_to_coco
from eigenarch.io import atomic_write_json
from eigenarch.progress import progress_bar
from eigenarch.train.rundir import RunDir


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: CocoDetection,
    device: torch.device | str = "cpu",
    indices: Sequence[int] | None = None,
    batch_size: int = 2,
    description: str = "evaluate",
    progress: bool = True,
) -> list[dict]:
    """COCO result entries of ``model`` on ``dataset`` (or on the images at ``indices``)."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    with progress_bar(disable=not (progress and is_main())) as bar:
        task = bar.add_task(description, total=len(indices))
        for start in range(0, len(indices), batch_size):
            images, targets = collate_detection(
                [dataset[i] for i in indices[start : start + batch_size]]
            )
            outputs = model([image.to(device) for image in images])
            results += predictions_to_coco(
                outputs, [t["image_id"] for t in targets], dataset.category_ids
            )
            bar.advance(task, len(images))
    model.train(was_training)
    return results


def evaluate_model(
    model: nn.Module,
    dataset: CocoDetection,
    device: torch.device | str = "cpu",
    iou_types: Sequence[str] = ("bbox",),
    out_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 2,
) -> dict[str, dict[str, float]]:
    """COCO metrics of ``model`` on ``dataset``; every rank gets the same dict.

    Under torch.distributed each rank runs its share of the images; the detections are
    gathered in data-set order, so the result equals a single-process evaluation. With
    ``out_dir``, rank 0 writes ``detections.json`` and ``metrics.json`` there.
    """
    mine = range(rank(), len(dataset), world_size())
    shards = all_gather_objects(predict(model, dataset, device, mine, batch_size))
    position = {image_id: k for k, image_id in enumerate(dataset.image_ids)}
    results = sorted((r for shard in shards for r in shard), key=lambda r: position[r["image_id"]])
    metrics = {}
    if is_main():
        out = Path(out_dir) if out_dir is not None else None
        metrics = evaluate_detections(
            dataset.coco,
            results,
            iou_types,
            image_ids=dataset.image_ids,
            out=out / "detections.json" if out else None,
        )
        if out is not None:
            atomic_write_json(out / RunDir.METRICS, metrics)
    return all_gather_objects(metrics)[0]
