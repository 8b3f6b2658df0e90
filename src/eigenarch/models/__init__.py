"""Model builders: ResiaNet, DetNet-59, any torchvision CNN backbone by name (resized to a
width spec), and Faster / Mask R-CNN with an FPN over any of them."""

from eigenarch.models.backbones import build_backbone, classifier_by_name, feature_levels
from eigenarch.models.detector import build_classifier, build_detector
from eigenarch.models.detnet import DetNet, detnet59
from eigenarch.models.resianet import ResiaNet, norm_layer, resianet, resianet_from_spec

__all__ = [
    "DetNet",
    "ResiaNet",
    "build_backbone",
    "build_classifier",
    "build_detector",
    "classifier_by_name",
    "detnet59",
    "feature_levels",
    "norm_layer",
    "resianet",
    "resianet_from_spec",
]
