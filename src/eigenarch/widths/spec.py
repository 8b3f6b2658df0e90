"""Width spec files (JSON) that build the same network anywhere, and dims files.

A ResiaNet's width spec holds ``{"widths": [9 ints], "depths": [4 ints], "norm":
"gn"|"bn"|"frozen_bn", "gn_groups": int, "source": {...}}``. Any other backbone's holds
``{"format": "eigenarch.backbone", "builder": name, "groups": {group name: width}, "norm",
"gn_groups", "source"}``: the builder (a torchvision classifier or ``detnet59``) is built and
every channel group resized. A search adds its own fields (``adjusted``, ``omega``,
``macs``, ...), which loading ignores. A dims file is a JSON object ``{map name: number}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_write_json
from eigenarch.widths.cost import DEFAULT_DEPTHS, WIDTH_NAMES, check_widths
from eigenarch.widths.search import check_dims

NORMS = ("gn", "bn", "frozen_bn")
#: ``format`` of a width spec naming a builder and per-group widths.
BACKBONE_FORMAT = "eigenarch.backbone"


def check_norm(widths: Sequence[int], norm: str, gn_groups: int = 32) -> None:
    """Check that ``norm`` is known and, for GroupNorm, that ``gn_groups`` divides every width."""
    if norm not in NORMS:
        raise EigenarchError(f"norm {norm!r} is not one of {', '.join(NORMS)}")
    if isinstance(gn_groups, bool) or not isinstance(gn_groups, int) or gn_groups < 1:
        raise EigenarchError(f"gn_groups {gn_groups!r} is not a positive integer")
    if norm == "gn":
        for name, w in zip(WIDTH_NAMES, widths, strict=True):
            if w % gn_groups:
                raise EigenarchError(
                    f"width {name}={w} is not a multiple of the {gn_groups} GroupNorm groups; "
                    "use widths that are, fewer groups (gn_groups) or norm 'bn'"
                )


@dataclass(frozen=True)
class WidthSpec:
    """Everything needed to build a ResiaNet: widths, depths, normalisation, provenance."""

    widths: tuple[int, ...]
    depths: tuple[int, ...] = DEFAULT_DEPTHS
    norm: str = "gn"
    gn_groups: int = 32
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        widths, depths = check_widths(list(self.widths), list(self.depths))
        check_norm(widths, self.norm, self.gn_groups)
        if not isinstance(self.source, dict):
            raise EigenarchError(f"source {self.source!r} is not a JSON object")
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "depths", depths)

    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": list(self.widths),
            "depths": list(self.depths),
            "norm": self.norm,
            "gn_groups": self.gn_groups,
            "source": self.source,
        }


@dataclass(frozen=True)
class BackboneSpec:
    """Any CNN backbone: a builder name, its normalisation and per-group widths.

    ``groups`` maps channel-group names (:func:`eigenarch.widths.channel_groups` of the
    builder's classifier) to widths; groups not named keep the builder's.
    """

    builder: str
    groups: dict[str, int] = field(default_factory=dict)
    norm: str | None = None
    gn_groups: int = 32
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.builder, str) or not self.builder:
            raise EigenarchError(f"builder {self.builder!r} is not a builder name")
        if self.norm is not None and self.norm not in NORMS:
            raise EigenarchError(f"norm {self.norm!r} is not one of {', '.join(NORMS)}")
        if (
            isinstance(self.gn_groups, bool)
            or not isinstance(self.gn_groups, int)
            or (self.gn_groups < 1)
        ):
            raise EigenarchError(f"gn_groups {self.gn_groups!r} is not a positive integer")
        if not isinstance(self.groups, dict):
            raise EigenarchError(f"groups {self.groups!r} is not a JSON object")
        for name, width in self.groups.items():
            if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 1 << 20:
                raise EigenarchError(f"width of group {name!r}: {width!r} is not an integer "
                                     f"in 1..{1 << 20}")  # fmt: skip
        if not isinstance(self.source, dict):
            raise EigenarchError(f"source {self.source!r} is not a JSON object")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BACKBONE_FORMAT,
            "builder": self.builder,
            "groups": dict(self.groups),
            "norm": self.norm,
            "gn_groups": self.gn_groups,
            "source": self.source,
        }


def read_json_object(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Read a JSON object from ``path``; one-line errors name the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise EigenarchError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:  # a damaged file, or not a text file at all
        raise EigenarchError(f"{what} {path}: not UTF-8 text (byte {exc.start}); expected "
                             "a JSON file (damaged?)") from None  # fmt: skip
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EigenarchError(
            f"{what} {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(obj, dict):
        raise EigenarchError(f"{what} {path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def load_width_spec(path: str | os.PathLike[str]) -> WidthSpec | BackboneSpec:
    """Read a width spec written by :func:`save_width_spec` (or by hand)."""
    obj = read_json_object(path, "width spec")
    if obj.get("format") == BACKBONE_FORMAT:
        return backbone_spec_from_dict(obj, f"width spec {path}")
    if "widths" not in obj:
        raise EigenarchError(f"width spec {path}: missing field 'widths' (9 integers)")
    for key, kind in (("widths", list), ("depths", list), ("source", dict)):
        if key in obj and not isinstance(obj[key], kind):
            raise EigenarchError(f"width spec {path}: field {key!r} is not a JSON {kind.__name__}")
    try:
        return WidthSpec(
            widths=obj["widths"],
            depths=obj.get("depths", DEFAULT_DEPTHS),
            norm=obj.get("norm", "gn"),
            gn_groups=obj.get("gn_groups", 32),
            source=obj.get("source", {}),
        )
    except EigenarchError as exc:
        raise EigenarchError(f"width spec {path}: {exc}") from None


def backbone_spec_from_dict(obj: Mapping[str, Any], what: str) -> BackboneSpec:
    """A :class:`BackboneSpec` from its JSON fields; errors name ``what``."""
    if "builder" not in obj:
        raise EigenarchError(f"{what}: missing field 'builder' (e.g. mobilenet_v3_large)")
    try:
        return BackboneSpec(
            builder=obj["builder"],
            groups=obj.get("groups", {}),
            norm=obj.get("norm"),
            gn_groups=obj.get("gn_groups", 32),
            source=obj.get("source", {}),
        )
    except EigenarchError as exc:
        raise EigenarchError(f"{what}: {exc}") from None


def save_width_spec(
    path: str | os.PathLike[str],
    spec: WidthSpec | BackboneSpec,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write ``spec`` (plus ``extra`` fields, e.g. a search's results) as JSON."""
    obj = spec.to_dict()
    obj.update((k, v) for k, v in (extra or {}).items() if k not in obj)
    return atomic_write_json(path, obj)


def load_dims(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a dims file: a JSON object from map name to intrinsic dimensionality."""
    dims = read_json_object(path, "dims file")
    try:
        check_dims(dims)
    except EigenarchError as exc:
        raise EigenarchError(f"dims file {path}: {exc}") from None
    return dims
