"""Intrinsic Architecture Search over the channel groups of any model (SPEC sections 6, 6b).

Intrinsic dimensionalities per feature map name (``"layer1.0.conv1:in"``, optionally with
a detector prefix such as ``"backbone.body."``; a detector's FPN maps count with the groups
they read in its pyramid, :mod:`eigenarch.widths.fpn`) give every channel group of the
traced model a dimensionality (the maximum over its maps on the chosen side); groups tied by
:func:`eigenarch.widths.ties.width_ties` share one width (the geometric mean for a
stage's internal groups); the widths are expanded uniformly to a MACs or parameter
budget, rounded to a multiple ``q`` and greedily filled. A ResNet's nine widths are the
nine ties of a traced bottleneck ResNet: :func:`search_widths` is this search on it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from eigenarch.errors import EigenarchError
from eigenarch.io import read_json_object
from eigenarch.widths.cost import (
    DEFAULT_DEPTHS,
    METRICS,
    RESNET50_WIDTHS,
    STANDARD_DEPTHS,
    check_depths,
    check_multiple,
    check_widths,
    graph_cost,
    resnet_cost,
    resnet_graph,
    round_width,
    tie_widths,
)
from eigenarch.widths.fpn import FpnLayout, detector_fpn_graph, trace_fpn
from eigenarch.widths.graph import ModelGraph
from eigenarch.widths.ties import WidthTie

SEARCH_SIDES = ("in", "out", "both")
#: The largest intrinsic dimensionality read (no feature map has a million channels).
MAX_DIM = 10**6
#: The largest budget searched: 10^12 MACs or parameters, ~250x ResNet-50's MACs.
MAX_TARGET = 10**12
_BODY_LAYER = re.compile(r"^((?:.*\.)?)layer(\d+)\.(\d+)\.(conv[123]|downsample\.0)$")


def check_dims(dims: Mapping[str, object]) -> None:
    """Check that ``dims`` maps names ending in ``:in``/``:out`` to finite numbers >= 0."""
    if not isinstance(dims, Mapping):
        raise EigenarchError(f"dims must be a mapping of map name to number, not {dims!r}")
    for name, value in dims.items():
        if not isinstance(name, str) or not name.endswith((":in", ":out")):
            raise EigenarchError(
                f"map name {name!r} does not end in ':in' or ':out' (e.g. 'layer1.0.conv1:in')"
            )
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= MAX_DIM:
            raise EigenarchError(
                f"intrinsic dimensionality of {name!r} is {value!r}; expected a number >= 0"
                f" and at most {MAX_DIM:,}"
            )


def load_dims(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a dims file: a JSON object from map name to intrinsic dimensionality."""
    dims = read_json_object(path, "dims file")
    try:
        check_dims(dims)
    except EigenarchError as exc:
        raise EigenarchError(f"dims file {path}: {exc}") from None
    return dims


def _prefix(names: Sequence[str], modules: set[str]) -> str:
    """The prefix that, stripped, turns most map paths into module paths of the model."""
    counts: Counter[str] = Counter()
    for name in names:
        parts = name.split(".")
        for k in range(len(parts)):
            if ".".join(parts[k:]) in modules:
                counts[".".join(parts[:k]) + ("." if k else "")] += 1
                break
    if not counts:
        return ""
    (best, n), *rest = counts.most_common(2) + [("", -1)]
    if rest[0][1] == n:
        raise EigenarchError(
            f"maps name more than one model: prefixes {sorted([best, rest[0][0]])}; keep one"
        )
    return best


@dataclass(frozen=True)
class GroupMaps:
    """For every group of a graph, each producer's ``:out`` map and its readers' ``:in`` maps."""

    units: tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]


def group_maps(graph: ModelGraph, fpn_graph: ModelGraph | None = None) -> GroupMaps:
    """Every group's units; ``fpn_graph`` (the model as ``body`` of a feature pyramid) adds
    the pyramid's layers that read a group (the FPN lateral convs) to its last unit."""
    extra: dict[str, tuple[str, ...]] = {}
    if fpn_graph is not None:
        for fpn_group in fpn_graph.groups:
            readers = tuple(c for c in fpn_group.consumers if not c.startswith("body."))
            for producer in fpn_group.producers:
                if producer.startswith("body."):
                    extra[producer[len("body.") :]] = readers
    units = []
    for group in graph.groups:
        found = list(group.units)
        more = extra.get(group.producers[0], ())
        if more:
            producer, readers = found[-1]
            found[-1] = (producer, readers + more)
        units.append(tuple(found))
    return GroupMaps(tuple(units))


def relative_dims(
    graph: ModelGraph, dims: Mapping[str, object], fpn_graph: ModelGraph | None = None
) -> dict[str, float]:
    """Validate ``dims`` and rename its maps relative to the model.

    A common prefix of the model's modules (``backbone.body.``) is found and stripped; maps
    of the feature pyramid around it (``backbone.fpn.*``) keep their ``fpn.`` names; maps of
    other modules are dropped. A map under the prefix that names no module is an error.
    """
    check_dims(dims)
    modules = {layer.name for layer in graph.layers}
    paths = [name.rpartition(":")[0] for name in dims]
    prefix = _prefix(paths, modules)
    fpn_prefix = prefix[: -len("body.")] if prefix.endswith("body.") else prefix
    fpn_modules = {n for n in (fpn_graph.order if fpn_graph else ()) if not n.startswith("body.")}
    out: dict[str, float] = {}
    for name, value in dims.items():
        path, _, side = name.rpartition(":")
        if path.startswith(fpn_prefix) and path[len(fpn_prefix) :] in fpn_modules:
            out[f"{path[len(fpn_prefix) :]}:{side}"] = float(value)
        elif path.startswith(prefix):
            rest = path[len(prefix) :]
            if rest not in modules:
                raise EigenarchError(
                    f"map {name!r} names no conv / linear layer of {graph.model_name}"
                    + (f" (after the prefix {prefix!r})" if prefix else "")
                )
            out[f"{rest}:{side}"] = float(value)
    return out


def _unit_maps(producer: str, readers: tuple[str, ...], side: str) -> list[str]:
    outs, ins = [f"{producer}:out"], [f"{r}:in" for r in readers]
    return {"in": ins, "out": outs}.get(side, outs + ins)


def intrinsic_per_layer(
    graph: ModelGraph, maps: GroupMaps, dims: Mapping[str, float], side: str
) -> dict[str, float]:
    """``{producing layer: d}`` in network order: the largest dimensionality of the layer's
    output maps on ``side`` (paper Figure 2 (b)/(f)); layers with no map are left out."""
    if side not in SEARCH_SIDES:
        raise EigenarchError(f"side {side!r} is not one of {', '.join(SEARCH_SIDES)}")
    out: dict[str, float] = {}
    for units in maps.units:
        for producer, readers in units:
            found = [dims[m] for m in _unit_maps(producer, readers, side) if m in dims]
            if found:
                out[producer] = max(found)
    rank = {name: i for i, name in enumerate(graph.order)}
    return dict(sorted(out.items(), key=lambda item: rank[item[0]]))


def adjusted_widths(
    graph: ModelGraph,
    ties: Sequence[WidthTie],
    maps: GroupMaps,
    intrinsic: Mapping[str, float],
    side: str,
) -> tuple[float, ...]:
    """One real width ``O'`` per tie: a group's dimensionality is the largest of its layers'
    (clamped to >= 1); a stage's internal groups share their geometric mean."""
    per_group: list[float | None] = []
    for units in maps.units:
        found = [intrinsic[p] for p, _ in units if p in intrinsic]
        per_group.append(max(1.0, float(max(found))) if found else None)
    searched = sorted(i for t in ties for i in t.groups)
    missing = [i for i in searched if per_group[i] is None]
    if missing:
        group = graph.groups[missing[0]]
        wanted = [m for p, r in maps.units[missing[0]] for m in _unit_maps(p, r, side)]
        more = f" (and {len(missing) - 1} more groups)" if len(missing) > 1 else ""
        raise EigenarchError(
            f"no intrinsic dimensionality for width group {group.name!r}{more} of "
            f"{graph.model_name} on side {side!r}; expected one of {', '.join(wanted)}"
        )
    return tuple(
        statistics.geometric_mean([per_group[i] for i in t.groups])
        if t.shared
        else max(per_group[i] for i in t.groups)
        for t in ties
    )


def expand_widths(
    adjusted: Sequence[float],
    budget: int,
    cost: Callable[[tuple[int, ...]], int],
    multiple: int,
    metric: str = "cost",
) -> tuple[tuple[int, ...], float]:
    """Binary-search the multiplier, round, then greedily fill: ``(widths, omega)``.

    ``cost`` must not decrease when a width grows; ``metric`` names it in errors.
    """
    check_multiple(multiple)

    def fits(omega: float) -> bool:
        return cost(tuple(round_width(omega * a, multiple) for a in adjusted)) <= budget

    smallest = cost((multiple,) * len(adjusted))
    if smallest > budget:
        raise EigenarchError(
            f"budget {budget:,} {metric} is below the smallest reachable {smallest:,} "
            f"(every width {multiple}); raise the target or lower the multiple"
        )
    lo, hi = 0.0, 1.0
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    ideal = [lo * a for a in adjusted]
    widths = [round_width(x, multiple) for x in ideal]
    while True:
        best, best_gap = None, -math.inf
        for g, x in enumerate(ideal):
            grown = widths[:g] + [widths[g] + multiple] + widths[g + 1 :]
            gap = (x - widths[g]) / x
            if gap > best_gap and cost(tuple(grown)) <= budget:
                best, best_gap = g, gap
        if best is None:
            return tuple(widths), lo
        widths[best] += multiple


@dataclass(frozen=True)
class WidthSearchResult:
    """Outcome of a width search; ``to_dict`` gives the JSON fields of a width spec.

    ``widths`` / ``adjusted`` / ``base_widths`` hold one number per tie (``ties`` names
    them; for a ResNet the nine widths; ``base_widths`` the tie's first group, whose widths
    span ``base_ranges``), ``group_widths`` every group's width; ``fixed`` names the ties
    kept at their base width (outside the analysed detector's body).
    """

    widths: tuple[int, ...]
    adjusted: tuple[float, ...]
    omega: float
    macs: int
    params: int
    metric: str
    target: int
    side: str
    multiple: int
    intrinsic: dict[str, float]
    base_widths: tuple[int, ...]
    base_macs: int
    base_params: int
    ties: tuple[str, ...]
    group_widths: dict[str, int]
    depths: tuple[int, ...] = field(default=())
    fixed: tuple[str, ...] = field(default=())
    base_ranges: tuple[tuple[int, int], ...] = field(default=())

    def to_dict(self) -> dict:
        out = {
            "widths": list(self.widths),
            "adjusted": list(self.adjusted),
            "omega": self.omega,
            "macs": self.macs,
            "params": self.params,
            "target": {"metric": self.metric, "value": self.target},
            "base": {
                "widths": list(self.base_widths),
                **self._ranges(),
                "macs": self.base_macs,
                "params": self.base_params,
            },
            "side": self.side,
            "multiple": self.multiple,
            "ties": list(self.ties),
            "fixed": list(self.fixed),
            "groups": self.group_widths,
            "intrinsic": self.intrinsic,
        }
        if self.depths:
            out["depths"] = list(self.depths)
        return out

    def _ranges(self) -> dict:
        """``{"ranges": [[low, high], ...]}`` where a tie's groups differ in base width."""
        uneven = any(low != high for low, high in self.base_ranges)
        return {"ranges": [list(r) for r in self.base_ranges]} if uneven else {}


def named_target(target: float | str, metric: str) -> float | str:
    """A target as a number, ``"base"`` kept: ``"resnet50"`` (also ``"resnet101"``,
    ``"resnet152"``) is that network's cost in ``metric``."""
    if metric not in METRICS:
        raise EigenarchError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if isinstance(target, str) and target != "base":
        if target not in STANDARD_DEPTHS:
            raise EigenarchError(
                f"target {target!r} is not a number, base or one of {', '.join(STANDARD_DEPTHS)}"
            )
        return resnet_cost(RESNET50_WIDTHS, STANDARD_DEPTHS[target]).metric(metric)
    return target


def check_target(target: float, metric: str) -> int:
    """The budget ``zeta`` as an int: a positive finite number of ``metric``."""
    if metric not in METRICS:
        raise EigenarchError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if isinstance(target, bool) or not isinstance(target, Real) or not 1 <= target < math.inf:
        raise EigenarchError(f"target {target!r} is not a positive number of {metric}")
    if target > MAX_TARGET:
        raise EigenarchError(
            f"target {target:.3g} {metric} is above the largest this search takes, {MAX_TARGET:.0e}"
        )
    return int(target)


def search_graph(
    graph: ModelGraph,
    ties: Sequence[WidthTie],
    dims: Mapping[str, object],
    target: float | str,
    metric: str = "macs",
    multiple: int = 32,
    side: str = "in",
    fpn_graph: ModelGraph | None = None,
    base_groups: Sequence[int] | None = None,
) -> WidthSearchResult:
    """Intrinsic Architecture Search on a traced model (SPEC section 6b).

    ``target`` is a budget of ``metric`` (``"macs"`` or ``"params"``): a number, or
    ``"base"`` for the cost of the analysed model, whose group ``i`` is ``base_groups[i]``
    wide (default: the traced model's own widths). ``multiple`` must be a multiple of
    every tie's divisor. ``fpn_graph`` (the model as the body of the analysed detector's
    FPN) counts the FPN's maps with the groups they read.
    """
    if side not in SEARCH_SIDES:
        raise EigenarchError(f"side {side!r} is not one of {', '.join(SEARCH_SIDES)}")
    _check_divisors(ties, multiple)
    base_groups = list(base_groups or [g.width for g in graph.groups])
    base_macs, base_params = graph_cost(graph, base_groups)
    if target == "base":
        target = base_macs if metric == "macs" else base_params
    budget = check_target(target, metric)
    maps = group_maps(graph, fpn_graph)
    intrinsic = intrinsic_per_layer(graph, maps, relative_dims(graph, dims, fpn_graph), side)
    outside = _outside_body(graph, fpn_graph)
    free = [t for t in ties if not set(t.groups) <= outside]
    adjusted = adjusted_widths(graph, free, maps, intrinsic, side)
    k = METRICS.index(metric)

    def cost(widths: tuple[int, ...]) -> int:
        return graph_cost(graph, tie_widths(graph, free, widths, base_groups))[k]

    widths, omega = expand_widths(adjusted, budget, cost, multiple, metric)
    searched = dict(zip((t.name for t in free), zip(widths, adjusted, strict=True), strict=True))
    return _result(graph, ties, base_groups, searched, intrinsic, omega=omega, metric=metric,
                   target=budget, side=side, multiple=multiple, base_macs=base_macs,
                   base_params=base_params)  # fmt: skip


def _check_divisors(ties: Sequence[WidthTie], multiple: int) -> None:
    """A one-line error where ``multiple`` is not a multiple of every tie's divisor."""
    check_multiple(multiple)
    for tie in ties:
        if multiple % tie.divisor:
            raise EigenarchError(
                f"multiple {multiple}: the widths of {tie.name} must be multiples of "
                f"{tie.divisor} (group width of a grouped conv, or GroupNorm groups); use "
                f"--multiple {tie.divisor} (or a multiple of it), or, where GroupNorm groups "
                f"set it, fewer --gn-groups (dividing {multiple}) or --norm bn"
            )


def _result(
    graph: ModelGraph,
    ties: Sequence[WidthTie],
    base_groups: list[int],
    searched: Mapping[str, tuple[int, float]],
    intrinsic: dict[str, float],
    **fields: object,
) -> WidthSearchResult:
    """The result of a search whose ties named in ``searched`` took ``(width, adjusted)``;
    the others keep their base width; ``fields`` are the rest of its fields."""
    free = [t for t in ties if t.name in searched]
    base_widths = tuple(base_groups[t.groups[0]] for t in ties)
    groups = tie_widths(graph, free, [searched[t.name][0] for t in free], base_groups)
    macs, params = graph_cost(graph, groups)
    kept = {t.name: (w, float(w)) for t, w in zip(ties, base_widths, strict=True)}
    every = [searched.get(t.name, kept[t.name]) for t in ties]  # a fixed tie: its base width
    return WidthSearchResult(
        widths=tuple(w for w, _ in every),
        adjusted=tuple(a for _, a in every),
        macs=macs,
        params=params,
        intrinsic=intrinsic,
        base_widths=base_widths,
        ties=tuple(t.name for t in ties),
        group_widths={g.name: w for g, w in zip(graph.groups, groups, strict=True)},
        fixed=tuple(t.name for t in ties if t not in free),
        base_ranges=tuple(
            (min(base_groups[i] for i in t.groups), max(base_groups[i] for i in t.groups))
            for t in ties
        ),
        **fields,
    )


def _outside_body(graph: ModelGraph, fpn_graph: ModelGraph | None) -> set[int]:
    """Groups of the classifier that a detector's body does not have (a hidden fc past the
    last feature level): they keep their base width, as no detector map measures them."""
    if fpn_graph is None:
        return set()
    body = {name[len("body.") :] for name in fpn_graph.order if name.startswith("body.")}
    return {i for i, g in enumerate(graph.groups) if not set(g.producers) & body}


# ----------------------------------------------------------------------- the ResNet case


def _refuse_basic_blocks(dims: Mapping[str, object]) -> None:
    """A one-line error for a basic-block ResNet's maps given to the nine-width search."""
    matches = (_BODY_LAYER.match(name.rpartition(":")[0]) for name in dims)
    convs = {match.group(4) for match in matches if match}
    if {"conv1", "conv2"} <= convs and "conv3" not in convs:
        raise EigenarchError(
            "maps name the blocks' conv1 and conv2 but no conv3: a basic-block ResNet "
            "(ResNet-18/34); the nine widths are a bottleneck ResNet's: search it as "
            "--model resnet18 (or resnet34)"
        )


def _check_within(dims: Mapping[str, object], depths: tuple[int, ...]) -> None:
    for name in dims:
        match = _BODY_LAYER.match(name.rpartition(":")[0])
        if match:
            stage, block = int(match.group(2)), int(match.group(3))
            if not 1 <= stage <= len(depths) or block >= depths[stage - 1]:
                raise EigenarchError(
                    f"map {name!r} is outside depths {list(depths)}; pass the depths of the "
                    "analysed ResNet (e.g. --depths 3,4,23,3 for ResNet-101)"
                )


@functools.lru_cache(maxsize=16)
def _resnet_fpn_graph(depths: tuple[int, ...], layout: FpnLayout | None) -> ModelGraph:
    """The ResNet as the body of an FPN (torchvision's layout; default: Faster R-CNN's)."""
    from torchvision.models import resnet as tv_resnet

    body = tv_resnet.ResNet(tv_resnet.Bottleneck, list(depths))
    levels = [f"layer{s}" for s in range(1, 5)]
    return trace_fpn(body, levels, RESNET50_WIDTHS[2::2], layout, name="resnet-fpn")


def search_widths(
    dims: Mapping[str, object],
    target: float | str,
    metric: str = "macs",
    multiple: int = 32,
    side: str = "in",
    depths: Sequence[int] = DEFAULT_DEPTHS,
    base_widths: Sequence[int] = RESNET50_WIDTHS,
    channels: Mapping[str, int] | None = None,
) -> WidthSearchResult:
    """Intrinsic Architecture Search (SPEC section 6) of a bottleneck ResNet's nine widths.

    ``target`` is a budget of ``metric`` (``"macs"`` or ``"params"``): a number,
    ``"resnet50"`` (also ``"resnet101"``, ``"resnet152"``) for that network's cost, or
    ``"base"`` for the cost at ``base_widths`` (the analysed network's nine widths). FPN
    maps count with the groups their convs read in the analysed detector's pyramid
    (:func:`eigenarch.widths.fpn.fpn_layout`; ``channels``, the maps' widths, decide where
    given).
    """
    depths = check_depths(depths)
    base_widths = check_widths(base_widths, depths)[0]
    target = named_target(target, metric)
    check_dims(dims)
    _refuse_basic_blocks(dims)
    _check_within(dims, depths)
    graph, ties = resnet_graph(depths)
    base_groups = tie_widths(graph, ties, base_widths)
    fpn_graph = detector_fpn_graph(
        graph, base_groups, dims, channels, functools.partial(_resnet_fpn_graph, depths)
    )
    result = search_graph(graph, ties, dims, target, metric, multiple, side, fpn_graph,
                          base_groups)  # fmt: skip
    return dataclasses.replace(result, depths=depths)


def intrinsic_widths(
    dims: Mapping[str, object], side: str = "in", depths: Sequence[int] = DEFAULT_DEPTHS
) -> dict[str, float]:
    """Shrunk, unadjusted width of every conv layer's output of a bottleneck ResNet
    (paper Figure 2 (b)/(f)): ``{layer: d}`` in network order."""
    depths = check_depths(depths)
    graph, _ = resnet_graph(depths)
    return intrinsic_per_layer(graph, group_maps(graph), relative_dims(graph, dims), side)


def adjust_widths(
    intrinsic: Mapping[str, float], side: str = "in", depths: Sequence[int] = DEFAULT_DEPTHS
) -> tuple[float, ...]:
    """The nine real widths ``O'`` of a bottleneck ResNet from :func:`intrinsic_widths`."""
    graph, ties = resnet_graph(check_depths(depths))
    return adjusted_widths(graph, ties, group_maps(graph), intrinsic, side)
