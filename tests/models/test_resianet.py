"""ResiaNet builder: torchvision compatibility, normalisations, init, width specs."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from eigenarch.errors import EigenarchError
from eigenarch.models import (
    ResiaNet,
    ResiaNetBackbone,
    resianet,
)
from eigenarch.models.detector import as_backbone
from eigenarch.widths import RESNET50_WIDTHS

SMALL = (32, 32, 64, 32, 96, 64, 128, 64, 160)


def test_torchvision_resnet50_state_dict_loads_strictly_and_matches():
    reference = torchvision.models.resnet50().eval()
    model = resianet(RESNET50_WIDTHS, norm="bn").eval()
    result = model.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(model.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_frozen_bn_loads_torchvision_weights():
    model = resianet(norm="frozen_bn")
    model.load_state_dict(torchvision.models.resnet50().state_dict(), strict=True)
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 1 + 3 * 16 + 4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_group_norm_default_and_custom_groups():
    model = resianet(SMALL, (1, 2, 1, 1))
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 32 for m in norms)
    narrow = resianet((8, 8, 16, 8, 24, 16, 32, 16, 40), (1, 1, 1, 1), gn_groups=8)
    assert {m.num_groups for m in narrow.modules() if isinstance(m, nn.GroupNorm)} == {8}
    assert narrow(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_group_norm_needs_divisible_widths():
    with pytest.raises(EigenarchError, match="width o2=48 is not a multiple of the 32 GroupNorm"):
        resianet((32, 32, 48, 32, 64, 32, 64, 32, 64))
    resianet((32, 32, 48, 32, 64, 32, 64, 32, 64), norm="bn")  # fine without GroupNorm


def test_any_widths_shapes_and_names():
    widths, depths = (24, 8, 40, 16, 56, 8, 72, 40, 88), (2, 1, 3, 1)
    model = resianet(widths, depths, norm="bn", num_classes=7)
    assert model.stage_channels == (40, 56, 72, 88)
    assert model.widths == widths and model.depths == depths
    out = model(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, 7)
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert {"conv1", "layer1.1.conv3", "layer3.0.downsample.0", "layer3.2.conv2"} <= names
    assert "layer3.1.downsample.0" not in names
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
    assert model.layer1[0].downsample[0].stride == (1, 1)
    assert model.layer4[0].downsample[0].stride == (2, 2)
    features = model.layer1(
        model.maxpool(model.relu(model.bn1(model.conv1(torch.zeros(1, 3, 64, 64)))))
    )
    assert features.shape == (1, 40, 16, 16)


def test_he_normal_init():
    torch.manual_seed(0)
    model = resianet(norm="gn")
    conv = model.layer3[0].conv2  # 256 -> 256, 3x3: fan_out = 2304
    std = conv.weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)
    gn = model.layer3[0].bn2
    assert torch.equal(gn.weight, torch.ones(256)) and torch.equal(gn.bias, torch.zeros(256))


def test_unknown_norm():
    with pytest.raises(EigenarchError, match="norm 'ln' is not one of gn, bn, frozen_bn"):
        resianet(norm="ln")


def test_build_from_width_spec_file(tmp_path):
    spec = ResiaNetBackbone(SMALL, (1, 1, 2, 1), "gn", 16, {"command": "test"})
    path = spec.save(tmp_path / "w.json")
    torch.manual_seed(0)
    from_file = as_backbone(path).build(num_classes=5)
    torch.manual_seed(0)
    direct = resianet(SMALL, (1, 1, 2, 1), "gn", 16, num_classes=5)
    assert isinstance(from_file, ResiaNet)
    a, b = from_file.state_dict(), direct.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert {m.num_groups for m in from_file.modules() if isinstance(m, nn.GroupNorm)} == {16}
