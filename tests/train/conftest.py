"""``eigenarch train`` options of the tiny detector of the ``tiny_config`` fixture; ``f32``."""

from __future__ import annotations

import numpy as np

TINY_WIDTHS = "16,16,32,16,32,32,64,32,64"
TINY_ARGS = [
    "--backbone",
    TINY_WIDTHS,
    "--gn-groups",
    "8",
    "--fpn-channels",
    "32",
    "--head-channels",
    "32",
    "--representation",
    "64",
    "--min-size",
    "128",
    "--max-size",
    "128",
    "--anchor-sizes",
    "16,32,64,128,256",
    "--roi-batch",
    "64",
    "--rpn-batch",
    "64",
    "--workers",
    "0",
]


def f32(value: float) -> float:
    """``value`` as a TensorBoard scalar holds it (float32)."""
    return float(np.float32(value))
