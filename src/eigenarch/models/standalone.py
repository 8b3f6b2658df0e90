"""Rebuild an exported backbone with torchvision / timm alone (no eigenarch import).

``eigenarch export`` copies this file as ``build.py`` beside ``spec.json`` and
``model.safetensors``. :func:`build` makes the network that the spec's ``"export"`` section
names at its builder's own widths -- a timm model written in timm's own per-layer shape
format (``timm_model.txt``) resized by timm's ``adapt_model_from_string``, as timm builds its
``*_pruned`` models -- then gives every module the attributes and every tensor the shape the
section records (a shape table; empty where timm's format applies), so the exported state
dict loads with ``strict=True``::

    from build import load
    model = load("spec.json", "model.safetensors")  # build, then load_state_dict(strict=True)

or ``python build.py spec.json model.safetensors`` to check it (prints the parameter count).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: The base networks :func:`base_model` builds, by the ``"kind"`` of the spec's base.
KINDS = ("resnet", "detnet59", "torchvision", "timm")


def norm_layer(norm: str | None, gn_groups: int = 32) -> Callable[[int], nn.Module] | None:
    """``channels -> module`` for ``"gn"``, ``"bn"``, ``"frozen_bn"``; ``None``: the
    builder's own. GroupNorm starts with groups dividing the base width; the shape table
    sets the exported number."""
    if norm == "gn":
        return lambda channels: nn.GroupNorm(math.gcd(gn_groups, channels), channels)
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        from torchvision.ops import FrozenBatchNorm2d

        return FrozenBatchNorm2d
    if norm is None:
        return None
    raise ValueError(f"norm {norm!r}: expected gn, bn, frozen_bn or null")


class DetNet59(nn.Module):
    """DetNet-59 (Li et al., ECCV 2018): ResNet-50's stem and ``layer1..layer3``, then
    ``layer4`` / ``layer5`` of three 1024-wide bottlenecks with dilation 2 at stride 16
    (block 0 with a projection shortcut), global pooling and a linear classifier."""

    stage_names = ("layer1", "layer2", "layer3", "layer4", "layer5")

    def __init__(self, norm: Callable[[int], nn.Module], num_classes: int = 1000) -> None:
        from torchvision.models.resnet import Bottleneck, conv1x1

        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inp = 64
        for s, (depth, planes, stride, dilation) in enumerate(
            [(3, 64, 1, 1), (4, 128, 2, 1), (6, 256, 2, 1), (3, 256, 1, 2), (3, 256, 1, 2)]
        ):
            out = planes * Bottleneck.expansion
            blocks = []
            for b in range(depth):
                project = nn.Sequential(conv1x1(inp, out, stride), norm(out)) if b == 0 else None
                blocks.append(Bottleneck(inp, planes, stride if b == 0 else 1, project,
                                         dilation=dilation, norm_layer=norm))  # fmt: skip
                inp = out
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.avgpool(x).flatten(1))


def base_model(base: Mapping[str, Any]) -> nn.Module:
    """The network ``base`` names (``{"kind", "name", "depths", "norm", "gn_groups",
    "num_classes"}``) at its builder's widths, random weights, nothing downloaded."""
    kind, classes = base.get("kind"), base.get("num_classes", 1000)
    norm = norm_layer(base.get("norm"), base.get("gn_groups", 32))
    extra = {} if norm is None else {"norm_layer": norm}
    if kind == "resnet":
        from torchvision.models.resnet import Bottleneck, ResNet

        return ResNet(Bottleneck, list(base["depths"]), classes, **extra)
    if kind == "detnet59":
        return DetNet59(norm or norm_layer("gn"), classes)
    if kind == "torchvision":
        import torchvision

        return torchvision.models.get_model(base["name"], weights=None, num_classes=classes,
                                            **extra)  # fmt: skip
    if kind == "timm":
        import timm

        return timm.create_model(base["name"], pretrained=False, num_classes=classes)
    raise ValueError(f"spec.json: export.base.kind {kind!r}: expected one of {', '.join(KINDS)}")


def adapt(
    model: nn.Module, modules: Mapping[str, Mapping[str, Any]], tensors: Mapping[str, list]
) -> nn.Module:
    """Give the modules of ``model`` the attributes in ``modules`` (name -> {attribute:
    value}; lists are tuples) and its parameters / buffers the shapes in ``tensors``; the
    resized layers are re-initialised by their ``reset_parameters()``."""
    named = dict(model.named_modules())
    for name, attributes in modules.items():
        for key, value in attributes.items():
            setattr(named[name], key, tuple(value) if isinstance(value, list) else value)
    reset = set()
    with torch.no_grad():
        for key, shape in tensors.items():
            owner, _, attr = key.rpartition(".")
            module, old = named[owner], getattr(named[owner], attr)
            new = torch.full(shape, float(old.flatten()[0]) if old.numel() else 0.0,
                             dtype=old.dtype)  # fmt: skip
            if isinstance(old, nn.Parameter):
                setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                module.register_buffer(attr, new, attr not in module._non_persistent_buffers_set)
            reset.add(owner)
        for owner in sorted(reset):
            if hasattr(named[owner], "reset_parameters"):
                named[owner].reset_parameters()
    return model


def build(spec: str | Path | Mapping[str, Any]) -> nn.Module:
    """The exported backbone (a classifier, as eigenarch builds it) from ``spec.json`` (or
    its parsed object), freshly initialised. Where the section names a ``"timm_model"``
    file (beside ``spec.json``; for a parsed object, in the current folder), the base
    network is first resized by timm's ``adapt_model_from_string`` with its text."""
    obj = spec if isinstance(spec, Mapping) else json.loads(Path(spec).read_text("utf-8"))
    if not isinstance(obj.get("export"), Mapping):
        raise ValueError(f"{spec}: no 'export' section; expected a spec.json of eigenarch export")
    section = obj["export"]
    model = base_model(section["base"])
    if section.get("timm_model"):
        from timm.models._prune import adapt_model_from_string

        folder = Path() if isinstance(spec, Mapping) else Path(spec).parent
        text = (folder / section["timm_model"]).read_text("utf-8").strip()  # as timm reads it
        model = adapt_model_from_string(model, text).train()
    return adapt(model, section["modules"], section["tensors"])


def load(spec: str | Path, weights: str | Path) -> nn.Module:
    """:func:`build` with the exported ``model.safetensors`` loaded (``strict=True``)."""
    from safetensors.torch import load_file

    model = build(spec)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    files = sys.argv[1:] or [here / "spec.json", here / "model.safetensors"]
    if len(files) != 2:
        sys.exit("usage: python build.py [spec.json model.safetensors]")
    net = load(*files)
    print(f"{type(net).__name__}: {sum(p.numel() for p in net.parameters())} parameters")
