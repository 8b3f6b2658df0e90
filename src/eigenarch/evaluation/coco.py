"""COCO bbox / segm evaluation: torchvision outputs -> COCO results JSON -> ``COCOeval``."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eigenarch.data.coco import load_coco_json
from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_write_json

#: The six summary numbers, in ``COCOeval.stats`` order. -1 means "no ground truth in range".
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def predictions_to_coco(
    predictions: Sequence[dict[str, torch.Tensor]],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    mask_threshold: float = 0.5,
) -> list[dict]:
    """Turn torchvision detector outputs into COCO result entries.

    Args:
        predictions: one dict per image with ``boxes`` (xyxy), ``scores``, ``labels``
            (contiguous, 1-based) and optionally ``masks`` (``(N, 1, H, W)`` probabilities).
        image_ids: the COCO image id of each prediction.
        category_ids: the COCO category id of each contiguous label ``1..K``, in order.
        mask_threshold: probability above which a mask pixel is foreground.
    """
    results = []
    for prediction, image_id in zip(predictions, image_ids, strict=True):
        boxes = prediction["boxes"].detach().cpu().double()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = prediction["scores"].detach().cpu().tolist()
        labels = prediction["labels"].detach().cpu().tolist()
        rles = None
        if "masks" in prediction:
            binary = (prediction["masks"].detach().cpu()[:, 0] > mask_threshold).numpy()
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
        for k, (box, score, label) in enumerate(zip(xywh, scores, labels, strict=True)):
            entry = {
                "image_id": int(image_id),
                "category_id": int(category_ids[label - 1]),
                "bbox": [round(v, 2) for v in box],
                "score": round(float(score), 5),
            }
            if rles is not None:
                rle = rles[k]
                entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            results.append(entry)
    return results


def load_detections(path: str | os.PathLike[str]) -> list[dict]:
    """Read a COCO results JSON (a list of detections) with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise EigenarchError(f"{path}: detections file not found")
    try:
        detections = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EigenarchError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(detections, list):
        raise EigenarchError(f"{path}: expected a JSON list of detections")
    for index, det in enumerate(detections):
        for key in ("image_id", "category_id", "score"):
            if not isinstance(det, dict) or key not in det:
                raise EigenarchError(f"{path}: detection [{index}] lacks key {key!r}")
        if "bbox" not in det and "segmentation" not in det:
            raise EigenarchError(
                f"{path}: detection [{index}] has neither 'bbox' nor 'segmentation'"
            )
    return detections


def _check_against(gt: COCO, detections: list[dict], iou_type: str) -> None:
    key = "bbox" if iou_type == "bbox" else "segmentation"
    for index, det in enumerate(detections):
        if det["image_id"] not in gt.imgs:
            raise EigenarchError(f"detection [{index}]: unknown image_id {det['image_id']}")
        if det["category_id"] not in gt.cats:
            raise EigenarchError(f"detection [{index}]: unknown category_id {det['category_id']}")
        if key not in det:
            raise EigenarchError(f"detection [{index}] lacks {key!r}, needed for {iou_type} AP")


def _results(gt: COCO, detections: list[dict]) -> COCO:
    """A results COCO object; an empty list gives one with no annotations (loadRes cannot)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if detections:
            return gt.loadRes(copy.deepcopy(detections))
        results = COCO()
        results.dataset = {
            "images": list(gt.dataset["images"]),
            "categories": copy.deepcopy(gt.dataset["categories"]),
            "annotations": [],
        }
        results.createIndex()
    return results


def evaluate_detections(
    ground_truth: COCO | str | os.PathLike[str],
    detections: list[dict] | str | os.PathLike[str],
    iou_types: Sequence[str] = ("bbox",),
    image_ids: Sequence[int] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> dict[str, dict[str, float]]:
    """COCO metrics of ``detections`` against ``ground_truth``.

    Args:
        ground_truth: a COCO annotation file or an indexed ``COCO`` object.
        detections: COCO result entries, or the path of a results JSON.
        iou_types: any of ``"bbox"`` and ``"segm"``.
        image_ids: evaluate on these images only (default: every image of the ground truth).
        out: if given, the detections are written there as JSON (atomically).

    Returns:
        ``{iou_type: {"AP": ..., "AP50": ..., "AP75": ..., "APs": ..., "APm": ..., "APl": ...}}``
        with values in [0, 1], or -1 where the ground truth has no object in that size range.
    """
    gt = ground_truth if isinstance(ground_truth, COCO) else load_coco_json(ground_truth)
    if not isinstance(detections, list):
        detections = load_detections(detections)
    if out is not None:
        atomic_write_json(out, detections, indent=None)
    metrics = {}
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise EigenarchError(f"iou type {iou_type!r}: expected one of {', '.join(IOU_TYPES)}")
        _check_against(gt, detections, iou_type)
        evaluator = COCOeval(gt, _results(gt, detections), iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[iou_type] = {
            name: float(value) for name, value in zip(COCO_METRICS, evaluator.stats, strict=False)
        }
    return metrics
