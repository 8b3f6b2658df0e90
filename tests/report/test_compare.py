"""``eigenarch compare`` on saved spectra with known differences; parts and stages."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from PIL import Image

from eigenarch.cli.report import joined_names
from eigenarch.report.compare import (
    PARTS,
    Comparison,
    MapComparison,
    compare_spectra,
    fpn_levels,
    map_part,
    map_stage,
)
from eigenarch.spectrum import Spectra
from eigenarch.spectrum.collector import HOOKED_TYPES

# map -> (channels, dim in I, dim in S)
KNOWN = {
    "backbone.body.conv1:out": (16, 12, 12),
    "backbone.body.layer1.0.conv1:in": (16, 10, 14),
    "backbone.body.layer1.0.conv3:out": (32, 20, 30),
    "backbone.body.layer4.0.conv1:in": (64, 20, 60),
    "backbone.body.layer4.0.conv2:in": (32, 8, 8),
    "backbone.fpn.inner_blocks.0.0:in": (32, 24, 16),
    "backbone.fpn.layer_blocks.3.0:out": (16, 16, 0),
    "rpn.head.conv.0.0:in": (16, 9, 3),
    "roi_heads.box_head.5:in": (64, 40, 30),
    "roi_heads.box_predictor.cls_score:in": (32, 5, 10),
}


def spectra_with(dims: dict[str, tuple[int, int]]) -> Spectra:
    """Diagonal covariances with exactly ``d`` eigenvalues above 1e-3 of the largest (d = 0:
    a dead map)."""
    covs = {}
    for name, (channels, d) in dims.items():
        values = torch.full((channels,), 1e-4 if d else 0.0, dtype=torch.float64)
        values[:d] = torch.logspace(0, -2.9, d, dtype=torch.float64)
        covs[name] = torch.diag(values) if d else torch.zeros(channels, channels)
    return Spectra(covs, {name: 7 for name in dims}, {"test": True})


@pytest.fixture
def saved(tmp_path):
    a = spectra_with({n: (c, i) for n, (c, i, _) in KNOWN.items()}).save(tmp_path / "I.sft")
    b = spectra_with({n: (c, s) for n, (c, _, s) in KNOWN.items()}).save(tmp_path / "S.sft")
    return a, b


def test_compare_json_per_map_part_and_stage(run_cli, saved):
    r = run_cli("compare", *saved, "--names", "I", "S", "--json", "--top", "3")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["names"] == ["I", "S"] and out["threshold"] == 1e-3
    rows = {m["name"]: m for m in out["maps"]}
    assert list(rows) == list(KNOWN)
    for name, (channels, i, s) in KNOWN.items():
        assert (rows[name]["channels"], rows[name]["a"], rows[name]["b"]) == (channels, i, s)
        assert rows[name]["diff"] == i - s
        assert rows[name]["ratio"] == (i / s if s else None)
    parts = {p["part"]: (p["maps"], p["channels"], p["a"], p["b"], p["diff"]) for p in out["parts"]}
    assert parts == {
        "backbone": (5, 160, 70, 124, -54),
        "FPN": (2, 48, 40, 16, 24),
        "RPN": (1, 16, 9, 3, 6),
        "heads": (2, 96, 45, 40, 5),
    }
    stages = [(s["part"], s["stage"], s["a"], s["b"]) for s in out["stages"]]
    assert stages == [
        ("backbone", "stem", 12, 12),
        ("backbone", "layer1", 30, 44),
        ("backbone", "layer4", 28, 68),
        ("FPN", "P2", 24, 16),
        ("FPN", "P5", 16, 0),
        ("RPN", "conv", 9, 3),
        ("heads", "box_head", 40, 30),
        ("heads", "box_predictor", 5, 10),
    ]
    # |I - S| / channels: layer4.0.conv1:in 40/64, P5 16/16, rpn 6/16, ...
    assert out["most_different"] == [
        "backbone.fpn.layer_blocks.3.0:out",
        "backbone.body.layer4.0.conv1:in",
        "rpn.head.conv.0.0:in",
    ]


def test_names_take_either_form(run_cli, saved):
    for args in (
        (*saved, "--names", "I,S"),
        ("--names", "I", "S", *saved),
        (saved[0], "--names", "I", "S", saved[1]),
    ):
        r = run_cli("compare", *args, "--json", "--top", "1")
        assert r.code == 0, (args, r.stderr)
        assert json.loads(r.stdout)["names"] == ["I", "S"]
    r = run_cli("compare", *saved, "--names", "I,S,T")
    assert r.code == 2 and "--names I,S,T: expected two labels" in r.stderr
    # report: one label per run, either form, before or after the runs.
    valued = {"--out", "--stages"}
    for args in (
        ["r1", "r2", "--out", "o", "--names", "I", "S"],
        ["--names", "I", "S", "r1", "r2", "--out", "o"],
        ["r1", "r2", "--names", "I,S", "--out", "o"],
    ):
        joined = joined_names(args, valued, None)
        assert joined[joined.index("--names") + 1] == "I,S"
        assert [a for a in joined if a.startswith("r")] == ["r1", "r2"]


def test_compare_tables_threshold_and_plot(run_cli, saved, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    r = run_cli("compare", *saved, "--plot", tmp_path / "fig5", "--stages", "layer1,layer4")
    assert r.code == 0, r.stderr
    assert "summed intrinsic dimensionality per part" in r.stdout
    assert "per stage" in r.stdout and "differ most" in r.stdout
    line = next(x for x in r.stdout.splitlines() if "layer4.0.conv1:in" in x)
    assert [c.strip() for c in line.split("│")[2:7]] == ["64", "20", "60", "-40", "0.333"]
    assert "dims I " in r.stdout and "dims S " in r.stdout  # labels from the file names
    with Image.open(tmp_path / "fig5.png") as image:
        assert image.size[0] > 300 and image.size[1] > 300
    assert (tmp_path / "fig5.svg").read_text().lstrip().startswith("<?xml")
    # A lower threshold counts more eigenvalues (the 1e-4 floor of each live map).
    r = run_cli("compare", *saved, "--threshold", "1e-5", "--json")
    rows = {m["name"]: m for m in json.loads(r.stdout)["maps"]}
    assert rows["backbone.body.layer4.0.conv1:in"]["a"] == 64
    r = run_cli("compare", *saved, "--plot", tmp_path / "x", "--stages", "layer9")
    assert r.code == 2 and "--stages layer9" in r.stderr and "layer4" in r.stderr


def test_compare_refuses_different_architectures(run_cli, saved, tmp_path):
    other = dict(KNOWN)
    del other["rpn.head.conv.0.0:in"]
    other["backbone.body.layer4.0.conv1:in"] = (48, 20, 20)
    other["extra.conv:out"] = (8, 1, 1)
    path = spectra_with({n: (c, i) for n, (c, i, _) in other.items()}).save(tmp_path / "X.sft")
    r = run_cli("compare", saved[0], path, "--names", "I", "X")
    assert r.code == 2
    message = r.stderr.replace("\n", "")
    assert "I and X are not the same architecture" in message
    assert "1 map(s) only in I: rpn.head.conv.0.0:in" in message
    assert "1 map(s) only in X: extra.conv:out" in message
    assert "backbone.body.layer4.0.conv1:in (64 vs 48 channels)" in message
    assert "Traceback" not in r.stderr


def test_compare_run_folders(run_cli, analysed_runs, tmp_path):
    r = run_cli("compare", analysed_runs["A"], analysed_runs["B"], "--json")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["names"] == ["A", "B"]
    final = compare_spectra(
        Spectra.load(analysed_runs["A"] / "spectra/iter_0000040.safetensors"),
        Spectra.load(analysed_runs["B"] / "spectra/iter_0000040.safetensors"),
    )
    assert [(m["a"], m["b"]) for m in out["maps"]] == [(m.a, m.b) for m in final.maps]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "iter_0000007.pt").write_bytes(b"")
    r = run_cli("compare", analysed_runs["A"], tmp_path)
    assert r.code == 2 and "no spectra of its last checkpoint (iteration 7)" in r.stderr
    r = run_cli("compare", analysed_runs["A"], tmp_path / "missing.sft")
    assert r.code == 2 and "missing.sft: spectra file not found" in r.stderr


def test_parts_and_stages_of_a_torchvision_detector():
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3
    )
    paths = [p for p, m in model.named_modules() if isinstance(m, HOOKED_TYPES)]
    stages = {}
    for path in paths:
        name = f"{path}:in"
        assert map_part(name) in PARTS
        stages.setdefault(map_part(name), []).append(map_stage(name))
    assert set(stages["backbone"]) == {"stem", "layer1", "layer2", "layer3", "layer4"}
    assert stages["backbone"].count("stem") == 1
    assert set(stages["FPN"]) == {"P2", "P3", "P4", "P5"}
    assert set(stages["RPN"]) == {"conv", "cls_logits", "bbox_pred"}
    assert set(stages["heads"]) == {"box_head", "box_predictor"}
    assert map_stage("layer3.5.conv2:out") == "layer3" and map_stage("fc:in") == "fc"
    assert map_part("layer3.5.conv2:out") == "backbone"


@pytest.mark.parametrize(
    ("builder", "fpn", "heads"),
    [
        ("fasterrcnn_resnet50_fpn", ["P2", "P3", "P4", "P5"], {"box_head", "box_predictor"}),
        ("retinanet_resnet50_fpn", ["P3", "P4", "P5", "P6", "P7"],
         {"classification_head", "regression_head"}),
        ("fcos_resnet50_fpn", ["P3", "P4", "P5", "P6", "P7"],
         {"classification_head", "regression_head"}),
    ],
)  # fmt: skip
@pytest.mark.parametrize("sides", [("in", "out"), ("in",), ("out",)])
def test_fpn_levels_and_heads_of_each_detector_family(builder, fpn, heads, sides):
    model = torchvision.models.get_model(builder, weights=None, weights_backbone=None,
                                         num_classes=3)  # fmt: skip
    widths = {}
    for path, module in model.named_modules():
        if isinstance(module, HOOKED_TYPES):
            linear = isinstance(module, torch.nn.Linear)
            widths.update({
                f"{path}:in": module.in_features if linear else module.in_channels,
                f"{path}:out": module.out_features if linear else module.out_channels,
            })  # fmt: skip
    widths = {n: c for n, c in widths.items() if n.rpartition(":")[2] in sides}
    levels = fpn_levels(widths)
    stages = {}
    for name in widths:
        stages.setdefault(map_part(name), []).append(map_stage(name, levels))
    assert sorted(set(stages["FPN"])) == fpn
    assert set(stages["heads"]) == heads  # RetinaNet's and FCOS's heads are not "backbone"
    assert set(stages["backbone"]) == {"stem", "layer1", "layer2", "layer3", "layer4"}
    # inner_blocks.0 reads layer2 in RetinaNet and FCOS: P3.
    first = next(n for n in widths if "fpn.inner_blocks.0" in n)
    assert map_stage(first, levels) == fpn[0]
    maps = [MapComparison(n, c, 1, 1) for n, c in widths.items()]
    grouped = Comparison(("A", "B"), 1e-3, maps).groups(by_stage=True)
    assert sorted({g.stage for g in grouped if g.part == "FPN"}) == fpn


def test_fpn_levels_follow_the_widths_not_the_index():
    # An FPN over layer1..layer3 (returned_layers [1, 2, 3]): P2..P4, not P3..P5.
    body = torchvision.models.detection.backbone_utils.resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, returned_layers=[1, 2, 3]
    )
    widths = {}
    for path, module in body.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            widths[f"backbone.{path}:in"] = module.in_channels
            widths[f"backbone.{path}:out"] = module.out_channels
    levels = fpn_levels(widths)
    assert levels == {0: 2, 1: 3, 2: 4}
    assert map_stage("backbone.fpn.layer_blocks.2.0:out", levels) == "P4"
