"""Resize a trained model and keep what it learned (SPEC section 6c).

A channel group that shrinks keeps the channels a greedy pivoted Cholesky picks on the
group's covariance (:func:`select_channels`); every channel-mixing layer reading the group
gets the dropped channels' contribution re-expressed through the kept ones, the
least-squares estimate over the data the spectra saw (:func:`reconstruction`,
:func:`reconstruct_weight`). A group that grows keeps its old channels in place and appends
fresh ones that no old channel reads. :func:`inherit_resize` does this for every group of a
traced model (:mod:`eigenarch.widths.graph`) on top of :func:`eigenarch.widths.resize.resize`,
which gives the new shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from eigenarch.errors import EigenarchError
from eigenarch.widths.graph import LAYER_TYPES, ChannelGroup, ModelGraph, _is_depthwise, trace_model
from eigenarch.widths.resize import check_group_widths, resize

#: Relative ridge of the reconstruction: ``eps * tr(Sigma_KK) / |K|`` is added to the diagonal.
EPS = 1e-6


class Covariances(Protocol):
    """What resizing reads of collected spectra (:class:`eigenarch.spectrum.Spectra` is one):
    map names, each map's channels and its (non-centred) covariance."""

    @property
    def names(self) -> list[str]: ...

    def channels(self, name: str) -> int: ...

    def covariance(self, name: str) -> Tensor: ...


def select_channels(sigma: Tensor, keep: int, groups: int = 1) -> Tensor:
    """The ``keep`` channels of a ``(C, C)`` covariance that greedy pivoted Cholesky keeps.

    One at a time, the channel with the largest residual diagonal (the variance the kept
    channels do not explain) is kept, and the residual becomes its Schur complement; ties
    go to the lower index, and residuals within round-off (``C * eps64 * max diag``) of 0
    count as 0. With ``groups > 1`` (a grouped consumer's conv groups) ``keep / groups``
    channels are chosen within each block of ``C / groups`` channels. Sorted ascending.
    """
    sigma = _square(sigma)
    channels = sigma.shape[0]
    if not 0 < keep <= channels:
        raise EigenarchError(f"cannot keep {keep} of {channels} channels")
    if channels % groups or keep % groups:
        raise EigenarchError(
            f"cannot keep {keep} of {channels} channels equally in {groups} conv groups "
            f"({keep} and {channels} must be multiples of {groups})"
        )
    size, per = channels // groups, keep // groups
    parts = [
        _pivoted_cholesky(sigma[a * size : (a + 1) * size, a * size : (a + 1) * size], per)
        + a * size
        for a in range(groups)
    ]
    return torch.cat(parts).sort().values


def _block(sigma: Tensor, a: int, size: int) -> Tensor:
    """The ``a``-th diagonal block of ``size`` channels."""
    return sigma[a * size : (a + 1) * size, a * size : (a + 1) * size]


def _square(sigma: Tensor) -> Tensor:
    if sigma.dim() != 2 or sigma.shape[0] != sigma.shape[1]:
        raise EigenarchError(f"a covariance must be a square matrix, not {tuple(sigma.shape)}")
    return sigma.detach().to("cpu", torch.float64)


def _pivoted_cholesky(sigma: Tensor, keep: int) -> Tensor:
    channels = sigma.shape[0]
    residual = sigma.diagonal().clone()
    tolerance = channels * torch.finfo(torch.float64).eps * max(float(residual.max()), 0.0)
    factors = sigma.new_zeros(channels, keep)
    free = torch.ones(channels, dtype=torch.bool)
    kept: list[int] = []
    for step in range(keep):
        j = int(torch.where(free, residual, -math.inf).argmax())  # first of equal maxima
        if residual[j] <= tolerance:  # nothing left to explain: the lowest free indices
            kept.extend(free.nonzero().flatten()[: keep - step].tolist())
            break
        column = (sigma[:, j] - factors[:, :step] @ factors[j, :step]) / residual[j].sqrt()
        factors[:, step] = column
        residual -= column.square()
        free[j] = False
        kept.append(j)
    return torch.tensor(kept, dtype=torch.long)


def _dropped(channels: int, kept: Tensor) -> Tensor:
    mask = torch.ones(channels, dtype=torch.bool)
    mask[kept] = False
    return mask.nonzero().flatten()


def reconstruction(sigma: Tensor, kept: Tensor, eps: float = EPS) -> Tensor:
    """``A = Sigma_DK (Sigma_KK + eps * tr(Sigma_KK) / |K| * I)^-1``, ``(|D|, |K|)`` float64.

    ``D`` is the channels not in ``kept``, ascending: the least-squares estimate of the
    dropped channels from the kept ones is ``x_D = A x_K``. All-dead kept channels (a zero
    ``Sigma_KK``, hence a zero ``Sigma_DK``) give a zero ``A``.
    """
    sigma = _square(sigma)
    kept = torch.as_tensor(kept, dtype=torch.long)
    dropped = _dropped(sigma.shape[0], kept)
    skk = sigma[kept][:, kept]
    ridge = eps * float(skk.trace()) / len(kept)
    if ridge <= 0:
        return sigma.new_zeros(len(dropped), len(kept))
    eye = torch.eye(len(kept), dtype=torch.float64)
    return torch.linalg.solve(skk + ridge * eye, sigma[kept][:, dropped]).T


def mixing_matrix(sigma: Tensor, kept: Tensor, groups: int = 1, eps: float = EPS) -> Tensor:
    """``M`` (``(C, |K|)`` float64) with ``W @ M = W_K + W_D A``: identity on the kept rows,
    :func:`reconstruction` on the dropped ones; with ``groups > 1`` (a grouped conv reading
    the channels) block-diagonal, each conv group estimated from its own kept channels."""
    sigma = _square(sigma)
    kept = torch.as_tensor(kept, dtype=torch.long)
    channels = sigma.shape[0]
    size = channels // groups
    mix = sigma.new_zeros(channels, len(kept))
    mix[kept, torch.arange(len(kept))] = 1.0
    for a in range(groups):
        inside = ((kept >= a * size) & (kept < (a + 1) * size)).nonzero().flatten()
        local = kept[inside] - a * size
        if len(inside) == 0:
            raise EigenarchError(f"no channel kept in conv group {a} of {groups}")
        block = _block(sigma, a, size)
        rows = _dropped(size, local) + a * size
        mix[rows[:, None], inside[None, :]] = reconstruction(block, local, eps)
    return mix


def reconstruct_weight(
    weight: Tensor, sigma: Tensor, kept: Tensor, dim: int = 1, groups: int = 1
) -> Tensor:
    """A consumer's weight reading only ``kept``: ``W_K + W_D A`` along input dimension
    ``dim`` (1 for ``Linear`` and ``Conv2d``), at every kernel tap alike; ``groups``: see
    :func:`mixing_matrix` (``weight`` then dense, its zeros across conv groups included)."""
    mix = mixing_matrix(sigma, kept, groups)
    return _mix(weight, mix, dim)


def _mix(weight: Tensor, mix: Tensor, dim: int) -> Tensor:
    moved = weight.detach().movedim(dim, -1).to(torch.float64)
    return (moved @ mix.to(moved.device)).movedim(-1, dim).to(weight.dtype)


def check_spectra(model: nn.Module, spectra: Covariances, prefix: str = "") -> None:
    """Refuse, in one line, spectra whose maps under ``prefix`` are not this model's: a name
    that is no conv / linear layer of it, or a width that is not the layer's."""
    modules = dict(model.named_modules())
    model_name = type(model).__name__
    matched = 0
    for name in spectra.names:
        path, _, side = name.rpartition(":")
        if not path.startswith(prefix):
            continue
        module = modules.get(path[len(prefix) :])
        if not isinstance(module, LAYER_TYPES) or side not in ("in", "out"):
            raise EigenarchError(
                f"spectra map {name!r} names no conv / linear layer of {model_name}"
                + (f" under the prefix {prefix!r}" if prefix else "")
                + " (spectra of another model?)"
            )
        width = _width(module, side)
        if spectra.channels(name) != width:
            raise EigenarchError(
                f"spectra map {name!r} has {spectra.channels(name)} channels, but "
                f"{path[len(prefix) :]} of {model_name} has {width} (spectra of another model?)"
            )
        matched += 1
    if not matched:
        raise EigenarchError(
            f"no map of these spectra ({', '.join(spectra.names[:2])}, ...) starts with "
            f"{prefix!r}: they are not spectra of {model_name}"
        )


def _width(module: nn.Module, side: str) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features if side == "in" else module.out_features
    return module.in_channels if side == "in" else module.out_channels


def _in_width(module: nn.Module) -> int:
    return _width(module, "in")


def _mixing(modules: Mapping[str, nn.Module], group: ChannelGroup) -> list[str]:
    """The group's channel-mixing consumers that read its channels one per feature (not
    depthwise convs, not linear layers on a flattened map)."""
    return [
        c
        for c in group.consumers
        if not _is_depthwise(modules[c]) and _in_width(modules[c]) == group.width
    ]


def group_covariance(
    group: ChannelGroup,
    spectra: Covariances,
    modules: Mapping[str, nn.Module],
    prefix: str = "",
    tensors: Mapping[str, int] | None = None,
) -> Tensor:
    """``Sigma_g`` of a group: the sum, each divided by its trace, of the covariances of the
    different tensors its channel-mixing consumers read (their ``:in`` maps; ``tensors``
    says which consumers read the same tensor, ``None``: each its own); where none is
    collected, of its producers' ``:out`` maps; where neither, a one-line refusal naming the
    map to collect. ``modules`` is the model's ``named_modules()``."""
    names, seen = [], set()
    for consumer in _mixing(modules, group):
        tensor = tensors.get(consumer, consumer) if tensors is not None else consumer
        name = f"{prefix}{consumer}:in"
        if tensor not in seen and name in spectra.names:
            names.append(name)
            seen.add(tensor)
    if not names:
        names = [f"{prefix}{p}:out" for p in group.producers if f"{prefix}{p}:out" in spectra.names]
    if not names:
        wanted = _mixing(modules, group)
        first = f"{prefix}{wanted[0]}:in" if wanted else f"{prefix}{group.producers[0]}:out"
        raise EigenarchError(
            f"channel group {group.name!r} has no covariance in these spectra: collect "
            f"{first} (eigenarch spectrum --include '{first}', or --max-channels of at least "
            f"{group.width} if it was skipped as too wide)"
        )
    total = torch.zeros(group.width, group.width, dtype=torch.float64)
    for name in names:
        cov = spectra.covariance(name)
        trace = float(cov.trace())
        if trace > 0:
            total += cov / trace
    return total


def read_tensors(model: nn.Module, example_input: Tensor, names: list[str]) -> dict[str, int]:
    """``{module: index of the tensor it reads}`` for ``names`` in one forward of ``model``
    on ``example_input``: modules reading the same tensor get the same index."""
    modules = dict(model.named_modules())
    inputs: dict[str, Tensor] = {}

    def hook(name):
        def record(module, args):
            if name not in inputs and args and torch.is_tensor(args[0]):
                inputs[name] = args[0]  # held, so that no later tensor reuses its memory

        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    distinct: list[Tensor] = []
    out = {}
    for name, tensor in inputs.items():
        index = next((i for i, t in enumerate(distinct) if t is tensor), None)
        if index is None:
            distinct.append(tensor)
            index = len(distinct) - 1
        out[name] = index
    return out


@dataclass
class _Plan:
    """One resized group: old and new width, the kept channels (shrink; ``None``: growth),
    and each channel-mixing consumer's ``M`` (shrink)."""

    old: int
    new: int
    kept: Tensor | None = None
    mix: dict[str, Tensor] = field(default_factory=dict)


def inherit_resize(
    model: nn.Module,
    widths: Mapping[str, int],
    spectra: Covariances,
    example_input: Tensor | None = None,
    graph: ModelGraph | None = None,
    prefix: str = "",
    seed: int = 0,
    kept: Mapping[str, Tensor] | None = None,
    reconstruct: bool = True,
    eps: float = EPS,
) -> nn.Module:
    """A copy of trained ``model`` with its channel groups at ``widths``, weights inherited.

    ``spectra`` are the model's own (map ``<prefix><module>:<side>``, checked by
    :func:`check_spectra`). A shrinking group keeps :func:`select_channels` on
    :func:`group_covariance` (within the conv groups of a grouped consumer) in every
    member; each channel-mixing consumer gets ``W_K + W_D A`` from the covariance of its own
    ``:in`` map (the group's where that is not collected or is flattened), so depthwise
    convs pass the correction to the consumer after them. A growing group keeps its weights
    in place; new producer rows come from ``reset_parameters()`` under ``seed``, new norm
    entries are 1 / 0 (running mean 0, variance 1), and old rows read new channels with
    weight 0. Unchanged groups keep their weights exactly. ``kept`` overrides the selection
    of named groups (a baseline's channels), ``reconstruct=False`` keeps ``W_K`` only;
    ``eps`` is the relative ridge of :func:`reconstruction` (SPEC: 1e-6).
    """
    if example_input is None:
        example_input = torch.zeros(1, 3, 224, 224)
    graph = graph or trace_model(model, example_input)
    new_widths = check_group_widths(graph, widths)
    check_spectra(model, spectra, prefix)
    modules = dict(model.named_modules())
    changed = [g for g in graph.groups if new_widths[g.name] != g.width]
    shrinking = [g for g in changed if new_widths[g.name] < g.width]
    tensors = read_tensors(model, example_input, [c for g in shrinking for c in g.consumers])
    plans = {g.name: _Plan(g.width, new_widths[g.name]) for g in changed}
    for group in shrinking:
        plans[group.name] = _shrink_plan(group, new_widths[group.name], spectra, modules,
                                         prefix, tensors, (kept or {}).get(group.name),
                                         reconstruct, eps)  # fmt: skip
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        resized = resize(model, new_widths, example_input, graph=graph)
    with torch.no_grad():
        _inherit(model, resized, [g for g in graph.groups if g.name in plans], plans)
    return resized


def _conv_groups(modules: Mapping[str, nn.Module], group: ChannelGroup) -> int:
    """The finest partition of the group's channels by its grouped (not depthwise) convs."""
    count = 1
    for name in group.consumers:
        m = modules[name]
        if isinstance(m, nn.Conv2d) and m.groups > 1 and not _is_depthwise(m):
            count = math.lcm(count, m.groups)
    return count


def _shrink_plan(
    group: ChannelGroup,
    width: int,
    spectra: Covariances,
    modules: Mapping[str, nn.Module],
    prefix: str,
    tensors: Mapping[str, int],
    kept: Tensor | None,
    reconstruct: bool,
    eps: float,
) -> _Plan:
    sigma = group_covariance(group, spectra, modules, prefix, tensors)
    blocks = _conv_groups(modules, group)
    if blocks > 1 and width % blocks:
        raise EigenarchError(
            f"channel group {group.name!r}: width {width} cannot keep the same number of "
            f"channels in each of its {blocks} conv groups (use a multiple of {blocks})"
        )
    if kept is None:
        kept = select_channels(sigma, width, blocks)
    else:
        kept = _check_kept(group, width, kept, blocks)
    plan = _Plan(group.width, width, kept)
    for consumer in _mixing(modules, group):
        module = modules[consumer]
        conv_groups = module.groups if isinstance(module, nn.Conv2d) else 1
        if not reconstruct:
            plan.mix[consumer] = mixing_matrix(torch.eye(group.width), kept, conv_groups)
            continue
        name = f"{prefix}{consumer}:in"
        own = spectra.covariance(name) if name in spectra.names else sigma
        plan.mix[consumer] = mixing_matrix(own, kept, conv_groups, eps)
    flattened = [c for c in group.consumers if c not in plan.mix and not _is_depthwise(modules[c])]
    for consumer in flattened:  # a linear layer on a flattened map: every position alike
        source = sigma if reconstruct else torch.eye(group.width)
        plan.mix[consumer] = mixing_matrix(source, kept, eps=eps)
    return plan


def _check_kept(group: ChannelGroup, width: int, kept: Tensor, blocks: int) -> Tensor:
    kept = torch.as_tensor(kept, dtype=torch.long).flatten()
    size = group.width // blocks
    counts = torch.bincount(kept // size, minlength=blocks) if len(kept) else kept
    if (
        len(kept) != width
        or len(kept.unique()) != width
        or kept.min() < 0
        or kept.max() >= group.width
        or (counts != width // blocks).any()
    ):
        raise EigenarchError(
            f"kept channels of group {group.name!r}: expected {width} distinct indices in "
            f"0..{group.width - 1}, {width // blocks} in each of its {blocks} conv group(s)"
        )
    return kept.sort().values


def _inherit(old: nn.Module, new: nn.Module, groups: list[ChannelGroup], plans: dict) -> None:
    """Write ``old``'s weights into the freshly resized ``new``, group by group."""
    olds, news = dict(old.named_modules()), dict(new.named_modules())
    out_of = {p: plans[g.name] for g in groups for p in g.producers}
    in_of = {c: (plans[g.name], g.width) for g in groups for c in g.consumers}
    for name in dict.fromkeys([*out_of, *in_of]):
        reads = in_of.get(name)
        _inherit_layer(name, olds[name], news[name], out_of.get(name), reads)
    old_params, new_params = dict(old.named_parameters()), dict(new.named_parameters())
    for group in groups:
        plan = plans[group.name]
        for norm in group.norms:
            _inherit_norm(olds[norm], news[norm], plan)
        for pname, dim in group.parameters:
            new_params[pname].copy_(_out(old_params[pname], plan, dim, new_params[pname]))


def _inherit_layer(
    name: str,
    old: nn.Module,
    new: nn.Module,
    out_plan: _Plan | None,
    reads: tuple[_Plan, int] | None,
) -> None:
    depthwise = _is_depthwise(old)
    grouped = isinstance(old, nn.Conv2d) and old.groups > 1 and not depthwise
    if isinstance(old, nn.ConvTranspose2d) and old.groups > 1:
        raise EigenarchError(f"{name}: a grouped transposed conv cannot inherit its weights")
    in_dim, out_dim = (0, 1) if isinstance(old, nn.ConvTranspose2d) else (1, 0)
    weight, fresh = old.weight.detach(), new.weight.detach()
    if grouped:
        weight, fresh = _dense(weight, old.groups), _dense(fresh, new.groups)
    if reads is not None and not depthwise:
        plan, width = reads
        weight = _in(weight, plan, in_dim, weight.shape[in_dim] // width, name)
    if out_plan is not None:
        weight = _out(weight, out_plan, out_dim, fresh)
    if grouped:
        weight = _grouped(weight, new.groups, name)
    new.weight.copy_(weight)
    if old.bias is not None:
        bias = old.bias if out_plan is None else _out(old.bias, out_plan, 0, new.bias)
        new.bias.copy_(bias)


def _in(weight: Tensor, plan: _Plan, dim: int, positions: int, name: str) -> Tensor:
    """Input columns: ``W @ M`` (shrink) or zeros for the new channels (growth), for each of
    the ``positions`` a flattened map has per channel."""
    weight = weight.unflatten(dim, (plan.old, positions))
    if plan.kept is not None:
        weight = _mix(weight, plan.mix[name], dim)
    else:
        shape = list(weight.shape)
        shape[dim] = plan.new - plan.old
        weight = torch.cat([weight, weight.new_zeros(shape)], dim)
    return weight.flatten(dim, dim + 1)


def _out(tensor: Tensor, plan: _Plan, dim: int, fresh: Tensor) -> Tensor:
    """Output entries: the kept ones (shrink) or the old ones and then ``fresh``'s last."""
    tensor = tensor.detach()
    if plan.kept is not None:
        return tensor.index_select(dim, plan.kept.to(tensor.device))
    return torch.cat([tensor, fresh.detach().narrow(dim, plan.old, plan.new - plan.old)], dim)


def _inherit_norm(old: nn.Module, new: nn.Module, plan: _Plan) -> None:
    for name, tensor in [*new.named_parameters(recurse=False), *new.named_buffers(recurse=False)]:
        source = getattr(old, name)
        if tensor.dim() == 1 and tensor.shape[0] == plan.new and source.shape[0] == plan.old:
            tensor.copy_(_out(source, plan, 0, tensor))
        else:
            tensor.copy_(source)


def _dense(weight: Tensor, groups: int) -> Tensor:
    """A grouped conv's ``(out, in / groups, ...)`` weight as ``(out, in, ...)``, zero
    across conv groups."""
    out, per, *kernel = weight.shape
    diagonal = torch.arange(groups)
    dense = weight.new_zeros(groups, out // groups, groups, per, *kernel)
    dense[diagonal, :, diagonal] = weight.reshape(groups, out // groups, per, *kernel)
    return dense.reshape(out, per * groups, *kernel)


def _grouped(dense: Tensor, groups: int, name: str) -> Tensor:
    """The inverse of :func:`_dense`; refuses weights that would cross the new conv groups."""
    out, channels, *kernel = dense.shape
    per, diagonal = channels // groups, torch.arange(groups)
    blocks = dense.reshape(groups, out // groups, groups, per, *kernel).clone()
    weight = blocks[diagonal, :, diagonal].reshape(out, per, *kernel)
    blocks[diagonal, :, diagonal] = 0
    if blocks.any():
        raise EigenarchError(
            f"{name}: the kept channels of its old conv groups do not fill whole new conv groups "
            f"of {per} (choose a width whose channels per old conv group divide {per})"
        )
    return weight
