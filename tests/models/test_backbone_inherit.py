"""``Backbone.inherit`` and ``inherit_detector``: every backbone kind resized with its weights
(SPEC section 6c), the whole detector with its FPN laterals as consumers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eigenarch.errors import EigenarchError
from eigenarch.models import BuilderBackbone, build_detector
from eigenarch.models.detector import inherit_detector
from eigenarch.models.resianet import ResiaNetBackbone
from eigenarch.spectrum.collector import SpectrumCollector
from eigenarch.widths.inherit import reconstruct_weight

WIDTHS = (16, 16, 32, 16, 32, 32, 64, 32, 64)
HALF = (8, 8, 16, 8, 16, 16, 32, 16, 32)
DETECTOR = dict(num_classes=3, min_size=64, max_size=64, gn_groups=8, fpn_channels=32,
                head_channels=32, representation=64)  # fmt: skip


def resianet(widths=WIDTHS, depths=(1, 1, 1, 1)) -> ResiaNetBackbone:
    return ResiaNetBackbone(widths, depths, "gn", 8)


def own_spectra(model: nn.Module, x):
    with SpectrumCollector(model.eval()) as collector, torch.no_grad():
        model(x)
    return collector.spectra()


def kept_rows(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """The rows of ``old`` that ``new``'s rows are (the channels a producer kept)."""
    return torch.tensor([next(i for i, row in enumerate(old) if torch.equal(row, r)) for r in new])


def test_a_resianet_classifier_at_its_own_widths_is_the_same_function():
    torch.manual_seed(0)
    source, x = resianet(), torch.randn(8, 3, 64, 64)
    model = source.build(10).eval()
    spectra = own_spectra(model, x)
    same = source.inherit(model, source, spectra)
    with torch.no_grad():
        assert torch.equal(same.eval()(x), model(x))
    half = source.inherit(model, resianet(HALF), spectra)
    assert half.layer4[0].conv3.weight.shape == (32, 16, 1, 1) and half.fc.weight.shape == (10, 32)
    kept = kept_rows(half.conv1.weight, model.conv1.weight)  # the stem's selection
    assert len(kept.unique()) == 8 and torch.equal(half.bn1.weight, model.bn1.weight[kept])


def test_the_fpn_laterals_are_consumers_reconstructed_from_their_own_maps():
    torch.manual_seed(0)
    source = resianet()
    detector = build_detector("faster_rcnn", source, **DETECTOR).eval()
    for norm in detector.modules():  # distinct entries, so that the kept ones can be told
        if isinstance(norm, nn.GroupNorm):
            nn.init.uniform_(norm.weight, 0.5, 1.5)
    spectra = own_spectra(detector, [torch.rand(3, 64, 64) for _ in range(6)])
    resized = inherit_detector(detector, source, resianet(HALF), spectra)
    old, new = detector.backbone, resized.backbone
    kept = kept_rows(new.body.layer4[0].bn3.weight[:, None], old.body.layer4[0].bn3.weight[:, None])
    lateral = "backbone.fpn.inner_blocks.3.0"
    expected = reconstruct_weight(old.fpn.inner_blocks[3][0].weight,
                                  spectra.covariance(f"{lateral}:in"), kept)  # fmt: skip
    assert torch.equal(new.fpn.inner_blocks[3][0].weight, expected)
    assert not torch.equal(expected, old.fpn.inner_blocks[3][0].weight[:, kept])  # not W_K
    for name, value in detector.state_dict().items():  # heads and FPN outputs as they were
        if not name.startswith("backbone."):
            assert torch.equal(resized.state_dict()[name], value), name
    assert torch.equal(new.fpn.layer_blocks[3][0].weight, old.fpn.layer_blocks[3][0].weight)
    same = inherit_detector(detector, source, source, spectra)
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = same.backbone(image), detector.backbone(image)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_target_of_other_depths_or_another_kind_is_refused_in_one_line():
    torch.manual_seed(0)
    source, x = resianet(), torch.randn(4, 3, 64, 64)
    model = source.build(10)
    spectra = own_spectra(model, x)
    with pytest.raises(EigenarchError, match=r"has no layer layer1.1.conv3 of the analysed "
                       r"model's group 'layer1.0.conv3' \(other depths"):  # fmt: skip
        resianet(depths=(1, 1, 1, 1)).inherit(resianet(depths=(2, 1, 1, 1)).build(10), source,
                                              spectra)  # fmt: skip
    with pytest.raises(EigenarchError, match="into resnet18 .*another kind of backbone"):
        source.inherit(model, BuilderBackbone("resnet18", norm="bn"), spectra)


@pytest.mark.parametrize("name", ["resnet18", "timm:mobilenetv3_small_050"])
def test_builder_and_timm_backbones_resize_to_their_scaled_groups(name):
    torch.manual_seed(0)
    source = BuilderBackbone(name, norm="bn" if name == "resnet18" else None)
    model = source.build().eval()
    x = torch.randn(4, 3, 64, 64)
    spectra = own_spectra(model, x)
    target = source.scaled(0.5, 8)
    resized = source.inherit(model, target, spectra)  # the shapes are target.build()'s
    shapes = {k: v.shape for k, v in target.build().state_dict().items()}
    assert {k: v.shape for k, v in resized.state_dict().items()} == shapes
    assert shapes != {k: v.shape for k, v in model.state_dict().items()}
    same = source.inherit(model, source, spectra)
    with torch.no_grad():
        assert torch.equal(same.eval()(x), model(x))
