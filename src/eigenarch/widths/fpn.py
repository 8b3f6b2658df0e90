"""The feature pyramid of an analysed detector, from its maps: what its lateral convs read.

Maps of a detector's FPN (``backbone.fpn.inner_blocks.{i}``) measure the body's channel
groups their convs read, so the width search counts them with those groups. Which groups
that is depends on the detector: Faster / Mask / Keypoint R-CNN's laterals read every
feature level of the body (P2-P5 over a ResNet's ``layer1``..``layer4``), RetinaNet's and
FCOS's three read the last three (P3-P5 over ``layer2``..), beside the ``extra_blocks``
convs P6 / P7 (torchvision's ``LastLevelP6P7``; P6 reads the FPN's P5, or the body's last
level where its input width is not the FPN's: RetinaNet v2). :func:`fpn_layout` tells the
layout from the map names, and from the maps' widths where they are given; the layout is
then traced as a torchvision ``BackboneWithFPN`` (:func:`trace_fpn`), whose graph says which
group every FPN conv reads.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from eigenarch.errors import EigenarchError
from eigenarch.widths.graph import ModelGraph, trace_model

#: The FPN width of the traced pyramids (it does not change which body groups are read).
FPN_CHANNELS = 256
#: Laterals of a pyramid with P6 / P7 convs (torchvision's RetinaNet and FCOS: P3-P5).
P6P7_LATERALS = 3
_BLOCK = re.compile(r"(?:^|\.)fpn\.(?:inner|layer)_blocks\.(\d+)(?:\.|:|$)")
_LATERAL_IN = re.compile(r"(?:^|\.)fpn\.inner_blocks\.(\d+)(?:\.0)?:in$")
_P6 = re.compile(r"(?:^|\.)fpn\.extra_blocks\.p[67](?:\.|:|$)")
_FPN_OUT = re.compile(r"(?:^|\.)fpn\.(?:(?:inner|layer)_blocks\.\d+(?:\.0)?|extra_blocks\.p6):out$")


@dataclass(frozen=True)
class FpnLayout:
    """An FPN over a body: ``levels`` indexes the body's feature levels that its laterals
    (``fpn.inner_blocks.0``, ``.1``, ...) read; ``p6`` is ``None`` (a max-pooled top level,
    no conv), ``"p5"`` or ``"c5"``: P6 / P7 convs whose P6 reads the FPN's P5 or the body's
    last level read."""

    levels: tuple[int, ...]
    p6: str | None = None


def has_fpn(names: Iterable[str]) -> bool:
    """Do these map names include a detector's FPN maps (``fpn.*``)?"""
    return any(".fpn." in name or name.startswith("fpn.") for name in names)


def fpn_layout(
    names: Iterable[str], level_widths: Sequence[int], channels: Mapping[str, int] | None = None
) -> FpnLayout:
    """The FPN that maps ``names`` come from, over a body whose feature levels are
    ``level_widths`` wide (at the analysed widths).

    Laterals read consecutive levels up to the body's last: every level, or the last three
    where P6 / P7 maps are named, or as many as the maps number. Given ``channels`` (map
    name -> width), each ``inner_blocks.{i}:in`` map reads a level of its own width (the
    latest such choice, in order; as many laterals as named where every level does not
    fit), and P6 reads the body where its input is not the FPN's width.
    """
    names = list(dict.fromkeys([*names, *(channels or {})]))  # the same model's maps
    p6 = any(_P6.search(n) for n in names)
    named = 1 + max((int(m.group(1)) for m in map(_BLOCK.search, names) if m), default=-1)
    count = max(named, min(P6P7_LATERALS, len(level_widths)) if p6 else len(level_widths))
    if count > len(level_widths):
        raise EigenarchError(
            f"maps name {count} FPN laterals (fpn.inner_blocks.0..{count - 1}) but the "
            f"analysed body has {len(level_widths)} feature levels; expected at most that many"
        )
    levels = _read_levels(level_widths, (count, named), channels or {})
    return FpnLayout(levels, _p6_input(level_widths[levels[-1]], channels or {}) if p6 else None)


def _read_levels(
    level_widths: Sequence[int], counts: tuple[int, int], channels: Mapping[str, int]
) -> tuple[int, ...]:
    """The latest increasing levels, as many as the first of ``counts`` that fits, whose
    widths match the laterals' inputs."""
    reads = {}  # lateral index -> (map name, width)
    for name, width in channels.items():
        match = _LATERAL_IN.search(name)
        if match:
            reads[int(match.group(1))] = (name, width)
    for count in dict.fromkeys(counts):
        for levels in sorted(itertools.combinations(range(len(level_widths)), count),
                             reverse=True):  # fmt: skip
            if all(level_widths[levels[i]] == width for i, (_, width) in reads.items()):
                return levels
    found = ", ".join(f"{name} ({width})" for name, width in reads.values())
    raise EigenarchError(
        f"FPN laterals' input widths {found} match no feature levels of the analysed body "
        f"in order; expected widths among its levels' {list(level_widths)} (is the analysed "
        "model, --model, the one the maps were collected from?)"
    )


def _p6_input(last_width: int, channels: Mapping[str, int]) -> str:
    """``"c5"`` where P6's input width is known and not the FPN's (torchvision's rule)."""
    fpn_width = next((w for n, w in channels.items() if _FPN_OUT.search(n)), None)
    p6_in = next((w for n, w in channels.items() if n.endswith("extra_blocks.p6:in")), None)
    if p6_in is None or fpn_width is None or p6_in == fpn_width:
        return "p5"
    if p6_in != last_width:
        raise EigenarchError(
            f"FPN map extra_blocks.p6:in has {p6_in} channels: neither the FPN's {fpn_width} "
            f"nor the {last_width} of the last feature level its laterals read"
        )
    return "c5"


def pyramid(
    body: nn.Module,
    names: Sequence[str],
    channels: Sequence[int],
    fpn_channels: int = FPN_CHANNELS,
    extra_blocks: nn.Module | None = None,
    norm_layer: Callable[[int], nn.Module] | None = None,
) -> BackboneWithFPN:
    """torchvision's ``BackboneWithFPN`` over the modules ``names`` of ``body`` (``channels``
    wide; modules inside a ``Sequential`` through torchvision's feature extraction)."""
    returned = {level: str(k) for k, level in enumerate(names)}
    top_level = all("." not in level for level in names)
    model = BackboneWithFPN(
        body if top_level else nn.Module(), returned if top_level else {}, list(channels),
        fpn_channels, extra_blocks=extra_blocks, norm_layer=norm_layer,
    )  # fmt: skip
    if not top_level:
        model.body = create_feature_extractor(body, returned)
    return model


def trace_fpn(
    body: nn.Module,
    level_names: Sequence[str],
    level_channels: Sequence[int],
    layout: FpnLayout | None = None,
    name: str = "fpn",
) -> ModelGraph:
    """``body`` under the FPN ``layout`` (default: a lateral per level, max-pooled top
    level), as torchvision builds it, traced on a 64-pixel image."""
    layout = layout or FpnLayout(tuple(range(len(level_names))))
    widths = [level_channels[i] for i in layout.levels]
    extra = LastLevelMaxPool() if layout.p6 is None else LastLevelP6P7(
        widths[-1] if layout.p6 == "c5" else FPN_CHANNELS, FPN_CHANNELS
    )  # fmt: skip
    model = pyramid(body, [level_names[i] for i in layout.levels], widths, extra_blocks=extra)
    return trace_model(model, torch.zeros(1, 3, 64, 64), name=name)


def lateral_groups(graph: ModelGraph, fpn_graph: ModelGraph) -> list[int]:
    """For each lateral of ``fpn_graph`` (``body`` = the model of ``graph``), in order,
    the index of the group of ``graph`` it reads."""
    index = {p: i for i, g in enumerate(graph.groups) for p in g.producers}
    read: dict[int, int] = {}
    for group in fpn_graph.groups:
        body = [p[len("body.") :] for p in group.producers if p.startswith("body.")]
        for consumer in group.consumers:
            match = _BLOCK.search(consumer)
            if body and match and ".inner_blocks." in "." + consumer:
                read[int(match.group(1))] = index[body[0]]
    return [read[i] for i in sorted(read)]


def detector_fpn_graph(
    graph: ModelGraph,
    base_groups: Sequence[int],
    names: Iterable[str],
    channels: Mapping[str, int] | None,
    trace: Callable[[FpnLayout | None], ModelGraph],
) -> ModelGraph | None:
    """The traced body + FPN of the detector whose maps are ``names`` (``None`` where they
    name no FPN map). ``trace(layout)`` traces the model of ``graph`` under an FPN (``None``:
    a lateral per feature level); ``base_groups`` are its groups' analysed widths."""
    names = list(names)
    if not has_fpn(names):
        return None
    every = trace(None)
    widths = [base_groups[i] for i in lateral_groups(graph, every)]
    layout = fpn_layout(names, widths, channels)
    return every if layout == FpnLayout(tuple(range(len(widths)))) else trace(layout)
