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


class _Union:
    """Union-find over ``n`` items."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.find(j)] = self.find(i)

    def classes(self) -> list[list[int]]:
        found: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            found[self.find(i)].append(i)
        return sorted(found.values())


class _Blocks:
    """The groups of a graph seen as blocks: which block a group lies in, which stage
    (the groups a block feeds beyond itself) that block belongs to."""

    def __init__(self, graph: ModelGraph) -> None:
        self.groups = graph.groups
        self.paths = [g.name.split(".") for g in self.groups]
        self.members = [g.modules() for g in self.groups]
        self._stages: dict[str, frozenset[int]] = {}

    def stage_of(self, block: str) -> frozenset[int]:
        """The groups with a producer inside ``block`` and a module outside it."""
        if block not in self._stages:
            self._stages[block] = frozenset(
                i for i, g in enumerate(self.groups)
                if any(p.startswith(block + ".") for p in g.producers)
                and not _inside(self.members[i], block)
            )  # fmt: skip
        return self._stages[block]

    def same_roles(self):
        """``(i, j, stage, (index position, stem))`` for every two groups playing one role in
        two blocks of one stage (names differing only in that block index)."""
        buckets: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
        for i, comps in enumerate(self.paths):
            for k, comp in enumerate(comps):
                match = _INDEXED.fullmatch(comp)
                if match:
                    key = (len(comps), k, *comps[:k], match[1] + "*", *comps[k + 1 :])
                    buckets[key].append((i, ".".join(comps[: k + 1])))
        for key, found in buckets.items():
            where = (key[1], key[2 + key[1]][:-1])
            for (i, block_i), (j, block_j) in zip(found, found[1:], strict=False):
                inside = _inside(self.members[i], block_i) and _inside(self.members[j], block_j)
                stage = self.stage_of(block_i) if inside else frozenset()
                if stage and stage == self.stage_of(block_j):
                    yield i, j, stage, where

    def lone_stage(self, i: int) -> frozenset[int]:
        """The stage of a group met in one block only: that of its deepest indexed prefix
        holding all its modules (empty if none: not a block's internal group)."""
        comps = self.paths[i]
        for k in range(len(comps) - 1, -1, -1):
            block = ".".join(comps[: k + 1])
            if _INDEXED.fullmatch(comps[k]) and _inside(self.members[i], block):
                return self.stage_of(block)
        return frozenset()


def width_ties(graph: ModelGraph) -> tuple[WidthTie, ...]:
    """The searched widths of ``graph``, in forward order of their first producer."""
    blocks, union = _Blocks(graph), _Union(len(graph.groups))
    stage: dict[int, frozenset[int]] = {}
    pattern: dict[int, tuple[int, str]] = {}  # the block-index position and its stem
    # One role across the blocks of a stage: one width.
    for i, j, found, where in blocks.same_roles():
        union.join(i, j)
        stage[i] = stage[j] = found
        pattern[i] = pattern[j] = where
    for i in range(len(graph.groups)):
        if i not in stage and blocks.lone_stage(i):
            stage[i] = blocks.lone_stage(i)
    # Roles of one stage that the model gives one width (a bottleneck's conv1 and conv2).
    by_width: dict[tuple, list[int]] = defaultdict(list)
    for idx in union.classes():
        widths = {graph.groups[i].width for i in idx}
        if idx[0] in stage and len(widths) == 1:
            by_width[(stage[idx[0]], widths.pop())].append(idx[0])
    for first, *rest in by_width.values():
        for other in rest:
            union.join(first, other)
    return tuple(
        WidthTie(
            name=_tie_name([(blocks.paths[i], pattern.get(i)) for i in idx]),
            groups=tuple(idx),
            shared=any(i in stage for i in idx),
            divisor=math.lcm(*(graph.groups[i].divisor for i in idx)),
        )
        for idx in union.classes()
    )


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
