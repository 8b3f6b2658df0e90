"""Maps of a bottleneck ResNet's nine widths, from its traced graph."""

from __future__ import annotations

from eigenarch.widths.cost import resnet_graph
from eigenarch.widths.ias import group_maps


def resnet_tie_maps(depths=(3, 4, 6, 3)) -> list[tuple[list[str], list[str]]]:
    """For each of the nine widths, its ``(:out maps, :in maps)``: producers and readers."""
    graph, ties = resnet_graph(tuple(depths))
    maps = group_maps(graph)
    out = []
    for tie in ties:
        produced, read = [], []
        for i in tie.groups:
            for producer, readers in maps.units[i]:
                produced.append(f"{producer}:out")
                read.extend(f"{r}:in" for r in readers)
        out.append((produced, read))
    return out
