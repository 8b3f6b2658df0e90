"""Resize any traced model: every channel group at a new width, larger or smaller.

Torch-Pruning can only remove channels; growing them is done here, on the groups of
:func:`eigenarch.widths.graph.trace_model`: each conv / linear / norm layer of a group gets
its new ``in`` / ``out`` channels (a depthwise conv stays depthwise, a grouped conv keeps
its group width, GroupNorm keeps its groups), fresh parameters of the new shapes and its
own ``reset_parameters()``; other parameters sized by a group (ConvNeXt's layer scale)
are re-created at the new size.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from eigenarch.errors import EigenarchError
from eigenarch.widths.graph import ModelGraph, _is_depthwise, trace_model


def check_group_widths(
    graph: ModelGraph, widths: Mapping[str, int], divisors: bool = True
) -> dict[str, int]:
    """Every group's new width (unnamed groups keep theirs), checked against its divisor."""
    known = {g.name for g in graph.groups}
    unknown = sorted(set(widths) - known)
    if unknown:
        raise EigenarchError(
            f"{graph.model_name} has no channel group {unknown[0]!r} "
            f"(its groups: {', '.join(g.name for g in graph.groups[:4])}, ...)"
        )
    out = {}
    for group in graph.groups:
        width = widths.get(group.name, group.width)
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 1 << 20:
            raise EigenarchError(
                f"width of group {group.name!r}: {width!r} is not an integer in 1..{1 << 20}"
            )
        if divisors and width % group.divisor:
            raise EigenarchError(
                f"width {width} of group {group.name!r} is not a multiple of {group.divisor} "
                "(the group width of its grouped convs, or its GroupNorm groups)"
            )
        out[group.name] = width
    return out


def _fresh(module: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    old = getattr(module, name)
    if old is None:
        return
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        module.register_buffer(name, new)


def _resize_layer(module: nn.Module, inp: int | None, out: int | None) -> None:
    if isinstance(module, nn.Linear):
        module.in_features = inp or module.in_features
        module.out_features = out or module.out_features
        _fresh(module, "weight", (module.out_features, module.in_features))
        _fresh(module, "bias", (module.out_features,))
    else:
        depthwise = _is_depthwise(module)
        per_group = module.in_channels // module.groups
        module.in_channels = inp or module.in_channels
        module.out_channels = out or module.out_channels
        if depthwise:
            module.in_channels = module.out_channels = module.groups = out or inp
        elif module.groups > 1:
            module.groups = module.in_channels // per_group
        k = tuple(module.kernel_size)
        if isinstance(module, nn.ConvTranspose2d):
            shape = (module.in_channels, module.out_channels // module.groups, *k)
        else:
            shape = (module.out_channels, module.in_channels // module.groups, *k)
        _fresh(module, "weight", shape)
        _fresh(module, "bias", (module.out_channels,))
    module.reset_parameters()


def _resize_norm(module: nn.Module, width: int) -> None:
    if isinstance(module, nn.GroupNorm):
        module.num_channels = width
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = (width,)
    elif isinstance(module, FrozenBatchNorm2d):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _fresh(module, name, (width,))
        module.weight.fill_(1), module.bias.zero_(), module.running_mean.zero_()
        module.running_var.fill_(1)
        return
    else:
        module.num_features = width
        for name in ("running_mean", "running_var"):
            _fresh(module, name, (width,))
    for name in ("weight", "bias"):
        _fresh(module, name, (width,))
    module.reset_parameters()


def resize(
    model: nn.Module,
    widths: Mapping[str, int],
    example_input: torch.Tensor | None = None,
    graph: ModelGraph | None = None,
) -> nn.Module:
    """A copy of ``model`` with every named channel group at its new width.

    ``widths`` maps group names (see :func:`eigenarch.widths.channel_groups`) to widths;
    groups not named keep theirs. Resized layers are freshly initialised by their own
    ``reset_parameters()``. ``example_input`` (default ``zeros(1, 3, 224, 224)``) is traced
    unless the model's ``graph`` is given. The copy runs a forward before it is returned.
    """
    if example_input is None:
        example_input = torch.zeros(1, 3, 224, 224)
    graph = graph or trace_model(model, example_input)
    new_widths = check_group_widths(graph, widths)
    copied = copy.deepcopy(model)
    modules = dict(copied.named_modules())
    params = dict(copied.named_parameters())
    inp: dict[str, int] = {}
    out: dict[str, int] = {}
    norms: dict[str, int] = {}
    for group in graph.groups:
        width = new_widths[group.name]
        if width == group.width:
            continue
        out.update((p, width) for p in group.producers)
        for c in group.consumers:  # a linear layer on a flattened map reads width x positions
            old = getattr(modules[c], "in_features", None) or modules[c].in_channels
            inp[c] = width * (old // group.width)
        norms.update((n, width) for n in group.norms)
        for name, dim in group.parameters:
            owner_name, _, attr = name.rpartition(".")
            owner = modules[owner_name]
            shape = list(params[name].shape)
            shape[dim] = width
            old = getattr(owner, attr)
            setattr(owner, attr, nn.Parameter(torch.full(shape, float(old.detach().flatten()[0]))))
    with torch.no_grad():
        for name in dict.fromkeys([*out, *inp]):
            _resize_layer(modules[name], inp.get(name), out.get(name))
        for name, width in norms.items():
            if isinstance(modules[name], nn.GroupNorm) and width % modules[name].num_groups:
                raise EigenarchError(f"{name}: {width} channels in {modules[name].num_groups} "
                                     "GroupNorm groups")  # fmt: skip
            _resize_norm(modules[name], width)
    try:
        with torch.no_grad():
            copied.eval()(example_input)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["?"])[0]
        raise EigenarchError(
            f"{graph.model_name} cannot be resized by its channel groups (its forward reads "
            f"stored channel counts or reorders channels): {first}"
        ) from None
    copied.train(model.training)
    return copied
