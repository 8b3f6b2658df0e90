"""COCO as it really is (issue 25 item 4): non-contiguous category ids, crowd regions with
RLE masks, polygons, an image without annotations, grayscale and RGBA images, a box of zero
width, differing image sizes. ``data check``, ``train`` and ``evaluate`` take them, and
``evaluate``'s numbers are pycocotools' ``COCOeval`` run directly on the same files."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eigenarch.evaluation.coco import COCO_METRICS

from ..train.conftest import TINY_ARGS

#: (file name, PIL mode, width, height) of each image; image 3 has no annotations.
IMAGES = [("a.jpg", "RGB", 128, 96), ("b.jpg", "L", 96, 128), ("c.png", "RGBA", 112, 112),
          ("d.jpg", "RGB", 128, 128)]  # fmt: skip
CATEGORIES = [1, 3, 7, 90]


def _square(x: float, y: float, side: float) -> list[list[float]]:
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    """A COCO-layout folder with every quirk, for the train and val splits alike."""
    root = tmp_path_factory.mktemp("quirky")
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for index, (name, mode, width, height) in enumerate(IMAGES):
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        for split in ("train", "val"):
            (root / split).mkdir(exist_ok=True)
            image.save(root / split / name)
        if index == 3:
            continue  # an image without annotations
        for k, category in enumerate(CATEGORIES[: 3 - index % 2]):
            x, y, side = 8 + 28 * k, 10 + 6 * k, 20 + 4 * k
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": category, "bbox": [x, y, side, side],
                                "area": side * side, "iscrowd": 0,
                                "segmentation": _square(x, y, side)})  # fmt: skip
        crowd = np.zeros((height, width), dtype=np.uint8, order="F")
        crowd[60:90, 60:90] = 1
        rle = mask_utils.encode(crowd)
        rle = {"size": rle["size"], "counts": rle["counts"].decode()}
        annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                            "category_id": 90, "bbox": [60, 60, 30, 30], "area": 900,
                            "iscrowd": 1, "segmentation": rle})  # fmt: skip
    annotations.append({"id": len(annotations) + 1, "image_id": 1, "category_id": 3,
                        "bbox": [40, 40, 0, 12], "area": 0, "iscrowd": 0,
                        "segmentation": _square(40, 40, 0.5)})  # a zero-width box  # fmt: skip
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORIES]}  # fmt: skip
    (root / "annotations").mkdir()
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _detections(root) -> list[dict]:
    """Detections of every kind: near hits (shifted by an image-dependent amount, scored
    in an order unlike their quality), a box on each crowd region (ignored, not a false
    positive), a wrong category, and false positives on the image without annotations."""
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    found = []
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        if w == 0:
            continue
        shift = 0 if ann["iscrowd"] else (ann["id"] % 4) * 2.5
        score = round(0.3 + 0.1 * (ann["id"] % 6), 2)
        found.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                      "bbox": [x + shift, y, w, h], "score": score})  # fmt: skip
    found.append({"image_id": 1, "category_id": 7, "bbox": [8, 10, 20, 20], "score": 0.95})
    found += [{"image_id": 4, "category_id": 1, "bbox": [5 + 20 * k, 5, 15, 15],
               "score": 0.5 + 0.1 * k} for k in range(3)]  # fmt: skip
    return found


def _cocoeval(annotations, detections, iou_type: str = "bbox") -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        evaluator = COCOeval(gt, gt.loadRes(str(detections)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(COCO_METRICS, evaluator.stats[:6].tolist(), strict=True))


def test_data_check_takes_every_quirk(quirky, run_cli):
    r = run_cli("data", "check", quirky, "--split", "val", "--masks")
    assert r.code == 0, r.stderr
    from eigenarch.data.coco import CocoDetection

    dataset = CocoDetection.from_root(quirky, "val", masks=True, verbose=False)
    assert dataset.category_ids == CATEGORIES and dataset.num_classes == 5
    assert len(dataset) == 4 and dataset.dropped_boxes == 1
    for index, (_, _, width, height) in enumerate(IMAGES):
        image, target = dataset[index]
        assert image.shape == (3, height, width)
        assert target["masks"].shape == (len(target["boxes"]), height, width)
        assert sorted(target["labels"].tolist()) == ([1, 2, 3] if index in (0, 2) else
                                                     [1, 2] if index == 1 else [])  # fmt: skip


def test_evaluate_equals_cocoeval_run_directly(quirky, tmp_path, run_cli):
    detections = tmp_path / "dets.json"
    detections.write_text(json.dumps(_detections(quirky)))
    out = tmp_path / "ev"
    r = run_cli("evaluate", "--data", quirky, "--detections", detections, "--out", out)
    assert r.code == 0, r.stderr
    ours = json.loads((out / "metrics.json").read_text())["bbox"]
    direct = _cocoeval(quirky / "annotations" / "instances_val.json", detections)
    assert 0.2 < direct["AP"] < 0.9, direct  # neither 0 nor 1: every quirk weighs in
    assert {k: ours[k] for k in COCO_METRICS} == pytest.approx(direct, abs=1e-12)


@pytest.mark.parametrize("kind", ["faster_rcnn", "mask_rcnn"])
def test_train_and_evaluate_take_every_quirk(quirky, tmp_path, run_cli, kind):
    run = tmp_path / "run"
    train = ["train", "--data", quirky, "--out", run, *TINY_ARGS, "--kind", kind,
             "--iters", "2", "--batch-size", "2", "--checkpoint-every", "2"]  # fmt: skip
    r = run_cli(*train)
    assert r.code == 0, r.stderr
    out = tmp_path / "ev"
    r = run_cli("evaluate", "--run", run, "--out", out)
    assert r.code == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    annotations = quirky / "annotations" / "instances_val.json"
    for iou_type in ("bbox", "segm") if kind == "mask_rcnn" else ("bbox",):
        direct = _cocoeval(annotations, out / "detections.json", iou_type)
        ours = {k: metrics[iou_type][k] for k in COCO_METRICS}
        assert ours == pytest.approx(direct, abs=1e-12)
