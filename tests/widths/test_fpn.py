"""The analysed detector's FPN: its layout from the maps, traced as torchvision builds it."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import detection

from eigenarch.errors import EigenarchError
from eigenarch.widths import trace_model
from eigenarch.widths.fpn import FpnLayout, fpn_layout
from eigenarch.widths.ias import _resnet_fpn_graph

LEVELS = (256, 512, 1024, 2048)  # a ResNet-50's four feature levels


def _fpn_readers(graph):
    """``{first body producer: FPN convs reading its group}``."""
    return {
        g.producers[0]: sorted(c for c in g.consumers if c.startswith("fpn."))
        for g in graph.groups
        if g.producers[0].startswith("body.")
    }


@pytest.mark.parametrize(
    "builder, layout",
    [
        (detection.fasterrcnn_resnet50_fpn, None),
        (detection.retinanet_resnet50_fpn, FpnLayout((1, 2, 3), "p5")),
        (detection.retinanet_resnet50_fpn_v2, FpnLayout((1, 2, 3), "c5")),
        (detection.fcos_resnet50_fpn, FpnLayout((1, 2, 3), "p5")),
    ],
)
def test_traced_layout_reads_what_torchvisions_detector_reads(builder, layout):
    model = builder(weights=None, weights_backbone=None, num_classes=3)
    real = _fpn_readers(trace_model(model.backbone, torch.zeros(1, 3, 64, 64)))
    assert _fpn_readers(_resnet_fpn_graph((3, 4, 6, 3), layout)) == real
    first = "body.layer1.0.conv3"
    assert real[first] == ([] if layout else ["fpn.inner_blocks.0.0"])


def _names(blocks, p6=False, prefix="backbone.fpn."):
    names = [f"{prefix}{kind}_blocks.{i}.0:{side}" for i in blocks for kind in ("inner", "layer")
             for side in ("in", "out")]  # fmt: skip
    if p6:
        names += [f"{prefix}extra_blocks.{p}:{s}" for p in ("p6", "p7") for s in ("in", "out")]
    return names


@pytest.mark.parametrize(
    "names, channels, expected",
    [
        (_names(range(4)), None, FpnLayout((0, 1, 2, 3))),  # Faster / Mask / Keypoint R-CNN
        (_names([2]), None, FpnLayout((0, 1, 2, 3))),  # some laterals only: still P2-P5
        (_names(range(3), p6=True), None, FpnLayout((1, 2, 3), "p5")),  # RetinaNet, FCOS
        (_names(range(3), p6=True), {"backbone.fpn.extra_blocks.p6:in": 2048,
         "backbone.fpn.extra_blocks.p6:out": 256}, FpnLayout((1, 2, 3), "c5")),  # RetinaNet v2
        (_names(range(3), p6=True), {"backbone.fpn.extra_blocks.p6:in": 256,
         "backbone.fpn.extra_blocks.p6:out": 256}, FpnLayout((1, 2, 3), "p5")),
        (_names(range(3)), {f"backbone.fpn.inner_blocks.{i}.0:in": w
         for i, w in enumerate((256, 1024, 2048))}, FpnLayout((0, 2, 3))),  # by channels
        (_names(range(2)), None, FpnLayout((0, 1, 2, 3))),
        (_names(range(2), prefix="fpn."), {"fpn.inner_blocks.0.0:in": 1024}, FpnLayout((2, 3))),
        ([], {f"fpn.inner_blocks.{i}.0:in": w for i, w in enumerate((512, 1024, 2048))},
         FpnLayout((1, 2, 3))),  # the widths name laterals the dims leave out
    ],
)  # fmt: skip
def test_layout_from_names_and_channels(names, channels, expected):
    assert fpn_layout(names, LEVELS, channels) == expected


@pytest.mark.parametrize(
    "names, channels, match",
    [
        (_names(range(5)), None, "maps name 5 FPN laterals .* has 4 feature levels"),
        (_names(range(3)), {"backbone.fpn.inner_blocks.0.0:in": 300},
         r"inner_blocks.0.0:in \(300\) match no feature levels .* \[256, 512, 1024, 2048\]"),
        (_names(range(3), p6=True), {"backbone.fpn.extra_blocks.p6:in": 999,
         "backbone.fpn.inner_blocks.0.0:out": 256}, "p6:in has 999 channels: neither"),
    ],
)  # fmt: skip
def test_layout_errors(names, channels, match):
    with pytest.raises(EigenarchError, match=match):
        fpn_layout(names, LEVELS, channels)


def test_retinanet_spectra_search_reads_the_laterals_where_they_are_wired():
    """Spectra of torchvision's RetinaNet: layer4's only reader is P5's lateral, layer1's
    output no lateral reads (by index, inner_blocks.0's 512 channels would land there)."""
    from eigenarch.spectrum import SpectrumCollector
    from eigenarch.widths import search_widths

    torch.manual_seed(0)
    model = detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3,
                                             min_size=64, max_size=64).eval()  # fmt: skip
    with SpectrumCollector(model, include=["backbone.*"], sides=("in",)) as collector:
        with torch.no_grad():
            model([torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))])
    spectra = collector.spectra()
    dims = spectra.intrinsic_dims()
    channels = {name: spectra.channels(name) for name in spectra.names}
    for given in (None, channels):
        found = search_widths(dims, "resnet50", channels=given).intrinsic
        assert found["layer4.2.conv3"] == dims["backbone.fpn.inner_blocks.2.0:in"]
        layer2 = ("backbone.body.layer2.0.conv1:in", "backbone.body.layer2.0.downsample.0:in")
        assert found["layer1.2.conv3"] == max(dims[n] for n in layer2)
