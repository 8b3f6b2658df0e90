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
from eigenarch.widths.ias import (
    WidthSearchResult,
    adjust_widths,
    intrinsic_widths,
    load_dims,
    search_graph,
    search_widths,
)
from eigenarch.widths.ties import WidthTie, width_ties

__all__ = [
    "DEFAULT_DEPTHS",
    "RESNET50_WIDTHS",
    "WIDTH_NAMES",
    "ChannelGroup",
    "LayerCost",
    "ModelCost",
    "ModelGraph",
    "WidthSearchResult",
    "WidthTie",
    "adjust_widths",
    "channel_groups",
    "graph_cost",
    "model_cost",
    "intrinsic_widths",
    "load_dims",
    "resnet_cost",
    "round_width",
    "search_graph",
    "search_widths",
    "trace_model",
    "uniform_widths",
    "width_ties",
]
