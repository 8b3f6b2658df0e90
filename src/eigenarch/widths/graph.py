"""Channel groups of any model, from its own graph (SPEC section 6b).

A *channel group* is a set of coupled channels: the conv / linear layers whose outputs must
have one width (producers: every output added to a residual stream, a depthwise conv, the
squeeze-excitation gate that scales them), the norm layers and other parameters sized by
them, and the layers that read them (consumers). Torch-Pruning's ``DependencyGraph`` finds
them by tracing one forward pass; this module turns its groups into named, ordered
:class:`ChannelGroup` records and keeps what the cost model needs of every layer (kernel,
stride, output positions) from the same forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner.function import BasePruningFunc
from torchvision.ops import FrozenBatchNorm2d

from eigenarch.errors import EigenarchError

#: Layers whose input and output channels are counted and resized.
LAYER_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
#: Norm layers resized with their channels.
NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, FrozenBatchNorm2d)


@dataclass(frozen=True)
class ChannelGroup:
    """One set of coupled channels of a traced model; module names are ``named_modules()``'s.

    ``name`` is its first producer in forward order. ``units`` pairs each producer with the
    consumers that read its output (those called after it and before the group's next
    producer): the per-layer view of Figure 2. ``divisor`` is what every width of the group
    must be a multiple of (a grouped conv's group width, GroupNorm's groups).
    """

    name: str
    width: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    norms: tuple[str, ...]
    parameters: tuple[tuple[str, int], ...]
    units: tuple[tuple[str, tuple[str, ...]], ...]
    divisor: int

    def modules(self) -> tuple[str, ...]:
        """Every module of the group (producers, consumers, norms), each once."""
        return tuple(dict.fromkeys(self.producers + self.consumers + self.norms))


@dataclass(frozen=True)
class LayerShape:
    """A conv / linear layer as the cost model sees it.

    ``in_group`` / ``out_group`` index :attr:`ModelGraph.groups` (``None``: a fixed width,
    ``in_channels`` / ``out_channels``). ``per_group`` is the input channels each output
    channel reads when it does not follow the input width (1 for depthwise, the group width
    for grouped convs, ``None`` otherwise); ``positions`` the output (input, for a
    transposed conv) positions per image of the traced forward; ``in_scale`` the input
    channels per channel of ``in_group`` (a linear layer on a flattened map: its positions).
    """

    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stride: int
    out_size: int
    positions: int
    in_group: int | None
    out_group: int | None
    per_group: int | None
    in_scale: int = 1


@dataclass(frozen=True)
class ModelGraph:
    """The channel groups of a model and the shapes of its layers, in forward order."""

    model_name: str
    groups: tuple[ChannelGroup, ...]
    layers: tuple[LayerShape, ...]
    order: tuple[str, ...]

    def widths(self) -> dict[str, int]:
        """``{group name: width}`` of the traced model."""
        return {g.name: g.width for g in self.groups}


class _FrozenBatchNormPruner(BasePruningFunc):
    """Lets the trace see ``FrozenBatchNorm2d`` (buffers only) as a per-channel layer; it
    prunes nothing (resizing is :mod:`eigenarch.widths.resize`'s)."""

    TARGET_MODULES = FrozenBatchNorm2d

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]

    get_in_channels = get_out_channels


@contextmanager
def _tracing(model: nn.Module):
    """Gradients on for every parameter (the trace follows autograd), eval mode, restored."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    training = {m: m.training for m in model.modules()}
    try:
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for m, mode in training.items():
            m.train(mode)


def _record_layers(model: nn.Module, example_input: torch.Tensor) -> tuple[list[str], dict]:
    """One forward with hooks: call order of every conv / linear and its output shape."""
    order: list[str] = []
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    last = [type(model).__name__]

    def pre(name):
        def hook(module, args):
            last[0] = name or type(model).__name__

        return hook

    def post(name):
        def hook(module, args, output):
            if name not in shapes and args and torch.is_tensor(args[0]) and torch.is_tensor(output):
                order.append(name)
                shapes[name] = (args[0].shape, output.shape)

        return hook

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre(name)))
        if isinstance(module, LAYER_TYPES):
            handles.append(module.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            model(example_input)
    except Exception as exc:  # a user's model that cannot run on this input
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EigenarchError(
            f"cannot trace {type(model).__name__}: its forward stopped at module {last[0]!r} "
            f"({type(exc).__name__}: {first})"
        ) from None
    finally:
        for h in handles:
            h.remove()
    return order, shapes


def trace_model(
    model: nn.Module,
    example_input: torch.Tensor,
    fixed: Sequence[nn.Module] = (),
    name: str | None = None,
) -> ModelGraph:
    """Channel groups and layer shapes of ``model`` on ``example_input`` (one image batch).

    The output channels of ``fixed`` modules are not a group (default: a final ``Linear``
    whose output is the model's output, i.e. a classifier's classes). A grouped conv's
    input and output groups are merged (its group width is kept when resized).
    """
    model_name = name or type(model).__name__
    with _tracing(model):
        order, shapes = _record_layers(model, example_input)
        fixed = list(fixed) or _final_linear(model, order)
        try:  # verbose=False: unwrapped parameters (layer scale) take TP's default dim quietly
            graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_input,
                customized_pruners={FrozenBatchNorm2d: _FrozenBatchNormPruner()},
                verbose=False,
            )
            raw = list(graph.get_all_groups(ignored_layers=fixed, root_module_types=LAYER_TYPES))
        except (ValueError, RuntimeError, NotImplementedError) as exc:  # what TP refuses
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EigenarchError(
                f"cannot trace the channel graph of {model_name}: {type(exc).__name__}: {first}"
            ) from None
    names = {m: n for n, m in model.named_modules()}
    params = {id(p): n for n, p in model.named_parameters()}
    rank = {n: i for i, n in enumerate(order)}
    modules = dict(model.named_modules())
    sets = [_members(graph, group, names, params, modules) for group in raw]
    sets = _merge_grouped_convs(model, sets)
    groups = sorted(
        (_channel_group(model, members, rank) for members in sets if members[0]),
        key=lambda g: rank.get(g.name, math.inf),
    )
    split = [g.name for g in groups if sum(h.name == g.name for h in groups) > 1]
    if split:  # one layer's output channels in two groups: a chunk / split of its output
        raise EigenarchError(
            f"{model_name}: the output channels of {split[0]} are split into parts that "
            "different layers read (a chunk, as CSP networks do); its widths cannot be searched"
        )
    readers: dict[str, str] = {}
    for group in groups:
        for consumer in group.consumers:
            if readers.setdefault(consumer, group.name) != group.name:
                raise EigenarchError(
                    f"{model_name}: {consumer} reads channels of groups {readers[consumer]!r} "
                    f"and {group.name!r} (a concatenation); its widths cannot be searched"
                )
    layers = _layer_shapes(model, groups, order, shapes)
    return ModelGraph(model_name, tuple(groups), layers, tuple(order))


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """The groups of coupled channels of ``model`` (SPEC section 6b), in forward order.

    ``example_input`` is a batch the model's forward accepts (e.g. ``torch.zeros(1, 3, 224,
    224)``); a model that cannot be traced gives one line naming it and where it stopped.
    """
    return list(trace_model(model, example_input).groups)


def _final_linear(model: nn.Module, order: list[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    last = modules[order[-1]] if order else None
    return [last] if isinstance(last, nn.Linear) else []


def _members(
    graph: tp.DependencyGraph, group, names: dict, params: dict, modules: dict
) -> tuple[set, set, set, set]:
    """``(producers, consumers, norms, parameters)`` of one Torch-Pruning group."""
    producers, consumers, norms, others = set(), set(), set(), set()
    for dep, _ in group:
        target = dep.target.module
        if isinstance(target, nn.Parameter):
            others.add(params[id(target)])
        elif isinstance(target, LAYER_TYPES):
            out = graph.is_out_channel_pruning_fn(dep.handler)
            (producers if out else consumers).add(names[target])
        elif isinstance(target, NORM_TYPES):
            norms.add(names[target])
    for name in list(producers):  # a depthwise conv reads the channels it produces
        if _is_depthwise(modules[name]):
            consumers.add(name)
    return producers, consumers, norms, others


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _merge_grouped_convs(model: nn.Module, sets: list) -> list:
    """Join the input and output groups of every grouped (not depthwise) conv."""
    modules = dict(model.named_modules())
    grouped = {
        n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.groups > 1
        and not _is_depthwise(m)
    }  # fmt: skip
    merged = True
    while merged:
        merged = False
        for conv in grouped:
            having = [i for i, s in enumerate(sets) if conv in s[0] or conv in s[1]]
            if len(having) > 1:
                first, *rest = having
                for i in rest:
                    for k in range(4):
                        sets[first][k].update(sets[i][k])
                sets = [s for i, s in enumerate(sets) if i not in rest]
                merged = True
                break
    return sets


def _channel_group(model: nn.Module, members, rank: dict) -> ChannelGroup:
    producers, consumers, norms, others = members
    modules = dict(model.named_modules())
    by_rank = sorted(producers, key=lambda n: rank.get(n, math.inf))
    reads = sorted(consumers, key=lambda n: rank.get(n, math.inf))
    first = modules[by_rank[0]]
    width = first.out_features if isinstance(first, nn.Linear) else first.out_channels
    units = _units(by_rank, reads, rank)
    divisor = 1
    for name in producers | consumers:
        m = modules[name]
        if isinstance(m, nn.Conv2d) and m.groups > 1 and not _is_depthwise(m):
            divisor = math.lcm(divisor, m.in_channels // m.groups, m.out_channels // m.groups)
    for name in norms:
        if isinstance(modules[name], nn.GroupNorm):
            divisor = math.lcm(divisor, modules[name].num_groups)
    named_params = dict(model.named_parameters())
    parameters = tuple(
        (p, next(d for d, s in enumerate(named_params[p].shape) if s == width))
        for p in sorted(others)
    )
    return ChannelGroup(
        name=by_rank[0],
        width=width,
        producers=tuple(by_rank),
        consumers=tuple(reads),
        norms=tuple(sorted(norms, key=lambda n: list(modules).index(n))),
        parameters=parameters,
        units=tuple(units),
        divisor=divisor,
    )


def _units(producers: list[str], consumers: list[str], rank: dict) -> tuple:
    """Pair every producer with the consumers reading its output.

    Walking the group in forward order, producers called with no consumer between them
    (a block's last conv and its projection shortcut) share the consumers that follow,
    up to the next producer; a depthwise conv reads before it produces.
    """
    events = sorted(
        [(rank.get(c, math.inf), 0, c) for c in consumers]
        + [(rank.get(p, math.inf), 1, p) for p in producers]
    )
    units, segment, readers = [], [], []
    for _, is_producer, name in events:
        if not is_producer:
            readers.append(name)
            continue
        if readers or not segment:
            units.extend((p, tuple(readers)) for p in segment)
            segment, readers = [], []
        segment.append(name)
    units.extend((p, tuple(readers)) for p in segment)
    return tuple(units)


def _layer_shapes(
    model: nn.Module, groups: Sequence[ChannelGroup], order: list[str], shapes: dict
) -> tuple[LayerShape, ...]:
    modules = dict(model.named_modules())
    out_of = {p: i for i, g in enumerate(groups) for p in g.producers}
    in_of = {c: i for i, g in enumerate(groups) for c in g.consumers}
    layers = []
    for name in order:
        m = modules[name]
        (in_shape, out_shape) = shapes[name]
        if isinstance(m, nn.Linear):
            kernel, stride, per_group = (1,), 1, None
            positions = math.prod(out_shape[1:-1]) if len(out_shape) > 2 else 1
            size, i, o = 1, m.in_features, m.out_features
        else:
            kernel, stride = tuple(m.kernel_size), m.stride[0]
            per_group = 1 if _is_depthwise(m) else (m.in_channels // m.groups if m.groups > 1
                                                    else None)  # fmt: skip
            spatial = in_shape if isinstance(m, nn.ConvTranspose2d) else out_shape
            positions, size = math.prod(spatial[2:]), out_shape[-1]
            i, o = m.in_channels, m.out_channels
        group = in_of.get(name)
        scale = i // groups[group].width if group is not None else 1  # flattened map: > 1
        layers.append(LayerShape(name, i, o, kernel, stride, size, positions, group,
                                 out_of.get(name), per_group, scale))  # fmt: skip
    return tuple(layers)
