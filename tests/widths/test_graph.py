"""Channel groups from the model's graph (SPEC section 6b), on the hard cases."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from eigenarch.errors import EigenarchError
from eigenarch.widths import channel_groups, trace_model, width_ties

X = torch.zeros(1, 3, 64, 64)


def by_name(groups):
    return {g.name: g for g in groups}


def test_depthwise_joins_the_group_it_reads_and_se_gates_join_theirs():
    groups = by_name(channel_groups(torchvision.models.mobilenet_v3_large(), X))
    expand = groups["features.4.block.0.0"]  # 1x1 expansion, depthwise 5x5, SE fc2 scales it
    assert {"features.4.block.1.0", "features.4.block.2.fc2"} <= set(expand.producers)
    assert {"features.4.block.1.0", "features.4.block.2.fc1", "features.4.block.3.0"} == set(
        expand.consumers
    )
    squeeze = groups["features.4.block.2.fc1"]
    assert squeeze.producers == ("features.4.block.2.fc1",)
    assert squeeze.consumers == ("features.4.block.2.fc2",)
    assert "features.4.block.2.fc1" not in expand.producers
    assert "classifier.3" not in groups  # the 1000 classes are fixed, not a group


def test_grouped_conv_merges_its_input_and_output_groups_and_keeps_its_group_width():
    groups = by_name(channel_groups(torchvision.models.resnext50_32x4d(), X))
    inner = groups["layer3.2.conv1"]
    assert {"layer3.2.conv1", "layer3.2.conv2"} <= set(inner.producers)
    assert inner.divisor == 512 // 32  # group width 16
    regnet = by_name(channel_groups(torchvision.models.regnet_y_400mf(), X))
    assert regnet["trunk_output.block3.block3-1.f.a.0"].divisor == 8


def test_layer_norm_and_layer_scale_follow_the_residual_stream():
    groups = channel_groups(torchvision.models.convnext_tiny(), X)
    stream = by_name(groups)["features.2.1"]  # downsampling conv producing stage 2's 192
    assert stream.width == 192
    assert "features.3.0.block.2" in stream.norms  # the block's LayerNorm
    assert ("features.3.0.layer_scale", 0) in stream.parameters
    assert "features.3.0.block.0" in stream.producers  # depthwise 7x7
    assert "features.3.0.block.3" in stream.consumers  # pointwise Linear


def test_frozen_batchnorm_and_frozen_parameters_are_traced():
    model = torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d)
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    groups = by_name(channel_groups(model, X))
    assert groups["conv1"].norms[0] == "bn1"
    assert {"layer1.0.conv2", "layer1.1.conv2"} <= set(groups["conv1"].producers)
    assert all(not p.requires_grad for p in model.layer1.parameters())  # restored


def test_units_pair_each_producer_with_its_readers():
    groups = by_name(channel_groups(torchvision.models.resnet50(), X))
    units = dict(groups["layer2.0.conv3"].units)
    assert units["layer2.0.conv3"] == units["layer2.0.downsample.0"] == ("layer2.1.conv1",)
    assert units["layer2.3.conv3"] == ("layer3.0.conv1", "layer3.0.downsample.0")


def test_ties_of_a_mobilenet_stage():
    graph = trace_model(torchvision.models.mobilenet_v3_large(), X)
    ties = {t.name: t for t in width_ties(graph)}
    assert ties["features.{4..6}.block.0.0"].shared
    assert len(ties["features.{4..6}.block.0.0"].groups) == 3
    assert len(ties["features.{4..6}.block.2.fc1"].groups) == 3  # SE squeeze: its own width
    assert not ties["features.4.block.3.0"].shared  # the stage's residual stream


def test_concatenation_is_refused_in_one_line():
    with pytest.raises(EigenarchError, match=r"\(a concatenation\)"):
        channel_groups(torchvision.models.densenet121(), X)


def test_a_model_that_cannot_run_names_the_module():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            return self.head(self.conv(x))

    with pytest.raises(EigenarchError, match=r"cannot trace Broken: .* module 'head'"):
        channel_groups(Broken(), X)
