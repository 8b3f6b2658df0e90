"""Any CNN backbone by builder name: torchvision classifiers and DetNet-59, resized by width.

A backbone is a classifier (ImageNet layout: 3 x 224 x 224 in, 1000 classes out) built by
name, with GroupNorm, BatchNorm or frozen BatchNorm as asked, every channel group at the
width its :class:`BuilderBackbone` gives (:func:`eigenarch.widths.resize`)
and freshly initialised. Its feature levels (the last module at each of the last four
strides, or a model's own ``stage_names``) feed a detector's FPN.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import torch
import torchvision
from torch import nn

from eigenarch.errors import EigenarchError
from eigenarch.models.backbone import (
    EXAMPLE_SIZE,
    Backbone,
    BackboneOptions,
    feature_levels,
    register_backbone,
)
from eigenarch.models.detnet import detnet59
from eigenarch.models.factory import call_factory, check_trusted, is_factory
from eigenarch.models.norms import check_norm, norm_layer
from eigenarch.widths.cost import ModelCost, graph_layer_costs, round_width
from eigenarch.widths.fpn import FpnLayout, detector_fpn_graph, trace_fpn
from eigenarch.widths.graph import ModelGraph, trace_model
from eigenarch.widths.ias import WidthSearchResult, named_target, search_graph
from eigenarch.widths.resize import check_group_widths, resize
from eigenarch.widths.ties import WidthTie, width_ties

#: ``format`` of a width spec naming a builder and per-group widths.
BUILDER_FORMAT = "eigenarch.backbone"
#: torchvision classifier families whose widths can be searched and resized.
FAMILIES = ("resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "regnet",
            "efficientnet", "convnext", "vgg", "mnasnet")  # fmt: skip
#: Builders whose forward reorders or concatenates channels: not resizable by groups.
REFUSED = ("shufflenet", "densenet", "googlenet", "inception", "squeezenet")
#: Transformer classifiers: attention mixes tokens through weights the graph cannot resize.
TRANSFORMERS = ("swin", "vit", "maxvit")
#: Builders with a normalisation of their own: ConvNeXt's LayerNorm; VGG and MNASNet take
#: no ``norm_layer`` (their BatchNorm is built in).
OWN_NORM = ("convnext", "vgg", "mnasnet", "timm:")
#: A timm model by name: ``timm:resnet50d`` (``timm.create_model``, never pretrained).
TIMM = "timm:"
#: The paper's figures for a backbone (Table 1, conv + fc weights at 224 px), shown beside ours.
PAPER_COSTS = {
    "resnet50": "paper Table 1, ResNet-50*: 4.09 G MACs, 25.5 M params",
    "detnet59": "paper Table 1, DetNet-59† (GN): 5.00+ G MACs, 18.3+ M params",
}


def backbone_names() -> list[str]:
    """Every builder name a backbone can be: ``detnet59`` and torchvision CNN classifiers."""
    names = torchvision.models.list_models(module=torchvision.models)
    return ["detnet59", *sorted(n for n in names if n.startswith(FAMILIES))]


def check_backbone_name(name: str) -> str:
    """``name`` if it is one of :func:`backbone_names` or a factory (``file.py:factory``,
    ``package.module:factory``), else a one-line error saying why."""
    if is_factory(name):
        return name
    if name.startswith(TIMM):
        import timm  # about a second of imports: only where a timm model is named

        if not timm.is_model(name[len(TIMM) :]):
            raise EigenarchError(f"backbone {name!r}: timm has no model "
                                 f"{name[len(TIMM) :]!r} (see timm.list_models())")  # fmt: skip
        return name
    if name.startswith(REFUSED):
        raise EigenarchError(
            f"backbone {name!r}: its forward reorders or concatenates channels, so its widths "
            "cannot be resized by channel group"
        )
    if name.startswith(TRANSFORMERS):
        raise EigenarchError(
            f"backbone {name!r} is a transformer, not resizable: its attention (qkv, "
            "projections, relative positions) couples widths that channel groups of a CNN do "
            "not describe; eigenarch resizes CNN backbones (spectrum --model takes it)"
        )
    if name in torchvision.models.list_models(module=torchvision.models.detection):
        raise EigenarchError(_detector_not_backbone(name))
    if name not in backbone_names():
        raise EigenarchError(
            f"backbone {name!r}: not 'resnet50', nine comma-separated widths, a builder name "
            "or an existing width-spec file; builders: detnet59 or a torchvision CNN classifier "
            "such as resnet18, mobilenet_v3_large, regnet_y_400mf, efficientnet_b0, convnext_tiny"
        )
    return name


#: The module of SSD / SSDlite's backbone that their classifier does not have.
SSD_EXTRA = "backbone.extra."
#: Why SSD's backbone is not searched.
SSD_REFUSAL = ("SSD's backbone is its classifier's features plus the extra blocks SSD adds "
               "(backbone.extra), not a torchvision classifier, so its widths cannot be searched "
               "or resized; eigenarch resizes the backbones of R-CNN, RetinaNet and FCOS "
               "detectors")  # fmt: skip


def _detector_not_backbone(name: str) -> str:
    """Why the torchvision detector ``name`` is not a backbone, and which builder is."""
    if name.startswith("ssd"):
        return f"backbone {name!r}: {SSD_REFUSAL}"
    inside = [n for n in backbone_names() if f"_{n}_" in f"_{name}_"]
    body = max(inside, key=len, default=None)
    use = f"--model {body} (its spectra fit it)" if body else "its backbone's builder name"
    return f"backbone {name!r} is a detector, not a backbone: give {use}"


def _torchvision_norm(name: str, norm: str | None, gn_groups: int) -> dict:
    if name.startswith("convnext") and norm is not None:
        raise EigenarchError(f"{name} normalises with LayerNorm; --norm {norm} does not apply")
    if norm in (None, "bn"):  # the builder's own (BatchNorm; ConvNeXt: LayerNorm)
        return {}
    return {"norm_layer": norm_layer(norm, gn_groups)}


def _init(model: nn.Module, name: str) -> None:
    """Fresh weights as the builder's family sets them (DetNet: PyTorch's defaults; a
    factory, a timm model: their own)."""
    if name == "detnet59" or is_factory(name) or name.startswith(TIMM):
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and name.startswith("convnext"):
            nn.init.trunc_normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        else:
            continue
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


def classifier_by_name(
    name: str, norm: str | None = None, gn_groups: int = 32, num_classes: int = 1000
) -> nn.Module:
    """The classifier ``name`` (``backbone_names()``), random weights; ``norm`` ``"gn"``,
    ``"bn"``, ``"frozen_bn"`` or ``None``: the builder's own (torchvision's BatchNorm,
    ConvNeXt's LayerNorm, DetNet's GroupNorm). A factory's or a timm model (``timm:NAME``) is
    as it builds it: its own normalisation (a factory: its own classes too)."""
    check_backbone_name(name)
    own = is_factory(name) or name.startswith(TIMM)
    if own and norm is not None:
        raise EigenarchError(f"backbone {name!r} sets its own normalisation: --norm {norm} "
                             "does not apply")  # fmt: skip
    if is_factory(name):
        return call_factory(name)
    if name.startswith(TIMM):  # never downloads: weights come through --weights / --init
        import timm

        model = timm.create_model(name[len(TIMM) :], pretrained=False, num_classes=num_classes)
        attention = next((n for n, m in model.named_modules()
                          if type(m).__name__.endswith("Attention")), None)  # fmt: skip
        if attention is not None:  # ViT, Swin, ConvFormer, MaxViT, ...: tokens, not channels
            raise EigenarchError(
                f"backbone {name!r} is a transformer, not resizable: its attention "
                f"({attention}) couples widths that channel groups of a CNN do not describe"
            )
        return model
    if name == "detnet59":
        return detnet59(norm or "gn", gn_groups, num_classes)
    try:
        return torchvision.models.get_model(
            name, weights=None, num_classes=num_classes, **_torchvision_norm(name, norm, gn_groups)
        )
    except ValueError as exc:  # GroupNorm: channels not divisible by the groups
        raise EigenarchError(
            f"backbone {name!r} with {gn_groups} GroupNorm groups: {exc}; use --gn-groups "
            "dividing every width (e.g. 8) or --norm bn"
        ) from None
    except TypeError:  # a builder that takes no norm_layer, or sets its own
        raise EigenarchError(
            f"backbone {name!r} sets its own normalisation (its builder takes no norm_layer): "
            f"--norm {norm} does not apply; use --norm bn"
        ) from None


@functools.lru_cache(maxsize=32)
def _traced(name: str, norm: str | None, gn_groups: int) -> tuple[ModelGraph, tuple[WidthTie, ...]]:
    model = classifier_by_name(name, norm, gn_groups)
    graph = trace_model(model, torch.zeros(1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE), name=name)
    return graph, width_ties(graph)


@register_backbone
@dataclasses.dataclass(frozen=True)
class BuilderBackbone(Backbone):
    """Any CNN backbone: a builder name (:func:`backbone_names` or a factory), its
    normalisation (``None``: the builder's own) and per-group widths.

    ``groups`` maps channel-group names (:func:`eigenarch.widths.channel_groups` of the
    builder's classifier) to widths; groups not named keep the builder's. Its JSON form is
    ``{"format": "eigenarch.backbone", "builder", "groups", "norm", "gn_groups", "source"}``.
    """

    format = BUILDER_FORMAT
    builder: str = "resnet18"
    groups: dict[str, int] = dataclasses.field(default_factory=dict)
    norm: str | None = None
    gn_groups: int = 32
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.builder, str) or not self.builder:
            raise EigenarchError(f"builder {self.builder!r} is not a builder name")
        check_norm(self.norm, self.gn_groups, optional=True)
        if not isinstance(self.groups, dict):
            raise EigenarchError(f"groups {self.groups!r} is not a JSON object")
        for name, width in self.groups.items():
            if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 1 << 20:
                raise EigenarchError(f"width of group {name!r}: {width!r} is not an integer "
                                     f"in 1..{1 << 20}")  # fmt: skip
        if not isinstance(self.source, dict):
            raise EigenarchError(f"source {self.source!r} is not a JSON object")

    def describe(self) -> str:
        return self.builder

    def graph(self) -> tuple[ModelGraph, tuple[WidthTie, ...]]:
        """The traced graph and width ties of the builder at its own widths (this
        backbone's norm and GroupNorm groups; its ``groups`` are not applied)."""
        return _traced(self.builder, self.norm, self.gn_groups)

    def build(self, num_classes: int = 1000) -> nn.Module:
        """The classifier: built, every group at its width, freshly initialised. A resized
        timm model is timm's ``adapt_model_from_string`` of it where timm's format expresses
        it (:mod:`eigenarch.models.timm_format`)."""
        model = classifier_by_name(self.builder, self.norm, self.gn_groups, num_classes)
        if self.groups:
            example = torch.zeros(1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE)
            resized = resize(model, self.groups, graph=trace_model(model, example, self.builder))
            timm_model = None
            if self.builder.startswith(TIMM):
                from eigenarch.models.timm_format import timm_resized

                timm_model, _ = timm_resized(model, resized)
            model = resized if timm_model is None else timm_model
        _init(model, self.builder)
        return model

    def cost(self) -> ModelCost:
        graph, _ = self.graph()
        widths = check_group_widths(graph, self.groups)  # widths the network can have
        return graph_layer_costs(graph, [widths[g.name] for g in graph.groups])

    def searched_widths(self) -> list[int]:
        graph, ties = self.graph()
        widths = check_group_widths(graph, self.groups, divisors=False)
        return [widths[graph.groups[t.groups[0]].name] for t in ties]

    def scaled(
        self, multiplier: float, multiple: int, source: Mapping[str, Any] | None = None
    ) -> BuilderBackbone:
        graph, _ = self.graph()
        widths = check_group_widths(graph, self.groups, divisors=False)
        scaled = {name: round_width(multiplier * w, multiple) for name, w in widths.items()}
        return BuilderBackbone(self.builder, scaled, self.norm, self.gn_groups, dict(source or {}))

    def search(
        self,
        dims: Mapping[str, object],
        target: float | str,
        metric: str = "macs",
        multiple: int = 32,
        side: str = "in",
        source: Mapping[str, Any] | None = None,
        channels: Mapping[str, int] | None = None,
    ) -> tuple[WidthSearchResult, BuilderBackbone]:
        """FPN maps in ``dims`` (``backbone.fpn.inner_blocks.*``) are read as consumers of
        the groups their convs read, from the graph of the backbone inside the analysed
        detector's FPN (:func:`eigenarch.widths.fpn.fpn_layout`)."""
        graph, ties = self.graph()
        base = list(check_group_widths(graph, self.groups).values())
        trace = functools.partial(_fpn_graph, self.builder)
        fpn_graph = detector_fpn_graph(graph, base, dims, channels, trace)
        target = named_target(target, metric)
        result = search_graph(graph, ties, dims, target, metric, multiple, side, fpn_graph, base)
        found = BuilderBackbone(self.builder, result.group_widths, self.norm, self.gn_groups,
                                dict(source or {}))  # fmt: skip
        return result, found

    def export_base(self) -> dict[str, Any]:
        """A factory's network is the user's code, not torchvision's or timm's: refused."""
        if is_factory(self.builder):
            raise EigenarchError(f"backbone {self.builder!r} is a factory's (your code): build it "
                                 "with the factory; torchvision / timm alone cannot")  # fmt: skip
        if self.builder.startswith(TIMM):
            return {"kind": "timm", "name": self.builder[len(TIMM) :], "num_classes": 1000}
        kind = "detnet59" if self.builder == "detnet59" else "torchvision"
        norm = "gn" if kind == "detnet59" and self.norm is None else self.norm
        if kind == "torchvision" and norm == "bn":  # the builder's own BatchNorm (its eps)
            norm = None
        return {"kind": kind, "name": self.builder, "norm": norm, "gn_groups": self.gn_groups,
                "num_classes": 1000}  # fmt: skip

    def unresized(self) -> BuilderBackbone:
        """The builder at its own widths."""
        return dataclasses.replace(self, groups={}, source={"name": self.builder})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUILDER_FORMAT,
            "builder": self.builder,
            "groups": dict(self.groups),
            "norm": self.norm,
            "gn_groups": self.gn_groups,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], what: str) -> BuilderBackbone:
        """A factory builder is refused unless trusted (a data file never runs code)."""
        if "builder" not in obj:
            raise EigenarchError(f"{what}: missing field 'builder' (e.g. mobilenet_v3_large)")
        if isinstance(obj["builder"], str) and is_factory(obj["builder"]):
            check_trusted(obj["builder"], what)
        try:
            return cls(
                builder=obj["builder"],
                groups=obj.get("groups", {}),
                norm=obj.get("norm"),
                gn_groups=obj.get("gn_groups", 32),
                source=obj.get("source", {}),
            )
        except EigenarchError as exc:
            raise EigenarchError(f"{what}: {exc}") from None

    @classmethod
    def parse(cls, text: str, options: BackboneOptions) -> BuilderBackbone:
        """A builder name or a factory (its own norm; another norm is refused when built);
        the catch-all kind, whose refusal says what a backbone may be."""
        norm, groups = options.norm, options.gn_groups
        if options.own_norm:
            return cls(check_backbone_name(text), {}, None, groups, {"name": text})
        if is_factory(text):
            return cls(text, {}, norm, groups, {"name": text})
        own = check_backbone_name(text).startswith(OWN_NORM)
        return cls(text, {}, norm or (None if own else "gn"), groups, {"name": text})


@functools.lru_cache(maxsize=32)
def _traced(name: str, norm: str | None, gn_groups: int) -> tuple[ModelGraph, tuple[WidthTie, ...]]:
    model = classifier_by_name(name, norm, gn_groups)
    graph = trace_model(model, torch.zeros(1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE), name=name)
    return graph, width_ties(graph)


@functools.lru_cache(maxsize=32)
def _fpn_graph(builder: str, layout: FpnLayout | None) -> ModelGraph:
    """The builder's classifier as the body of an FPN over its feature levels, traced
    (default: eigenarch's, a lateral per level; its norms and widths do not change which
    groups the FPN reads)."""
    model = classifier_by_name(builder)
    names, channels = feature_levels(model)
    return trace_fpn(model, names, channels, layout, name=f"{builder}-fpn")
