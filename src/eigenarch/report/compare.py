"""Intrinsic dimensionalities of two models of one architecture side by side (paper 4.3).

Typically *I* (fine-tuned from pre-trained weights) against *S* (trained from scratch):
per map both dimensionalities, their difference ``A - B`` and ratio ``A / B``, sums per
part (backbone / FPN / RPN / heads) and per stage, and the maps that differ most.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eigenarch.errors import EigenarchError
from eigenarch.report.dynamics import load_dynamics
from eigenarch.spectrum import Spectra
from eigenarch.train.rundir import RunDir

PARTS = ("backbone", "FPN", "RPN", "heads")
_STAGE = re.compile(r"(?:^|\.)(layer\d+)(?:\.|$)")
_FPN = re.compile(r"(?:^|\.)fpn\.(?:inner|layer)_blocks\.(\d+)(?:\.|$)")
_FPN_EXTRA = re.compile(r"(?:^|\.)fpn\.extra_blocks\.p(\d+)(?:\.|$)")
#: The dense heads of torchvision's RetinaNet, FCOS and SSD (``head.classification_head``).
_DENSE_HEADS = (".classification_head.", ".regression_head.")


def map_part(name: str) -> str:
    """``backbone``, ``FPN``, ``RPN`` or ``heads`` from a map name (torchvision naming)."""
    path = "." + name.rpartition(":")[0] + "."
    if ".fpn." in path:
        return "FPN"
    if ".rpn." in path:
        return "RPN"
    if ".roi_heads." in path or any(head in path for head in _DENSE_HEADS):
        return "heads"
    return "backbone"


def map_stage(name: str, levels: Mapping[int, int] | None = None) -> str:
    """The stage of a map: ``stem``, ``layer1``..``layer4``, ``fc``; ``P2``.. for the FPN
    levels, block ``i`` at level ``levels[i]`` (see :func:`fpn_levels`; by default ``i + 2``,
    Faster R-CNN's P2..P5 over ``layer1``..), ``P6`` / ``P7`` for RetinaNet's and FCOS's extra
    levels; the RPN head's or the heads' module (``box_head``, ``classification_head``, ...)."""
    path = name.rpartition(":")[0]
    part = map_part(name)
    if part == "FPN":
        block, extra = _FPN.search(path), _FPN_EXTRA.search(path)
        if extra:
            return f"P{extra.group(1)}"
        if not block:
            return "fpn"
        index = int(block.group(1))
        return f"P{(levels or {}).get(index, index + 2)}"
    if part in ("RPN", "heads"):
        split = ".rpn.head." if part == "RPN" else ".roi_heads."
        if part == "heads" and split not in "." + path:
            split = "head."
        return ("." + path).split(split, 1)[-1].split(".")[0]
    stage = _STAGE.search(path)
    if stage:
        return stage.group(1)
    body = path.split("backbone.body.", 1)[-1]
    return {"conv1": "stem", "fc": "fc"}.get(body, body.split(".")[0])


def fpn_levels(channels: Mapping[str, int]) -> dict[int, int]:
    """The level of each FPN block index (``fpn.inner_blocks.i`` / ``layer_blocks.i``) of a
    model, from its map names and widths (name -> channels): the stage ``layerK`` (level
    ``K + 1``: ``layer1`` is P2) whose output width alone equals an ``inner_blocks.i:in``
    map's width says where block ``i`` reads; where no width tells, the blocks end at P5
    over the last stage, as torchvision's detector builders make them (Faster R-CNN's four
    blocks P2..P5, RetinaNet's and FCOS's three P3..P5). Levels rise by one per block."""
    blocks = [_FPN.search(n.rpartition(":")[0]) for n in channels]
    count = 1 + max((int(b.group(1)) for b in blocks if b), default=-1)
    if not count:
        return {}
    outputs: dict[int, int] = {}  # layerK -> its output width
    inputs: dict[int, int] = {}  # layerK -> the width of its first :in map (layerK-1's output)
    for name, width in channels.items():
        stage = _STAGE.search(name.rpartition(":")[0])
        if map_part(name) != "backbone" or not stage:
            continue
        k = int(stage.group(1)[len("layer") :])
        if name.endswith(":out"):
            outputs[k] = width  # the last one: the stage's output
        else:
            inputs.setdefault(k, width)
    for k, width in inputs.items():
        outputs.setdefault(k - 1, width)
    first = count - 1, 5  # block index, level
    for name, width in channels.items():
        block = _FPN.search(name.rpartition(":")[0])
        if block and ".inner_blocks." in name and name.endswith(":in"):
            read = [k for k, w in outputs.items() if w == width and k >= 1]
            if len(read) == 1:
                first = int(block.group(1)), read[0] + 1
                break
    return {i: first[1] + i - first[0] for i in range(count)}


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
        levels = fpn_levels({m.name: m.channels for m in self.maps})
        for m in self.maps:
            key = (map_part(m.name), map_stage(m.name, levels) if by_stage else None)
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
    """A spectra file as given, or a run folder's spectra of its last checkpoint (the last
    one ``eigenarch dynamics --checkpoints`` analysed, for another's training)."""
    path = Path(path)
    if not path.is_dir():
        return path
    run = RunDir(path)
    found = run.checkpoints()
    if not found and run.dynamics_file.is_file():
        dynamics = load_dynamics(path)
        return dynamics.spectra_path(dynamics.iterations[-1])
    if not found:
        raise EigenarchError(f"{path}: neither a spectra file nor a run folder with checkpoints")
    iteration = found[-1][0]
    target = run.spectra(iteration)
    if not target.is_file():
        raise EigenarchError(
            f"{path}: no spectra of its last checkpoint (iteration {iteration}); compute them "
            f"with `eigenarch dynamics --run {path}`"
        )
    return target
