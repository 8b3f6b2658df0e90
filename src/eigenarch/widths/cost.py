"""Analytic MACs and parameters of any CNN at any widths (SPEC section 4).

Costs count conv and fully-connected weights only (no biases, no normalisation layers) of
the backbone as an ImageNet classifier: input 3 x 224 x 224, global pooling, a 1000-way fc.
Every layer is computed from shapes cached by one traced forward
(:func:`eigenarch.widths.graph.trace_model`), so one call takes microseconds per layer; a
ResNet's nine widths are its nine width ties.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from eigenarch.errors import EigenarchError
from eigenarch.limits import check_limit
from eigenarch.widths.graph import LayerShape, ModelGraph, trace_model
from eigenarch.widths.ties import WidthTie, width_ties

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
    """One conv or fc layer: module name, shapes and cost."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    out_size: int
    macs: int
    params: int


@dataclass(frozen=True)
class ModelCost:
    """Per-layer costs of a model and their totals; ``widths`` / ``depths`` for a ResNet."""

    layers: tuple[LayerCost, ...]
    macs: int
    params: int
    widths: tuple[int, ...] = ()
    depths: tuple[int, ...] = ()

    def stage_of(self, layer: str) -> str:
        """The stage a layer is counted in: its top-level module ("stem" for a ResNet's
        ``conv1``), or its first two path components where one top-level module holds most
        layers (``features.4`` of a MobileNet; never for a ResNet, whose ``layer3`` holds
        most layers at depths 3,4,23,3)."""
        heads = Counter(x.name.split(".")[0] for x in self.layers)
        deep = not self.depths and heads.most_common(1)[0][1] > len(self.layers) / 2
        parts = layer.split(".")
        key = ".".join(parts[:2]) if deep and len(parts) > 2 else parts[0]
        return "stem" if key == "conv1" else key

    def stages(self) -> dict[str, tuple[int, int]]:
        """``{stage (see :meth:`stage_of`): (macs, params)}``, in network order."""
        out: dict[str, tuple[int, int]] = {}
        for layer in self.layers:
            key = self.stage_of(layer.name)
            macs, params = out.get(key, (0, 0))
            out[key] = (macs + layer.macs, params + layer.params)
        return out

    def metric(self, name: str) -> int:
        """The total ``"macs"`` or ``"params"``."""
        return self.macs if name == "macs" else self.params


def check_depths(depths: Sequence[int], where: str = "depths") -> tuple[int, ...]:
    """Validate four positive depths (blocks per stage, at most the ``depth`` limit of
    :mod:`eigenarch.limits`); return them as a tuple."""
    if len(depths) != 4:
        raise EigenarchError(
            f"depths {list(depths)} has {len(depths)} numbers; expected 4 (blocks per stage)"
        )
    depths = _positive_ints("depth", depths)
    for stage, depth in enumerate(depths, 2):  # conv2..conv5
        check_limit("depth", depth, f"{where}: stage {stage}")
    return depths


def check_widths(
    widths: Sequence[int], depths: Sequence[int], where: str = "widths"
) -> tuple[tuple[int, ...], ...]:
    """Validate nine positive widths and four positive depths, each within the limits of
    :mod:`eigenarch.limits`, and the network's parameters (:func:`resnet_params`, counted
    before anything is built) within the ``params`` limit; return them as tuples."""
    if len(widths) != 9:
        raise EigenarchError(
            f"widths {list(widths)} has {len(widths)} numbers; expected 9: " + ",".join(WIDTH_NAMES)
        )
    widths = _positive_ints("width", widths)
    for name, width in zip(WIDTH_NAMES, widths, strict=True):
        check_limit("width", width, f"{where}: {name}")
    depths = check_depths(depths)
    params = resnet_params(widths, depths)
    shape = f"{','.join(map(str, widths))} / depths {','.join(map(str, depths))}"
    check_limit("params", params, f"{where} {shape}: parameters")
    return widths, depths


def resnet_params(widths: Sequence[int], depths: Sequence[int], num_classes: int = 1000) -> int:
    """Conv and fc weights of a bottleneck ResNet of nine ``widths`` and four ``depths``, by
    formula (no model built, no trace): what :func:`resnet_cost` counts as ``params``."""
    stem, *stages = widths
    params, inputs = 3 * stem * 7 * 7, stem
    pairs = zip(stages[::2], stages[1::2], strict=True)
    for (bottleneck, out), depth in zip(pairs, depths, strict=True):
        block = bottleneck * bottleneck * 9 + bottleneck * out  # conv2, conv3
        params += inputs * bottleneck + inputs * out + block  # block 0: conv1, downsample
        params += (depth - 1) * (out * bottleneck + block)
        inputs = out
    return params + inputs * num_classes


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


def _layer_cost(layer: LayerShape, widths: Sequence[int] | None) -> tuple[int, int, int, int]:
    """``(in, out, macs, params)`` of one layer with its groups at ``widths`` (SPEC section 4)."""
    if widths is None or layer.in_group is None:
        i = layer.in_channels
    else:
        i = widths[layer.in_group] * layer.in_scale
    o = layer.out_channels if widths is None or layer.out_group is None else widths[layer.out_group]
    params = o * (layer.per_group or i) * math.prod(layer.kernel)
    return i, o, params * layer.positions, params


def graph_cost(graph: ModelGraph, widths: Sequence[int] | None = None) -> tuple[int, int]:
    """``(macs, params)`` of the traced model with group ``i`` at ``widths[i]``.

    Only shapes are used (output positions cached by the trace), so a call takes
    microseconds per layer; ``None`` gives the traced model's own cost.
    """
    macs = params = 0
    for layer in graph.layers:
        _, _, m, p = _layer_cost(layer, widths)
        macs += m
        params += p
    return macs, params


def graph_layer_costs(graph: ModelGraph, widths: Sequence[int] | None = None) -> ModelCost:
    """Per-layer :class:`ModelCost` of the traced model with its groups at ``widths``."""
    layers = []
    for layer in graph.layers:
        i, o, macs, params = _layer_cost(layer, widths)
        layers.append(
            LayerCost(layer.name, i, o, layer.kernel[0], layer.stride, layer.out_size, macs, params)
        )
    return ModelCost(tuple(layers), sum(x.macs for x in layers), sum(x.params for x in layers))


def model_cost(model: nn.Module, image_size: int = 224) -> ModelCost:
    """MACs and params of any CNN as an ImageNet classifier on ``3 x image_size^2`` input.

    Conv and fc weights only (no biases, no norms); equals half of
    ``torch.utils.flop_counter.FlopCounterMode``'s count for a CNN.
    """
    graph = trace_model(model, torch.zeros(1, 3, image_size, image_size))
    return graph_layer_costs(graph)


@functools.lru_cache(maxsize=128)
def resnet_graph(
    depths: tuple[int, ...], num_classes: int = 1000, image_size: int = 224
) -> tuple[ModelGraph, tuple[WidthTie, ...]]:
    """The traced graph of a bottleneck ResNet of ``depths`` and its nine width ties."""
    model = tv_resnet.ResNet(tv_resnet.Bottleneck, list(depths), num_classes=num_classes)
    name = "bottleneck ResNet " + ",".join(map(str, depths))
    graph = trace_model(model, torch.zeros(1, 3, image_size, image_size), name=name)
    ties = width_ties(graph)
    if len(ties) != len(WIDTH_NAMES):  # the nine widths of SPEC section 5
        raise AssertionError(f"a bottleneck ResNet traced to {len(ties)} widths, not 9")
    return graph, ties


def tie_widths(
    graph: ModelGraph,
    ties: Sequence[WidthTie],
    widths: Sequence[int],
    start: Sequence[int] | None = None,
) -> list[int]:
    """Per-group widths from one width per tie; groups of no tie keep ``start``'s widths
    (default: the traced model's)."""
    out = list(start) if start is not None else [g.width for g in graph.groups]
    for tie, width in zip(ties, widths, strict=True):
        for i in tie.groups:
            out[i] = width
    return out


def resnet_cost(
    widths: Sequence[int],
    depths: Sequence[int] = DEFAULT_DEPTHS,
    num_classes: int = 1000,
    image_size: int = 224,
) -> ModelCost:
    """MACs and params of a bottleneck ResNet with nine ``widths`` and four ``depths``.

    Layer ``L`` costs ``I*O*K*K*W*H`` MACs and ``I*O*K*K`` params (paper Eq. 3 and 4);
    ResNet-50 gives 4,089,184,256 MACs and 25,502,912 params.
    """
    widths, depths = check_widths(widths, depths)
    graph, ties = resnet_graph(depths, num_classes, image_size)
    cost = graph_layer_costs(graph, tie_widths(graph, ties, widths))
    return ModelCost(cost.layers, cost.macs, cost.params, widths, depths)
