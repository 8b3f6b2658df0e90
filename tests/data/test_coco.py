"""COCO-format loading: targets for torchvision detectors and a clear error for each bad input."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from eigenarch.data.coco import (
    CocoDetection,
    collate_detection,
    find_split,
    hflip,
    load_coco_json,
)
from eigenarch.errors import EigenarchError


@pytest.fixture
def root(shapes_root, tmp_path):
    """A private copy of the tiny shapes set that a test may break."""
    return shutil.copytree(shapes_root, tmp_path / "data")


def _edit(root, split, change):
    path = root / "annotations" / f"instances_{split}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_targets_follow_the_annotations(shapes_root):
    dataset = CocoDetection.from_root(shapes_root, "train", masks=True)
    assert len(dataset) == 12 and dataset.num_classes == 9
    assert dataset.category_names[0] == "circle"
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.dtype == torch.float32 and image.shape == (3, 128, 128)
        assert 0.0 <= image.min() and image.max() <= 1.0
        anns = dataset.coco.imgToAnns[target["image_id"]]
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        torch.testing.assert_close(target["boxes"], expected.float())
        assert target["labels"].tolist() == [a["category_id"] for a in anns]
        assert target["masks"].shape == (len(anns), 128, 128)
        # Each mask's extent is its box.
        for mask, box in zip(target["masks"], target["boxes"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.int().tolist()


def test_labels_are_contiguous_whatever_the_category_ids(root):
    def renumber(data):
        for category in data["categories"]:
            category["id"] = category["id"] * 10 + 3
        for ann in data["annotations"]:
            ann["category_id"] = ann["category_id"] * 10 + 3

    _edit(root, "val", renumber)
    dataset = CocoDetection.from_root(root, "val")
    labels = torch.cat([dataset[i][1]["labels"] for i in range(len(dataset))])
    assert labels.min() >= 1 and labels.max() <= 8
    assert dataset.category_ids == [i * 10 + 3 for i in range(1, 9)]


def test_real_coco_2017_layout_is_found(root):
    (root / "annotations" / "instances_val.json").rename(
        root / "annotations" / "instances_val2017.json"
    )
    (root / "val").rename(root / "val2017")
    annotations, images = find_split(root, "val")
    assert annotations.name == "instances_val2017.json" and images.name == "val2017"
    assert len(CocoDetection.from_root(root, "val")) == 6


def test_crowd_regions_are_left_out_of_targets(root):
    def crowd_first(data):
        data["annotations"][0]["iscrowd"] = 1

    path = _edit(root, "train", crowd_first)
    first = json.loads(path.read_text())["annotations"][0]
    dataset = CocoDetection.from_root(root, "train")
    index = dataset.image_ids.index(first["image_id"])
    n_anns = len(dataset.coco.imgToAnns[first["image_id"]])
    assert len(dataset[index][1]["boxes"]) == n_anns - 1


def test_non_positive_boxes_are_dropped_counted_and_reported(root, capsys):
    def degenerate(data):
        data["annotations"][0]["bbox"][2] = 0
        data["annotations"][1]["bbox"][3] = -4

    path = _edit(root, "train", degenerate)
    dataset = CocoDetection.from_root(root, "train")
    assert dataset.dropped_boxes == 2
    err = capsys.readouterr().err
    assert "dropped 2 annotation(s)" in err and path.name in err
    total = sum(len(dataset[i][1]["boxes"]) for i in range(len(dataset)))
    assert total == len(dataset.coco.anns) - 2


def test_boxes_outside_the_image_are_clipped_or_dropped_and_reported(root, capsys, run_cli):
    def outside(data):
        width = data["images"][0]["width"]
        data["annotations"][0]["bbox"] = [width + 6.0, 10.0, 20.0, 20.0]  # wholly outside
        data["annotations"][1]["bbox"] = [width - 30.0, -5.0, 50.0, 20.0]  # reaching out

    path = _edit(root, "train", outside)
    dataset = CocoDetection.from_root(root, "train")
    assert (dataset.dropped_boxes, dataset.clipped_boxes) == (1, 1)
    err = capsys.readouterr().err
    assert f"{path}: dropped 1 annotation(s) whose box lies wholly outside its image" in err
    assert f"{path}: clipped 1 box(es) reaching outside their image to it" in err
    for index in range(len(dataset)):
        image, target = dataset[index]
        for boxes in (target["boxes"], hflip(image, target)[1]["boxes"]):
            assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()  # torchvision
            assert boxes.min() >= 0 and (boxes[:, 0::2] <= image.shape[2]).all()
            assert (boxes[:, 1::2] <= image.shape[1]).all()
        assert len(target["boxes"]) == len(target["labels"]) == len(target["area"])
    first = dataset.coco.anns[dataset.coco.dataset["annotations"][1]["id"]]
    width = dataset.coco.imgs[first["image_id"]]["width"]
    boxes = dataset[dataset.image_ids.index(first["image_id"])][1]["boxes"].tolist()
    assert [width - 30.0, 0.0, width, 15.0] in boxes
    result = run_cli("data", "check", root, "--split", "train")
    assert result.code == 0 and "clipped 1 box(es)" in result.stderr
    row = next(line for line in result.stderr.splitlines() if "│ train" in line)
    assert [cell.strip() for cell in row.split("│")[-3:-1]] == ["1", "1"]  # dropped, clipped


BAD_JSON = {
    "missing key": (lambda d: d.pop("categories"), "missing key 'categories'"),
    "entry key": (lambda d: d["images"][2].pop("file_name"), "images[2] lacks key 'file_name'"),
    "annotation key": (
        lambda d: d["annotations"][1].pop("bbox"),
        "annotations[1] lacks key 'bbox'",
    ),
    "unknown category": (
        lambda d: d["annotations"][0].update(category_id=99),
        "annotation 1 has unknown category_id 99",
    ),
    "unknown image": (
        lambda d: d["annotations"][0].update(image_id=1234),
        "annotation 1 has unknown image_id 1234",
    ),
    "bad bbox": (lambda d: d["annotations"][0].update(bbox=[1, 2]), "annotation 1 bbox [1, 2]"),
    "duplicate id": (
        lambda d: d["images"][1].update(id=d["images"][0]["id"]),
        "images id 1 appears more than once",
    ),
    "not an object": (lambda d: d.clear(), "missing key 'images'"),
}


@pytest.mark.parametrize("case", BAD_JSON)
def test_bad_annotation_files_name_the_field(root, case, run_cli):
    change, message = BAD_JSON[case]
    path = _edit(root, "val", change)
    with pytest.raises(EigenarchError, match=re.escape(message)) as info:
        CocoDetection.from_root(root, "val")
    assert str(path) in str(info.value)
    result = run_cli("data", "check", root, "--split", "val")
    assert result.code == 2 and message in result.stderr
    assert result.stderr.strip().startswith("error:")


def test_missing_and_invalid_files(root, run_cli):
    with pytest.raises(EigenarchError, match="no annotations for split 'test'"):
        find_split(root, "test")
    with pytest.raises(EigenarchError, match="annotation file not found"):
        load_coco_json(root / "nope.json")
    with pytest.raises(EigenarchError, match="data folder not found"):
        find_split(root / "absent", "val")
    path = root / "annotations" / "instances_val.json"
    path.write_text('{"images": [}')
    with pytest.raises(EigenarchError, match=r"instances_val.json: invalid JSON \(Expecting"):
        load_coco_json(path)
    result = run_cli("data", "check", root, "--split", "val")
    assert result.code == 2 and "invalid JSON" in result.stderr


def test_missing_image_files_are_named(root, run_cli):
    (root / "val" / "000002.jpg").unlink()
    (root / "val" / "000004.jpg").unlink()
    with pytest.raises(EigenarchError, match="2 image file.*missing: 000002.jpg, 000004.jpg"):
        CocoDetection.from_root(root, "val")
    shutil.rmtree(root / "train")
    with pytest.raises(EigenarchError, match="image folder not found"):
        CocoDetection.from_root(root, "train")


def test_unreadable_image_is_named(root, run_cli):
    (root / "val" / "000003.jpg").write_bytes(b"not a jpeg")
    dataset = CocoDetection.from_root(root, "val")
    with pytest.raises(EigenarchError, match=r"000003.jpg: unreadable image"):
        dataset[3]
    result = run_cli("data", "check", root, "--split", "val")
    assert result.code == 2 and "000003.jpg: unreadable image" in result.stderr


def test_check_counts_crowd_annotations_and_images_without_annotations(root, run_cli):
    def change(data):
        first, second = data["images"][0]["id"], data["images"][1]["id"]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first]
        crowd = [a for a in data["annotations"] if a["image_id"] == second][:2]
        for ann in crowd:
            ann["iscrowd"] = 1

    annotations = json.loads((root / "annotations" / "instances_val.json").read_text())
    path = _edit(root, "val", change)
    left = len(json.loads(path.read_text())["annotations"])
    dataset = CocoDetection.from_root(root, "val")
    assert (dataset.crowd_annotations, dataset.images_without_annotations) == (2, 1)
    assert 0 < left < len(annotations["annotations"])
    result = run_cli("data", "check", root, "--split", "val")
    assert result.code == 0, result.stderr
    row = next(line for line in result.stderr.splitlines() if "│ val" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    images = str(len(annotations["images"]))
    assert cells[:5] == ["val", images, "1", str(left), "2"]  # without annotations, crowd


def test_a_decompression_bomb_is_an_unreadable_image(root, run_cli, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 128 * 128 // 2 - 1)  # PIL refuses > 2x this
    dataset = CocoDetection.from_root(root, "val")
    with pytest.raises(EigenarchError, match=r"000003.jpg: unreadable image \(Image size"):
        dataset[3]


def test_flip_and_collate(shapes_root):
    dataset = CocoDetection.from_root(shapes_root, "val", masks=True)
    image, target = dataset[0]
    flipped, flipped_target = hflip(image, target)
    torch.testing.assert_close(flipped, image.flip(-1))
    boxes = flipped_target["boxes"]
    torch.testing.assert_close(boxes[:, 0], 128 - target["boxes"][:, 2])
    for mask, box in zip(flipped_target["masks"], boxes, strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert [xs.min(), xs.max() + 1] == box[[0, 2]].int().tolist()
    back, back_target = hflip(flipped, flipped_target)
    torch.testing.assert_close(back_target["boxes"], target["boxes"])
    images, targets = collate_detection([dataset[0], dataset[1]])
    assert len(images) == len(targets) == 2
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_detection)
    assert [len(batch[0]) for batch in loader] == [3, 3]
