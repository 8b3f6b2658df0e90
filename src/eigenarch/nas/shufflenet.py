"""The ShuffleNetV2 search space of DetNAS (SPEC section 8).

Every searchable block has four choices: ShuffleNetV2 units with a 3x3, 5x5 or 7x7 depthwise
conv, or with an Xception branch (three depthwise 3x3 + pointwise pairs). A stride-1 block
splits its input channels in two (the split takes alternate channels, which is the previous
block's channel shuffle), sends one half through the branch and concatenates; a stride-2
block (the first of each stage) runs a projection branch (depthwise k x k + 1x1) beside the
main one. A *path* is a tuple of ints in 0..3, one per block.

:class:`ShuffleNetV2` is the supernet (``path=None``: every block holds all four choices in a
:class:`ChoiceBlock`; :func:`set_path` picks the active ones) or the stand-alone network of
one path. Both are detector bodies (``stage_channels``, ``stage_names``) and, with
``num_classes``, ImageNet-style classifiers (1x1 conv to ``last`` channels, global pooling,
fc). MACs and params are analytic (SPEC section 4 rules) and need no forward pass.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eigenarch.errors import EigenarchError
from eigenarch.models.backbone import Backbone, body_with_fpn, register_backbone
from eigenarch.widths.cost import ModelCost

CHOICES = ("shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3")
KERNELS = (3, 5, 7, 3)
#: ``format`` of a DetNAS backbone description (a JSON file or a detector config's backbone).
DETNAS_FORMAT = "eigenarch.detnas"
Path_ = tuple[int, ...]


@dataclass(frozen=True)
class SearchSpace:
    """Widths and depths of a ShuffleNetV2 search space.

    ``stem``: width of the stride-2 3x3 stem conv; ``channels`` / ``depths``: output width and
    number of blocks of the four stages (each starts with a stride-2 block); ``last``: width
    of the classifier's 1x1 conv before pooling (not part of a detector body).
    """

    stem: int
    channels: tuple[int, ...]
    depths: tuple[int, ...]
    last: int = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if len(self.channels) != 4 or len(self.depths) != 4:
            raise EigenarchError(
                f"search space channels {list(self.channels)} / depths {list(self.depths)}: "
                "expected four numbers each (one per stage)"
            )
        if self.stem < 1 or self.last < 1 or min(self.depths) < 1:
            raise EigenarchError(
                f"search space stem {self.stem}, last {self.last}, depths {list(self.depths)}: "
                "expected positive numbers"
            )
        inputs = (self.stem, *self.channels[:3])
        for s, (inp, out) in enumerate(zip(inputs, self.channels, strict=True), start=1):
            if out % 2 or out <= inp:
                raise EigenarchError(
                    f"search space stage {s}: {out} channels must be even and more than the "
                    f"{inp} channels entering it (the stride-2 block concatenates both branches)"
                )

    @property
    def num_blocks(self) -> int:
        return sum(self.depths)

    def blocks(self) -> Iterator[tuple[int, int, int, int, int]]:
        """``(stage, index in stage, in channels, out channels, stride)`` of every block."""
        inp = self.stem
        for stage, (out, depth) in enumerate(zip(self.channels, self.depths, strict=True), 1):
            for index in range(depth):
                yield stage, index, inp, out, 2 if index == 0 else 1
                inp = out

    def check_path(self, path: Sequence[int]) -> Path_:
        """``path`` as a tuple, after checking its length and its values."""
        try:
            path = tuple(int(c) for c in path)
        except (TypeError, ValueError):
            raise EigenarchError(f"path {path!r}: expected a sequence of integers 0..3") from None
        if len(path) != self.num_blocks:
            raise EigenarchError(
                f"path {','.join(map(str, path))} has {len(path)} choices; this search space has "
                f"{self.num_blocks} blocks ({'+'.join(map(str, self.depths))})"
            )
        if any(c not in range(len(CHOICES)) for c in path):
            raise EigenarchError(f"path {','.join(map(str, path))}: choices must be 0..3")
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "stem": self.stem,
            "channels": list(self.channels),
            "depths": list(self.depths),
            "last": self.last,
        }


#: The paper's Table 2: space 1 (20 blocks, ~300 M MACs) and space 2 (40 blocks, ~1.3 G).
SPACES = {
    1: SearchSpace(16, (64, 160, 320, 640), (4, 4, 8, 4)),
    2: SearchSpace(48, (96, 240, 480, 960), (8, 8, 16, 8)),
}


def make_space(
    space: int = 1,
    stem: int | None = None,
    channels: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    last: int | None = None,
) -> SearchSpace:
    """Search space 1 or 2, with any of its numbers replaced (e.g. narrow test networks)."""
    if space not in SPACES:
        raise EigenarchError(f"--space {space}: expected 1 or 2")
    base = SPACES[space]
    return SearchSpace(
        stem if stem is not None else base.stem,
        tuple(channels) if channels is not None else base.channels,
        tuple(depths) if depths is not None else base.depths,
        last if last is not None else base.last,
    )


# --- modules -------------------------------------------------------------------------------


def _conv_bn(inp: int, out: int, kernel: int = 1, stride: int = 1, relu: bool = True) -> list:
    """A conv (depthwise when ``kernel > 1``), BatchNorm, and optionally ReLU."""
    groups = inp if kernel > 1 else 1
    layers = [
        nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
    ]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class ShuffleBlock(nn.Module):
    """One choice of one block: a ShuffleNetV2 unit (``choice`` 0..2) or Xception unit (3)."""

    def __init__(self, inp: int, out: int, stride: int, choice: int) -> None:
        super().__init__()
        kernel, mid = KERNELS[choice], out // 2
        if stride == 1:
            branch_in, branch_out, self.proj = inp // 2, out - inp // 2, None
        else:
            branch_in, branch_out = inp, out - inp
            self.proj = nn.Sequential(
                *_conv_bn(inp, inp, kernel, stride, relu=False), *_conv_bn(inp, inp)
            )
        if choice < 3:
            layers = [
                *_conv_bn(branch_in, mid),
                *_conv_bn(mid, mid, kernel, stride, relu=False),
                *_conv_bn(mid, branch_out),
            ]
        else:
            layers = [
                *_conv_bn(branch_in, branch_in, 3, stride, relu=False),
                *_conv_bn(branch_in, mid),
                *_conv_bn(mid, mid, 3, relu=False),
                *_conv_bn(mid, mid),
                *_conv_bn(mid, mid, 3, relu=False),
                *_conv_bn(mid, branch_out),
            ]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            kept, x = x[:, 0::2], x[:, 1::2]
        else:
            kept = self.proj(x)
        return torch.cat((kept, self.main(x)), 1)


class ChoiceBlock(nn.Module):
    """The four choices of one block of the supernet; only ``choices[active]`` runs."""

    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.choices = nn.ModuleList(ShuffleBlock(inp, out, stride, c) for c in range(4))
        self.active = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.choices[self.active](x)

    def extra_repr(self) -> str:
        return f"active={self.active} ({CHOICES[self.active]})"


class ShuffleNetV2(nn.Module):
    """The supernet of ``space`` (``path=None``) or the stand-alone network of ``path``.

    Children ``stem``, ``stage1..stage4`` (and ``last_conv``, ``fc`` with ``num_classes``).
    Without ``num_classes`` the forward returns the last stage's output; a detector takes
    the four stages through its FPN.
    """

    stage_names = ("stage1", "stage2", "stage3", "stage4")

    def __init__(
        self,
        space: SearchSpace,
        path: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.space = space
        self.path = None if path is None else space.check_path(path)
        self.stage_channels = space.channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, space.stem, 3, 2, 1, bias=False),
            nn.BatchNorm2d(space.stem),
            nn.ReLU(inplace=True),
        )
        stages: list[list[nn.Module]] = [[] for _ in range(4)]
        for k, (stage, _, inp, out, stride) in enumerate(space.blocks()):
            block = (
                ChoiceBlock(inp, out, stride)
                if self.path is None
                else ShuffleBlock(inp, out, stride, self.path[k])
            )
            stages[stage - 1].append(block)
        for name, blocks in zip(self.stage_names, stages, strict=True):
            self.add_module(name, nn.Sequential(*blocks))
        self.num_classes = num_classes
        if num_classes is not None:
            self.last_conv = nn.Sequential(*_conv_bn(space.channels[-1], space.last))
            self.fc = nn.Linear(space.last, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        if self.num_classes is None:
            return x
        return self.fc(self.last_conv(x).mean((2, 3)))


def choice_blocks(module: nn.Module) -> list[ChoiceBlock]:
    """The supernet's choice blocks inside ``module`` (a body, detector, or DDP wrapper)."""
    return [m for m in module.modules() if isinstance(m, ChoiceBlock)]


def set_path(module: nn.Module, path: Sequence[int]) -> nn.Module:
    """Make ``path`` the active one in the supernet inside ``module``; returns ``module``."""
    blocks = choice_blocks(module)
    if len(blocks) != len(path):
        raise EigenarchError(f"path of {len(path)} choices for a supernet of {len(blocks)} blocks")
    for block, choice in zip(blocks, path, strict=True):
        if choice not in range(len(CHOICES)):
            raise EigenarchError(f"path {list(path)}: choices must be 0..3")
        block.active = int(choice)
    return module


def off_path_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters of the choices that the active path does not use."""
    return [
        p
        for block in choice_blocks(module)
        for c, choice in enumerate(block.choices)
        if c != block.active
        for p in choice.parameters()
    ]


_CHOICE_KEY = re.compile(r"^(.*?)(stage([1-4])\.(\d+)\.)choices\.(\d)\.(.*)$")


def path_state_dict(state: dict[str, torch.Tensor], space: SearchSpace, path: Sequence[int]):
    """The stand-alone network's weights of ``path``, taken from a supernet state dict.

    Keys ``...stageS.B.choices.C.rest`` of the chosen ``C`` become ``...stageS.B.rest``;
    the other choices are dropped; every other key is kept as it is.
    """
    path = space.check_path(path)
    first = [sum(space.depths[:s]) for s in range(4)]
    out = {}
    for key, value in state.items():
        match = _CHOICE_KEY.match(key)
        if match is None:
            out[key] = value
            continue
        prefix, block, stage, index, choice, rest = match.groups()
        if path[first[int(stage) - 1] + int(index)] == int(choice):
            out[prefix + block + rest] = value
    return out


# --- analytic cost ------------------------------------------------------------------------


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # odd kernel, padding kernel // 2


def _block_layers(
    inp: int, out: int, stride: int, choice: int, size: int
) -> Iterator[tuple[int, int, int, int, int]]:
    """``(in, out, kernel, groups, output size)`` of every conv of one block choice."""
    kernel, mid, small = KERNELS[choice], out // 2, _out_size(size, stride)
    if stride == 1:
        branch_in, branch_out = inp // 2, out - inp // 2
    else:
        branch_in, branch_out = inp, out - inp
        yield inp, inp, kernel, inp, small
        yield inp, inp, 1, 1, small
    if choice < 3:
        yield branch_in, mid, 1, 1, size
        yield mid, mid, kernel, mid, small
        yield mid, branch_out, 1, 1, small
    else:
        yield branch_in, branch_in, 3, branch_in, small
        yield branch_in, mid, 1, 1, small
        yield mid, mid, 3, mid, small
        yield mid, mid, 1, 1, small
        yield mid, mid, 3, mid, small
        yield mid, branch_out, 1, 1, small


def _cost(layers) -> tuple[int, int]:
    macs = params = 0
    for i, o, k, g, s in layers:
        weights = i * o * k * k // g
        macs, params = macs + weights * s * s, params + weights
    return macs, params


@lru_cache(maxsize=32)
def choice_costs(
    space: SearchSpace, size: int = 224, num_classes: int = 1000
) -> tuple[tuple[int, int], tuple[tuple[tuple[int, int], ...], ...]]:
    """``(fixed (macs, params), per block: per choice (macs, params))`` at ``size`` pixels.

    Fixed: the stem, and the classifier's 1x1 conv and fc. A path's cost is the fixed cost
    plus its blocks' choice costs (blocks' widths do not depend on the path).
    """
    size = _out_size(size, 2)
    fixed = [(3, space.stem, 3, 1, size)]
    blocks = []
    for _, _, inp, out, stride in space.blocks():
        blocks.append(tuple(_cost(_block_layers(inp, out, stride, c, size)) for c in range(4)))
        size = _out_size(size, stride)
    fixed += [(space.channels[-1], space.last, 1, 1, size), (space.last, num_classes, 1, 1, 1)]
    return _cost(fixed), tuple(blocks)


def path_cost(
    space: SearchSpace, path: Sequence[int], size: int = 224, num_classes: int = 1000
) -> tuple[int, int]:
    """``(MACs, params)`` of the stand-alone classifier of ``path`` at ``size`` x ``size``."""
    path = space.check_path(path)
    (macs, params), blocks = choice_costs(space, size, num_classes)
    for block, choice in zip(blocks, path, strict=True):
        macs, params = macs + block[choice][0], params + block[choice][1]
    return macs, params


def path_macs(space: SearchSpace, path: Sequence[int]) -> int:
    """MACs of ``path`` at 224 x 224 (the FLOPs of SPEC section 8)."""
    return path_cost(space, path)[0]


def macs_range(space: SearchSpace) -> tuple[int, int]:
    """The smallest and largest MACs of any path at 224 x 224."""
    (fixed, _), blocks = choice_costs(space)
    low = fixed + sum(min(m for m, _ in b) for b in blocks)
    high = fixed + sum(max(m for m, _ in b) for b in blocks)
    return low, high


# --- path descriptions ----------------------------------------------------------------------


def format_path(path: Sequence[int]) -> str:
    return ",".join(str(c) for c in path)


def detnas_config(space: SearchSpace, path: Sequence[int] | None) -> dict[str, Any]:
    """The JSON description of a supernet (``path=None``) or of one path's network."""
    return {
        "format": DETNAS_FORMAT,
        **space.to_dict(),
        "path": None if path is None else list(space.check_path(path)),
    }


def read_detnas_config(config: dict[str, Any], source: str = "backbone") -> tuple:
    """``(space, path or None)`` of a :func:`detnas_config` dict (``source`` names it in errors)."""
    try:
        space = SearchSpace(
            int(config["stem"]), config["channels"], config["depths"], int(config["last"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EigenarchError(f"{source}: not a DetNAS network description ({exc})") from None
    path = config.get("path")
    return space, None if path is None else space.check_path(path)


@register_backbone
@dataclass(frozen=True)
class DetnasBackbone(Backbone):
    """A DetNAS network (a path) or supernet (``path=None``) of a :class:`SearchSpace`, as a
    backbone kind; its JSON form is :func:`detnas_config`'s. Its widths are the space's,
    not searched by IAS (DetNAS searches its blocks)."""

    format = DETNAS_FORMAT
    norm = None  # BatchNorm, built in
    space: SearchSpace = SPACES[1]
    path: tuple[int, ...] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return "a DetNAS supernet" if self.path is None else "a DetNAS network"

    def build(self, num_classes: int | None = 1000) -> ShuffleNetV2:
        return ShuffleNetV2(self.space, self.path, num_classes)

    def with_fpn(self, fpn_channels: int = 256, gn_groups: int = 32, fpn_norm: str | None = "gn"):
        return body_with_fpn(self.build(None), fpn_channels, gn_groups, fpn_norm)

    def cost(self) -> ModelCost:
        if self.path is None:
            raise EigenarchError("a DetNAS supernet has no one cost; give a path")
        macs, params = path_cost(self.space, self.path)
        return ModelCost((), macs, params)

    def searched_widths(self) -> list[int]:
        return list(self.space.channels)

    def to_dict(self) -> dict[str, Any]:
        return detnas_config(self.space, self.path)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], what: str) -> DetnasBackbone:
        space, path = read_detnas_config(dict(obj), what)
        return cls(space, path)


def load_detnas_file(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The DetNAS description in a JSON file, or ``None`` if the file is not one."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != DETNAS_FORMAT:
        return None
    read_detnas_config(data, str(path))
    return data
