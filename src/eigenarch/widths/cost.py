"""Analytic MACs and parameters of a bottleneck ResNet of any widths (SPEC section 4).

Costs count conv and fully-connected weights only (no biases, no normalisation layers) of
the backbone as an ImageNet classifier: input 3 x 224 x 224, global pooling, a 1000-way fc.
Every layer is computed from shapes alone, so one call takes microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from eigenarch.errors import EigenarchError

#: The nine widths ``(stem, b2, o2, b3, o3, b4, o4, b5, o5)`` of ResNet-50.
RESNET50_WIDTHS = (64, 64, 256, 128, 512, 256, 1024, 512, 2048)
#: Blocks per stage (``layer1..layer4``) of ResNet-50.
DEFAULT_DEPTHS = (3, 4, 6, 3)
#: Names of the nine widths, in order.
WIDTH_NAMES = ("stem", "b2", "o2", "b3", "o3", "b4", "o4", "b5", "o5")
#: Depths of the standard ResNets usable as a named budget.
STANDARD_DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}
METRICS = ("macs", "params")


class LayerCost(NamedTuple):
    """One conv or fc layer: torchvision module name, shapes and cost."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    out_size: int
    macs: int
    params: int


@dataclass(frozen=True)
class ResNetCost:
    """Per-layer costs of a ResNet and their totals."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    layers: tuple[LayerCost, ...]
    macs: int
    params: int

    def stages(self) -> dict[str, tuple[int, int]]:
        """``{"stem"|"layer1".."layer4"|"fc": (macs, params)}`` in network order."""
        out: dict[str, tuple[int, int]] = {}
        for layer in self.layers:
            head = layer.name.split(".")[0]
            key = "stem" if head == "conv1" else head
            macs, params = out.get(key, (0, 0))
            out[key] = (macs + layer.macs, params + layer.params)
        return out

    def metric(self, name: str) -> int:
        """The total ``"macs"`` or ``"params"``."""
        return self.macs if name == "macs" else self.params


def check_depths(depths: Sequence[int]) -> tuple[int, ...]:
    """Validate four positive depths (blocks per stage); return them as a tuple."""
    if len(depths) != 4:
        raise EigenarchError(
            f"depths {list(depths)} has {len(depths)} numbers; expected 4 (blocks per stage)"
        )
    return _positive_ints("depth", depths)


def check_widths(widths: Sequence[int], depths: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Validate nine positive widths and four positive depths; return them as tuples."""
    if len(widths) != 9:
        raise EigenarchError(
            f"widths {list(widths)} has {len(widths)} numbers; expected 9: " + ",".join(WIDTH_NAMES)
        )
    return _positive_ints("width", widths), check_depths(depths)


def _positive_ints(kind: str, values: Sequence[int]) -> tuple[int, ...]:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise EigenarchError(f"{kind} {v!r} is not a positive integer")
    return tuple(values)


def check_multiple(multiple: int) -> int:
    """Validate the rounding multiple ``q`` (a positive integer)."""
    return _positive_ints("multiple", (multiple,))[0]


def round_width(x: float, multiple: int) -> int:
    """SPEC rounding ``R(x) = max(q, q * floor(x / q + 1/2))``."""
    return max(multiple, multiple * math.floor(x / multiple + 0.5))


def uniform_widths(
    multiplier: float, widths: Sequence[int] = RESNET50_WIDTHS, multiple: int = 32
) -> tuple[int, ...]:
    """The simple width-multiplier baseline: ``R(multiplier * w)`` for each of the nine."""
    if not multiplier > 0 or not math.isfinite(multiplier):
        raise EigenarchError(f"multiplier {multiplier} is not a positive number")
    check_multiple(multiple)
    return tuple(round_width(multiplier * w, multiple) for w in widths)


def _layers(
    widths: Sequence[int], depths: Sequence[int], num_classes: int, image_size: int
) -> Iterator[tuple[str, int, int, int, int, int]]:
    """``(name, in, out, kernel, stride, out_size)`` of every conv and fc, in forward order.

    Block 0 of every stage has a projection shortcut (``downsample.0``), as in ResNet-50.
    """
    size = (image_size - 1) // 2 + 1  # conv1: 7x7, stride 2, padding 3
    yield "conv1", 3, widths[0], 7, 2, size
    size = (size - 1) // 2 + 1  # max pool: 3x3, stride 2, padding 1
    channels = widths[0]
    for s, depth in enumerate(depths):
        mid, out = widths[1 + 2 * s], widths[2 + 2 * s]
        for b in range(depth):
            stride = 2 if s > 0 and b == 0 else 1
            prefix = f"layer{s + 1}.{b}."
            yield prefix + "conv1", channels, mid, 1, 1, size
            in_size, size = size, (size - 1) // stride + 1
            yield prefix + "conv2", mid, mid, 3, stride, size
            yield prefix + "conv3", mid, out, 1, 1, size
            if b == 0:
                yield prefix + "downsample.0", channels, out, 1, stride, (in_size - 1) // stride + 1
            channels = out
    yield "fc", channels, num_classes, 1, 1, 1


def resnet_cost(
    widths: Sequence[int],
    depths: Sequence[int] = DEFAULT_DEPTHS,
    num_classes: int = 1000,
    image_size: int = 224,
) -> ResNetCost:
    """MACs and params of a bottleneck ResNet with nine ``widths`` and four ``depths``.

    Layer ``L`` costs ``I*O*K*K*W*H`` MACs and ``I*O*K*K`` params (paper Eq. 3 and 4);
    ResNet-50 gives 4,089,184,256 MACs and 25,502,912 params.
    """
    widths, depths = check_widths(widths, depths)
    layers = []
    total_macs = total_params = 0
    for name, i, o, k, stride, size in _layers(widths, depths, num_classes, image_size):
        params = i * o * k * k
        macs = params * size * size
        layers.append(LayerCost(name, i, o, k, stride, size, macs, params))
        total_macs += macs
        total_params += params
    return ResNetCost(widths, depths, tuple(layers), total_macs, total_params)
