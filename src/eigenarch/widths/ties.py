"""Which channel groups share one searched width (SPEC section 6b, "Ties").

Groups that play the same role in the repeated blocks of one stage share a width: their
module paths differ only in the block index (``layer3.2.conv1`` / ``layer3.4.conv1``,
``block3-1`` / ``block3-2``), each lies wholly inside its block, and the two blocks feed
the same residual stream (the stage). Within a stage, roles that the analysed model gives
one common width are one width too (a ResNet bottleneck's first and second conv: the
paper's bottleneck rule). A residual stream is one group already. Every other group is a
width of its own.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

from eigenarch.widths.graph import ModelGraph

_INDEXED = re.compile(r"(.*?)(\d+)")


@dataclass(frozen=True)
class WidthTie:
    """Groups (indices into ``graph.groups``) that take one width.

    ``shared``: internal groups of a stage, whose dimensionality is the geometric mean of
    theirs; otherwise a single group. ``divisor``: the width must be a multiple of it.
    """

    name: str
    groups: tuple[int, ...]
    shared: bool
    divisor: int


def _inside(modules, block: str) -> bool:
    return all(m.startswith(block + ".") for m in modules)


def width_ties(graph: ModelGraph) -> tuple[WidthTie, ...]:
    """The searched widths of ``graph``, in forward order of their first producer."""
    groups = graph.groups
    paths = [g.name.split(".") for g in groups]
    members = [g.modules() for g in groups]
    ext_cache: dict[str, frozenset[int]] = {}

    def stage_of(block: str) -> frozenset[int]:  # the groups a block feeds beyond itself
        if block not in ext_cache:
            ext_cache[block] = frozenset(
                i for i, g in enumerate(groups)
                if any(p.startswith(block + ".") for p in g.producers)
                and not _inside(members[i], block)
            )  # fmt: skip
        return ext_cache[block]

    parent = list(range(len(groups)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    stage: dict[int, frozenset[int]] = {}
    pattern: dict[int, tuple[int, str]] = {}  # the block-index position and its stem
    buckets: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
    for i, comps in enumerate(paths):
        for k, comp in enumerate(comps):
            match = _INDEXED.fullmatch(comp)
            if match:
                key = (len(comps), k, *comps[:k], match[1] + "*", *comps[k + 1 :])
                buckets[key].append((i, ".".join(comps[: k + 1])))
    for key, found in buckets.items():
        position, stem = key[1], key[2 + key[1]][:-1]
        for (i, block_i), (j, block_j) in zip(found, found[1:], strict=False):
            if not (_inside(members[i], block_i) and _inside(members[j], block_j)):
                continue
            ext = stage_of(block_i)
            if ext and ext == stage_of(block_j):
                parent[find(j)] = find(i)
                stage[i] = stage[j] = ext
                pattern[i] = pattern[j] = (position, stem)
    for i, comps in enumerate(paths):  # a block met once: its deepest indexed prefix
        if i in stage:
            continue
        for k in range(len(comps) - 1, -1, -1):
            block = ".".join(comps[: k + 1])
            if _INDEXED.fullmatch(comps[k]) and _inside(members[i], block):
                if stage_of(block):
                    stage[i] = stage_of(block)
                break
    classes: dict[int, list[int]] = defaultdict(list)
    for i in range(len(groups)):
        classes[find(i)].append(i)
    by_stage: dict[tuple, list[int]] = defaultdict(list)  # roles of one stage with one width
    for root, idx in classes.items():
        widths = {groups[i].width for i in idx}
        if root in stage and len(widths) == 1:
            by_stage[(stage[root], widths.pop())].append(root)
    for roots in by_stage.values():
        for root in roots[1:]:
            parent[find(root)] = find(roots[0])
    classes = defaultdict(list)
    for i in range(len(groups)):
        classes[find(i)].append(i)
    ties = []
    for idx in sorted(classes.values()):
        internal = any(i in stage for i in idx)
        names = _tie_name([(paths[i], pattern.get(i)) for i in idx])
        ties.append(
            WidthTie(
                name=names,
                groups=tuple(idx),
                shared=internal,
                divisor=math.lcm(*(groups[i].divisor for i in idx)),
            )
        )
    return tuple(ties)


def _tie_name(members: list[tuple[list[str], tuple[int, str] | None]]) -> str:
    """``layer3.{0..5}.conv1 + layer3.{0..5}.conv2``: each role with its block range."""
    roles: dict[tuple, list[int]] = defaultdict(list)
    for comps, where in members:
        if where is None:
            roles[tuple(comps)].append(-1)
            continue
        k, stem = where
        roles[(*comps[:k], None, *comps[k + 1 :], k, stem)].append(int(comps[k][len(stem) :]))
    names = []
    for role, numbers in roles.items():
        if numbers == [-1]:
            names.append(".".join(role))
            continue
        *comps, k, stem = role
        comps[k] = f"{stem}{{{min(numbers)}..{max(numbers)}}}"
        names.append(".".join(comps))
    return " + ".join(names)
