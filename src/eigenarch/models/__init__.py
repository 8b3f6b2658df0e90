"""Model builders: the :class:`Backbone` type and its kinds (ResiaNet, any torchvision CNN
backbone or DetNet-59 by builder name, resized to per-group widths), and Faster / Mask R-CNN
with an FPN over any of them."""

from eigenarch.models.backbone import (
    BACKBONE_KINDS,
    Backbone,
    BackboneOptions,
    backbone_from_dict,
    body_with_fpn,
    feature_levels,
    load_backbone,
    parse_backbone,
    register_backbone,
)
from eigenarch.models.builders import BuilderBackbone, classifier_by_name  # noqa: I001 (last: catch-all)
from eigenarch.models.detector import build_classifier, build_detector
from eigenarch.models.detnet import DetNet, detnet59
from eigenarch.models.norms import NORMS, norm_layer
from eigenarch.models.resianet import ResiaNet, ResiaNetBackbone, resianet  # registered first

__all__ = [
    "BACKBONE_KINDS",
    "NORMS",
    "Backbone",
    "BackboneOptions",
    "BuilderBackbone",
    "DetNet",
    "ResiaNet",
    "ResiaNetBackbone",
    "backbone_from_dict",
    "body_with_fpn",
    "build_classifier",
    "build_detector",
    "classifier_by_name",
    "detnet59",
    "feature_levels",
    "load_backbone",
    "norm_layer",
    "parse_backbone",
    "register_backbone",
    "resianet",
]
