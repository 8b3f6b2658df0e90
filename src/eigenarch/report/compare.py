"""Intrinsic dimensionalities of two models of one architecture side by side (paper 4.3).

Typically *I* (fine-tuned from pre-trained weights) against *S* (trained from scratch):
per map both dimensionalities, their difference ``A - B`` and ratio ``A / B``, sums per
part (backbone / FPN / RPN / heads) and per stage, and the maps that differ most.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eigenarch.errors import EigenarchError
from eigenarch.report.dynamics import spectra_file
from eigenarch.spectrum import Spectra
from eigenarch.train.checkpoint import list_checkpoints

PARTS = ("backbone", "FPN", "RPN", "heads")
_STAGE = re.compile(r"(?:^|\.)(layer\d+)(?:\.|$)")
_FPN = re.compile(r"(?:^|\.)fpn\.(?:inner|layer)_blocks\.(\d+)(?:\.|$)")


def map_part(name: str) -> str:
    """``backbone``, ``FPN``, ``RPN`` or ``heads`` from a map name (torchvision naming)."""
    path = "." + name.rpartition(":")[0] + "."
    if ".fpn." in path:
        return "FPN"
    if ".rpn." in path:
        return "RPN"
    if ".roi_heads." in path:
        return "heads"
    return "backbone"


def map_stage(name: str) -> str:
    """The stage of a map: ``stem``, ``layer1``..``layer4``, ``fc``; ``P2``.. for the FPN
    levels over ``layer1``..; the RPN head's or RoI heads' module (``box_head``, ...)."""
    path = name.rpartition(":")[0]
    part = map_part(name)
    if part == "FPN":
        level = _FPN.search(path)
        return f"P{int(level.group(1)) + 2}" if level else "fpn"
    if part in ("RPN", "heads"):
        tail = ("." + path).split(".rpn.head." if part == "RPN" else ".roi_heads.", 1)[-1]
        return tail.split(".")[0]
    stage = _STAGE.search(path)
    if stage:
        return stage.group(1)
    body = path.split("backbone.body.", 1)[-1]
    return {"conv1": "stem", "fc": "fc"}.get(body, body.split(".")[0])


class _Pair:
    """Two dimensionalities ``a`` and ``b`` (of model A and model B) and how they differ."""

    a: int
    b: int

    @property
    def diff(self) -> int:
        return self.a - self.b

    @property
    def ratio(self) -> float | None:
        """``a / b``; ``None`` when ``b`` is 0."""
        return self.a / self.b if self.b else None


@dataclass(frozen=True)
class MapComparison(_Pair):
    """One map: width and both dimensionalities."""

    name: str
    channels: int
    a: int
    b: int


@dataclass(frozen=True)
class GroupComparison(_Pair):
    """Sums over the maps of a part or stage."""

    part: str
    stage: str | None  # None for a whole part
    maps: int
    channels: int
    a: int
    b: int


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare_spectra`; ``names`` labels the two models."""

    names: tuple[str, str]
    threshold: float
    maps: list[MapComparison]

    def groups(self, by_stage: bool) -> list[GroupComparison]:
        """Sums per part (``by_stage=False``) or per (part, stage), in network order."""
        sums: dict[tuple[str, str | None], list[int]] = {}
        for m in self.maps:
            key = (map_part(m.name), map_stage(m.name) if by_stage else None)
            row = sums.setdefault(key, [0, 0, 0, 0])
            for i, v in enumerate((1, m.channels, m.a, m.b)):
                row[i] += v
        order = {p: i for i, p in enumerate(PARTS)}
        keys = sorted(sums, key=lambda k: order[k[0]])  # stable: stages keep network order
        return [GroupComparison(p, s, *sums[p, s]) for p, s in keys]

    def most_different(self, count: int = 10) -> list[MapComparison]:
        """The ``count`` maps with the largest ``|a - b| / channels`` (then ``|a - b|``)."""
        ranked = sorted(self.maps, key=lambda m: (-abs(m.diff) / m.channels, -abs(m.diff)))
        return [m for m in ranked if m.diff][:count]

    def to_dict(self, top: int = 10) -> dict[str, Any]:
        def row(x: MapComparison | GroupComparison) -> dict[str, Any]:
            out = {k: v for k, v in vars(x).items() if k != "stage" or v is not None}
            return {**out, "diff": x.diff, "ratio": x.ratio}

        return {
            "names": list(self.names),
            "threshold": self.threshold,
            "parts": [row(g) for g in self.groups(by_stage=False)],
            "stages": [row(g) for g in self.groups(by_stage=True)],
            "most_different": [m.name for m in self.most_different(top)],
            "maps": [row(m) for m in self.maps],
        }


def backbone_stages(names: Sequence[str]) -> list[str]:
    """The backbone stages of these map names, in network order."""
    return list(dict.fromkeys(map_stage(n) for n in names if map_part(n) == "backbone"))


def plot_stages(names: Sequence[str], stages: Sequence[str] | None = None) -> list[str]:
    """``stages`` checked against the backbone stages of the map ``names``; by default all
    of them."""
    found = backbone_stages(names)
    unknown = [s for s in stages or () if s not in found]
    if unknown:
        raise EigenarchError(
            f"--stages {','.join(unknown)}: not a backbone stage of these maps; expected some "
            f"of {', '.join(found) or 'none'}"
        )
    return list(stages) if stages else found


def check_same_architecture(a: Spectra, b: Spectra, names: Sequence[str] = ("A", "B")) -> None:
    """Refuse two spectra whose maps or widths differ; the error lists the mismatch."""
    only_a = [n for n in a.names if n not in set(b.names)]
    only_b = [n for n in b.names if n not in set(a.names)]
    widths = [
        f"{n} ({a.channels(n)} vs {b.channels(n)} channels)"
        for n in a.names
        if n in set(b.names) and a.channels(n) != b.channels(n)
    ]
    problems = []
    for what, items in (
        (f"only in {names[0]}", only_a),
        (f"only in {names[1]}", only_b),
        ("different widths", widths),
    ):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{len(items)} map(s) {what}: {', '.join(items[:3])}{more}")
    if problems:
        raise EigenarchError(
            f"{names[0]} and {names[1]} are not the same architecture: " + "; ".join(problems)
        )


def compare_spectra(
    a: Spectra, b: Spectra, threshold: float = 1e-3, names: Sequence[str] = ("A", "B")
) -> Comparison:
    """Per-map intrinsic dimensionalities of ``a`` and ``b`` (same maps and widths)."""
    check_same_architecture(a, b, names)
    maps = [
        MapComparison(
            n, a.channels(n), a.intrinsic_dim(n, threshold), b.intrinsic_dim(n, threshold)
        )
        for n in a.names
    ]
    return Comparison((names[0], names[1]), threshold, maps)


def final_spectra(path: str | os.PathLike[str]) -> Path:
    """A spectra file as given, or a run folder's spectra of its last checkpoint."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = list_checkpoints(path)
    if not found:
        raise EigenarchError(f"{path}: neither a spectra file nor a run folder with checkpoints")
    iteration = found[-1][0]
    target = spectra_file(path, iteration)
    if not target.is_file():
        raise EigenarchError(
            f"{path}: no spectra of its last checkpoint (iteration {iteration}); compute them "
            f"with `eigenarch dynamics --run {path}`"
        )
    return target
