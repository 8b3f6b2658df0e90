"""DetNet-59 (Li et al., ECCV 2018) as a classifier backbone (SPEC section 6b).

ResNet-50's stem and stages 2-4 (``layer1..layer3``, torchvision's modules and names, stride
on the 3x3 conv), then stages 5 and 6 (``layer4``, ``layer5``) of three dilated bottlenecks
each that keep 1024 channels at stride 16. Block 0 of ``layer4``/``layer5`` ("B") has a 1x1
projection shortcut, blocks 1-2 ("A") the identity. Default PyTorch init, as in the paper.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from eigenarch.models.resianet import NormLayer, norm_layer

RESNET_DEPTHS = (3, 4, 6)
DETNET_DEPTH = 3
DETNET_MID = 256
WIDTH = 1024


class DetNetBottleneck(tv_resnet.Bottleneck):
    """DetNet block: 1x1 ``inp->mid``, 3x3 ``mid->mid`` dilation 2, 1x1 ``mid->out``.

    ``project`` adds the 1x1 ``inp->out`` projection shortcut ``downsample`` (conv, norm)
    of a "B" block. The forward is torchvision's.
    """

    def __init__(
        self,
        norm: NormLayer,
        project: bool,
        inp: int = WIDTH,
        mid: int = DETNET_MID,
        out: int = WIDTH,
    ) -> None:
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(inp, mid, 1, bias=False)
        self.bn1 = norm(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=2, dilation=2, bias=False)
        self.bn2 = norm(mid)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(inp, out, 1, bias=False), norm(out)) if project else None
        )
        self.stride = 1


class DetNet(nn.Module):
    """DetNet-59: ResNet-50 ``layer1..layer3`` + two dilated 1024-wide stages, pool, fc.

    ``stage_channels`` holds the output widths of ``stage_names`` as built (a resized copy
    is measured instead: :func:`eigenarch.models.builders.feature_levels`).
    """

    stage_names = ("layer1", "layer2", "layer3", "layer4", "layer5")
    stage_channels = (256, 512, 1024, WIDTH, WIDTH)

    def __init__(self, norm: str = "gn", gn_groups: int = 32, num_classes: int = 1000) -> None:
        super().__init__()
        make_norm = norm_layer(norm, gn_groups)
        self.norm = norm
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for s, depth in enumerate(RESNET_DEPTHS):
            planes = 64 * 2**s
            out = planes * tv_resnet.Bottleneck.expansion
            stride = 1 if s == 0 else 2
            downsample = nn.Sequential(tv_resnet.conv1x1(channels, out, stride), make_norm(out))
            blocks = [
                tv_resnet.Bottleneck(channels, planes, stride, downsample, norm_layer=make_norm)
            ]
            blocks += [
                tv_resnet.Bottleneck(out, planes, norm_layer=make_norm) for _ in range(depth - 1)
            ]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            channels = out
        for name in self.stage_names[3:]:
            blocks = [DetNetBottleneck(make_norm, b == 0) for b in range(DETNET_DEPTH)]
            setattr(self, name, nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(WIDTH, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of an image batch ``(N, 3, H, W)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.avgpool(x).flatten(1))


def detnet59(norm: str = "gn", gn_groups: int = 32, num_classes: int = 1000) -> DetNet:
    """Build DetNet-59 with ``"gn"`` (``gn_groups`` groups), ``"bn"`` or ``"frozen_bn"`` norms."""
    return DetNet(norm, gn_groups, num_classes)
