"""COCO evaluation against hand-made detections whose AP is known."""

from __future__ import annotations

import json

import pytest
import torch

from eigenarch.data.coco import CocoDetection, load_coco_json
from eigenarch.errors import EigenarchError
from eigenarch.evaluation import COCO_METRICS, evaluate_detections, predictions_to_coco


def _ground_truth(tmp_path, boxes):
    """One 200x200 image, one category, a GT box per entry of ``boxes`` (xywh)."""
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 200}],
        "categories": [{"id": 5, "name": "thing"}],
        "annotations": [
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": 5,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
            for k, box in enumerate(boxes)
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


def _det(box, score):
    return {"image_id": 1, "category_id": 5, "bbox": box, "score": score}


def test_perfect_and_empty_detections(tmp_path):
    gt = _ground_truth(tmp_path, [[10, 10, 50, 40], [100, 100, 60, 60]])
    perfect = evaluate_detections(gt, [_det([10, 10, 50, 40], 0.9), _det([100, 100, 60, 60], 0.8)])
    assert list(perfect["bbox"]) == list(COCO_METRICS)
    assert perfect["bbox"]["AP"] == pytest.approx(1.0)
    assert perfect["bbox"]["APm"] == pytest.approx(1.0)  # both boxes are medium-sized
    assert perfect["bbox"]["APs"] == perfect["bbox"]["APl"] == -1.0  # none in range
    nothing = evaluate_detections(gt, [])
    assert nothing["bbox"]["AP"] == 0.0 and nothing["bbox"]["AP50"] == 0.0


def test_half_recall_gives_51_of_101_recall_points(tmp_path):
    # One of two objects found exactly: precision 1 up to recall 0.5, nothing beyond, so
    # 51 of COCO's 101 recall thresholds (0.00 .. 0.50) have precision 1.
    gt = _ground_truth(tmp_path, [[10, 10, 50, 40], [100, 100, 60, 60]])
    metrics = evaluate_detections(gt, [_det([10, 10, 50, 40], 0.9)])
    assert metrics["bbox"]["AP"] == pytest.approx(51 / 101)


def test_false_positive_ranked_first_halves_precision(tmp_path):
    gt = _ground_truth(tmp_path, [[10, 10, 50, 40]])
    metrics = evaluate_detections(gt, [_det([120, 120, 50, 40], 0.9), _det([10, 10, 50, 40], 0.5)])
    assert metrics["bbox"]["AP"] == pytest.approx(0.5)


def test_iou_060_counts_at_three_of_ten_thresholds(tmp_path):
    # Shift a 100x100 box by 25 px: IoU = 75*100 / (2*10000 - 7500) = 0.6.
    gt = _ground_truth(tmp_path, [[50, 50, 100, 100]])
    metrics = evaluate_detections(gt, [_det([75, 50, 100, 100], 0.9)])["bbox"]
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.3)  # thresholds 0.50, 0.55, 0.60


def test_torchvision_outputs_round_trip_to_perfect_bbox_and_segm_ap(shapes_root, tmp_path):
    dataset = CocoDetection.from_root(shapes_root, "val", masks=True)
    predictions, image_ids = [], []
    for index in range(len(dataset)):
        _, target = dataset[index]
        n = len(target["boxes"])
        predictions.append(
            {
                "boxes": target["boxes"],
                "labels": target["labels"],
                "scores": torch.linspace(0.9, 0.5, n),
                "masks": target["masks"][:, None].float() * 0.9,
            }
        )
        image_ids.append(target["image_id"])
    results = predictions_to_coco(predictions, image_ids, dataset.category_ids)
    out = tmp_path / "dets" / "detections.json"
    metrics = evaluate_detections(
        dataset.annotation_file, results, iou_types=("bbox", "segm"), out=out
    )
    assert json.loads(out.read_text()) == results
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
    # Dropping every second detection of each image loses recall and so AP.
    halved = [{k: v[::2] for k, v in p.items()} for p in predictions]
    results = predictions_to_coco(halved, image_ids, dataset.category_ids)
    assert evaluate_detections(dataset.annotation_file, results)["bbox"]["AP"] < 0.9


def test_restricting_to_image_ids(shapes_root):
    gt = load_coco_json(shapes_root / "annotations" / "instances_val.json")
    first = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1}
        for a in gt.imgToAnns[1]
    ]
    assert evaluate_detections(gt, first, image_ids=[1])["bbox"]["AP"] == pytest.approx(1.0)
    assert evaluate_detections(gt, first)["bbox"]["AP"] < 1.0


def test_bad_detections_are_refused(tmp_path, run_cli):
    gt = _ground_truth(tmp_path, [[10, 10, 50, 40]])
    with pytest.raises(EigenarchError, match="unknown image_id 7"):
        evaluate_detections(gt, [{**_det([1, 1, 5, 5], 0.5), "image_id": 7}])
    with pytest.raises(EigenarchError, match="lacks 'segmentation', needed for segm"):
        evaluate_detections(gt, [_det([1, 1, 5, 5], 0.5)], iou_types=("segm",))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [1, 1, 2, 2], "score": 1}]))
    with pytest.raises(EigenarchError, match=r"detection \[0\] lacks key 'category_id'"):
        evaluate_detections(gt, bad)
