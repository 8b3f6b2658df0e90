"""The width groups and ties of every listed backbone, pinned in ``tests/widths/ties/``.

Each file holds what the trace gave on a ``1 x 3 x 64 x 64`` input when it was pinned, checked
by hand against SPEC section 6b: per stage one residual stream, the blocks' internal groups
tied across blocks (and, where the model gives them one width, with each other: ResNet
bottlenecks' conv1 and conv2), an SE squeeze its own width, a grouped conv's divisor its group
width. A rule change that moves any group or tie fails here, naming the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from eigenarch.models.detnet import detnet59
from eigenarch.widths import trace_model, width_ties

PINNED = Path(__file__).parent / "ties"
BUILDERS = {
    "resnet18": torchvision.models.resnet18,
    "mobilenet_v3_large": torchvision.models.mobilenet_v3_large,
    "regnet_y_400mf": torchvision.models.regnet_y_400mf,
    "efficientnet_b0": torchvision.models.efficientnet_b0,
    "convnext_tiny": torchvision.models.convnext_tiny,
    "detnet59": detnet59,
}
#: Number of groups and of ties: the pinned files' sizes, written out to be read at a glance.
COUNTS = {
    "resnet18": (12, 8),
    "mobilenet_v3_large": (30, 16),
    "regnet_y_400mf": (37, 13),
    "efficientnet_b0": (40, 22),
    "convnext_tiny": (22, 8),
    "detnet59": (44, 11),
}


def traced(name: str) -> dict:
    """The model's groups and ties in the pinned files' form."""
    graph = trace_model(BUILDERS[name](), torch.zeros(1, 3, 64, 64))
    groups = graph.groups
    return {
        "groups": [{"name": g.name, "width": g.width, "divisor": g.divisor} for g in groups],
        "ties": [
            {
                "name": t.name,
                "groups": [groups[i].name for i in t.groups],
                "shared": t.shared,
                "divisor": t.divisor,
            }
            for t in width_ties(graph)
        ],  # fmt: skip
    }


@pytest.mark.parametrize("name", list(BUILDERS))
def test_groups_and_ties_are_the_pinned_ones(name):
    pinned = json.loads((PINNED / f"{name}.json").read_text())
    assert (len(pinned["groups"]), len(pinned["ties"])) == COUNTS[name]
    found = traced(name)
    assert found["groups"] == pinned["groups"], name
    assert found["ties"] == pinned["ties"], name
