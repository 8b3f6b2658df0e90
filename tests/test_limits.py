"""Bounds on numbers read from files (:mod:`eigenarch.limits`): each refused at its edge in
one line naming the value, the limit and how to raise it, before anything is built."""

from __future__ import annotations

import json
import resource
import shutil
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eigenarch.data.coco import OUTSIDE_ENV, CocoDetection, load_coco_json
from eigenarch.errors import EigenarchError
from eigenarch.limits import DEFAULTS, ENV, check_limit, limits, parse_limits
from eigenarch.widths.cost import (
    RESNET50_WIDTHS,
    check_depths,
    check_widths,
    resnet_cost,
    resnet_params,
)


def test_a_limit_holds_at_its_edge_and_names_how_to_raise_it(monkeypatch):
    monkeypatch.setenv(ENV, "")  # restored after the test, as --limit sets it
    assert check_limit("depth", DEFAULTS["depth"], "w.json: depths[3]") == DEFAULTS["depth"]
    with pytest.raises(EigenarchError) as error:
        check_limit("depth", DEFAULTS["depth"] + 1, "w.json: depths[3]")
    assert str(error.value) == (
        "w.json: depths[3] = 257 exceeds the limit of 256 on depth "
        "(eigenarch --limit depth=N raises it for a real extreme)"
    )
    monkeypatch.setenv(ENV, "depth=300, boxes-per-image=5")
    assert limits() == {**DEFAULTS, "depth": 300, "boxes_per_image": 5}
    assert check_limit("depth", 300, "x") == 300


@pytest.mark.parametrize(
    ("items", "message"),
    [(["size=3"], "'size=3': unknown limit; expected one of width, depth"),
     (["depth=0"], "'depth=0': expected NAME=N with N a positive integer"),
     (["depth"], "'depth': expected NAME=N"), (["depth=1e3"], "'depth=1e3': expected")],
)  # fmt: skip
def test_bad_limits_are_one_line(items, message):
    with pytest.raises(EigenarchError, match=f"^--limit {message}"):
        parse_limits(items)


@settings(max_examples=10, deadline=None)
@given(
    st.lists(st.integers(1, 96), min_size=9, max_size=9),
    st.lists(st.integers(1, 3), min_size=4, max_size=4),
)
def test_params_by_formula_equal_the_traced_count(widths, depths):
    assert resnet_params(widths, depths) == resnet_cost(widths, depths).params


def test_widths_depths_and_params_are_bounded(monkeypatch):
    monkeypatch.setenv(ENV, "")  # restored after the test, as --limit sets it
    assert check_depths((3, 4, 6, 256)) == (3, 4, 6, 256)
    with pytest.raises(EigenarchError, match="^depths: stage 5 = 257 exceeds the limit of 256"):
        check_depths((3, 4, 6, 257))
    monkeypatch.setenv(ENV, "width=2048")
    assert check_widths(RESNET50_WIDTHS, (3, 4, 6, 3))[0] == RESNET50_WIDTHS
    with pytest.raises(EigenarchError, match="^widths: o5 = 2,049 exceeds the limit of 2,048"):
        check_widths((*RESNET50_WIDTHS[:8], 2049), (3, 4, 6, 3))
    params = resnet_params(RESNET50_WIDTHS, (3, 4, 6, 3))
    monkeypatch.setenv(ENV, f"params={params}")
    check_widths(RESNET50_WIDTHS, (3, 4, 6, 3))
    monkeypatch.setenv(ENV, f"params={params - 1}")
    with pytest.raises(EigenarchError, match="3,4,6,3: parameters = 25,502,912 exceeds the lim"):
        check_widths(RESNET50_WIDTHS, (3, 4, 6, 3))


@pytest.mark.parametrize(
    ("change", "message"),
    [({"depths": [3, 4, 6, 1000000]}, "depths: stage 5 = 1,000,000 exceeds the limit of 256"),
     ({"widths": [64, 64, 256, 128, 512, 256, 1024, 512, 10**9]},
      "widths: o5 = 1,000,000,000 exceeds the limit of 16,384 on width"),
     ({"widths": [64, 64, 256, 128, 512, 256, 16384, 16384, 16384]},
      "parameters = 9,202,820,288 exceeds the limit of 1,000,000,000 on params")],
)  # fmt: skip
def test_count_refuses_a_hostile_spec_at_once(tmp_path, run_cli, monkeypatch, change, message):
    monkeypatch.setenv(ENV, "")  # restored after the test, as --limit sets it
    spec = tmp_path / "w.json"
    spec.write_text(json.dumps({"widths": list(RESNET50_WIDTHS), **change}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    r = run_cli("count", "--spec", spec)
    assert time.perf_counter() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    lines = r.stderr.strip().splitlines()
    assert r.code == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert lines[0].startswith(f"error: width spec {spec}: ")


def test_a_resnet_whose_one_stage_holds_most_layers_has_four_stages():
    cost = resnet_cost(RESNET50_WIDTHS, (3, 4, 23, 3))  # ResNet-101: layer3 holds 69 of 104
    assert list(cost.stages()) == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]


def test_the_limit_option_raises_a_bound(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv(ENV, "")  # restored after the test, as --limit sets it
    spec = tmp_path / "w.json"
    spec.write_text(json.dumps({"widths": list(RESNET50_WIDTHS), "depths": [257, 1, 1, 1]}))
    assert run_cli("count", "--spec", spec).code == 2
    r = run_cli("--limit", "depth=257", "count", "--spec", spec)
    assert r.code == 0, r.stderr


@pytest.fixture
def root(shapes_root, tmp_path):
    return shutil.copytree(shapes_root, tmp_path / "data")


def _edit(root, change):
    path = root / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def _many_boxes(count):
    def change(data):
        image = data["images"][0]["id"]
        first = next(a for a in data["annotations"] if a["image_id"] == image)
        extra = [{**first, "id": 10**6 + k} for k in range(count - 1)]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != image]
        data["annotations"] += [first, *extra]

    return change


def test_boxes_per_image_are_bounded(root, monkeypatch):
    monkeypatch.setenv(ENV, "")  # restored after the test, as --limit sets it
    path = _edit(root, _many_boxes(1000))
    assert len(CocoDetection(path, root / "val", verbose=False)[0][1]["boxes"]) == 1000
    path = _edit(root, _many_boxes(1001))
    image = json.loads(path.read_text())["images"][0]["id"]
    with pytest.raises(EigenarchError) as error:
        load_coco_json(path)
    assert str(error.value) == (
        f"{path}: image {image}: annotations = 1,001 exceeds the limit of 1,000 on boxes per "
        "image (eigenarch --limit boxes_per_image=N raises it for a real extreme)"
    )
    monkeypatch.setenv(ENV, "boxes_per_image=1001")
    load_coco_json(path)


def test_declared_and_decoded_image_sizes_are_bounded(root, monkeypatch):
    monkeypatch.setenv(ENV, "")  # restored after the test, as --limit sets it
    path = _edit(root, lambda d: d["images"][1].update(width=16384))
    load_coco_json(path)
    path = _edit(root, lambda d: d["images"][1].update(width=20000))
    image = json.loads(path.read_text())["images"][1]["id"]
    with pytest.raises(EigenarchError, match=f"image {image} width = 20,000 exceeds the limit of"):
        load_coco_json(path)
    _edit(root, lambda d: d["images"][1].update(width=128))
    monkeypatch.setenv(ENV, "image_side=127")
    with pytest.raises(EigenarchError, match="^--limit|image .* width = 128 exceeds"):
        CocoDetection.from_root(root, "val")
    monkeypatch.setenv(ENV, "image_side=128")
    dataset = CocoDetection.from_root(root, "val")
    monkeypatch.setenv(ENV, "image_side=127")  # the file decoded: its header is checked first
    with pytest.raises(EigenarchError, match=r"val/\d+.jpg: width = 128 exceeds the limit of 127"):
        dataset.load_image(0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_boxes_are_refused(root, value, run_cli):
    path = _edit(root, lambda d: d["annotations"][2]["bbox"].__setitem__(1, value))
    ann = json.loads(path.read_text())["annotations"][2]
    with pytest.raises(EigenarchError, match=f"annotation {ann['id']} bbox .* finite numbers"):
        load_coco_json(path)
    r = run_cli("data", "check", root, "--split", "val")
    assert r.code == 2 and r.stderr.strip().splitlines()[-1] == (  # brackets kept as they are
        f"error: {path}: annotation {ann['id']} bbox {ann['bbox']!r} (expected [x, y, width, "
        "height], finite numbers)"
    )


def test_an_rle_of_another_size_is_refused_before_it_is_decoded(root):
    def rle(data):
        data["annotations"][0]["segmentation"] = {"size": [10**6, 10**6], "counts": "abc"}

    path = _edit(root, rle)
    dataset = CocoDetection(path, root / "val", masks=True, verbose=False)
    ann = json.loads(path.read_text())["annotations"][0]
    index = dataset.image_ids.index(ann["image_id"])
    with pytest.raises(EigenarchError, match=r"RLE size \[1000000, 1000000\] \(expected its"):
        dataset[index]


@pytest.mark.parametrize("kind", ["parent", "absolute", "link out", "loop"])
def test_a_file_name_outside_the_image_folder_is_refused(root, tmp_path, run_cli, monkeypatch,
                                                         kind):  # fmt: skip
    monkeypatch.setenv(OUTSIDE_ENV, "")  # restored after the test, as the option sets it
    outside = tmp_path / "outside.jpg"
    first = json.loads((root / "annotations" / "instances_val.json").read_text())["images"][0]
    shutil.copy(root / "val" / first["file_name"], outside)
    name = {"parent": "../../outside.jpg", "absolute": str(outside), "link out": "out.jpg",
            "loop": "loop.jpg"}[kind]  # fmt: skip
    if kind == "link out":
        (root / "val" / "out.jpg").symlink_to(outside)
    if kind == "loop":
        (root / "val" / "loop.jpg").symlink_to(root / "val" / "loop2.jpg")
        (root / "val" / "loop2.jpg").symlink_to(root / "val" / "loop.jpg")
    path = _edit(root, lambda d: d["images"][0].update(file_name=name))
    r = run_cli("data", "check", root, "--split", "val")
    lines = r.stderr.strip().splitlines()
    assert r.code == 2 and len(lines) == 1, r.stderr
    where = f"error: {path}: image {first['id']} file_name {name!r}: "
    expected = {"parent": f"outside the image folder {root / 'val'}",
                "absolute": f"outside the image folder {root / 'val'}",
                "link out": f"a symbolic link out of the image folder {root / 'val'}, to {outside}",
                "loop": "a symbolic link loop"}[kind]  # fmt: skip
    assert lines[0].startswith(where + expected), lines[0]
    if kind != "loop":
        assert lines[0].endswith(f"(eigenarch --allow-outside-data reads it: {OUTSIDE_ENV}=1)")
        assert run_cli("--allow-outside-data", "data", "check", root, "--split", "val").code == 0
