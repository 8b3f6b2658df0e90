"""Resizing any listed backbone: widths as asked, a forward, cost equal to the flop counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from eigenarch.errors import EigenarchError
from eigenarch.models.builders import classifier_by_name
from eigenarch.widths import graph_cost, trace_model
from eigenarch.widths.resize import resize

#: The backbones issue 13 lists (one of the other RegNets, one EfficientNet per size).
LISTED = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "wide_resnet50_2",
    "mobilenet_v3_large", "regnet_y_400mf", "regnet_x_800mf", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "convnext_tiny", "detnet59",
)  # fmt: skip
X = torch.zeros(1, 3, 64, 64)


def flop_count(model: nn.Module) -> tuple[int, int]:
    """``(MACs, conv + fc weights)`` measured by torch's flop counter and the parameters."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(X)
    weights = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )
    return counter.get_total_flops() // 2, weights


def scaled(graph, factor: float) -> dict[str, int]:
    """Every group at ``factor`` times its width, rounded to 8 times its divisor."""
    out = {}
    for g in graph.groups:
        step = 8 * g.divisor
        out[g.name] = max(step, round(g.width * factor / step) * step)
    return out


@pytest.mark.parametrize("name", LISTED)
def test_resized_backbone_has_the_widths_runs_and_costs_what_the_counter_counts(name):
    model = classifier_by_name(name, "bn" if not name.startswith(("convnext", "detnet")) else None)
    graph = trace_model(model, X, name=name)
    assert graph_cost(graph) == flop_count(model)
    for factor in (0.5, 1.5):
        widths = scaled(graph, factor)
        new = resize(model, widths, X, graph=graph)
        assert type(new) is type(model)
        modules = dict(new.named_modules())
        for group in graph.groups:
            for producer in group.producers:
                m = modules[producer]
                out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
                assert out == widths[group.name], (producer, out)
        assert new(X).shape == (1, 1000)
        assert graph_cost(graph, [widths[g.name] for g in graph.groups]) == flop_count(new)


def test_depthwise_stays_depthwise_and_grouped_keeps_its_group_width():
    model = classifier_by_name("mobilenet_v3_large", "bn")
    graph = trace_model(model, X)
    new = resize(model, {"features.4.block.0.0": 96}, X, graph=graph)
    dw = new.features[4].block[1][0]
    assert dw.in_channels == dw.out_channels == dw.groups == 96
    rx = classifier_by_name("resnext50_32x4d", "bn")
    graph = trace_model(rx, X)
    new = resize(rx, {"layer2.0.conv1": 512}, X, graph=graph)
    conv2 = new.layer2[0].conv2
    assert conv2.in_channels // conv2.groups == 256 // 32  # group width 8 kept
    with pytest.raises(EigenarchError, match=r"not a multiple of 8 \(the group width"):
        resize(rx, {"layer2.0.conv1": 100}, X, graph=graph)


def test_groupnorm_groups_must_divide_and_unknown_groups_are_named():
    model = classifier_by_name("resnet18", "gn", gn_groups=16)
    graph = trace_model(model, X)
    with pytest.raises(EigenarchError, match=r"width 24 of group 'conv1' is not a multiple of 16"):
        resize(model, {"conv1": 24}, X, graph=graph)
    new = resize(model, {"conv1": 48}, X, graph=graph)
    assert new.bn1.num_channels == 48 and new.bn1.num_groups == 16
    with pytest.raises(EigenarchError, match="has no channel group 'layer9.0.conv1'"):
        resize(model, {"layer9.0.conv1": 48}, X, graph=graph)


def test_a_linear_layer_on_a_flattened_map_reads_width_times_positions():
    model = classifier_by_name("vgg11", "bn")
    graph = trace_model(model, X)
    fc = next(layer for layer in graph.layers if layer.name == "classifier.0")
    assert (fc.in_channels, fc.in_scale) == (512 * 7 * 7, 49)
    widths = {g.name: g.width // 2 for g in graph.groups}
    new = resize(model, widths, X, graph=graph)
    assert new.classifier[0].in_features == 256 * 49
    assert graph_cost(graph, [widths[g.name] for g in graph.groups]) == flop_count(new)
