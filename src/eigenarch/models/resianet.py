"""ResiaNet: a bottleneck ResNet of any nine widths (SPEC section 5).

Module names are torchvision's (``conv1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``,
``fc``, ...), so a torchvision ``resnet50`` state dict loads into the ResNet-50 widths with
``norm="bn"``. The stride sits in the 3x3 conv and block 0 of every stage has a projection
shortcut. The forward passes are torchvision's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn
from torchvision.models import resnet as tv_resnet

from eigenarch.errors import EigenarchError
from eigenarch.models.backbone import (
    DEFAULT_FORMAT,
    Backbone,
    BackboneOptions,
    register_backbone,
)
from eigenarch.models.norms import NormLayer, check_gn_widths, check_norm, norm_layer
from eigenarch.widths.cost import (
    DEFAULT_DEPTHS,
    RESNET50_WIDTHS,
    WIDTH_NAMES,
    ModelCost,
    check_widths,
    resnet_cost,
    uniform_widths,
)

if TYPE_CHECKING:
    from eigenarch.widths.ias import WidthSearchResult


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
        check_resianet_norm(widths, norm, gn_groups)
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


def check_resianet_norm(widths: Sequence[int], norm: str, gn_groups: int = 32) -> None:
    """Check that ``norm`` is known and, for GroupNorm, that ``gn_groups`` divides every width."""
    check_norm(norm, gn_groups)
    if norm == "gn":
        check_gn_widths(WIDTH_NAMES, widths, gn_groups)


@register_backbone
@dataclasses.dataclass(frozen=True)
class ResiaNetBackbone(Backbone):
    """A ResiaNet: nine widths, four depths, the normalisation, provenance (SPEC section 5).

    Its JSON form (the paper's width spec) is ``{"widths", "depths", "norm", "gn_groups",
    "source"}``, without ``"format"``.
    """

    format = DEFAULT_FORMAT
    widths: tuple[int, ...] = RESNET50_WIDTHS
    depths: tuple[int, ...] = DEFAULT_DEPTHS
    norm: str = "gn"
    gn_groups: int = 32
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        widths, depths = check_widths(list(self.widths), list(self.depths))
        check_resianet_norm(widths, self.norm, self.gn_groups)
        if not isinstance(self.source, dict):
            raise EigenarchError(f"source {self.source!r} is not a JSON object")
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "depths", depths)

    def build(self, num_classes: int = 1000) -> ResiaNet:
        return ResiaNet(self.widths, self.depths, self.norm, self.gn_groups, num_classes)

    def cost(self) -> ModelCost:
        return resnet_cost(self.widths, self.depths)

    def searched_widths(self) -> list[int]:
        return list(self.widths)

    def width_names(self) -> list[str]:
        return list(WIDTH_NAMES)

    def scaled(
        self, multiplier: float, multiple: int, source: Mapping[str, Any] | None = None
    ) -> ResiaNetBackbone:
        widths = uniform_widths(multiplier, self.widths, multiple)
        return ResiaNetBackbone(widths, self.depths, self.norm, self.gn_groups, dict(source or {}))

    def search(
        self,
        dims: Mapping[str, object],
        target: float | str,
        metric: str = "macs",
        multiple: int = 32,
        side: str = "in",
        source: Mapping[str, Any] | None = None,
        channels: Mapping[str, int] | None = None,
    ) -> tuple[WidthSearchResult, ResiaNetBackbone]:
        from eigenarch.widths.ias import search_widths  # IAS sits above the cost model

        if self.norm == "gn" and multiple % self.gn_groups:
            raise EigenarchError(
                f"--multiple {multiple} gives widths that {self.gn_groups} GroupNorm groups "
                "cannot split; use a multiple of --gn-groups, fewer --gn-groups or --norm bn"
            )
        result = search_widths(
            dims, target, metric, multiple, side, self.depths, self.widths, channels
        )
        found = ResiaNetBackbone(result.widths, self.depths, self.norm, self.gn_groups,
                                 dict(source or {}))  # fmt: skip
        return result, found

    def export_base(self) -> dict[str, Any]:
        return {"kind": "resnet", "depths": list(self.depths), "norm": self.norm,
                "gn_groups": self.gn_groups, "num_classes": 1000}  # fmt: skip

    def unresized(self) -> ResiaNetBackbone:
        """ResNet-50's widths at these depths and this norm."""
        return ResiaNetBackbone(RESNET50_WIDTHS, self.depths, self.norm, self.gn_groups,
                                {"name": "resnet50"})  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": list(self.widths),
            "depths": list(self.depths),
            "norm": self.norm,
            "gn_groups": self.gn_groups,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], what: str) -> ResiaNetBackbone:
        if "widths" not in obj:
            raise EigenarchError(f"{what}: missing field 'widths' (9 integers)")
        for key, kind in (("widths", list), ("depths", list), ("source", dict)):
            if key in obj and not isinstance(obj[key], list | tuple if kind is list else kind):
                raise EigenarchError(f"{what}: field {key!r} is not a JSON {kind.__name__}")
        try:
            return cls(
                tuple(obj["widths"]),
                tuple(obj.get("depths", DEFAULT_DEPTHS)),
                obj.get("norm", "gn"),
                obj.get("gn_groups", 32),
                dict(obj.get("source", {})),
            )
        except EigenarchError as exc:
            raise EigenarchError(f"{what}: {exc}") from None

    @classmethod
    def parse(cls, text: str, options: BackboneOptions) -> ResiaNetBackbone | None:
        """``"resnet50"`` or nine comma-separated widths, of ``options.depths``."""
        norm, groups, depths = options.norm or "gn", options.gn_groups, tuple(options.depths)
        if text == "resnet50":
            return cls(RESNET50_WIDTHS, depths, norm, groups, {"name": "resnet50"})
        if "," not in text:
            return None
        try:
            widths = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise EigenarchError(
                f"--backbone {text!r}: expected 'resnet50', nine comma-separated integers, a "
                "builder name or a width-spec JSON file"
            ) from None
        return cls(widths, depths, norm, groups, {"widths": text})
