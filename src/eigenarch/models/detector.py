"""Faster R-CNN / Mask R-CNN with an FPN over any backbone, Group Normalization throughout.

torchvision's ``FasterRCNN`` / ``MaskRCNN`` with the paper's set-up (SPEC section 7): FPN
over the four stages (P2-P5, plus P6 by max-pooling for the RPN; DetNet: over its five
stages, P6 from stage 6, used by the RPN only), GroupNorm in backbone (or BatchNorm as
asked), FPN and heads, the 4conv1fc box head and the GN mask head. Backbones: a ResiaNet,
any torchvision CNN classifier or DetNet-59 by name, their width specs, or a DetNAS
network. From scratch the backbone convs are He-normal and the FPN convs Glorot-uniform.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from eigenarch.errors import EigenarchError
from eigenarch.models.backbone import (
    Backbone,
    BackboneOptions,
    backbone_from_dict,
    body_with_fpn,
    fpn_norm,
    parse_backbone,
)
from eigenarch.models.factory import call_factory, is_factory
from eigenarch.models.norms import norm_layer
from eigenarch.widths.inherit import Covariances

KINDS = ("faster_rcnn", "mask_rcnn")
#: torchvision's R-CNN builders on ResNet-50 with an FPN over its four stages: the detector
#: of such a kind is the builder's (its FPN, RPN, RoI heads and transform) on the backbone
#: given (``eigenarch resize --model NAME`` writes them).
TORCHVISION_KINDS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
)
#: The kinds with a mask head (trained on masks).
MASK_KINDS = ("mask_rcnn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
#: Anchor sizes per FPN level (P2..P6), torchvision's default.
DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)
#: What ``build_detector`` and ``build_classifier`` take as a backbone: a :class:`Backbone`,
#: its JSON form, or a ``--backbone`` text (:func:`~eigenarch.models.backbone.parse_backbone`).
BackboneLike = Backbone | Mapping[str, Any] | str | os.PathLike[str]


def as_backbone(backbone: BackboneLike, gn_groups: int = 32, norm: str | None = None) -> Backbone:
    """The :class:`Backbone` of ``backbone``; a text's names and widths get ``norm``
    (default GroupNorm) and ``gn_groups``."""
    if isinstance(backbone, Mapping):
        return backbone_from_dict(backbone)
    return parse_backbone(backbone, BackboneOptions(norm, gn_groups))


def inherit_detector(
    detector: GeneralizedRCNN,
    source: Backbone,
    target: Backbone,
    spectra: Covariances,
    seed: int = 0,
    **options: Any,
) -> GeneralizedRCNN:
    """A copy of the trained ``detector`` (built on ``source``) on ``target``'s widths, its
    weights inherited (SPEC section 6c; ``spectra``: the detector's own maps): its body
    and FPN by :meth:`Backbone.inherit <eigenarch.models.backbone.Backbone.inherit>` (the
    FPN laterals read the resized stages), its heads as they are. ``options``: ``kept``,
    ``reconstruct``, ``eps``."""
    resized = copy.deepcopy(detector)
    resized.backbone = source.inherit(detector.backbone, target, spectra, "backbone.", seed,
                                      **options)  # fmt: skip
    return resized


def _their_detector(kind: str, settings: dict[str, Any]) -> GeneralizedRCNN:
    """The detector of the torchvision builder ``kind`` with ``settings`` (its keyword
    arguments), or of the factory ``kind``, whose own settings must be ``settings``: its
    classes, and torchvision's defaults for the rest (only its resize is set)."""
    if not is_factory(kind):
        return torchvision.models.get_model(kind, weights=None, weights_backbone=None, **settings)
    model = check_factory_detector(call_factory(kind), kind)
    classes = model.roi_heads.box_predictor.cls_score.out_features
    if classes != settings["num_classes"]:
        raise EigenarchError(f"--kind {kind}: its detector has {classes} classes (background "
                             f"included), not the {settings['num_classes']} of the data or "
                             "checkpoint")  # fmt: skip
    defaults = inspect.signature(FasterRCNN).parameters
    for key, value in settings.items():
        if key not in ("num_classes", "min_size", "max_size") and value != defaults[key].default:
            raise EigenarchError(f"--kind {kind}: the factory's detector has its own {key}, "
                                 f"not {value!r}; drop the option that sets it")  # fmt: skip
    model.transform.min_size = (settings["min_size"],)
    model.transform.max_size = settings["max_size"]
    return model


def check_factory_detector(model: nn.Module, kind: str, option: str = "--kind") -> FasterRCNN:
    """``model`` (of the factory ``kind``, given as ``option``) if it is a detector that
    ``--kind`` can rebuild on another backbone: a torchvision ``FasterRCNN`` (boxes only) on
    a ``BackboneWithFPN``."""
    rcnn = isinstance(model, FasterRCNN) and not isinstance(model, MaskRCNN | KeypointRCNN)
    if not rcnn or not isinstance(getattr(model, "backbone", None), BackboneWithFPN):
        on = type(getattr(model, "backbone", None)).__name__
        raise EigenarchError(f"{option} {kind}: the factory returned a {type(model).__name__} on "
                             f"a {on}; expected a torchvision FasterRCNN (boxes only) on a "
                             "BackboneWithFPN")  # fmt: skip
    return model


def _check_settings(
    kind: str, anchor_sizes: Sequence[int], gn_groups: int, *widths_of_gn_layers: int
) -> None:
    """Refuse a detector kind, anchor count or GroupNorm width that cannot be built."""
    if kind not in KINDS + TORCHVISION_KINDS and not is_factory(kind):
        raise EigenarchError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}, a "
                             f"torchvision builder ({', '.join(TORCHVISION_KINDS)}) or "
                             "file.py:factory / package.module:factory")  # fmt: skip
    if len(anchor_sizes) != 5:
        raise EigenarchError(f"anchor sizes {list(anchor_sizes)}: expected 5 (one per P2..P6)")
    for name, width in zip(("fpn_channels", "head_channels"), widths_of_gn_layers, strict=True):
        if width % gn_groups:
            raise EigenarchError(
                f"{name} {width} is not a multiple of the {gn_groups} GroupNorm groups"
            )


#: What a torchvision kind's detector has of eigenarch's settings (the builders' own).
_BUILDER_DEFAULTS = {"fpn_channels": 256, "head_channels": 256, "representation": 1024,
                     "anchor_sizes": DEFAULT_ANCHOR_SIZES}  # fmt: skip


def build_detector(
    kind: str = "faster_rcnn",
    backbone: BackboneLike | nn.Module = "resnet50",
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
        kind: ``"faster_rcnn"`` or ``"mask_rcnn"``; or one of :data:`TORCHVISION_KINDS`, or
            ``file.py:factory`` / ``package.module:factory`` returning a ``FasterRCNN`` on a
            ``BackboneWithFPN`` (:func:`check_factory_detector`; runs the user's code): that
            detector on ``backbone`` with an FPN as its own (torchvision's R-CNNs: no norm,
            ``_v2``: BatchNorm); its anchors and heads its own, so ``fpn_channels``,
            ``head_channels``, ``representation`` and ``anchor_sizes`` keep their defaults
            (a factory's: and ``kwargs``, its classes ``num_classes``).
        backbone: a :class:`~eigenarch.models.backbone.Backbone`, its JSON form (a
            checkpoint's ``config["backbone"]``), a ``--backbone`` text (``"resnet50"``,
            nine widths, a builder name, a width-spec or DetNAS file), or any body module
            (see :func:`~eigenarch.models.backbone.body_with_fpn`).
        num_classes: classes including background.
        min_size, max_size: the transform's resize (shorter side, cap on the longer side).
        gn_groups: GroupNorm groups everywhere (32 in the paper; fewer for narrow nets).
        fpn_channels, head_channels, representation: FPN width, conv width of the box and
            mask heads, and the box head's fc width (256 / 256 / 1024 in the paper).
        anchor_sizes: one anchor size per level P2..P6 (aspect ratios 0.5, 1, 2).
        kwargs: passed on to torchvision's ``FasterRCNN`` (e.g. ``rpn_batch_size_per_image``).
    """
    _check_settings(kind, anchor_sizes, gn_groups, fpn_channels, head_channels)
    if kind in TORCHVISION_KINDS or is_factory(kind):
        if isinstance(backbone, nn.Module):
            raise EigenarchError(f"--kind {kind}: give the backbone as a Backbone, not a module")
        own = {"fpn_channels": fpn_channels, "head_channels": head_channels,
               "representation": representation, "anchor_sizes": tuple(anchor_sizes)}  # fmt: skip
        given = next((k for k, v in own.items() if v != _BUILDER_DEFAULTS[k]), None)
        if given is not None:
            option = "--" + given.replace("_", "-")
            raise EigenarchError(f"{option} {own[given]}: the {kind} detector has its own FPN, "
                                 "anchors and heads; drop it")  # fmt: skip
        settings = dict(num_classes=num_classes, min_size=min_size, max_size=max_size,
                        image_mean=image_mean, image_std=image_std, **kwargs)  # fmt: skip
        model = _their_detector(kind, settings)
        model.backbone = as_backbone(backbone, gn_groups).with_fpn(
            model.backbone.out_channels, *fpn_norm(model.backbone)
        )
        return model
    if isinstance(backbone, nn.Module):
        features = body_with_fpn(backbone, fpn_channels, gn_groups)
    else:
        features = as_backbone(backbone, gn_groups).with_fpn(fpn_channels, gn_groups)
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
    backbone: BackboneLike = "resnet50", num_classes: int = 1000, gn_groups: int = 32
) -> nn.Module:
    """The backbone as a plain classifier (global pooling + fc), for pre-training."""
    return as_backbone(backbone, gn_groups).build(num_classes)
