"""The embedded shapes data sets: determinism, annotations that match the drawn pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from torchvision.datasets import ImageFolder

from eigenarch.data.shapes import (
    SHAPE_CLASSES,
    ShapesClsConfig,
    ShapesConfig,
    classification_classes,
    generate_shapes,
    generate_shapes_cls,
    render_detection_image,
)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tmp_path):
    cfg = ShapesConfig(train=5, val=3, size=96, seed=7)
    generate_shapes(tmp_path / "a", cfg, workers=1)
    generate_shapes(tmp_path / "b", cfg, workers=2)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 2 + 8
    assert a == b


def test_other_seed_gives_other_images(tmp_path):
    generate_shapes(tmp_path / "a", ShapesConfig(train=2, val=0, size=64, seed=0), workers=1)
    generate_shapes(tmp_path / "b", ShapesConfig(train=2, val=0, size=64, seed=1), workers=1)
    assert _files(tmp_path / "a") != _files(tmp_path / "b")


@pytest.mark.parametrize("index", range(12))
def test_masks_match_drawn_pixels_and_boxes(index):
    cfg = ShapesConfig(size=160)
    image, labels, annotations = render_detection_image(cfg, "train", index)
    assert image.shape == (160, 160, 3) and image.dtype == np.uint8
    assert 1 <= len(annotations) <= 8
    masks = [
        mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], 160, 160)))
        for a in annotations
    ]
    for k, (ann, mask) in enumerate(zip(annotations, masks, strict=True)):
        later = np.zeros_like(mask, dtype=bool)
        for other in masks[k + 1 :]:
            later |= other.astype(bool)
        # What was painted for object k is its mask minus what later objects painted over.
        np.testing.assert_array_equal(labels == k, mask.astype(bool) & ~later)
        ys, xs = np.nonzero(mask)
        x, y = xs.min(), ys.min()
        assert ann["bbox"] == [x, y, xs.max() - x + 1, ys.max() - y + 1]
        assert ann["area"] == int(mask.sum())
        assert ann["iscrowd"] == 0
        assert 1 <= ann["category_id"] <= len(SHAPE_CLASSES)
        # Visible parts hardly overlap: at most a boundary pixel row is painted over.
        assert (mask.astype(bool) & later).sum() <= 0.1 * mask.sum() + 2 * np.sqrt(mask.sum())


def test_objects_vary_in_class_scale_and_overlap():
    cfg = ShapesConfig()
    annotations = [a for i in range(40) for a in render_detection_image(cfg, "train", i)[2]]
    assert {a["category_id"] for a in annotations} == set(range(1, len(SHAPE_CLASSES) + 1))
    areas = np.array([a["area"] for a in annotations])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any()
    assert (areas >= 96**2).any()
    counts = [len(render_detection_image(cfg, "val", i)[2]) for i in range(30)]
    assert min(counts) >= 1 and max(counts) <= 8 and len(set(counts)) >= 4


def test_generated_json_is_coco(shapes_root):
    data = json.loads((shapes_root / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
    assert len(data["images"]) == 12
    ids = [a["id"] for a in data["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    for image in data["images"]:
        assert (shapes_root / "train" / image["file_name"]).is_file()
        assert image["width"] == image["height"] == 128


def test_classification_set_is_an_image_folder(tmp_path):
    classes = generate_shapes_cls(tmp_path, ShapesClsConfig(2, 1, size=32), workers=1)
    assert classes == classification_classes() and len(classes) >= 20
    train = ImageFolder(tmp_path / "train")
    assert sorted(train.classes) == sorted(classes) and len(train) == 2 * len(classes)
    assert len(ImageFolder(tmp_path / "val")) == len(classes)
    assert train[0][0].size == (32, 32)


def test_classification_set_is_deterministic(tmp_path):
    cfg = ShapesClsConfig(1, 1, size=32, seed=3)
    generate_shapes_cls(tmp_path / "a", cfg, workers=1)
    generate_shapes_cls(tmp_path / "b", cfg, workers=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
