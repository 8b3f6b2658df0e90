"""Intrinsic Architecture Search: shrink, adjust and expand ResNet widths (SPEC section 6).

Intrinsic dimensionalities per feature map name (``"layer1.0.conv1:in"``, optionally with
a detector prefix such as ``"backbone.body."``) are grouped into the nine widths of a
ResiaNet, adjusted for the residual branches and expanded uniformly to a MACs or parameter
budget, with rounding to a multiple ``q`` and a greedy fill of the rounding gaps.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real

from eigenarch.errors import EigenarchError
from eigenarch.widths.cost import (
    DEFAULT_DEPTHS,
    METRICS,
    RESNET50_WIDTHS,
    STANDARD_DEPTHS,
    WIDTH_NAMES,
    check_depths,
    check_multiple,
    resnet_cost,
    round_width,
)

SIDES = ("in", "out", "both")
_BODY_LAYER = re.compile(r"^((?:.*\.)?)(layer(\d+)\.(\d+)\.(?:conv[123]|downsample\.0))$")
_ENDS = re.compile(r"^((?:.*\.)?)(?:conv1|fc)$")
_FPN_LATERAL = re.compile(r"^(?:.*\.)?fpn\.inner_blocks\.(\d+)(?:\.0)?$")


@dataclass(frozen=True)
class Unit:
    """The output of one producing layer: its ``:out`` map and the ``:in`` maps reading it."""

    layer: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]


@dataclass(frozen=True)
class WidthGroup:
    """Maps that must share one width; ``index`` is its place among the nine widths."""

    name: str
    index: int
    units: tuple[Unit, ...]


def width_groups(depths: Sequence[int] = DEFAULT_DEPTHS) -> list[WidthGroup]:
    """The width groups of SPEC section 6, in network order (names relative to the ResNet)."""
    depths = tuple(depths)

    def after_stage(s: int) -> tuple[str, ...]:  # maps reading stage s's output (1-based)
        lateral = f"fpn.inner_blocks.{s - 1}:in"
        if s < len(depths):
            return f"layer{s + 1}.0.conv1:in", f"layer{s + 1}.0.downsample.0:in", lateral
        return "fc:in", lateral

    groups = [WidthGroup("stem", 0, (Unit("conv1", ("conv1:out",), after_stage(0)[:2]),))]
    for s, depth in enumerate(depths, start=1):
        shortcut = []
        for b in range(depth):
            p = f"layer{s}.{b}."
            for k, conv in enumerate(("conv1", "conv2")):
                unit = Unit(p + conv, (f"{p}{conv}:out",), (f"{p}conv{k + 2}:in",))
                groups.append(WidthGroup(p + conv, 2 * s - 1, (unit,)))
            reader = (f"layer{s}.{b + 1}.conv1:in",) if b + 1 < depth else after_stage(s)
            shortcut.append(Unit(p + "conv3", (p + "conv3:out",), reader))
            if b == 0:
                shortcut.append(Unit(p + "downsample.0", (p + "downsample.0:out",), reader))
        groups.append(WidthGroup(f"layer{s}.shortcut", 2 * s, tuple(shortcut)))
    return groups


def check_dims(dims: Mapping[str, object]) -> None:
    """Check that ``dims`` maps names ending in ``:in``/``:out`` to numbers >= 0."""
    if not isinstance(dims, Mapping):
        raise EigenarchError(f"dims must be a mapping of map name to number, not {dims!r}")
    for name, value in dims.items():
        if not isinstance(name, str) or not name.endswith((":in", ":out")):
            raise EigenarchError(
                f"map name {name!r} does not end in ':in' or ':out' (e.g. 'layer1.0.conv1:in')"
            )
        if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0:
            raise EigenarchError(
                f"intrinsic dimensionality of {name!r} is {value!r}; expected a number >= 0"
            )


def _refuse_basic_blocks(dims: Mapping[str, object]) -> None:
    """A one-line error for a basic-block ResNet's maps (its widths follow other rules)."""
    matches = (_BODY_LAYER.match(name.rpartition(":")[0]) for name in dims)
    convs = {match.group(2).split(".", 2)[2] for match in matches if match}
    if {"conv1", "conv2"} <= convs and "conv3" not in convs:
        raise EigenarchError(
            "maps name the blocks' conv1 and conv2 but no conv3: a basic-block ResNet "
            "(ResNet-18/34); the width rules need a bottleneck ResNet (ResNet-50 and deeper, "
            "a ResiaNet)"
        )


def canonical_dims(dims: Mapping[str, object], depths: Sequence[int]) -> dict[str, float]:
    """Validate ``dims`` and rename its maps relative to the ResNet.

    A common prefix of the ResNet's modules (``backbone.body.``) is found and stripped; FPN
    lateral convs become ``fpn.inner_blocks.{i}``; maps of other modules are dropped.
    """
    check_dims(dims)
    prefixes: set[str] = set()
    ends: set[str] = set()  # prefixes of "conv1" / "fc", used when no block map is present
    for name in dims:
        path = name.rpartition(":")[0]
        end = _ENDS.match(path)
        if end:
            ends.add(end.group(1))
        match = _BODY_LAYER.match(path)
        if match:
            prefixes.add(match.group(1))
            stage, block = int(match.group(3)), int(match.group(4))
            if not 1 <= stage <= len(depths) or block >= depths[stage - 1]:
                raise EigenarchError(
                    f"map {name!r} is outside depths {list(depths)}; pass the depths of the "
                    "analysed ResNet (e.g. --depths 3,4,23,3 for ResNet-101)"
                )
    prefixes = prefixes or ends
    if len(prefixes) > 1:
        raise EigenarchError(
            f"maps name more than one ResNet: prefixes {sorted(prefixes)}; keep one backbone"
        )
    prefix = prefixes.pop() if prefixes else ""
    out: dict[str, float] = {}
    for name, value in dims.items():
        path, _, side = name.rpartition(":")
        lateral = _FPN_LATERAL.match(path)
        if lateral:
            out[f"fpn.inner_blocks.{lateral.group(1)}:{side}"] = value
        elif path.startswith(prefix):
            out[path[len(prefix) :] + ":" + side] = value
    return out


def _side_maps(unit: Unit, side: str) -> tuple[str, ...]:
    return {"in": unit.consumers, "out": unit.producers}.get(side, unit.producers + unit.consumers)


def intrinsic_widths(
    dims: Mapping[str, object], side: str = "in", depths: Sequence[int] = DEFAULT_DEPTHS
) -> dict[str, float]:
    """Shrunk, unadjusted width of every conv layer's output (paper Figure 2 (b)/(f)).

    ``{layer: d}`` in network order, ``d`` being the largest intrinsic dimensionality of
    the layer's output maps on ``side``; layers with no map in ``dims`` are left out.
    """
    if side not in SIDES:
        raise EigenarchError(f"side {side!r} is not one of {', '.join(SIDES)}")
    depths = check_depths(depths)
    canon = canonical_dims(dims, depths)
    out = {}
    for group in width_groups(depths):
        for unit in group.units:
            found = [canon[m] for m in _side_maps(unit, side) if m in canon]
            if found:
                out[unit.layer] = max(found)
    return out


def adjust_widths(
    intrinsic: Mapping[str, float], side: str = "in", depths: Sequence[int] = DEFAULT_DEPTHS
) -> tuple[float, ...]:
    """Group, clamp to >= 1 and adjust :func:`intrinsic_widths`: the nine real widths ``O'``.

    Stem and stage outputs take their group's maximum; the bottleneck width of a stage is
    the geometric mean over the first- and second-conv groups of all its blocks.
    """
    per_width: list[list[float]] = [[] for _ in WIDTH_NAMES]
    missing = []
    for group in width_groups(depths):
        found = [intrinsic[u.layer] for u in group.units if u.layer in intrinsic]
        if found:
            per_width[group.index].append(max(1.0, float(max(found))))
        else:
            missing.append(group)
    if missing:
        maps = [m for u in missing[0].units for m in _side_maps(u, side)]
        more = f" (and {len(missing) - 1} more groups)" if len(missing) > 1 else ""
        raise EigenarchError(
            f"no intrinsic dimensionality for width group {missing[0].name!r}{more} on side "
            f"{side!r}; expected one of {', '.join(maps)}"
        )
    return tuple(statistics.geometric_mean(v) if i % 2 else v[0] for i, v in enumerate(per_width))


@dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`search_widths`; ``to_dict`` gives the JSON fields of a width spec."""

    widths: tuple[int, ...]
    adjusted: tuple[float, ...]
    omega: float
    macs: int
    params: int
    metric: str
    target: int
    depths: tuple[int, ...]
    side: str
    multiple: int
    intrinsic: dict[str, float]
    base_macs: int
    base_params: int

    def to_dict(self) -> dict:
        return {
            "widths": list(self.widths),
            "depths": list(self.depths),
            "adjusted": list(self.adjusted),
            "omega": self.omega,
            "macs": self.macs,
            "params": self.params,
            "target": {"metric": self.metric, "value": self.target},
            "base": {
                "widths": list(RESNET50_WIDTHS),
                "macs": self.base_macs,
                "params": self.base_params,
            },
            "side": self.side,
            "multiple": self.multiple,
            "intrinsic": self.intrinsic,
        }


def budget_value(target: float | str, metric: str) -> int:
    """The budget ``zeta`` as an int: a positive number, or a standard ResNet's cost by name."""
    if metric not in METRICS:
        raise EigenarchError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if isinstance(target, str):
        if target not in STANDARD_DEPTHS:
            raise EigenarchError(
                f"target {target!r} is not a number or one of {', '.join(STANDARD_DEPTHS)}"
            )
        return resnet_cost(RESNET50_WIDTHS, STANDARD_DEPTHS[target]).metric(metric)
    if isinstance(target, bool) or not isinstance(target, Real) or not 1 <= target < math.inf:
        raise EigenarchError(f"target {target!r} is not a positive number of {metric}")
    return int(target)


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


def search_widths(
    dims: Mapping[str, object],
    target: float | str,
    metric: str = "macs",
    multiple: int = 32,
    side: str = "in",
    depths: Sequence[int] = DEFAULT_DEPTHS,
) -> SearchResult:
    """Intrinsic Architecture Search (SPEC section 6) from ``{map name: intrinsic dim}``.

    ``target`` is a budget of ``metric`` (``"macs"`` or ``"params"``): a number, or
    ``"resnet50"`` (also ``"resnet101"``, ``"resnet152"``) for that network's cost.
    """
    depths = check_depths(depths)
    budget = budget_value(target, metric)
    _refuse_basic_blocks(dims)
    intrinsic = intrinsic_widths(dims, side, depths)
    adjusted = adjust_widths(intrinsic, side, depths)
    widths, omega = expand_widths(
        adjusted, budget, lambda w: resnet_cost(w, depths).metric(metric), multiple, metric
    )
    found, base = resnet_cost(widths, depths), resnet_cost(RESNET50_WIDTHS, depths)
    return SearchResult(
        widths=widths,
        adjusted=adjusted,
        omega=omega,
        macs=found.macs,
        params=found.params,
        metric=metric,
        target=budget,
        depths=depths,
        side=side,
        multiple=multiple,
        intrinsic=intrinsic,
        base_macs=base.macs,
        base_params=base.params,
    )
