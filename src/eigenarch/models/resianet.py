"""ResiaNet: a bottleneck ResNet of any nine widths (SPEC section 5).

Module names are torchvision's (``conv1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``,
``fc``, ...), so a torchvision ``resnet50`` state dict loads into the ResNet-50 widths with
``norm="bn"``. The stride sits in the 3x3 conv and block 0 of every stage has a projection
shortcut. The forward passes are torchvision's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.ops import FrozenBatchNorm2d

from eigenarch.widths.cost import DEFAULT_DEPTHS, RESNET50_WIDTHS, check_widths
from eigenarch.widths.spec import WidthSpec, check_norm, load_width_spec

NormLayer = Callable[[int], nn.Module]


def norm_layer(norm: str, gn_groups: int = 32) -> NormLayer:
    """A factory ``channels -> module`` for ``"gn"``, ``"bn"`` or ``"frozen_bn"``."""
    if norm == "gn":
        return lambda channels: nn.GroupNorm(gn_groups, channels)
    return {"bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d}[norm]


class Bottleneck(tv_resnet.Bottleneck):
    """torchvision's bottleneck block with free bottleneck (``mid``) and output widths.

    ``project`` adds the 1x1 projection shortcut ``downsample`` (conv, norm).
    """

    def __init__(
        self, inp: int, mid: int, out: int, stride: int, project: bool, norm: NormLayer
    ) -> None:
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(inp, mid, 1, bias=False)
        self.bn1 = norm(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(mid)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(inp, out, 1, stride=stride, bias=False), norm(out))
            if project
            else None
        )
        self.stride = stride


class ResiaNet(tv_resnet.ResNet):
    """A ResNet with widths ``(stem, b2, o2, b3, o3, b4, o4, b5, o5)`` and four depths.

    ``stage_channels`` holds the output widths of ``layer1..layer4`` (an FPN's inputs).
    """

    def __init__(
        self,
        widths: Sequence[int] = RESNET50_WIDTHS,
        depths: Sequence[int] = DEFAULT_DEPTHS,
        norm: str = "gn",
        gn_groups: int = 32,
        num_classes: int = 1000,
    ) -> None:
        widths, depths = check_widths(widths, depths)
        check_norm(widths, norm, gn_groups)
        nn.Module.__init__(self)
        make_norm = norm_layer(norm, gn_groups)
        self.widths, self.depths, self.norm = widths, depths, norm
        self.stage_channels = widths[2::2]
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = widths[0]
        for s, depth in enumerate(depths):
            mid, out = widths[1 + 2 * s], widths[2 + 2 * s]
            blocks = []
            for b in range(depth):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(Bottleneck(channels, mid, out, stride, b == 0, make_norm))
                channels = out
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def resianet(
    widths: Sequence[int] = RESNET50_WIDTHS,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    norm: str = "gn",
    gn_groups: int = 32,
    num_classes: int = 1000,
) -> ResiaNet:
    """Build a ResiaNet from scratch (He-normal convs); defaults give ResNet-50 with GN."""
    return ResiaNet(widths, depths, norm, gn_groups, num_classes)


def resianet_from_spec(
    spec: WidthSpec | str | os.PathLike[str], num_classes: int = 1000
) -> ResiaNet:
    """Build the ResiaNet of a :class:`WidthSpec` or of a width spec file."""
    if not isinstance(spec, WidthSpec):
        spec = load_width_spec(spec)
    return ResiaNet(spec.widths, spec.depths, spec.norm, spec.gn_groups, num_classes)
