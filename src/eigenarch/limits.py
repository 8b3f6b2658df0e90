"""Upper bounds on the numbers read from files (width specs, checkpoints' configs, annotation
files), checked before any of them sizes a model or an allocation: a hostile or mistyped
file is one line naming the value and the limit, never gigabytes of memory.

Each limit has a default far above real models and data; ``eigenarch --limit NAME=N`` (or
the environment variable ``EIGENARCH_LIMITS="NAME=N,..."``, which the option sets, so
``torchrun``'s ranks and the demo's workers see it too) raises one for a real extreme.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from eigenarch.errors import EigenarchError

#: Default maximum of each bounded number, with what it counts.
DEFAULTS: dict[str, int] = {
    "width": 16384,  # channels of one layer (ResNet-50's widest: 2048)
    "depth": 256,  # blocks of one stage (ResNet-152's longest: 36)
    "params": 1_000_000_000,  # a backbone's weights, estimated before it is built (4 GB)
    "image_side": 16384,  # pixels of an image's width or height, as declared or decoded
    "boxes_per_image": 1000,  # annotations of one image (COCO's most: 93; LVIS's: under 1000)
}
#: The environment variable holding raised limits, ``"NAME=N,NAME=N"``.
ENV = "EIGENARCH_LIMITS"


def limits() -> dict[str, int]:
    """Every limit: the defaults, with those raised in :data:`ENV`."""
    return {**DEFAULTS, **parse_limits(os.environ.get(ENV, "").split(","), ENV)}


def parse_limits(items: Iterable[str], where: str = "--limit") -> dict[str, int]:
    """``{name: N}`` of ``NAME=N`` items (empty items skipped); a one-line error naming
    ``where`` for an unknown name or a value that is not a positive integer."""
    raised = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in DEFAULTS:
            raise EigenarchError(f"{where} {item!r}: unknown limit; expected one of "
                                 f"{', '.join(DEFAULTS)} as NAME=N")  # fmt: skip
        if not value.strip().isdigit() or int(value) < 1:
            raise EigenarchError(f"{where} {item!r}: expected NAME=N with N a positive integer")
        raised[name] = int(value)
    return raised


def check_limit(name: str, value: int, where: str) -> int:
    """``value`` if it is at most the limit ``name``; else a one-line error naming ``where``
    (the file and field: ``"w.json: depths[3]"``), the value, the limit and how to raise it."""
    maximum = limits()[name]
    if value > maximum:
        raise EigenarchError(
            f"{where} = {value:,} exceeds the limit of {maximum:,} on {name.replace('_', ' ')} "
            f"(eigenarch --limit {name}=N raises it for a real extreme)"
        )
    return value
