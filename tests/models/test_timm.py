"""timm backbones (``timm:NAME``) as builders: counted, searched, resized and trained like
torchvision's, through the same traced graph; never downloaded."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from eigenarch.errors import EigenarchError
from eigenarch.models import BuilderBackbone, build_detector, parse_backbone


def flop_macs(model: torch.nn.Module) -> int:
    """Half of ``FlopCounterMode``'s count of a 224-pixel forward: the MACs it counts."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    return counter.get_total_flops() // 2


def some_dims(backbone, seed: int = 0) -> dict[str, int]:
    graph, _ = backbone.graph()
    rng = random.Random(seed)
    return {f"{c}:in": rng.randint(max(1, g.width // 4), g.width)
            for g in graph.groups for c in g.consumers}  # fmt: skip


@pytest.mark.parametrize(
    "name, multiple",
    [("resnet50d", 8), ("efficientnet_b0", 8), ("convnext_atto", 8),
     ("mobilenetv3_large_100", 8), ("regnety_016", 24)],
)  # fmt: skip
def test_a_timm_backbone_counts_searches_resizes_and_detects(name, multiple):
    backbone = parse_backbone(f"timm:{name}")
    assert backbone.norm is None  # timm's own normalisation
    base = backbone.cost()
    assert abs(base.macs - flop_macs(backbone.build())) <= 0.01 * base.macs
    result, found = backbone.search(some_dims(backbone), "base", "macs", multiple, "in")
    assert found.builder == f"timm:{name}" and found.groups and result.macs <= base.macs
    resized = found.build()
    assert found.cost().macs == result.macs  # the searched widths, as built
    assert abs(found.cost().macs - flop_macs(resized)) <= 0.01 * found.cost().macs
    detector = build_detector("faster_rcnn", found, num_classes=3, min_size=64, max_size=64,
                              gn_groups=8, fpn_channels=32, head_channels=32,
                              representation=64)  # fmt: skip
    assert detector.backbone.out_channels == 32
    assert len(detector.eval()([torch.rand(3, 64, 64)])) == 1


def test_the_fpn_levels_are_timm_feature_info_modules():
    from eigenarch.models import feature_levels

    model = parse_backbone("timm:efficientnet_b0").build()
    names, channels = feature_levels(model)
    info = model.feature_info[-4:]
    assert names == [i["module"] for i in info] and channels == [i["num_chs"] for i in info]
    assert channels[-1] == 320  # the last stage, not the 1280-wide head the pooling reads


@pytest.mark.parametrize(
    "text, message",
    [
        ("timm:res2net50_26w_4s", "(a concatenation); its widths cannot be searched"),
        ("timm:cspresnet50", "are split into parts that different layers read (a chunk"),
        ("timm:no_such_model", "timm has no model 'no_such_model'"),
        ("timm:vit_tiny_patch16_224", "is a transformer, not resizable: its attention (blocks.0"),
    ],
)
def test_timm_backbones_the_graph_cannot_resize_are_refused_in_one_line(text, message):
    with pytest.raises(EigenarchError, match=re.escape(message)) as info:
        parse_backbone(text).cost()
    assert "\n" not in str(info.value)


def test_timm_norm_is_its_own_and_multiple_of_grouped_convs_is_named():
    with pytest.raises(EigenarchError, match="sets its own normalisation: --norm gn"):
        BuilderBackbone("timm:resnet50d", {}, "gn").cost()
    backbone = parse_backbone("timm:regnety_016")
    with pytest.raises(EigenarchError, match="must be multiples of 24"):
        backbone.search(some_dims(backbone), "base", "macs", 8, "in")


def test_count_and_train_a_timm_backbone_from_the_command_line(run_cli, shapes_root, tmp_path):
    r = run_cli("count", "--model", "timm:mobilenetv3_large_100", "--json")
    assert r.code == 0, r.stderr
    model = parse_backbone("timm:mobilenetv3_large_100").build()
    assert json.loads(r.stdout)["macs"] == pytest.approx(flop_macs(model), rel=0.01)
    r = run_cli("train", "--data", shapes_root, "--out", tmp_path / "run", "--backbone",
                "timm:mobilenetv3_large_100", "--iters", "2", "--batch-size", "1",
                "--fpn-channels", "32", "--head-channels", "32", "--gn-groups", "8",
                "--representation", "64", "--min-size", "64", "--max-size", "64",
                "--workers", "0")  # fmt: skip
    assert r.code == 0, r.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["backbone"] == "timm:mobilenetv3_large_100"
    assert (tmp_path / "run" / "checkpoints" / "iter_0000002.pt").is_file()
