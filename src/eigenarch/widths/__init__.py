"""Widths of a ResNet: cost model, Intrinsic Architecture Search and width spec files."""

from eigenarch.widths.cost import (
    DEFAULT_DEPTHS,
    RESNET50_WIDTHS,
    WIDTH_NAMES,
    LayerCost,
    ResNetCost,
    resnet_cost,
    round_width,
    uniform_widths,
)
from eigenarch.widths.search import (
    SearchResult,
    WidthGroup,
    adjust_widths,
    intrinsic_widths,
    search_widths,
    width_groups,
)
from eigenarch.widths.spec import (
    NORMS,
    WidthSpec,
    check_norm,
    load_dims,
    load_width_spec,
    save_width_spec,
)

__all__ = [
    "DEFAULT_DEPTHS",
    "NORMS",
    "RESNET50_WIDTHS",
    "WIDTH_NAMES",
    "LayerCost",
    "ResNetCost",
    "SearchResult",
    "WidthGroup",
    "WidthSpec",
    "adjust_widths",
    "check_norm",
    "intrinsic_widths",
    "load_dims",
    "load_width_spec",
    "resnet_cost",
    "round_width",
    "save_width_spec",
    "search_widths",
    "uniform_widths",
    "width_groups",
]
