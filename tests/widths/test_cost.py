"""Cost model: exact ResNet-50 figures, the paper's Table 1, and two independent counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from eigenarch.errors import EigenarchError
from eigenarch.models import resianet
from eigenarch.widths import (
    RESNET50_WIDTHS,
    model_cost,
    resnet_cost,
    round_width,
    uniform_widths,
)


def hook_count(model: nn.Module, image_size: int) -> dict[str, tuple[int, int]]:
    """``{module name: (macs, params)}`` of every conv and linear, measured in a forward."""
    counts: dict[str, tuple[int, int]] = {}

    def hook(name):
        def record(module, inputs, output):
            weight = module.weight.numel()  # = I * O * K * K / groups
            spatial = output.shape[-1] * output.shape[-2] if output.dim() == 4 else 1
            counts[name] = (weight * spatial, weight)

        return record

    handles = [
        m.register_forward_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for h in handles:
        h.remove()
    return counts


def test_resnet50_exact():
    cost = resnet_cost(RESNET50_WIDTHS)
    assert (cost.macs, cost.params) == (4_089_184_256, 25_502_912)
    assert round(cost.macs / 1e9, 3) == 4.089 and round(cost.params / 1e6, 2) == 25.50
    assert sum(m for m, _ in cost.stages().values()) == cost.macs
    assert sum(p for _, p in cost.stages().values()) == cost.params
    assert list(cost.stages()) == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert len(cost.layers) == 1 + 3 * 16 + 4 + 1


@pytest.mark.parametrize(
    "widths, macs_g, params_m",
    [
        (RESNET50_WIDTHS, 4.09, 25.5),  # ResNet-50*
        ((64, 64, 224, 128, 576, 256, 1152, 544, 896), 4.07, 22.0),  # ResiaNet I3-50 (MACs)
        ((64, 64, 256, 160, 608, 288, 1216, 544, 960), 4.92, 24.7),  # ResiaNet I3-50 (params)
    ],
)
def test_paper_table1(widths, macs_g, params_m):
    cost = resnet_cost(widths)
    assert round(cost.macs / 1e9, 2) == macs_g
    assert round(cost.params / 1e6, 1) == params_m


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_resnet50_matches_torchvision_hooks_and_fvcore():
    from fvcore.nn import FlopCountAnalysis

    model = resianet(norm="bn")
    cost = resnet_cost(RESNET50_WIDTHS)
    measured = hook_count(model, 224)
    assert measured == {layer.name: (layer.macs, layer.params) for layer in cost.layers}
    flops = FlopCountAnalysis(model.eval(), torch.zeros(1, 3, 224, 224))
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = flops.by_operator()
    assert by_op["conv"] + by_op["linear"] == cost.macs
    weights = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )
    assert weights == cost.params


widths_st = st.lists(st.integers(1, 24), min_size=9, max_size=9).map(
    lambda ws: tuple(8 * w for w in ws)
)
depths_st = st.lists(st.integers(1, 3), min_size=4, max_size=4).map(tuple)


@settings(max_examples=8, deadline=None)
@given(widths=widths_st, depths=depths_st, size=st.sampled_from([32, 57, 64]))
def test_any_widths_match_hook_count(widths, depths, size):
    model = resianet(widths, depths, norm="bn", num_classes=10)
    cost = resnet_cost(widths, depths, num_classes=10, image_size=size)
    assert hook_count(model, size) == {
        layer.name: (layer.macs, layer.params) for layer in cost.layers
    }


@settings(max_examples=50, deadline=None)
@given(widths=widths_st, depths=depths_st, index=st.integers(0, 8))
def test_cost_grows_with_every_width(widths, depths, index):
    grown = list(widths)
    grown[index] += 8
    small, big = resnet_cost(widths, depths), resnet_cost(grown, depths)
    assert big.macs > small.macs and big.params > small.params


def test_rounding_rule():
    assert round_width(47.9, 32) == 32
    assert round_width(48, 32) == 64  # halves round up
    assert round_width(1, 32) == 32  # never below q
    assert round_width(0, 8) == 8
    assert round_width(80, 32) == 96
    assert round_width(79.99, 32) == 64


def test_uniform_multiplier_baseline():
    assert uniform_widths(1.0) == RESNET50_WIDTHS
    assert uniform_widths(0.75) == (64, 64, 192, 96, 384, 192, 768, 384, 1536)
    assert uniform_widths(0.5, multiple=8) == (32, 32, 128, 64, 256, 128, 512, 256, 1024)
    with pytest.raises(EigenarchError, match="multiplier"):
        uniform_widths(0)


@pytest.mark.parametrize(
    "widths, depths, match",
    [
        ((64,) * 8, (3, 4, 6, 3), "expected 9"),
        ((64,) * 9, (3, 4, 6), "expected 4"),
        ((64,) * 8 + (0,), (3, 4, 6, 3), "width 0 is not a positive integer"),
        ((64,) * 8 + (64.5,), (3, 4, 6, 3), "width 64.5"),
        ((64,) * 9, (3, 4, 0, 3), "depth 0"),
    ],
)
def test_bad_shapes(widths, depths, match):
    with pytest.raises(EigenarchError, match=match):
        resnet_cost(widths, depths)


class GroupedNet(nn.Module):
    """A stem, a grouped conv (4 groups), a depthwise and a pointwise conv, and an fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pointwise = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(self.depthwise(self.grouped(self.stem(x)).relu()).relu())
        return self.fc(x.mean((2, 3)))


def test_grouped_and_depthwise_convs_divide_by_their_groups():
    # at 32 px every conv after the stem has 16 x 16 outputs; params = O * I/g * K * K
    params = {"stem": 16 * 3 * 9, "grouped": 32 * (16 // 4) * 9, "depthwise": 32 * 1 * 9,
              "pointwise": 8 * 32, "fc": 10 * 8}  # fmt: skip
    cost = model_cost(GroupedNet(), image_size=32)
    assert {layer.name: layer.params for layer in cost.layers} == params
    assert {layer.name: layer.macs for layer in cost.layers} == {
        name: p * (1 if name == "fc" else 256) for name, p in params.items()
    }
    assert (cost.macs, cost.params) == (544_848, 2_208)
    with FlopCounterMode(display=False) as flops:
        GroupedNet()(torch.zeros(1, 3, 32, 32))
    assert flops.get_total_flops() == 2 * cost.macs  # conv + fc: 2 FLOPs per MAC, no biases
