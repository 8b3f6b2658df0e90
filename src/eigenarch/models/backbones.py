"""Any CNN backbone by builder name: torchvision classifiers and DetNet-59, resized by width.

A backbone is a classifier (ImageNet layout: 3 x 224 x 224 in, 1000 classes out) built by
name, with GroupNorm, BatchNorm or frozen BatchNorm as asked, every channel group at the
width its :class:`~eigenarch.widths.spec.BackboneSpec` gives (:func:`eigenarch.widths.resize`)
and freshly initialised. Its feature levels (the last module at each of the last four
strides, or a model's own ``stage_names``) feed a detector's FPN.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from eigenarch.errors import EigenarchError
from eigenarch.models.detnet import detnet59
from eigenarch.models.factory import call_factory, is_factory
from eigenarch.models.resianet import norm_layer
from eigenarch.widths.cost import (
    ModelCost,
    graph_layer_costs,
    resnet_cost,
    round_width,
    uniform_widths,
)
from eigenarch.widths.graph import ModelGraph, trace_model
from eigenarch.widths.resize import check_group_widths, resize
from eigenarch.widths.search import WidthSearchResult, named_target, search_graph, search_widths
from eigenarch.widths.spec import BackboneSpec, WidthSpec
from eigenarch.widths.ties import WidthTie, width_ties

#: torchvision classifier families whose widths can be searched and resized.
FAMILIES = ("resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "regnet",
            "efficientnet", "convnext", "vgg", "mnasnet")  # fmt: skip
#: Builders whose forward reorders or concatenates channels: not resizable by groups.
REFUSED = ("shufflenet", "densenet", "googlenet", "inception", "squeezenet")
EXAMPLE_SIZE = 224
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
    if name.startswith(REFUSED):
        raise EigenarchError(
            f"backbone {name!r}: its forward reorders or concatenates channels, so its widths "
            "cannot be resized by channel group"
        )
    if name not in backbone_names():
        raise EigenarchError(
            f"backbone {name!r}: not 'resnet50', nine comma-separated widths, a builder name "
            "or an existing width-spec file; builders: detnet59 or a torchvision CNN classifier "
            "such as resnet18, mobilenet_v3_large, regnet_y_400mf, efficientnet_b0, convnext_tiny"
        )
    return name


def _torchvision_norm(name: str, norm: str | None, gn_groups: int) -> dict:
    if name.startswith("convnext") and norm is not None:
        raise EigenarchError(f"{name} normalises with LayerNorm; --norm {norm} does not apply")
    if norm in (None, "bn"):  # the builder's own (BatchNorm; ConvNeXt: LayerNorm)
        return {}
    return {"norm_layer": norm_layer(norm, gn_groups)}


def _init(model: nn.Module, name: str) -> None:
    """Fresh weights as the builder's family sets them (DetNet: PyTorch's defaults; a
    factory: its own)."""
    if name == "detnet59" or is_factory(name):
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
    ConvNeXt's LayerNorm, DetNet's GroupNorm). A factory's model is as it builds it: its own
    normalisation and classes."""
    check_backbone_name(name)
    if is_factory(name):
        if norm is not None:
            raise EigenarchError(f"backbone {name!r} sets its own normalisation: --norm {norm} "
                                 "does not apply")  # fmt: skip
        return call_factory(name)
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


def backbone_graph(spec: BackboneSpec) -> tuple[ModelGraph, tuple[WidthTie, ...]]:
    """The traced graph and width ties of the spec's builder at the builder's own widths
    (the spec's norm and GroupNorm groups; its ``groups`` are not applied)."""
    return _traced(spec.builder, spec.norm, spec.gn_groups)


def build_backbone(spec: BackboneSpec, num_classes: int = 1000) -> nn.Module:
    """The classifier of ``spec``: built, every group at its width, freshly initialised."""
    model = classifier_by_name(spec.builder, spec.norm, spec.gn_groups, num_classes)
    if spec.groups:
        graph = trace_model(model, torch.zeros(1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE), name=spec.builder)
        model = resize(model, spec.groups, graph=graph)
    _init(model, spec.builder)
    return model


def feature_levels(model: nn.Module, levels: int = 4) -> tuple[list[str], list[int]]:
    """``(module names, channels)`` of the feature maps an FPN reads, from a 224-pixel
    forward (channels as they are, after any resizing).

    A model's own ``stage_names``; else, for each of the last ``levels`` strides (4 and up)
    the tensor that the first module leaving that stride (a stage's strided block, or the
    classifier's pooling) reads, named by the outermost module that returned it
    (``layer2``, ``features.6``, ``trunk_output.block3``).
    """
    channels: dict[str, int] = {}
    seen: list[torch.Tensor] = []  # keeps every tensor alive, so ids stay unique
    producer: dict[int, str] = {}
    calls: dict[str, list[tuple[int, object]]] = {}
    leaving: dict[int, tuple[int, torch.Tensor]] = {}  # stride -> (entry, tensor read)
    pooled: list = []  # [stride, entry, tensor read]

    def stride(t) -> int | None:  # a square (B, C, H, W) map; not a channels-last one
        square = torch.is_tensor(t) and t.dim() == 4 and t.shape[-1] == t.shape[-2]
        return EXAMPLE_SIZE // t.shape[-1] if square else None

    def pre(name):
        def hook(module, args):
            seen.append(args[0] if args else None)
            calls.setdefault(name, []).append((len(seen), seen[-1]))

        return hook

    def post(name):
        def hook(module, args, output):
            entry, x = calls[name].pop()
            seen.append(output)
            if torch.is_tensor(output):
                producer[id(output)] = name
                channels[name] = output.shape[1] if output.dim() > 1 else 0
            s_in, s_out = stride(x), stride(output)
            if not s_in or not 4 <= s_in < EXAMPLE_SIZE or s_out == s_in:
                return
            if s_out is not None and s_in < s_out < EXAMPLE_SIZE:  # downsampling: the first
                if s_in not in leaving or entry < leaving[s_in][0]:
                    leaving[s_in] = (entry, x)
            elif s_out is None or s_out == EXAMPLE_SIZE:  # pooled: the last (the classifier's)
                if not pooled or entry > pooled[1]:
                    pooled[:] = [s_in, entry, x]

        return hook

    handles = []
    for name, m in model.named_modules():
        if name:
            handles += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post(name))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE))
    finally:
        for h in handles:
            h.remove()
    if hasattr(model, "stage_names"):
        return list(model.stage_names), [channels[n] for n in model.stage_names]
    if pooled and pooled[0] > max(leaving, default=0):
        leaving[pooled[0]] = (pooled[1], pooled[2])
    chosen = [(producer.get(id(t)), t.shape[1]) for _, (_, t) in sorted(leaving.items())]
    chosen = chosen[-levels:]
    if len(chosen) < levels or any(name is None for name, _ in chosen):
        raise EigenarchError(f"{type(model).__name__}: fewer than {levels} feature levels")
    return [n for n, _ in chosen], [c for _, c in chosen]


def feature_body(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """The model up to its feature levels, returning ``{"0": ..., "1": ...}``."""
    return create_feature_extractor(model, {name: str(k) for k, name in enumerate(names)})


def search_backbone(
    spec: BackboneSpec,
    dims: Mapping[str, object],
    target: float | str,
    metric: str = "macs",
    multiple: int = 32,
    side: str = "in",
) -> tuple[WidthSearchResult, BackboneSpec]:
    """Intrinsic Architecture Search of any backbone: the result and its width spec.

    ``target`` is a number or ``"base"`` (the cost of ``spec``'s backbone). FPN maps in
    ``dims`` (``backbone.fpn.inner_blocks.*``) are read as consumers of the groups their
    lateral convs read, from the graph of the backbone inside the detector's FPN.
    """
    graph, ties = backbone_graph(spec)
    base = list(check_group_widths(graph, spec.groups).values())
    fpn_graph = None
    if any(".fpn." in name or name.startswith("fpn.") for name in dims):
        fpn_graph = _fpn_graph(spec.builder)
    result = search_graph(graph, ties, dims, target, metric, multiple, side, fpn_graph, base)
    found = BackboneSpec(spec.builder, result.group_widths, spec.norm, spec.gn_groups, {})
    return result, found


@functools.lru_cache(maxsize=32)
def _fpn_graph(builder: str) -> ModelGraph:
    """The builder's classifier as the body of eigenarch's FPN, traced (its norms and widths
    do not change which groups the FPN reads)."""
    from eigenarch.models.detector import body_with_fpn

    model = classifier_by_name(builder)
    fpn = body_with_fpn(model, 256, 32)
    return trace_model(fpn, torch.zeros(1, 3, 64, 64), name=f"{builder}-fpn")


def backbone_cost(spec: BackboneSpec) -> ModelCost:
    """MACs and params (SPEC section 4) of the spec's backbone, from its traced shapes."""
    graph, _ = backbone_graph(spec)
    widths = check_group_widths(graph, spec.groups)  # widths the spec's network can have
    return graph_layer_costs(graph, [widths[g.name] for g in graph.groups])


def search_spec(
    model: WidthSpec | BackboneSpec,
    dims: Mapping[str, object],
    target: float | str,
    metric: str = "macs",
    multiple: int = 32,
    side: str = "in",
    source: Mapping[str, Any] | None = None,
) -> tuple[WidthSearchResult, WidthSpec | BackboneSpec]:
    """Intrinsic Architecture Search of the analysed ``model``: the result and the width
    spec that builds it (same norm; ``source`` recorded). A ResiaNet gives nine widths."""
    target = named_target(target, metric)
    source = dict(source or {})
    if isinstance(model, WidthSpec):
        result = search_widths(dims, target, metric, multiple, side, model.depths, model.widths)
        return result, WidthSpec(result.widths, model.depths, model.norm, model.gn_groups, source)
    result, found = search_backbone(model, dims, target, metric, multiple, side)
    return result, dataclasses.replace(found, source=source)


def spec_cost(spec: WidthSpec | BackboneSpec) -> ModelCost:
    """MACs and params of a ResiaNet's or any backbone's width spec."""
    if isinstance(spec, WidthSpec):
        return resnet_cost(spec.widths, spec.depths)
    return backbone_cost(spec)


def spec_widths(spec: WidthSpec | BackboneSpec) -> list[int]:
    """One width per searched width (tie) of a spec: a ResiaNet's nine, else per tie."""
    if isinstance(spec, WidthSpec):
        return list(spec.widths)
    graph, ties = backbone_graph(spec)
    widths = check_group_widths(graph, spec.groups, divisors=False)
    return [widths[graph.groups[t.groups[0]].name] for t in ties]


def scaled_spec(
    spec: WidthSpec | BackboneSpec, multiplier: float, multiple: int, source: Mapping | None = None
) -> WidthSpec | BackboneSpec:
    """The simple width-multiplier baseline: every width ``R(multiplier * w)`` (SPEC 6)."""
    source = dict(source or {})
    if isinstance(spec, WidthSpec):
        widths = uniform_widths(multiplier, spec.widths, multiple)
        return WidthSpec(widths, spec.depths, spec.norm, spec.gn_groups, source)
    graph, _ = backbone_graph(spec)
    widths = check_group_widths(graph, spec.groups, divisors=False)
    scaled = {name: round_width(multiplier * w, multiple) for name, w in widths.items()}
    return BackboneSpec(spec.builder, scaled, spec.norm, spec.gn_groups, source)
