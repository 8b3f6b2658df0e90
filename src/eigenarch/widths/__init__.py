"""Widths of any CNN: channel groups, cost model, Intrinsic Architecture Search, width specs."""

from eigenarch.widths.cost import (
    DEFAULT_DEPTHS,
    RESNET50_WIDTHS,
    WIDTH_NAMES,
    LayerCost,
    ModelCost,
    graph_cost,
    model_cost,
    resnet_cost,
    round_width,
    uniform_widths,
)
from eigenarch.widths.graph import ChannelGroup, ModelGraph, channel_groups, trace_model
from eigenarch.widths.search import (
    WidthSearchResult,
    adjust_widths,
    intrinsic_widths,
    search_graph,
    search_widths,
)
from eigenarch.widths.spec import (
    NORMS,
    WidthSpec,
    check_norm,
    load_dims,
    load_width_spec,
    save_width_spec,
)
from eigenarch.widths.ties import WidthTie, width_ties

__all__ = [
    "DEFAULT_DEPTHS",
    "NORMS",
    "RESNET50_WIDTHS",
    "WIDTH_NAMES",
    "ChannelGroup",
    "LayerCost",
    "ModelCost",
    "ModelGraph",
    "WidthSearchResult",
    "WidthSpec",
    "WidthTie",
    "adjust_widths",
    "channel_groups",
    "graph_cost",
    "model_cost",
    "check_norm",
    "intrinsic_widths",
    "load_dims",
    "load_width_spec",
    "resnet_cost",
    "round_width",
    "save_width_spec",
    "search_graph",
    "search_widths",
    "trace_model",
    "uniform_widths",
    "width_ties",
]
