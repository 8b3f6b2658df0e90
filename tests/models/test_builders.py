"""Any backbone by name: searched, written as a spec, rebuilt, and under a detector."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from eigenarch.errors import EigenarchError
from eigenarch.models import (
    BackboneOptions,
    load_backbone,
    parse_backbone,
)
from eigenarch.models.detector import build_detector
from eigenarch.widths import graph_cost, trace_model
from eigenarch.widths.cost import tie_widths
from eigenarch.widths.ias import group_maps

from ..widths.test_resize import LISTED


def own_norm(name):
    return None if name.startswith(("convnext", "detnet")) else "bn"


def random_dims(graph, seed=0, prefix=""):
    rng = random.Random(seed)
    dims = {}
    for units in group_maps(graph).units:
        for producer, readers in units:
            dims[f"{prefix}{producer}:out"] = rng.randint(1, 400)
            for reader in readers:
                dims[f"{prefix}{reader}:in"] = rng.randint(1, 400)
    return dims


@pytest.mark.parametrize("name", LISTED)
def test_search_on_every_listed_backbone_fits_and_no_width_can_grow(name):
    spec = parse_backbone(name, BackboneOptions(own_norm(name)))
    graph, ties = spec.graph() if hasattr(spec, "builder") else (None, None)
    if graph is None:  # resnet50 is a ResiaNet: the nine-width case of the same search
        from eigenarch.widths.cost import resnet_graph

        graph, ties = resnet_graph(spec.depths)
    q = math.lcm(8, *(t.divisor for t in ties))
    dims = random_dims(graph, seed=len(name))
    for metric, target in (("macs", "base"), ("params", 3_000_000)):
        result, found = spec.search(dims, target, metric, q, "in")
        k = ("macs", "params").index(metric)
        budget = result.target
        assert (result.macs, result.params)[k] <= budget
        assert (found.cost().macs, found.cost().params) == (result.macs, result.params)
        assert all(w % q == 0 for w in result.widths)
        for i in range(len(ties)):
            grown = list(result.widths)
            grown[i] += q
            assert graph_cost(graph, tie_widths(graph, ties, grown))[k] > budget, ties[i].name
        if target == "base":
            assert budget == (result.base_macs, result.base_params)[k]


def test_spec_file_rebuilds_the_searched_network(tmp_path):
    spec = parse_backbone("mobilenet_v3_large", BackboneOptions("bn"))
    graph, _ = spec.graph()
    result, found = spec.search(random_dims(graph), "base", "macs", 8, "in", {"x": 1})
    path = found.save(tmp_path / "mbv3.json", result.to_dict())
    loaded = load_backbone(path)
    assert loaded == found and loaded.source == {"x": 1}
    saved = json.loads(path.read_text())
    assert saved["format"] == "eigenarch.backbone" and saved["macs"] == result.macs
    model = loaded.build()
    rebuilt = trace_model(model, torch.zeros(1, 3, 64, 64))
    assert rebuilt.widths() == result.group_widths
    assert graph_cost(trace_model(model, torch.zeros(1, 3, 224, 224)))[0] == result.macs


def test_fpn_laterals_read_the_stage_they_are_wired_to():
    spec = parse_backbone("regnet_y_400mf", BackboneOptions("bn"))
    graph, ties = spec.graph()
    dims = random_dims(graph, prefix="backbone.body.")
    plain, _ = spec.search(dims, "base", "macs", 8, "in")
    dims["backbone.fpn.inner_blocks.2.0:in"] = 5000  # reads block3's output
    dims["backbone.fpn.layer_blocks.0.0:in"] = 9000  # reads no backbone group
    wired, _ = spec.search(dims, "base", "macs", 8, "in")
    changed = [
        t for t, a, b in zip(wired.ties, plain.adjusted, wired.adjusted, strict=True) if a != b
    ]
    assert changed == ["trunk_output.block3.block3-0.proj.0"]
    assert wired.intrinsic["trunk_output.block3.block3-5.f.c.0"] == 5000


@pytest.mark.parametrize(
    "p6, stage",
    [(False, "block2"), (True, "block3")],  # P2-P5 (Faster R-CNN), P3-P5 (RetinaNet)
)
def test_fpn_laterals_read_the_level_of_the_detectors_pyramid(p6, stage):
    spec = parse_backbone("regnet_y_400mf", BackboneOptions("bn"))
    graph, ties = spec.graph()
    dims = random_dims(graph, prefix="backbone.body.")
    plain, _ = spec.search(dims, "base", "macs", 8, "in")
    for i in range(3 if p6 else 4):
        dims[f"backbone.fpn.inner_blocks.{i}.0:in"] = 5000 if i == 1 else 1
    for conv in ("p6", "p7") if p6 else ():
        dims[f"backbone.fpn.extra_blocks.{conv}:in"] = 9000  # reads the FPN's P5
    wired, _ = spec.search(dims, "base", "macs", 8, "in")
    changed = [
        t for t, a, b in zip(wired.ties, plain.adjusted, wired.adjusted, strict=True) if a != b
    ]
    assert changed == [f"trunk_output.{stage}.{stage}-0.proj.0"]


@pytest.mark.parametrize(
    "name, norm, gn_groups",
    [("mobilenet_v3_large", "gn", 8), ("convnext_tiny", None, 32), ("efficientnet_b0", "bn", 32),
     ("resnet18", "gn", 32)],
)  # fmt: skip
def test_detector_on_a_builder_backbone_trains_a_step(name, norm, gn_groups):
    torch.manual_seed(0)
    model = build_detector(
        "faster_rcnn", parse_backbone(name, BackboneOptions(norm, gn_groups)), num_classes=3,
        min_size=96,
        max_size=96, gn_groups=8, fpn_channels=32, head_channels=32, representation=64,
    )  # fmt: skip
    features = model.backbone(torch.zeros(1, 3, 96, 96))
    assert model.roi_heads.box_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[-1] for f in features.values()] == [24, 12, 6, 3, 2]
    target = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])}
    losses = model.train()([torch.rand(3, 96, 96)], [target])
    assert all(torch.isfinite(v) for v in losses.values())


def test_detnet_detector_p6_feeds_the_rpn_only():
    backbone = parse_backbone("detnet59", BackboneOptions("gn"))
    model = build_detector("faster_rcnn", backbone, num_classes=3,
                           min_size=64, max_size=64)  # fmt: skip
    features = model.backbone(torch.zeros(1, 3, 64, 64))
    assert list(features) == ["0", "1", "2", "3", "4"]  # P2..P6, no max-pooled level
    assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 4, 4]
    pool = model.roi_heads.box_roi_pool
    assert pool.featmap_names == ["0", "1", "2", "3"]
    assert pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 16]  # P4 and P5 both at stride 16
    boxes = [torch.tensor([[0, 0, s, s] for s in (16.0, 112.0, 224.0, 448.0, 1000.0)])]
    assert pool.map_levels(boxes).tolist() == [0, 1, 2, 3, 3]  # P5 pools the largest boxes
    model.eval()(  # a forward keeps them (torchvision only infers them when unset)
        [torch.rand(3, 64, 64)]
    )
    assert pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 16]
    assert len(model.rpn.anchor_generator.sizes) == 5
    assert model.backbone.body.layer5[0].conv2.dilation == (2, 2)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "convnext_tiny"])
def test_detector_spectra_search_keeps_the_classifier_head_it_cannot_measure(name):
    spec = parse_backbone(name, BackboneOptions(None if name.startswith("convnext") else "bn"))
    graph, ties = spec.graph()
    dims = {k: v for k, v in random_dims(graph, prefix="backbone.body.").items()
            if ".classifier." not in k}  # fmt: skip  # a detector has no classifier head
    dims["backbone.fpn.inner_blocks.3.0:in"] = 50
    result, found = spec.search(dims, "base", "macs", 8, "in")
    head = [t for t in ties if all(graph.groups[i].name.startswith("classifier") for i in t.groups)]
    assert result.fixed == tuple(t.name for t in head)
    for tie in head:
        for i in tie.groups:
            assert found.groups[graph.groups[i].name] == graph.groups[i].width
    assert result.macs <= result.base_macs


def test_a_multiple_the_gn_groups_cannot_split_names_both_ways_out():
    """``search --model resnet34 --multiple 8`` under the default 32 GroupNorm groups."""
    with pytest.raises(EigenarchError, match=r"must be multiples of 32 .*--multiple 32 .*"
                       r"fewer --gn-groups \(dividing 8\) or --norm bn"):  # fmt: skip
        parse_backbone("resnet34").search({"conv1:out": 3}, "base", "macs", 8)
    parse_backbone("resnet34", BackboneOptions("gn", 8)).graph()  # 8 groups: 8 divides
