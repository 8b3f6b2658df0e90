"""The search space: blocks, supernet, stand-alone networks, analytic MACs."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from eigenarch.errors import EigenarchError
from eigenarch.models.detector import as_backbone, build_detector
from eigenarch.nas.shufflenet import (
    SPACES,
    ChoiceBlock,
    SearchSpace,
    ShuffleNetV2,
    choice_blocks,
    detnas_config,
    load_detnas_file,
    macs_range,
    make_space,
    off_path_parameters,
    path_cost,
    path_macs,
    path_state_dict,
    set_path,
)

from .conftest import DETECTOR_KWARGS, TINY_SPACE


def hooked_cost(model: nn.Module, size: int) -> tuple[int, int]:
    """MACs and params of the conv / fc layers actually run, counted by forward hooks."""
    counted = {"macs": 0, "params": 0}

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            weights = module.weight.numel()
            counted["macs"] += weights * output.shape[2] * output.shape[3]
        else:
            weights = module.weight.numel()
            counted["macs"] += weights
        counted["params"] += weights

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for handle in handles:
        handle.remove()
    return counted["macs"], counted["params"]


def random_path(space: SearchSpace, seed: int) -> tuple[int, ...]:
    rng = random.Random(seed)
    return tuple(rng.randrange(4) for _ in range(space.num_blocks))


@pytest.mark.parametrize("space_id", [1, 2])
def test_analytic_macs_match_a_hook_count_at_224(space_id):
    space = SPACES[space_id]
    path = random_path(space, space_id)
    assert path_cost(space, path) == hooked_cost(ShuffleNetV2(space, path, 1000), 224)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # fvcore traces with torch.jit
def test_analytic_macs_match_fvcore():
    from fvcore.nn import FlopCountAnalysis

    path = random_path(SPACES[1], 7)
    flops = FlopCountAnalysis(ShuffleNetV2(SPACES[1], path, 1000), torch.zeros(1, 3, 224, 224))
    flops.unsupported_ops_warnings(False)
    by_op = flops.by_operator()
    assert path_macs(SPACES[1], path) == by_op["conv"] + by_op["linear"]


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=5, max_size=5), st.integers(33, 80))
def test_analytic_cost_matches_hooks_for_any_path_and_size(path, size):
    net = ShuffleNetV2(TINY_SPACE, path, num_classes=10)
    assert path_cost(TINY_SPACE, path, size=size, num_classes=10) == hooked_cost(net, size)


def test_search_spaces_follow_the_paper():
    one, two = SPACES[1], SPACES[2]
    assert (one.num_blocks, two.num_blocks) == (20, 40)
    means = []
    for space in (one, two):
        rng = random.Random(0)
        paths = [[rng.randrange(4) for _ in range(space.num_blocks)] for _ in range(500)]
        means.append(sum(path_macs(space, p) for p in paths) / len(paths))
        low, high = macs_range(space)
        assert low < means[-1] < high
    assert 280e6 < means[0] < 360e6  # "most networks ... around 300M FLOPs"
    assert 1.1e9 < means[1] < 1.4e9  # "more than 1G FLOPs" (DetNASNet: 1.3G)


def test_macs_range_is_the_extremes_over_every_path():
    every = [path_macs(TINY_SPACE, p) for p in itertools.product(range(4), repeat=5)]
    assert macs_range(TINY_SPACE) == (min(every), max(every))


def test_bad_spaces_and_paths_are_one_line_errors():
    with pytest.raises(EigenarchError, match="stage 2: 31 channels must be even"):
        SearchSpace(8, (16, 31, 48, 64), (1, 1, 1, 1))
    with pytest.raises(EigenarchError, match="stage 3"):
        SearchSpace(8, (16, 32, 32, 64), (1, 1, 1, 1))
    with pytest.raises(EigenarchError, match="four numbers"):
        make_space(1, depths=(1, 2))
    with pytest.raises(EigenarchError, match="expected 1 or 2"):
        make_space(3)
    with pytest.raises(EigenarchError, match="has 3 choices; this search space has 5"):
        TINY_SPACE.check_path([0, 1, 2])
    with pytest.raises(EigenarchError, match="choices must be 0..3"):
        TINY_SPACE.check_path([0, 1, 2, 4, 0])


def test_supernet_on_a_path_equals_the_stand_alone_network():
    torch.manual_seed(0)
    supernet = ShuffleNetV2(TINY_SPACE, num_classes=10)
    for module in supernet.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    images = torch.randn(2, 3, 64, 64)
    outputs = set()
    for seed in range(3):
        path = random_path(TINY_SPACE, seed)
        set_path(supernet, path)
        alone = ShuffleNetV2(TINY_SPACE, path, num_classes=10)
        alone.load_state_dict(path_state_dict(supernet.state_dict(), TINY_SPACE, path))
        with torch.no_grad():
            expected = supernet.eval()(images)
            assert torch.allclose(alone.eval()(images), expected, atol=1e-5)
        outputs.add(tuple(expected.flatten().tolist()))
    assert len(outputs) == 3  # different paths compute different functions


def test_set_path_selects_choices_and_off_path_parameters():
    supernet = ShuffleNetV2(TINY_SPACE)
    blocks = choice_blocks(supernet)
    assert len(blocks) == 5 and all(isinstance(b, ChoiceBlock) for b in blocks)
    set_path(supernet, (0, 1, 2, 3, 0))
    assert [b.active for b in blocks] == [0, 1, 2, 3, 0]
    off = {id(p) for p in off_path_parameters(supernet)}
    for block in blocks:
        for c, choice in enumerate(block.choices):
            assert all((id(p) in off) == (c != block.active) for p in choice.parameters())
    assert not any(id(p) in off for p in supernet.stem.parameters())
    with pytest.raises(EigenarchError, match="path of 3 choices for a supernet of 5"):
        set_path(supernet, (0, 1, 2))


def test_stand_alone_and_supernet_are_detector_backbones():
    torch.manual_seed(0)
    images = [torch.rand(3, 96, 80), torch.rand(3, 70, 96)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[5.0, 20.0, 30.0, 60.0]]), "labels": torch.tensor([2])},
    ]
    for body in (ShuffleNetV2(TINY_SPACE), ShuffleNetV2(TINY_SPACE, (3, 2, 1, 0, 3))):
        model = build_detector(backbone=body, num_classes=3, **DETECTOR_KWARGS)
        features = model.backbone(torch.zeros(1, 3, 96, 96))
        assert [f.shape[1] for f in features.values()] == [16] * 5
        assert [f.shape[-1] for f in features.values()] == [24, 12, 6, 3, 2]  # strides 4..64
        losses = model.train()(images, targets)
        assert set(losses) >= {"loss_classifier", "loss_objectness"}
        assert len(model.eval()(images)) == 2


def test_detnas_descriptions_build_detectors_and_round_trip(tmp_path):
    path = (1, 0, 3, 2, 1)
    file = tmp_path / "best_path.json"
    file.write_text(json.dumps({**detnas_config(TINY_SPACE, path), "fitness": 0.5}))
    loaded = load_detnas_file(file)
    assert loaded["path"] == list(path) and loaded["channels"] == [16, 32, 48, 64]
    assert as_backbone(str(file)).to_dict()["path"] == list(path)
    model = build_detector(backbone=str(file), num_classes=3, **DETECTOR_KWARGS)
    body = model.backbone.body
    assert not choice_blocks(body)
    assert body["stage1"][0].main[3].kernel_size == (5, 5)  # choice 1: shufflenet 5x5
    xception = body["stage3"][0].main  # choice 3: dw 3x3 first, three dw convs in all
    assert [m.kernel_size for m in xception if isinstance(m, nn.Conv2d)][0::2] == [(3, 3)] * 3
    rebuilt = build_detector(backbone=loaded, num_classes=3, **DETECTOR_KWARGS)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert as_backbone("resnet50").to_dict()["widths"][0] == 64  # width specs are unaffected
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    assert load_detnas_file(tmp_path / "other.json") is None
    (tmp_path / "broken.json").write_text('{"format": "eigenarch.detnas", "stem": 8}')
    with pytest.raises(EigenarchError, match="broken.json: not a DetNAS network description"):
        load_detnas_file(tmp_path / "broken.json")
