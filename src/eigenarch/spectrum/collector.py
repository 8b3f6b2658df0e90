"""Streaming covariance of every feature map of a PyTorch model (SPEC section 3).

:class:`SpectrumCollector` hooks every ``Conv2d``, ``Linear`` and ``ConvTranspose2d`` of a
model and accumulates, per map, the non-centred, resolution-normalised covariance

    Sigma = 1/n * sum_i 1/(W_i H_i) * sum_{x,y} F_{i,x,y} F_{i,x,y}^T

while the user runs forward passes. Products are float32 (float64 for maps narrower than
:data:`NARROW`) accumulated in place into a per-map buffer (on the CPU, upper triangle only);
the buffer is added into the float64 running sum after :data:`FLUSH_EVERY` hook calls and
whenever spectra are read. The ``:out`` map of a bias-free 1x1, stride-1, widening ``Conv2d``
is ``y = W x`` at every position, so its sum is ``W S_in W^T``: when its ``:in`` map is
collected too and that is cheaper, it is derived from the (then float64) ``:in`` sum instead
of multiplied (:class:`_Derivation`). Layers used through their weight rather than called
are seen by :mod:`eigenarch.spectrum.functional`. A map wider than ``max_channels`` may be
sketched instead of skipped (``sketch_rank``: :mod:`eigenarch.spectrum.sketch`).
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import partial

import torch
import torch.distributed as dist
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from eigenarch.errors import EigenarchError
from eigenarch.options import MAP_SIDES
from eigenarch.spectrum.blas import gemm, syrk
from eigenarch.spectrum.functional import (
    LayerCall,
    UncollectedMapsWarning,
    WeightUses,
    missed_note,
)
from eigenarch.spectrum.sketch import FrequentDirections
from eigenarch.spectrum.spectra import Sketched, Spectra
from eigenarch.spectrum.team import side_by_side

#: Module types whose input and output maps are collected (and their subclasses).
HOOKED_TYPES = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)
#: Hook calls a map's float32 buffer takes before it is added into the float64 sum.
FLUSH_EVERY = 16
#: Maps narrower than this (an RGB input, logits) are multiplied in float64: their float32
#: products lose accuracy over many positions, and cost next to nothing either way.
NARROW = 16
#: On the CPU, a product is split into one row panel of the upper triangle per torch thread
#: (panels of equal work, none under this many rows), each a single-thread BLAS ``syrk`` of
#: its diagonal block and ``gemm`` of the block right of it, run side by side (see
#: :class:`_Triangle`).
MIN_PANEL = 16
#: A ``:out`` map is derived from its ``:in`` map only if the float64 ``W S W^T`` at the end
#: costs no more than multiplying this many samples of the map would (the collector's
#: ``images`` when given: the samples the caller will stream).
DERIVE_PAYBACK_SAMPLES = 8
#: ... and only if the output is this close (relative, Frobenius) to an exact ``W x``: the
#: derived and multiplied sums then differ by under about half of it.
DERIVE_TOLERANCE = 1e-6


class _Triangle:
    """The upper triangle of a ``(C, C)`` sum of products, held as row panels.

    Panel ``i`` covers rows ``[a, b)``: its diagonal block (upper triangle) and the block
    right of it, each a contiguous tensor of its own, so that BLAS adds into them in place.
    The panels have equal work (``bounds`` from :func:`_panel_bounds`). On the CPU a product
    is, per panel, one single-thread BLAS ``syrk`` of the diagonal block and one ``gemm`` of
    the right one: exactly half the work of a full product, the panels side by side on
    torch's own threads (:mod:`eigenarch.spectrum.team`; BLAS's own threads and torch's
    OpenMP ones slow each other down several times when both busy-wait on the same cores).
    On other devices one panel and full products (there, launches cost more than flops).
    """

    def __init__(
        self, channels: int, dtype: torch.dtype, device: torch.device, panels: int = 1
    ) -> None:
        self.bounds = _panel_bounds(channels, panels if device.type == "cpu" else 1)
        pairs = list(zip(self.bounds[:-1], self.bounds[1:], strict=True))
        self.diagonal = [torch.zeros(b - a, b - a, dtype=dtype, device=device) for a, b in pairs]
        self.right = [
            torch.zeros(b - a, channels - b, dtype=dtype, device=device) for a, b in pairs
        ]

    @property
    def dtype(self) -> torch.dtype:
        return self.diagonal[0].dtype

    @property
    def device(self) -> torch.device:
        return self.diagonal[0].device

    def add_grams(self, terms: Sequence[tuple[Tensor, float]]) -> None:
        """``+= alpha * matrix @ matrix.T`` for every ``(matrix, alpha)`` of ``terms``, each
        matrix ``(C, K)`` of any strides; on the CPU, one parallel region for them all."""
        terms = [(matrix.detach().to(self.dtype), alpha) for matrix, alpha in terms]
        if self.device.type != "cpu":
            for matrix, alpha in terms:
                self.diagonal[0].addmm_(matrix, matrix.T, alpha=alpha)
        else:
            side_by_side([partial(self._panel, i, terms) for i in range(len(self.right))])

    def _panel(self, i: int, terms: Sequence[tuple[Tensor, float]]) -> None:
        start, stop = self.bounds[i], self.bounds[i + 1]
        for matrix, alpha in terms:
            syrk(self.diagonal[i], matrix[start:stop], alpha)
            if stop < self.bounds[-1]:
                gemm(self.right[i], matrix[start:stop], matrix[stop:], alpha)

    def add_(self, other: _Triangle) -> None:
        """``+= other``, a triangle of the same ``bounds``."""
        for block, addend in zip(self.diagonal + self.right, other.diagonal + other.right,
                                 strict=True):  # fmt: skip
            block.add_(addend)

    def add_to(self, total: Tensor) -> None:
        """Add the sum into the upper triangle of the ``(C, C)`` tensor ``total``."""
        for start, stop, diagonal, right in zip(self.bounds, self.bounds[1:], self.diagonal,
                                                self.right, strict=False):  # fmt: skip
            total[start:stop, start:stop].add_(diagonal)
            total[start:stop, stop:].add_(right)

    def zero_(self) -> None:
        for block in self.diagonal + self.right:
            block.zero_()


def _panel_bounds(channels: int, panels: int) -> list[int]:
    """Row bounds of up to ``panels`` panels of the upper triangle with equal work (at least
    :data:`MIN_PANEL` rows each on average): the triangle below row ``r`` holds
    ``(C - r)^2 / 2`` entries, so panel ``i`` starts at ``C (1 - sqrt(1 - i / n))``."""
    n = max(1, min(panels, channels // MIN_PANEL))
    return [round(channels * (1 - math.sqrt(1 - i / n))) for i in range(n)] + [channels]


@dataclass
class _Map:
    """Running state of one feature map."""

    name: str
    channels: int
    spatial: bool  # a conv map (N, C, H, W); otherwise a Linear's (..., C) rows
    rows_only: bool  # inside a detector's RoI heads: every row is one sample
    total: Tensor | None = None  # float64 running sum (upper triangle)
    buffer: _Triangle | None = None  # float32 products not yet added into ``total``
    pending: int = 0  # hook calls in ``buffer``
    samples: int = 0
    # Does another map consume this map's tensors (so its products are kept for reuse)?
    # None until known: products are kept meanwhile.
    shared: bool | None = None
    spare: list[_Triangle] = field(default_factory=list)  # product buffers no longer kept
    derivation: _Derivation | None = None  # for a ``:out`` map that may be derived
    float64: bool = False  # products in float64 (the source of a derived map)
    sketch_rank: int = 0  # > 0: a Frequent Directions sketch of this rank instead of a sum
    sketch: FrequentDirections | None = None

    def new_buffer(self, like: Tensor) -> _Triangle:
        exact = like.dtype == torch.float64 or self.channels < NARROW or self.float64
        dtype = torch.float64 if exact else torch.float32
        return _Triangle(self.channels, dtype, like.device, torch.get_num_threads())

    def product_buffer(self, like: Tensor) -> _Triangle:
        """A zeroed buffer for a product to keep: a spare one if any (no new allocation)."""
        if not self.spare:
            return self.new_buffer(like)
        product = self.spare.pop()
        product.zero_()
        return product

    def commit(self, samples: int) -> None:
        self.samples += samples
        self.pending += 1
        if self.pending >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.pending == 0:
            return
        if self.total is None:
            self.total = _zeros(self.channels, self.buffer.device)
        self.buffer.add_to(self.total)
        self.buffer.zero_()
        self.pending = 0

    def running_sum(self) -> tuple[Tensor | None, int]:
        """The float64 sum so far as a full symmetric matrix (``None`` if no sample), and the
        sample count."""
        if self.derivation is not None and self.derivation.active:  # no product of its own yet
            return self.derivation.running_sum()
        self.flush()
        return (_symmetric(self.total) if self.total is not None else None), self.samples


@dataclass
class _Derivation:
    """The ``:out`` map of a bias-free 1x1, stride-1, widening ``nn.Conv2d`` from its ``:in``.

    Such a conv computes ``y = W x`` at every position of every sample, and its two maps
    share valid regions and sample counts, so the ``:out`` sum is ``W S_in W^T`` (float64,
    when the sum is read) instead of a product of every output. The source (``:in``) map's
    products are then taken in float64: ``W S_in W^T`` would otherwise carry ``S_in``'s
    float32 rounding, which ``W`` magnifies where it nearly cancels ``S_in``'s main
    directions (the mean of non-centred post-ReLU inputs); with ``2 C_in <= C_out`` that
    costs a fraction of the ``C_out``-wide product it replaces.

    Decided on the module's first call: float32 / float64 maps and weight, samples in it,
    the collector's hook the module's first forward hook (no other hook can change what it
    sees), the output within :data:`DERIVE_TOLERANCE` of an exact (float64) ``conv2d(x, W)``,
    and the final product no dearer than ``payback`` samples' products.
    The weight is copied then. Every later call checks the module (its weight against the
    copy, ``.data`` writes included; bias, stride, hooks) and the maps' layout; on any
    difference the derived sum so far is made permanent and products take over.
    """

    source: _Map  # the same conv's ``:in`` map
    payback: int = DERIVE_PAYBACK_SAMPLES  # samples whose products may cost the final one
    hook_id: int | None = None  # the collector's forward hook on the module, while attached
    active: bool | None = None  # None until the first call
    weight: Tensor | None = None  # exact copy of the weight the derived sum uses

    def follows(
        self, target: _Map, module: nn.Conv2d, inputs: Tensor | None, output: object
    ) -> bool:
        """Is this call's output covered by the derived sum? (Call before adding ``inputs``.)"""
        if self.active is False:
            return False
        if not (
            _derivable_module(module)
            and _first_hook(module, self.hook_id)
            and _linear_layout(module, inputs, output)
        ):
            self._end(target)
        elif self.active is None:
            pays = _derivation_pays(module, output, self.payback)
            self.active = pays and _output_is_conv(module, inputs, output)
            if self.active:
                self.weight = module.weight.detach().clone()
                self.source.float64 = True  # before its first product
        elif not torch.equal(module.weight.detach(), self.weight):
            self._end(target)
        return self.active

    def running_sum(self) -> tuple[Tensor | None, int]:
        """``W S_in W^T`` over the source's samples so far, and their number."""
        total, samples = self.source.running_sum()
        if total is None:
            return None, samples
        weight = self.weight.reshape(self.weight.shape[:2]).to(total.device, torch.float64)
        return weight @ total @ weight.T, samples

    def _end(self, target: _Map) -> None:
        """Add the derived sum (if any) into ``target`` for good; products take over."""
        if self.active:
            derived, samples = self.running_sum()
            if derived is not None:
                if target.total is None:
                    target.total = _zeros(target.channels, derived.device)
                target.total.add_(derived)
            target.samples += samples
        self.active, self.weight = False, None


@dataclass
class _Padding:
    """The image batch of the current detector forward: padded size and image sizes."""

    height: int
    width: int
    sizes: list[tuple[int, int]]


@dataclass
class _Seen:
    """A tensor already multiplied (while it lives), by which map, and its product if kept."""

    ref: weakref.ref
    version: int
    first: _Map
    product: _Triangle | None
    samples: int
    reused: bool = False


class SpectrumCollector:
    """Accumulate the covariance of every conv / linear / transposed-conv map of ``model``.

    Use as a context manager around any forward passes: hooks are attached on entry and
    removed on exit, and nothing else about the model changes. Inside the ``with``, float32
    matmuls run at full precision (``torch.set_float32_matmul_precision("highest")``, so
    that no product is TF32 / bf16; the model's own matmuls too), and the caller's setting
    is back on exit; no hook changes it. torchvision detectors' padding is found from their
    ``GeneralizedRCNNTransform``; padded positions never enter the sums. A layer whose
    weight the model passes to ``F.linear`` / ``F.conv2d`` / ``F.conv_transpose2d`` itself
    (torchvision's Swin attention) counts those calls as its own; any other use of its weight
    without calling it is named in :attr:`missed` and one warning on exit (torch functions
    pass through a ``TorchFunctionMode`` inside the ``with``:
    :class:`~eigenarch.spectrum.functional.WeightUses`). Read the result with
    :meth:`spectra` (inside or after the ``with``).

    Args:
        model: any ``nn.Module``.
        include: ``fnmatch`` patterns over module paths or map names (``"backbone.body.*"``,
            ``"*:in"``); ``None`` collects every hooked module.
        sides: which maps to collect, a non-empty subset of ``("in", "out")``.
        max_channels: maps wider than this are skipped with a warning unless ``include``
            names them exactly (module path or map name); ``None`` means no limit.
        sketch_rank: where positive, maps wider than ``max_channels`` are sketched at this
            rank instead of skipped (Frequent Directions: lower-bound eigenvalues, memory
            ``O(rank C)``); a rank at least ``C`` is exact.
        derive: compute the ``:out`` map of a bias-free 1x1, stride-1, widening ``Conv2d``
            whose ``:in`` map is collected as ``W S_in W^T`` where that is cheaper (see
            :class:`_Derivation`); ``False`` multiplies every map's own tensors.
        images: how many samples (images) each process will stream, if known (e.g.
            ``--images``): a derivation is taken where its cost per read pays back within
            them; ``None`` assumes :data:`DERIVE_PAYBACK_SAMPLES`.
    """

    def __init__(
        self,
        model: nn.Module,
        include: Sequence[str] | None = None,
        sides: Iterable[str] = ("in", "out"),
        max_channels: int | None = 4096,
        derive: bool = True,
        images: int | None = None,
        sketch_rank: int = 0,
    ) -> None:
        sides = tuple(sides)
        if sketch_rank < 0:
            raise EigenarchError(f"sketch_rank {sketch_rank}: expected >= 0 (0: skip wide maps)")
        if not sides or any(s not in MAP_SIDES for s in sides):
            raise EigenarchError(f"sides {sides!r}: expected a non-empty subset of ('in', 'out')")
        if images is not None and images < 1:
            raise EigenarchError(f"images {images}: expected >= 1 (or None when not known)")
        self.payback = DERIVE_PAYBACK_SAMPLES if images is None else images
        self.model = model
        self.include = [include] if isinstance(include, str) else include
        self.sides = sides
        self.max_channels = max_channels
        self.derive = derive
        self.sketch_rank = sketch_rank
        #: Maps left out for being wider than ``max_channels``: name -> channels.
        self.skipped: dict[str, int] = {}
        #: Maps selected but left out because their module is never called (see
        #: :func:`unhookable_modules`), in module order.
        self.unhooked: list[str] = []
        #: Maps whose layer's weight the model used other than by calling the layer or its
        #: ``F.linear`` / ``F.conv2d`` / ``F.conv_transpose2d`` (see
        #: :class:`~eigenarch.spectrum.functional.WeightUses`): name -> the function; said
        #: in one warning on leaving the ``with``.
        self.missed: dict[str, str] = {}
        self._uses: WeightUses | None = None
        self._maps: dict[str, _Map] = {}
        self._layers: list[tuple[nn.Module, _Map | None, _Map | None]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._blas_threads: threadpool_limits | None = None
        self._precision: str | None = None  # the caller's float32 matmul precision
        self._padding: _Padding | None = None
        self._seen: dict[int, _Seen] = {}
        self._select()

    @property
    def names(self) -> list[str]:
        """The collected map names, in module order."""
        return list(self._maps)

    @property
    def sketched(self) -> list[str]:
        """The maps wider than ``max_channels`` collected as sketches, in module order."""
        return [n for n, s in self._maps.items() if s.sketch_rank]

    @property
    def derived(self) -> list[str]:
        """The ``:out`` maps whose sums are derived from their ``:in`` maps now (decided on
        a module's first call; a map whose module changed since is multiplied again, its sum
        keeping the derived part)."""
        return [n for n, s in self._maps.items() if s.derivation and s.derivation.active]

    def _select(self) -> None:
        roi = tuple(f"{p}." for p, m in self.model.named_modules() if isinstance(m, RoIHeads))
        never_called = unhookable_modules(self.model)
        for path, module in self.model.named_modules():
            if not isinstance(module, HOOKED_TYPES):
                continue
            if isinstance(module, nn.Linear):
                widths = {"in": module.in_features, "out": module.out_features}
            else:
                widths = {"in": module.in_channels, "out": module.out_channels}
            spatial, rows_only = not isinstance(module, nn.Linear), path.startswith(roi)
            pair = []
            for side in MAP_SIDES:
                name = f"{path}:{side}"
                chosen = side in self.sides and (
                    self.include is None
                    or any(fnmatchcase(path, p) or fnmatchcase(name, p) for p in self.include)
                )
                too_wide = self.max_channels is not None and widths[side] > self.max_channels
                explicit = name in (self.include or ()) or path in (self.include or ())
                if chosen and path in never_called:
                    self.unhooked.append(name)
                    chosen = False
                sketched = chosen and too_wide and not explicit and self.sketch_rank > 0
                if chosen and too_wide and not explicit and not sketched:
                    self.skipped[name] = widths[side]
                    chosen = False
                state = _Map(name, widths[side], spatial, rows_only) if chosen else None
                if state is not None:
                    state.sketch_rank = self.sketch_rank if sketched else 0
                    self._maps[name] = state
                pair.append(state)
            exact = pair[0] and pair[1] and not (pair[0].sketch_rank or pair[1].sketch_rank)
            if exact and self.derive and _derivable_module(module):
                pair[1].derivation = _Derivation(pair[0], self.payback)
            if pair[0] or pair[1]:
                self._layers.append((module, pair[0], pair[1]))
        if not self._maps:
            what = f"include patterns {self.include}" if self.include else "the model"
            unhooked = f"; {unhooked_note(self.unhooked)}" if self.unhooked else ""
            raise EigenarchError(
                f"{what}: no Conv2d, Linear or ConvTranspose2d map to collect "
                f"(sides {self.sides}, max_channels {self.max_channels}){unhooked}"
            )
        if self.unhooked:
            warnings.warn(unhooked_note(self.unhooked), stacklevel=3)
        if self.skipped:
            listed = ", ".join(f"{n} ({c})" for n, c in list(self.skipped.items())[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            warnings.warn(
                f"skipped {len(self.skipped)} map(s) wider than max_channels="
                f"{self.max_channels}: {listed}{more}; name them in include to collect them",
                stacklevel=3,
            )

    def __enter__(self) -> SpectrumCollector:
        if self._handles:
            raise EigenarchError("this SpectrumCollector is already attached (nested `with`?)")
        self._handles.append(self.model.register_forward_pre_hook(self._on_forward))
        for module in self.model.modules():
            if isinstance(module, GeneralizedRCNNTransform):
                self._handles.append(module.register_forward_hook(self._on_transform))
        calls = []
        for module, map_in, map_out in self._layers:
            hook = self._layer_hook(map_in, map_out)
            handle = module.register_forward_hook(hook)
            self._handles.append(handle)
            if map_out is not None and map_out.derivation is not None:
                map_out.derivation.hook_id = handle.id
            calls.append((module, _functional_call(hook, map_out)))
        self._uses = WeightUses(self.model, calls)
        self._handles.extend(self._uses.attach())  # after the layer hooks: those stay first
        self._uses.__enter__()
        # Our products are single-thread BLAS calls, side by side on our own threads.
        self._blas_threads = threadpool_limits(1, user_api="blas")
        self._precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # our float32 products never TF32 / bf16
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for handle in self._handles:
                handle.remove()
        finally:
            self._handles.clear()
            if self._uses is not None:
                self._uses.__exit__(None, None, None)
                self._note_missed(self._uses.missed)
                self._uses = None
            if self._blas_threads is not None:
                self._blas_threads.restore_original_limits()
                self._blas_threads = None
            if self._precision is not None:
                torch.set_float32_matmul_precision(self._precision)
                self._precision = None
            self._padding = None
            self._seen.clear()

    def _note_missed(self, layers: dict[nn.Module, str]) -> None:
        """Record (and warn of) the maps of ``layers`` the model used without calling them."""
        found = {
            state.name: layers[module]
            for module, *pair in self._layers
            if module in layers
            for state in pair
            if state is not None and state.name not in self.missed
        }
        if found:
            self.missed.update(found)
            warnings.warn(missed_note(found), UncollectedMapsWarning, stacklevel=3)

    def _on_forward(self, module: nn.Module, args: tuple) -> None:
        self._padding = None
        for key in list(self._seen):
            self._forget(key)

    def _on_transform(self, module: nn.Module, args: tuple, output: tuple) -> None:
        image_list = output[0]
        height, width = image_list.tensors.shape[-2:]
        self._padding = _Padding(height, width, [tuple(s) for s in image_list.image_sizes])

    def _layer_hook(self, map_in: _Map | None, map_out: _Map | None):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            with torch.inference_mode(False), torch.no_grad():  # our tensors: normal ones
                inputs = args[0] if args and isinstance(args[0], Tensor) else None
                derived = (  # decided before ``inputs`` enter the source map
                    map_out is not None
                    and map_out.derivation is not None
                    and map_out.derivation.follows(map_out, module, inputs, output)
                )
                if map_in is not None and inputs is not None:
                    self._accumulate(map_in, inputs)
                if map_out is not None and isinstance(output, Tensor) and not derived:
                    self._accumulate(map_out, output)

        return hook

    def _accumulate(self, state: _Map, tensor: Tensor) -> None:
        """Add ``tensor`` to ``state``; a tensor already multiplied for another map is reused.

        Tensors are recognised by identity and version counter while they live. Inference
        tensors have no version counter: they are multiplied for every map that reads them.
        A sketched map streams its rows into its sketch (nothing shared).
        """
        if state.sketch_rank:
            if state.sketch is None:
                state.sketch = FrequentDirections(state.channels, state.sketch_rank, tensor.device)
            state.samples += _multiply(state.sketch, tensor, state, self._padding)
            return
        if state.buffer is None:
            state.buffer = state.new_buffer(tensor)
        trackable = not tensor.is_inference()
        seen = self._seen.get(id(tensor)) if trackable else None
        changed = seen is not None and seen.version != tensor_version(tensor)
        if seen is not None and (seen.ref() is not tensor or changed):
            seen = None
        if seen is not None and seen.first is not state and _can_reuse(seen.first, state):
            seen.first.shared = True
            if seen.product is not None:
                seen.reused = True
                state.buffer.add_(seen.product)
                state.commit(seen.samples)
                return
        keep = trackable and seen is None and state.shared is not False
        product = state.product_buffer(tensor) if keep else state.buffer
        samples = _multiply(product, tensor, state, self._padding)
        if keep:
            state.buffer.add_(product)
        if trackable and seen is None:
            key = id(tensor)
            ref = weakref.ref(tensor, lambda ref: self._forget(key, ref))
            self._seen[key] = _Seen(ref, tensor_version(tensor), state, product if keep else None,
                                    samples)  # fmt: skip
        state.commit(samples)

    def _forget(self, key: int, ref: weakref.ref | None = None) -> None:
        """Drop a remembered tensor; a product nobody reused marks its map as not shared."""
        seen = self._seen.get(key)
        if seen is None or (ref is not None and seen.ref is not ref):
            return
        del self._seen[key]
        if seen.product is None:
            return
        if not seen.reused and seen.first.shared is None:
            seen.first.shared = False
        if seen.first.shared:
            seen.first.spare.append(seen.product)  # for the map's next kept product

    def flush(self) -> None:
        """Add every pending float32 product into the float64 sums."""
        for state in self._maps.values():
            state.flush()

    def spectra(self) -> Spectra:
        """The covariances so far; under ``torch.distributed``, summed over every rank.

        Sums and sample counts are all-reduced here (once per call, not per batch), so every
        rank gets the same result. Maps that saw no sample on any rank are left out. The
        collector's own state is unchanged: collection may go on afterwards. Sketches are
        gathered from every rank and merged (stacked and shrunk again, the shrinkages added).
        """
        states = list(self._maps.values())
        sums = [(None, s.samples) if s.sketch_rank else s.running_sum() for s in states]
        distributed = dist.is_available() and dist.is_initialized()
        device = _reduce_device(states) if distributed else torch.device("cpu")
        counts = torch.tensor([n for _, n in sums], dtype=torch.float64, device=device)
        if distributed:
            dist.all_reduce(counts)
        covariances, sketches, samples = {}, {}, {}
        for state, (total, _), count in zip(states, sums, counts.tolist(), strict=True):
            if state.sketch_rank:
                if count:
                    sketches[state.name] = _merged_sketch(state, device, distributed, count)
                    samples[state.name] = int(count)
                continue
            if distributed:
                if total is None:
                    total = torch.zeros(state.channels, state.channels, dtype=torch.float64)
                total = total.to(device, copy=True)
                dist.all_reduce(total)
            if count == 0:
                continue
            covariances[state.name] = total.cpu().div_(count)
            samples[state.name] = int(count)
        return Spectra(covariances, samples, sketches=sketches)


def unhookable_modules(model: nn.Module) -> set[str]:
    """Paths of hooked-type modules that the model never calls, so no hook can see their maps:
    the ``out_proj`` of every ``nn.MultiheadAttention`` (torch's attention, ``vit_b_16``'s
    ``self_attention`` included, multiplies by its weight directly)."""
    return {
        f"{path}.out_proj" if path else "out_proj"
        for path, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
    }


def unhooked_note(names: Sequence[str]) -> str:
    """The one line saying which selected maps cannot be collected, and why."""
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"cannot hook {len(names)} map(s): {listed} (torch's MultiheadAttention uses its "
        "out_proj weight without calling the module)"
    )


def _functional_call(
    hook: Callable[[nn.Module, tuple, object], None], map_out: _Map | None
) -> LayerCall:
    """What a functional call of a layer's weight (``F.linear(x, layer.weight)``) adds: as a
    call of the layer, its ``:out`` map multiplied (the call's own stride, padding and bias
    may differ from the layer's: no derived sum)."""

    def call(module: nn.Module, inputs: Tensor, output: Tensor) -> None:
        if map_out is not None and map_out.derivation is not None:
            map_out.derivation._end(map_out)
        hook(module, (inputs,), output)

    return call


def _multiply(
    out: _Triangle | FrequentDirections, tensor: Tensor, state: _Map, padding: _Padding | None
) -> int:
    """``out += sum_i 1/(W_i H_i) F_i F_i^T`` over the samples of ``tensor``; their number."""
    samples, terms = _terms(tensor, state, padding)
    if terms:
        out.add_grams(terms)
    return samples


def _terms(
    tensor: Tensor, state: _Map, padding: _Padding | None
) -> tuple[int, list[tuple[Tensor, float]]]:
    """The samples of ``tensor`` and the ``(C, K)`` matrices (with their weights) whose
    products make up its sum."""
    if not state.spatial:  # a Linear's (..., C) input or output: every row is a sample
        rows = tensor.reshape(-1, tensor.shape[-1])
        return rows.shape[0], [(rows.T, 1.0)] if rows.shape[0] else []
    if tensor.dim() == 3:  # an unbatched (C, H, W) conv map
        tensor = tensor.unsqueeze(0)
    batch, channels, height, width = tensor.shape
    images = padding is None or batch == len(padding.sizes)
    if state.rows_only or not images:
        # RoI features (R, C, h, w): every row is a sample of weight 1 / (h w).
        rows = tensor.movedim(1, -1).reshape(-1, channels).T
        return batch, [(rows, 1.0 / (height * width))] if batch else []
    if padding is None:  # whole images: one (C, H W) view each, one reshape for the batch
        views = tensor.reshape(batch, channels, height * width).unbind(0)
        return batch, [(image, 1.0 / (height * width)) for image in views]
    terms = []
    for i in range(batch):  # the valid, top-left region of image i
        image_h, image_w = padding.sizes[i]
        h = min(height, math.ceil(image_h * height / padding.height))
        w = min(width, math.ceil(image_w * width / padding.width))
        terms.append((tensor[i, :, :h, :w].reshape(channels, h * w), 1.0 / (h * w)))
    return batch, terms


def _merged_sketch(state: _Map, device: torch.device, distributed: bool, count: float) -> Sketched:
    """``state``'s sketch, merged over the ranks when ``distributed``, in ``Sigma``'s units
    (divided by the ``count`` samples of every rank); the rank's own stays a valid sketch."""
    own = state.sketch
    if own is None:
        rows, shrinkage = torch.zeros(state.sketch_rank, state.channels, dtype=torch.float64), 0.0
    else:
        rows, shrinkage = own.sketch(), own.shrinkage
    if distributed:
        rows = rows.to(device, copy=True)
        gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, rows)
        shrinkages = torch.tensor([shrinkage], dtype=torch.float64, device=device)
        dist.all_reduce(shrinkages)
        merged = FrequentDirections(state.channels, state.sketch_rank)
        for part in gathered:
            merged.add_rows(part.cpu())
        rows, shrinkage = merged.sketch(), merged.shrinkage + shrinkages.item()
    return Sketched(rows.cpu().div(math.sqrt(count)), shrinkage / count)


def _can_reuse(first: _Map, state: _Map) -> bool:
    """Can ``state`` take ``first``'s product of a tensor: same layout, no less precise?"""
    same_layout = (first.spatial, first.rows_only) == (state.spatial, state.rows_only)
    same_panels = first.buffer.bounds == state.buffer.bounds
    precise = first.buffer.dtype.itemsize >= state.buffer.dtype.itemsize
    return same_layout and same_panels and precise


def _zeros(channels: int, device: torch.device) -> Tensor:
    """A float64 running sum of ``channels`` channels, empty."""
    return torch.zeros(channels, channels, dtype=torch.float64, device=device)


def _symmetric(total: Tensor) -> Tensor:
    """The full matrix of a sum held in its upper triangle."""
    full = total.triu()
    return full.add_(full.T.tril(-1))


def _derivable_module(module: nn.Module) -> bool:
    """A plain bias-free 1x1, stride-1, ungrouped ``nn.Conv2d`` at least doubling the width."""
    return (
        type(module) is nn.Conv2d
        and "forward" not in vars(module)
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding in ((0, 0), "valid", "same")
        and module.groups == 1
        and module.bias is None
        and 2 * module.in_channels <= module.out_channels
    )


# --- torch internals ---------------------------------------------------------------------
# The collector relies on two private parts of torch, kept here and checked by
# tests/spectrum/test_collector.py::test_the_torch_internals_the_collector_relies_on:
# - ``Tensor._version``: a counter that every in-place write to the tensor increments (so a
#   map remembered for reuse is known to be unchanged);
# - ``Module._forward_hooks`` (an ordered dict from hook id to hook, in the order the hooks
#   run) and ``torch.nn.modules.module._global_forward_hooks`` (hooks on every module).


def tensor_version(tensor: Tensor) -> int:
    """How many in-place writes ``tensor`` has seen (torch's private ``_version``)."""
    return tensor._version


def _first_hook(module: nn.Module, hook_id: int | None) -> bool:
    """Is ``hook_id`` the first forward hook to see the module's output (no global ones)?"""
    hooks = module_hooks._global_forward_hooks
    return not hooks and next(iter(module._forward_hooks), None) == hook_id


def _linear_layout(module: nn.Conv2d, inputs: Tensor | None, output: object) -> bool:
    """Float32 / float64 ``(B, C, H, W)`` maps of one size and the weight's dtype."""
    return (
        inputs is not None
        and isinstance(output, Tensor)
        and inputs.dim() == output.dim() == 4
        and inputs.dtype == output.dtype == module.weight.dtype
        and inputs.dtype in (torch.float32, torch.float64)
        and inputs.shape[0] == output.shape[0]
        and inputs.shape[2:] == output.shape[2:]
    )


def _derivation_pays(module: nn.Conv2d, output: Tensor, payback: int) -> bool:
    """Is ``W S W^T`` per read no dearer than ``payback`` samples' syrk?"""
    c_out, c_in = module.weight.shape[:2]
    final = 2 * c_out * c_in * (c_in + c_out)  # float64: about twice a float32 multiply-add
    positions = output.shape[2] * output.shape[3]
    return final <= payback * c_out * c_out * positions / 2


def _output_is_conv(module: nn.Conv2d, inputs: Tensor, output: Tensor) -> bool:
    """Is the (non-empty, not all-zero) output within :data:`DERIVE_TOLERANCE` of an exact
    ``conv2d(inputs, W)``? Float64, sample by sample: reduced-precision convolutions (TF32 on
    GPUs) and float32 ones rounding much (a weight cancelling a large input mean) fail."""
    weight = module.weight.detach().double()
    error = exact = 0.0
    for i in range(output.shape[0]):
        expected = torch.nn.functional.conv2d(inputs[i : i + 1].double(), weight)
        error += (expected - output[i : i + 1]).square().sum().item()
        exact += expected.square().sum().item()
    return 0 < exact and error <= DERIVE_TOLERANCE**2 * exact


def _reduce_device(states: list[_Map]) -> torch.device:
    """Where to all-reduce: this rank's GPU for NCCL (where its sums are), else the CPU."""
    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    held = [s.total.device for s in states if s.total is not None]
    return held[0] if held else torch.device("cuda", torch.cuda.current_device())
