"""Model builders: ResiaNet backbones (and, later, detectors)."""

from eigenarch.models.resianet import ResiaNet, norm_layer, resianet, resianet_from_spec

__all__ = ["ResiaNet", "norm_layer", "resianet", "resianet_from_spec"]
