"""DetNet-59 builder: SPEC 6b cost bar, strides, dilation, shortcuts, norms, ResNet-50 names."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FrozenBatchNorm2d

from eigenarch.models.detnet import DetNet, DetNetBottleneck, detnet59

RESNET_STAGES = ("conv1", "bn1", "layer1.", "layer2.", "layer3.")


def _weights(model: nn.Module) -> int:
    """Conv + fc weights (no biases, no norms), as SPEC section 4 counts params."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _macs_by_flop_counter(model: nn.Module, size: int = 224) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def _macs_analytic(model: nn.Module, size: int = 224) -> int:
    """Sum of weights x output positions over convs and fc, from one hooked forward."""
    total = 0

    def hook(module: nn.Module, _: tuple, out: torch.Tensor) -> None:
        nonlocal total
        positions = out.shape[2] * out.shape[3] if out.dim() == 4 else 1
        total += module.weight.numel() * positions

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for handle in handles:
        handle.remove()
    return total


@pytest.fixture(scope="module")
def gn_model() -> DetNet:
    return detnet59().eval()


def test_cost_at_224_is_the_spec_bar(gn_model: DetNet):
    macs = _macs_by_flop_counter(gn_model)
    params = _weights(gn_model)
    print(f"DetNet-59 at 224 px: {macs} MACs, {params} conv + fc weights")
    assert macs == 5_000_159_232
    assert round(macs / 1e9, 2) == 5.00 and round(macs / 1e9, 3) == 5.000
    assert params == 18_318_528
    assert round(params / 1e6, 2) == 18.32
    assert _macs_analytic(gn_model) == macs


def test_flop_counter_matches_the_resnet50_reference():
    """The same counting gives SPEC section 4's ResNet-50 figures (stride on the 3x3 conv)."""
    reference = torchvision.models.resnet50().eval()
    assert _macs_by_flop_counter(reference) == 4_089_184_256
    assert _weights(reference) == 25_502_912


@pytest.mark.parametrize("num_classes", [1000, 7])
def test_forward_shape(num_classes: int):
    model = detnet59(norm="bn", num_classes=num_classes).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, num_classes)
    assert model.fc.in_features == 1024 and model.fc.out_features == num_classes


def test_stage_strides_and_channels(gn_model: DetNet):
    assert gn_model.stage_names == ("layer1", "layer2", "layer3", "layer4", "layer5")
    assert gn_model.stage_channels == (256, 512, 1024, 1024, 1024)
    extractor = create_feature_extractor(gn_model, {n: n for n in gn_model.stage_names})
    size = 128
    with torch.no_grad():
        feats = extractor(torch.randn(1, 3, size, size))
    strides = {name: size // feats[name].shape[-1] for name in gn_model.stage_names}
    assert strides == {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16, "layer5": 16}
    for name, channels in zip(gn_model.stage_names, gn_model.stage_channels, strict=True):
        assert feats[name].shape[1] == channels
        assert feats[name].shape[-2] == feats[name].shape[-1] == size // strides[name]


def test_detnet_stages_are_dilated_with_b_then_a_blocks(gn_model: DetNet):
    for name in ("layer4", "layer5"):
        stage = getattr(gn_model, name)
        assert len(stage) == 3
        for b, block in enumerate(stage):
            assert isinstance(block, DetNetBottleneck)
            assert isinstance(block, torchvision.models.resnet.Bottleneck)
            convs = (block.conv1, block.conv2, block.conv3)
            assert [(c.in_channels, c.out_channels) for c in convs] == [
                (1024, 256),
                (256, 256),
                (256, 1024),
            ]
            assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1)]
            assert block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2)
            assert all(c.stride == (1, 1) and c.bias is None for c in convs)
            if b == 0:
                assert isinstance(block.downsample, nn.Sequential)
                proj, norm = block.downsample
                assert isinstance(proj, nn.Conv2d) and isinstance(norm, nn.GroupNorm)
                assert (proj.in_channels, proj.out_channels) == (1024, 1024)
                assert proj.kernel_size == (1, 1) and proj.stride == (1, 1)
            else:
                assert block.downsample is None
    # ResNet stages keep their dilation 1 and put the stride on the 3x3 conv
    for name, stride in (("layer1", 1), ("layer2", 2), ("layer3", 2)):
        block = getattr(gn_model, name)[0]
        assert block.conv2.stride == (stride, stride) and block.conv1.stride == (1, 1)
        assert all(b.conv2.dilation == (1, 1) for b in getattr(gn_model, name))


def test_dilated_block_forward_is_the_residual_sum():
    torch.manual_seed(0)
    block = detnet59(norm="bn").layer4[1].eval()
    x = torch.randn(1, 1024, 9, 9)
    with torch.no_grad():
        y = block.relu(block.bn1(block.conv1(x)))
        y = block.relu(block.bn2(block.conv2(y)))
        expected = torch.relu(block.bn3(block.conv3(y)) + x)
        assert torch.allclose(block(x), expected)


@pytest.mark.parametrize(
    ("norm", "kind", "other"),
    [("gn", nn.GroupNorm, nn.BatchNorm2d), ("bn", nn.BatchNorm2d, nn.GroupNorm)],
)
def test_norm_kind_everywhere(norm: str, kind: type, other: type):
    model = detnet59(norm=norm)
    norms = [m for m in model.modules() if isinstance(m, kind)]
    # stem + 3 per block (16 + 6 blocks) + projections (3 ResNet stages + 2 DetNet stages)
    assert len(norms) == 1 + 3 * (3 + 4 + 6 + 3 + 3) + 5
    assert not any(isinstance(m, (other, FrozenBatchNorm2d)) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(norms)


def test_gn_groups():
    model = detnet59(gn_groups=16)
    assert {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)} == {16}
    assert {m.num_groups for m in detnet59().modules() if isinstance(m, nn.GroupNorm)} == {32}


def test_default_pytorch_init_is_kept():
    """No He-normal re-init: every conv is PyTorch's default, uniform on +-1/sqrt(fan_in):
    inside the bound, reaching it, with the uniform's std bound/sqrt(3) (He normal's is
    sqrt(2) x bound; an all-zero init has none)."""
    torch.manual_seed(0)
    model = detnet59()
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            weight = m.weight.detach()
            assert weight.abs().max() <= bound, name
            assert weight.abs().max() >= 0.99 * bound, name  # every conv has >= 4,096 weights
            assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), name


def test_resnet50_names_for_stem_and_stages_2_to_4():
    reference = torchvision.models.resnet50()
    ours = detnet59(norm="bn")
    ref_keys = [k for k in reference.state_dict() if k.startswith(RESNET_STAGES)]
    our_keys = [k for k in ours.state_dict() if k.startswith(RESNET_STAGES)]
    assert our_keys == ref_keys
    partial = {k: v for k, v in reference.state_dict().items() if k.startswith(RESNET_STAGES)}
    result = ours.load_state_dict(partial, strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(
        k.startswith(("layer4.", "layer5.", "fc.")) for k in result.missing_keys
    )
    for key, value in partial.items():
        assert torch.equal(ours.state_dict()[key], value)
    # the loaded stages compute what ResNet-50's do
    reference.eval()
    ours.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = create_feature_extractor(reference, ["layer3"])(x)["layer3"]
        got = create_feature_extractor(ours, ["layer3"])(x)["layer3"]
    assert torch.equal(got, ref)


def test_frozen_bn_loads_resnet50_stages():
    model = detnet59(norm="frozen_bn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    state = torchvision.models.resnet50().state_dict()
    partial = {k: v for k, v in state.items() if k.startswith(RESNET_STAGES)}
    assert not model.load_state_dict(partial, strict=False).unexpected_keys
