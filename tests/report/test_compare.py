"""Parts, stages and FPN levels of a detector's maps, as the I vs S comparison groups them."""

from __future__ import annotations

import pytest
import torch
import torchvision

from eigenarch.report.compare import (
    PARTS,
    Comparison,
    MapComparison,
    fpn_levels,
    map_part,
    map_stage,
)
from eigenarch.spectrum.collector import HOOKED_TYPES


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
