"""What a backbone is: one type every kind implements, the kinds in one registry, one parser.

A :class:`Backbone` is a frozen description that builds the same network anywhere: a
ResiaNet's nine widths (:class:`~eigenarch.models.resianet.ResiaNetBackbone`), any traced
builder with per-group widths (:class:`~eigenarch.models.builders.BuilderBackbone`), a DetNAS
path (:mod:`eigenarch.nas` adds its kind). Every kind says how to build it, what it costs,
its searched widths, how to scale it and how to search it; its JSON form carries
``"format"``, which :func:`backbone_from_dict` dispatches on (detectron2's
``BACKBONE_REGISTRY``, as a plain dict). :func:`parse_backbone` reads a ``--backbone`` /
``--model`` value of every command.
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_write_json, read_json_object
from eigenarch.models.norms import norm_layer
from eigenarch.widths.cost import DEFAULT_DEPTHS, ModelCost
from eigenarch.widths.fpn import pyramid
from eigenarch.widths.graph import LAYER_TYPES, ModelGraph, trace_model
from eigenarch.widths.inherit import EPS, Covariances, inherit_resize

if TYPE_CHECKING:
    from eigenarch.widths.ias import WidthSearchResult

EXAMPLE_SIZE = 224


class Backbone(ABC):
    """One backbone kind's description (a frozen dataclass in every kind).

    Override ``build``, ``cost``, ``searched_widths``, ``to_dict`` and ``from_dict``; ``scaled`` and
    ``search`` where the kind's widths can be resized; ``parse`` where a command-line text
    names one; ``with_fpn`` where the built body is not one torchvision's FPN can wrap.
    """

    #: The ``"format"`` of the kind's JSON form (``to_dict``), its key in the registry.
    format: ClassVar[str]
    source: dict[str, Any]
    #: ``"gn"``, ``"bn"``, ``"frozen_bn"``, or ``None``: the builder's own.
    norm: str | None

    @abstractmethod
    def build(self, num_classes: int = 1000) -> nn.Module:
        """The backbone as a classifier (3 x 224 x 224 in), freshly initialised."""

    @abstractmethod
    def cost(self) -> ModelCost:
        """MACs and params (SPEC section 4) of the classifier at 224 x 224."""

    @abstractmethod
    def searched_widths(self) -> list[int]:
        """One width per searched width (a ResiaNet's nine, else one per tie)."""

    def width_names(self) -> list[str] | None:
        """Names of :meth:`searched_widths` where the kind has fixed ones (a ResiaNet's)."""
        return None

    def scaled(
        self, multiplier: float, multiple: int, source: Mapping[str, Any] | None = None
    ) -> Backbone:
        """The width-multiplier baseline: every width ``R(multiplier * w)`` (SPEC 6)."""
        raise EigenarchError(f"{self.describe()}: its widths cannot be scaled")

    def search(
        self,
        dims: Mapping[str, object],
        target: float | str,
        metric: str = "macs",
        multiple: int = 32,
        side: str = "in",
        source: Mapping[str, Any] | None = None,
        channels: Mapping[str, int] | None = None,
    ) -> tuple[WidthSearchResult, Backbone]:
        """Intrinsic Architecture Search of this (the analysed) backbone to ``target`` (a
        number, or ``"base"``: this backbone's cost): the result and the backbone found
        (same kind and norm, ``source`` recorded). ``channels`` (map name -> width, from
        the spectra) tells which body level each FPN lateral reads."""
        raise EigenarchError(f"{self.describe()}: its widths cannot be searched")

    def export_base(self) -> dict[str, Any]:
        """The network of torchvision or timm, at its own widths, that this backbone resizes:
        what :func:`eigenarch.models.standalone.base_model` builds (``{"kind", ...}``)."""
        raise EigenarchError(
            f"{self.describe()}: built from eigenarch's own modules, which torchvision / timm "
            "alone cannot rebuild; it cannot be exported"
        )

    def unresized(self) -> Backbone:
        """The network whose widths this one resizes (what a bench compares it with)."""
        raise EigenarchError(f"{self.describe()}: no base network of its own; name one")

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with ``"format"`` (ResiaNet: without, as the paper's files)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, obj: Mapping[str, Any], what: str) -> Backbone:
        """The kind from its JSON form; one-line errors name ``what`` and the field."""

    @classmethod
    def parse(cls, text: str, options: BackboneOptions) -> Backbone | None:
        """The kind named by a command-line ``text``, or ``None`` if it names no such kind."""
        return None

    def with_fpn(
        self, fpn_channels: int = 256, gn_groups: int = 32, fpn_norm: str | None = "gn"
    ) -> BackboneWithFPN:
        """The body with an FPN over its feature levels (``out_channels``), normalised by
        ``fpn_norm`` (``None``: no norm, torchvision's R-CNN builders)."""
        return body_with_fpn(self.build(), fpn_channels, gn_groups, fpn_norm)

    def inherit(
        self,
        trained: nn.Module,
        target: Backbone,
        spectra: Covariances,
        prefix: str = "",
        seed: int = 0,
        kept: Mapping[str, torch.Tensor] | None = None,
        reconstruct: bool = True,
        eps: float = EPS,
    ) -> nn.Module:
        """``trained`` (this backbone as :meth:`build` or :meth:`with_fpn` makes it, with
        trained weights) at ``target``'s widths, its weights inherited (SPEC section 6c).

        ``spectra`` are ``trained``'s own maps, named ``<prefix><module>:<side>`` (a
        detector's: ``prefix="backbone."``). Each channel group takes the width of its first
        producer in ``target`` built the same way (a body with an FPN: the FPN's laterals
        are consumers of the body's last groups and get their correction too; the FPN's own
        groups keep their widths). A ``target`` of another kind, other depths or another
        builder is refused in one line. ``seed``, ``kept``, ``reconstruct`` and ``eps``: see
        :func:`eigenarch.widths.inherit.inherit_resize`.
        """
        if type(target) is not type(self):
            raise EigenarchError(f"cannot resize {self.describe()} ({self.format}) into "
                                 f"{target.describe()} ({target.format}): another kind of "
                                 "backbone")  # fmt: skip
        example = torch.zeros(1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE)
        graph = trace_model(trained, example, name=self.describe())
        reference = _built_like(target, trained, example)
        widths = _target_widths(graph, reference, target.describe())
        resized = inherit_resize(trained, widths, spectra, example, graph, prefix, seed, kept,
                                 reconstruct, eps)  # fmt: skip
        _check_shapes(resized, reference, target.describe())
        return resized

    def describe(self) -> str:
        """A short name for messages."""
        return str(self.source.get("name") or self.format)

    def with_source(self, source: Mapping[str, Any]) -> Backbone:
        """The same backbone with another provenance."""
        return dataclasses.replace(self, source=dict(source))  # type: ignore[type-var]

    def save(self, path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None) -> Path:
        """Atomically write the JSON form (plus ``extra`` fields, e.g. a search's results);
        reading it back ignores the extra fields."""
        obj = self.to_dict()
        obj.update((k, v) for k, v in (extra or {}).items() if k not in obj)
        return atomic_write_json(path, obj)


@dataclasses.dataclass(frozen=True)
class BackboneOptions:
    """What a command line adds to a backbone named by text: the norm (``None``: the
    kind's default), GroupNorm groups, ResNet depths, and whether a builder keeps its own
    norm (a cost needs none)."""

    norm: str | None = None
    gn_groups: int = 32
    depths: Sequence[int] = DEFAULT_DEPTHS
    own_norm: bool = False


#: ``format`` -> kind, in registration order (the order :func:`parse_backbone` asks them).
BACKBONE_KINDS: dict[str, type[Backbone]] = {}
#: The entry-point group of backbone kinds that are not in :mod:`eigenarch.models`.
ENTRY_POINTS = "eigenarch.backbones"
#: The kind a JSON object without ``"format"`` is (the paper's ResiaNet width specs).
DEFAULT_FORMAT = "eigenarch.resianet"
Kind = TypeVar("Kind", bound=type[Backbone])


def register_backbone(kind: Kind) -> Kind:
    """Class decorator: add a backbone kind to :data:`BACKBONE_KINDS` under its ``format``."""
    if kind.format in BACKBONE_KINDS and BACKBONE_KINDS[kind.format] is not kind:
        raise ValueError(f"backbone format {kind.format!r} is registered twice")
    BACKBONE_KINDS[kind.format] = kind
    return kind


def backbone_kind(format: object) -> type[Backbone] | None:
    """The kind registered for ``format``; one a layer above (DetNAS) or another package
    adds is loaded on first use from the ``eigenarch.backbones`` entry points
    (``"format" = "module:Kind"`` in its ``pyproject.toml``)."""
    if format not in BACKBONE_KINDS and isinstance(format, str):
        for point in entry_points(group=ENTRY_POINTS, name=format):
            register_backbone(point.load())
    return BACKBONE_KINDS.get(format)  # type: ignore[arg-type]


def backbone_from_dict(obj: Mapping[str, Any] | Backbone, what: str = "backbone") -> Backbone:
    """The backbone a JSON object describes, by its ``"format"`` (none: a ResiaNet)."""
    if isinstance(obj, Backbone):
        return obj
    if not isinstance(obj, Mapping):
        raise EigenarchError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    kind = backbone_kind(obj.get("format", DEFAULT_FORMAT))
    if kind is None:
        raise EigenarchError(f"{what}: format {obj.get('format')!r} is not a backbone kind; "
                             f"expected one of {', '.join(BACKBONE_KINDS)}")  # fmt: skip
    return kind.from_dict(obj, what)


def load_backbone(path: str | os.PathLike[str], what: str = "width spec") -> Backbone:
    """The backbone of a JSON file (a width spec, a DetNAS network)."""
    return backbone_from_dict(read_json_object(path, what), f"{what} {path}")


def parse_backbone(
    text: str | os.PathLike[str] | Backbone | Mapping[str, Any],
    options: BackboneOptions | None = None,
) -> Backbone:
    """A ``--backbone`` / ``--model`` value: an existing JSON file (a width spec or a DetNAS
    network), else the first kind whose ``parse`` takes the text (``"resnet50"`` and nine
    comma-separated widths: a ResiaNet; a builder name or ``file.py:factory``: a builder,
    whose refusal says what the text may be)."""
    if isinstance(text, Backbone | Mapping):
        return backbone_from_dict(text)
    options = options or BackboneOptions()
    if Path(text).is_file():
        found = load_backbone(text)
        if options.norm not in (None, found.norm) and not options.own_norm:  # the file's wins
            own = found.norm or "its builder's"
            raise EigenarchError(f"--backbone {text}: the width spec sets its own normalisation "
                                 f"({own}): --norm {options.norm} does not apply")  # fmt: skip
        return found
    for kind in BACKBONE_KINDS.values():
        found = kind.parse(str(text), options)
        if found is not None:
            return found
    raise EigenarchError(f"--backbone {text!r}: not a backbone")  # no kind parses text


def _built_like(target: Backbone, trained: nn.Module, example: torch.Tensor) -> nn.Module:
    """``target`` built as ``trained`` was: with an FPN of its width, or as a classifier of
    its classes."""
    if isinstance(trained, BackboneWithFPN):
        return target.with_fpn(trained.out_channels, *fpn_norm(trained))
    training = trained.training
    with torch.no_grad():
        classes = trained.eval()(example).shape[-1]
    trained.train(training)
    return target.build(classes)


def _target_widths(graph: ModelGraph, reference: nn.Module, target: str) -> dict[str, int]:
    """Each group's width in ``reference``: that of its producers there, which must exist
    and agree."""
    modules = dict(reference.named_modules())
    widths = {}
    for group in graph.groups:
        found = set()
        for name in group.producers:
            module = modules.get(name)
            if not isinstance(module, LAYER_TYPES):
                raise EigenarchError(f"{target} has no layer {name} of the analysed model's "
                                     f"group {group.name!r} (other depths or another "
                                     "builder?)")  # fmt: skip
            found.add(module.out_features if isinstance(module, nn.Linear) else module.out_channels)
        if len(found) > 1:
            raise EigenarchError(f"{target}: the layers of channel group {group.name!r} have "
                                 f"widths {sorted(found)}; expected one")  # fmt: skip
        widths[group.name] = found.pop()
    return widths


def _check_shapes(resized: nn.Module, reference: nn.Module, target: str) -> None:
    """Refuse a resized model whose weights do not have ``reference``'s names and shapes."""
    own, wanted = resized.state_dict(), reference.state_dict()
    for key in dict.fromkeys([*own, *wanted]):
        if key not in own or key not in wanted or own[key].shape != wanted[key].shape:
            found = tuple(own[key].shape) if key in own else "none"
            expected = tuple(wanted[key].shape) if key in wanted else "none"
            raise EigenarchError(f"resizing by channel groups does not reach {target}: {key} "
                                 f"would be {found}, {target} has {expected}")  # fmt: skip


# --- feature levels and the FPN over them -------------------------------------------------


def _stride(t: object) -> int | None:
    """The stride of a square ``(B, C, H, W)`` map of the 224-pixel forward (not of a
    channels-last one)."""
    square = torch.is_tensor(t) and t.dim() == 4 and t.shape[-1] == t.shape[-2]
    return EXAMPLE_SIZE // t.shape[-1] if square else None


class _Strides:
    """One forward's record of where a model leaves its strides: for each stride (4 and up)
    the tensor the first module leaving it reads (``leaving``: stride -> (entry, tensor)),
    the tensor the last pooling module reads (``pooled``: [stride, entry, tensor]), and the
    outermost module that returned each tensor and its channels."""

    def __init__(self) -> None:
        self.channels: dict[str, int] = {}
        self.seen: list[object] = []  # keeps every tensor alive, so ids stay unique
        self.producer: dict[int, str] = {}
        self.calls: dict[str, list[tuple[int, object]]] = {}
        self.leaving: dict[int, tuple[int, torch.Tensor]] = {}
        self.pooled: list = []

    def pre(self, name: str) -> Callable:
        def hook(module, args):
            self.seen.append(args[0] if args else None)
            self.calls.setdefault(name, []).append((len(self.seen), self.seen[-1]))

        return hook

    def post(self, name: str) -> Callable:
        def hook(module, args, output):
            entry, x = self.calls[name].pop()
            self.seen.append(output)
            if torch.is_tensor(output):
                self.producer[id(output)] = name
                self.channels[name] = output.shape[1] if output.dim() > 1 else 0
            s_in, s_out = _stride(x), _stride(output)
            if not s_in or not 4 <= s_in < EXAMPLE_SIZE or s_out == s_in:
                return
            if s_out is not None and s_in < s_out < EXAMPLE_SIZE:  # downsampling: the first
                if s_in not in self.leaving or entry < self.leaving[s_in][0]:
                    self.leaving[s_in] = (entry, x)
            elif s_out is None or s_out == EXAMPLE_SIZE:  # pooled: the last (the classifier's)
                if not self.pooled or entry > self.pooled[1]:
                    self.pooled[:] = [s_in, entry, x]

        return hook

    def levels(self) -> list[tuple[str | None, int]]:
        """``(module, channels)`` of the tensor read on leaving each stride, in order."""
        leaving = dict(self.leaving)
        if self.pooled and self.pooled[0] > max(leaving, default=0):
            leaving[self.pooled[0]] = (self.pooled[1], self.pooled[2])
        return [(self.producer.get(id(t)), t.shape[1]) for _, (_, t) in sorted(leaving.items())]


def _watch_strides(model: nn.Module) -> _Strides:
    """Where ``model`` leaves its strides, from a 224-pixel forward in eval mode (its
    train / eval mode is restored afterwards)."""
    strides, handles, training = _Strides(), [], model.training
    for name, m in model.named_modules():
        if name:
            handles += [m.register_forward_pre_hook(strides.pre(name)),
                        m.register_forward_hook(strides.post(name))]  # fmt: skip
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE))
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    return strides


def feature_levels(model: nn.Module, levels: int = 4) -> tuple[list[str], list[int]]:
    """``(module names, channels)`` of the feature maps an FPN reads, from a 224-pixel
    forward (channels as they are, after any resizing).

    A model's own ``stage_names``, or the last ``levels`` modules of a timm model's
    ``feature_info`` (those ``features_only=True`` returns); else, for each of the last
    ``levels`` strides (4 and up) the tensor that the first module leaving that stride (a
    stage's strided block, or the classifier's pooling) reads, named by the outermost
    module that returned it (``layer2``, ``features.6``, ``trunk_output.block3``).
    """
    strides = _watch_strides(model)
    declared = _declared_levels(model, levels)
    if declared:
        return declared, [strides.channels[n] for n in declared]
    chosen = strides.levels()[-levels:]
    if len(chosen) < levels or any(name is None for name, _ in chosen):
        raise EigenarchError(f"{type(model).__name__}: fewer than {levels} feature levels")
    return [n for n, _ in chosen], [c for _, c in chosen]


def _declared_levels(model: nn.Module, levels: int) -> list[str] | None:
    """The feature levels a model names itself: ``stage_names``, or timm's ``feature_info``
    (``[{"module", "num_chs", "reduction"}, ...]``, finest first)."""
    if hasattr(model, "stage_names"):
        return list(model.stage_names)
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and len(info) >= levels and all("module" in i for i in info):
        return [i["module"] for i in info[-levels:]]
    return None


#: The FPN norms :func:`body_with_fpn` builds, by module type (:func:`fpn_norm`).
_FPN_NORMS = {nn.GroupNorm: "gn", nn.BatchNorm2d: "bn", FrozenBatchNorm2d: "frozen_bn"}


def fpn_norm(features: BackboneWithFPN) -> tuple[int, str | None]:
    """``(gn_groups, fpn_norm)`` of the FPN of ``features``, as :func:`body_with_fpn` takes
    them: its first norm's kind (``None``: no norm) and GroupNorm groups (else 32)."""
    for module in features.fpn.modules():
        if type(module) in _FPN_NORMS:
            return getattr(module, "num_groups", 32), _FPN_NORMS[type(module)]
    return 32, None


def body_with_fpn(
    body: nn.Module, fpn_channels: int = 256, gn_groups: int = 32, fpn_norm: str | None = "gn"
) -> BackboneWithFPN:
    """Any backbone ``body`` with an FPN over its feature levels (``out_channels =
    fpn_channels``), normalised by ``fpn_norm`` (:func:`~eigenarch.models.norms.norm_layer`'s
    names; ``None``: none, the conv biases instead), its convs Glorot-uniform.

    The levels are the body's ``stage_names`` / ``stage_channels`` (a ResiaNet's
    ``layer1..layer4``; DetNet's five stages, whose last FPN level is P6 and no max-pooled
    level is added), else the last module at each of its last four strides
    (:func:`feature_levels`).
    """
    if hasattr(body, "stage_channels") and not hasattr(body, "stage_names"):
        names, channels = ["layer1", "layer2", "layer3", "layer4"], list(body.stage_channels)
    else:
        names, channels = feature_levels(body)
    norm = None if fpn_norm is None else norm_layer(fpn_norm, gn_groups)
    backbone = pyramid(body, names, channels, fpn_channels, LastLevelMaxPool(), norm)
    if len(names) == 5:  # DetNet: P6 is the FPN level of stage 6, no max-pooled level
        backbone.fpn.extra_blocks = None
    for module in backbone.fpn.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return backbone
