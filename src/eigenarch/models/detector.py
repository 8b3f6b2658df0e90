"""Faster R-CNN / Mask R-CNN with an FPN over any backbone, Group Normalization throughout.

torchvision's ``FasterRCNN`` / ``MaskRCNN`` with the paper's set-up (SPEC section 7): FPN
over the four stages (P2-P5, plus P6 by max-pooling for the RPN; DetNet: over its five
stages, P6 from stage 6, used by the RPN only), GroupNorm in backbone (or BatchNorm as
asked), FPN and heads, the 4conv1fc box head and the GN mask head. Backbones: a ResiaNet,
any torchvision CNN classifier or DetNet-59 by name, their width specs, or a DetNAS
network. From scratch the backbone convs are He-normal and the FPN convs Glorot-uniform.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import LevelMapper

from eigenarch.errors import EigenarchError
from eigenarch.models.backbones import (
    build_backbone,
    check_backbone_name,
    feature_body,
    feature_levels,
)
from eigenarch.models.factory import is_factory
from eigenarch.models.resianet import norm_layer, resianet_from_spec
from eigenarch.nas.shufflenet import DETNAS_FORMAT, body_from_config, load_detnas_file
from eigenarch.widths.cost import DEFAULT_DEPTHS, RESNET50_WIDTHS
from eigenarch.widths.spec import (
    BACKBONE_FORMAT,
    BackboneSpec,
    WidthSpec,
    backbone_spec_from_dict,
    load_width_spec,
)

KINDS = ("faster_rcnn", "mask_rcnn")
#: Anchor sizes per FPN level (P2..P6), torchvision's default.
DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)


def backbone_spec(
    backbone: str | os.PathLike[str] | WidthSpec | BackboneSpec,
    norm: str | None = None,
    gn_groups: int = 32,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    own_norm: bool = False,
) -> WidthSpec | BackboneSpec:
    """Resolve a ``--backbone`` value to a spec: ``"resnet50"`` or nine comma-separated
    widths (a ResiaNet), a builder name (:func:`~eigenarch.models.backbones.backbone_names`,
    e.g. ``mobilenet_v3_large``, ``detnet59``), a factory (``file.py:factory``, its own norm)
    or a width-spec file.

    A spec file keeps its own depths and norm; ``norm`` (default GroupNorm) and
    ``gn_groups`` apply to names and widths; ``own_norm`` keeps a builder's own norm
    (BatchNorm, ConvNeXt's LayerNorm) instead, as a cost needs no norm.
    """
    if isinstance(backbone, WidthSpec | BackboneSpec):
        return backbone
    text = str(backbone)
    if text == "resnet50":
        return WidthSpec(
            RESNET50_WIDTHS, tuple(depths), norm or "gn", gn_groups, {"name": "resnet50"}
        )
    if "," in text:
        try:
            widths = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise EigenarchError(
                f"--backbone {text!r}: expected 'resnet50', nine comma-separated integers, a "
                "builder name or a width-spec JSON file"
            ) from None
        return WidthSpec(widths, tuple(depths), norm or "gn", gn_groups, {"widths": text})
    if Path(text).is_file():
        return load_width_spec(text)
    if own_norm:
        return BackboneSpec(check_backbone_name(text), {}, None, gn_groups, {"name": text})
    if is_factory(text):  # normalised as it builds it; another norm is refused when built
        return BackboneSpec(text, {}, norm, gn_groups, {"name": text})
    own = check_backbone_name(text).startswith("convnext")  # LayerNorm
    return BackboneSpec(text, {}, norm or (None if own else "gn"), gn_groups, {"name": text})


def backbone_config(
    backbone: str | os.PathLike[str] | WidthSpec | BackboneSpec | dict[str, Any],
    gn_groups: int = 32,
    norm: str | None = None,
) -> dict[str, Any]:
    """The JSON description of a backbone, as a checkpoint's config keeps it.

    A DetNAS network (a dict or JSON file with ``"format": "eigenarch.detnas"``, see
    :mod:`eigenarch.nas`) is kept as it is; anything else becomes a width spec's dict.
    """
    if isinstance(backbone, dict):
        if backbone.get("format") == DETNAS_FORMAT:
            return dict(backbone)
        if backbone.get("format") == BACKBONE_FORMAT:
            return backbone_spec_from_dict(backbone, "backbone").to_dict()
        return WidthSpec(**backbone).to_dict()
    spec = isinstance(backbone, WidthSpec | BackboneSpec)
    detnas = None if spec else load_detnas_file(backbone)
    return detnas or backbone_spec(backbone, norm, gn_groups).to_dict()


def backbone_body(
    backbone: str | os.PathLike[str] | WidthSpec | dict[str, Any],
    gn_groups: int = 32,
    num_classes: int | None = None,
) -> nn.Module:
    """The body module of a backbone description; with ``num_classes`` a classifier."""
    config = backbone_config(backbone, gn_groups)
    if config.get("format") == DETNAS_FORMAT:
        return body_from_config(config, num_classes)
    if config.get("format") == BACKBONE_FORMAT:
        return build_backbone(backbone_spec_from_dict(config, "backbone"), num_classes or 1000)
    return resianet_from_spec(WidthSpec(**config), num_classes or 1000)


def body_with_fpn(body: nn.Module, fpn_channels: int = 256, gn_groups: int = 32) -> BackboneWithFPN:
    """Any backbone ``body`` with an FPN over its feature levels (``out_channels =
    fpn_channels``).

    The levels are the body's ``stage_names`` / ``stage_channels`` (a ResiaNet's
    ``layer1..layer4``; DetNet's five stages, whose last FPN level is P6 and no max-pooled
    level is added), else the last module at each of its last four strides
    (:func:`~eigenarch.models.backbones.feature_levels`).
    """
    if hasattr(body, "stage_channels") and not hasattr(body, "stage_names"):
        names, channels = ["layer1", "layer2", "layer3", "layer4"], list(body.stage_channels)
    else:
        names, channels = feature_levels(body)
    top_level = all("." not in name for name in names)
    backbone = BackboneWithFPN(
        body if top_level else nn.Module(),
        return_layers={name: str(k) for k, name in enumerate(names)} if top_level else {},
        in_channels_list=channels,
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=norm_layer("gn", gn_groups),
    )
    if len(names) == 5:  # DetNet: P6 is the FPN level of stage 6, no max-pooled level
        backbone.fpn.extra_blocks = None
    if not top_level:  # modules inside a Sequential: torchvision's feature extraction
        backbone.body = feature_body(body, names)
    for module in backbone.fpn.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return backbone


def _check_settings(
    kind: str, anchor_sizes: Sequence[int], gn_groups: int, *widths_of_gn_layers: int
) -> None:
    """Refuse a detector kind, anchor count or GroupNorm width that cannot be built."""
    if kind not in KINDS:
        raise EigenarchError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    if len(anchor_sizes) != 5:
        raise EigenarchError(f"anchor sizes {list(anchor_sizes)}: expected 5 (one per P2..P6)")
    for name, width in zip(("fpn_channels", "head_channels"), widths_of_gn_layers, strict=True):
        if width % gn_groups:
            raise EigenarchError(
                f"{name} {width} is not a multiple of the {gn_groups} GroupNorm groups"
            )


def build_detector(
    kind: str = "faster_rcnn",
    backbone: str | os.PathLike[str] | WidthSpec | dict[str, Any] | nn.Module = "resnet50",
    num_classes: int = 91,
    min_size: int = 800,
    max_size: int = 1333,
    gn_groups: int = 32,
    fpn_channels: int = 256,
    head_channels: int = 256,
    representation: int = 1024,
    anchor_sizes: Sequence[int] = DEFAULT_ANCHOR_SIZES,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    **kwargs: Any,
) -> GeneralizedRCNN:
    """torchvision's ``FasterRCNN`` or ``MaskRCNN`` on a GN ResiaNet-FPN backbone.

    Args:
        kind: ``"faster_rcnn"`` or ``"mask_rcnn"``.
        backbone: ``"resnet50"``, nine comma-separated widths, a width-spec file or a spec
            (a ResiaNet is built), a DetNAS network description (file or dict, see
            :func:`backbone_config`), or any body module with ``stage_channels`` (see
            :func:`body_with_fpn`).
        num_classes: classes including background.
        min_size, max_size: the transform's resize (shorter side, cap on the longer side).
        gn_groups: GroupNorm groups everywhere (32 in the paper; fewer for narrow nets).
        fpn_channels, head_channels, representation: FPN width, conv width of the box and
            mask heads, and the box head's fc width (256 / 256 / 1024 in the paper).
        anchor_sizes: one anchor size per level P2..P6 (aspect ratios 0.5, 1, 2).
        kwargs: passed on to torchvision's ``FasterRCNN`` (e.g. ``rpn_batch_size_per_image``).
    """
    _check_settings(kind, anchor_sizes, gn_groups, fpn_channels, head_channels)
    if not isinstance(backbone, nn.Module):
        backbone = backbone_body(backbone, gn_groups)
    features = body_with_fpn(backbone, fpn_channels, gn_groups)
    gn = norm_layer("gn", gn_groups)
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    common = dict(
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean) if image_mean is not None else None,
        image_std=list(image_std) if image_std is not None else None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        box_head=FastRCNNConvFCHead(
            (fpn_channels, 7, 7), [head_channels] * 4, [representation], norm_layer=gn
        ),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        **kwargs,
    )
    strides = _roi_strides(features)
    if kind == "faster_rcnn":
        return FasterRCNN(features, box_roi_pool=_roi_pool(strides, 7), **common)
    return MaskRCNN(
        features,
        box_roi_pool=_roi_pool(strides, 7),
        mask_roi_pool=_roi_pool(strides, 14),
        mask_head=MaskRCNNHeads(fpn_channels, [head_channels] * 4, 1, norm_layer=gn),
        mask_predictor=MaskRCNNPredictor(head_channels, head_channels, num_classes),
        **common,
    )


def _roi_strides(features: BackboneWithFPN) -> list[int]:
    """The strides of the four FPN levels the RoI heads read (P2-P5), from one forward."""
    with torch.no_grad():
        maps = list(features.body.eval()(torch.zeros(1, 3, 224, 224)).values())[:4]
    features.body.train()
    return [224 // m.shape[-1] for m in maps]


def _roi_pool(strides: Sequence[int], size: int) -> MultiScaleRoIAlign:
    """torchvision's RoI pooler over P2-P5, its scales and level mapping fixed from the
    strides: torchvision infers them from the feature sizes, which cannot tell DetNet's
    P4 and P5 (both stride 16) apart, so boxes would never be pooled from P5."""
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], size, sampling_ratio=2)
    pool.scales = [1.0 / stride for stride in strides]
    k_min = round(math.log2(strides[0]))
    pool.map_levels = LevelMapper(k_min, k_min + len(strides) - 1)
    return pool


def build_classifier(
    backbone: str | os.PathLike[str] | WidthSpec | dict[str, Any] = "resnet50",
    num_classes: int = 1000,
    gn_groups: int = 32,
) -> nn.Module:
    """The backbone as a plain classifier (global pooling + fc), for pre-training."""
    return backbone_body(backbone, gn_groups, num_classes)
