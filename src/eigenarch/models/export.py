"""A resized backbone to take away: the folder ``eigenarch export`` writes.

``export_backbone(spec, out)`` writes into ``out``:

- ``model.safetensors`` -- the backbone's state dict (as a classifier, 3 x 224 x 224 in), its
  shapes those of the spec; the weights of ``--weights`` where given (the rest fresh);
- ``spec.json`` -- the spec, plus an ``"export"`` section: the torchvision / timm network it
  resizes and a per-layer table of what differs from it (module attributes, tensor shapes);
- ``timm_model.txt`` -- for a timm network that timm's own per-layer shape format expresses
  (:mod:`eigenarch.models.timm_format`), its model string: ``adapt_model_from_string(
  timm.create_model(NAME), text)`` is the network, and build.py builds it so;
- ``build.py`` -- :mod:`eigenarch.models.standalone`, which rebuilds the ``nn.Module`` from
  ``spec.json`` with torchvision / timm alone;
- ``model.onnx`` -- the backbone with its FPN (``torch.onnx.export``, the TorchScript
  exporter), one named output per FPN level (``fpn.0`` ... ``fpn.pool``), checked with
  ``onnx.checker`` and run with onnxruntime against PyTorch to :data:`ONNX_TOLERANCE`;
- ``detector.onnx`` where asked: the whole Faster / Mask R-CNN (fresh heads).

The folder appears whole or not at all (written in a temporary folder beside it, then renamed).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eigenarch.errors import EigenarchError
from eigenarch.io import current_umask, make_folder, unwritable_as_error
from eigenarch.models import standalone
from eigenarch.models.backbone import Backbone, body_with_fpn, parse_backbone
from eigenarch.models.detector import KINDS, build_detector
from eigenarch.models.weights import load_backbone_weights

#: Largest error of an ONNX output allowed, relative to the largest magnitude of PyTorch's.
ONNX_TOLERANCE = 1e-4
#: The ONNX opset written (torchvision's detection ops export from 11 up).
ONNX_OPSET = 17
#: The image the ONNX files are traced with, and the other size they are checked at
#: (the inputs' height and width are dynamic axes).
TRACE_SIZE, CHECK_SIZE = (224, 224), (160, 256)
_PLAIN = (bool, int, float, str, type(None))
#: The file of timm's model string (``adapt_model_from_string``), beside ``spec.json``.
TIMM_MODEL = "timm_model.txt"
#: Reorders PyTorch's outputs to pair with onnxruntime's: ``pair(onnxruntime's, PyTorch's)``.
Pairing = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], list[torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_backbone` wrote: the folder, its files, how many tensors came from
    the weights file and which stayed fresh, and each ONNX file's relative error."""

    out: Path
    files: list[str]
    loaded: int
    fresh: list[str]
    onnx_errors: dict[str, float]


def shape_table(base: nn.Module, model: nn.Module) -> tuple[dict[str, dict], dict[str, list]]:
    """What differs from ``base`` in ``model`` (the same network resized): ``(modules,
    tensors)`` -- for each module the plain attributes (ints, floats, strings, tuples) that
    changed, for each parameter and buffer its new shape. A module or tensor of one network
    that the other lacks is an error."""
    base_modules, modules = dict(base.named_modules()), {}
    for name, module in model.named_modules():
        other = base_modules.get(name)
        if other is None:
            raise EigenarchError(f"module {name or 'root'!r} ({type(module).__name__}) is not "
                                 "in the torchvision / timm network it resizes")  # fmt: skip
        mine, theirs = vars(module), vars(other)
        changed = {k: list(v) if isinstance(v, tuple) else v for k, v in mine.items()
                   if k in theirs and k != "training" and not k.startswith("_")
                   and _plain(v) and v != theirs[k]}  # fmt: skip
        if changed:
            modules[name] = changed
    ours, theirs = _tensors(model), _tensors(base)
    if ours.keys() != theirs.keys():
        odd = sorted(ours.keys() ^ theirs.keys())
        raise EigenarchError(f"tensor {odd[0]!r} is in only one of the network and the "
                             "torchvision / timm network it resizes")  # fmt: skip
    tensors = {k: list(t.shape) for k, t in ours.items() if t.shape != theirs[k].shape}
    return modules, tensors


def _plain(value: object) -> bool:
    if isinstance(value, tuple):
        return all(isinstance(v, _PLAIN) for v in value)
    return isinstance(value, _PLAIN)


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def export_backbone(
    spec: Backbone | str | os.PathLike[str],
    out: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    force: bool = False,
    detector: str | None = None,
    num_classes: int = 91,
    detector_options: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Write the export folder ``out`` of ``spec`` (a backbone or a ``--backbone`` text,
    e.g. a width-spec file; see the module docstring); ``weights``: a
    checkpoint or state dict file (torch, ``weights_only=True``; or safetensors) whose
    backbone tensors are loaded by name; ``detector``: also ``detector.onnx`` of that kind
    (``num_classes`` with background; ``detector_options`` go to
    :func:`~eigenarch.models.detector.build_detector`). An existing non-empty ``out`` is
    refused unless ``force``."""
    out, spec = Path(out), parse_backbone(spec)
    _check_out(out, force)
    if detector is not None and detector not in KINDS:
        raise EigenarchError(f"--detector {detector!r}: expected one of {', '.join(KINDS)}")
    spec.export_base()  # a kind build.py cannot rebuild is refused before any work
    body = spec.build()
    fresh = sorted(body.state_dict())
    if weights is not None:
        info = load_backbone_weights(body, weights, "--weights")  # never loads fc.*
        fresh = sorted({*info["missing"], *(k for k in fresh if k.startswith("fc."))})
    table = portable_table(spec, body)
    state = {k: v.detach().contiguous().clone() for k, v in body.state_dict().items()}
    make_folder(out.parent)
    with unwritable_as_error(out):
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export", dir=out.parent))
    try:
        onnx = {"model.onnx": _backbone_onnx(body, tmp / "model.onnx")}
        if detector is not None:
            onnx["detector.onnx"] = _detector_onnx(body, detector, num_classes,
                                                   tmp / "detector.onnx",
                                                   **(detector_options or {}))  # fmt: skip
        section = {"base": dict(table.base), "modules": table.modules, "tensors": table.tensors,
                   "weights": None if weights is None else str(weights), "fresh": fresh,
                   "onnx": onnx}  # fmt: skip
        if table.base["kind"] == "timm":
            section["timm_model"] = None if table.timm_model is None else TIMM_MODEL
            section["not_timm"] = table.not_timm
        with unwritable_as_error(out):
            from safetensors.torch import save_file

            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            if table.timm_model is not None:
                # no final newline: adapt_model_from_string reads the last shape up to its end
                (tmp / TIMM_MODEL).write_text(table.timm_model, "utf-8")
            spec.save(tmp / "spec.json", {"export": section})
            shutil.copyfile(standalone.__file__, tmp / "build.py")
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's is 0700
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    errors = {name: entry["max_relative_error"] for name, entry in onnx.items()}
    return ExportResult(out, sorted(p.name for p in out.iterdir()), len(state) - len(fresh),
                        fresh, errors)  # fmt: skip


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EigenarchError(f"--out {out}: is a file; expected a folder to write")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise EigenarchError(f"--out {out}: folder exists and is not empty; give another "
                             "--out or --force to replace it")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PortableTable:
    """What build.py needs to rebuild a body: the base network (:meth:`Backbone.export_base`),
    for a timm one its model string where timm's ``adapt_model_from_string`` rebuilds the
    body (``timm_model``; else why not: ``not_timm``), and :func:`shape_table` against that."""

    base: dict[str, Any]
    modules: dict[str, dict]
    tensors: dict[str, list]
    timm_model: str | None = None
    not_timm: str | None = None


def portable_table(spec: Backbone, body: nn.Module) -> PortableTable:
    """What build.py needs to rebuild ``body`` (``spec`` built), checked: build.py's network
    takes ``body``'s state dict with ``strict=True`` and computes its outputs exactly."""
    base, name = spec.export_base(), spec.describe()
    try:
        portable = standalone.base_model(base)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise EigenarchError(f"{name}: build.py cannot build its base network: {exc}") from None
    timm_model, not_timm = None, None
    if base["kind"] == "timm":
        from eigenarch.models.timm_format import timm_resized  # it imports shape_table

        adapted, text = timm_resized(portable, body)
        portable, timm_model, not_timm = ((portable, None, text) if adapted is None
                                          else (adapted, text, None))  # fmt: skip
    try:
        modules, tensors = shape_table(portable, body)
    except EigenarchError as exc:
        raise EigenarchError(f"{name}: {exc}; it cannot be exported") from None
    standalone.adapt(portable, modules, tensors)
    portable.load_state_dict(body.state_dict(), strict=True)
    example = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(portable.eval()(example), body.eval()(example))
    body.train()
    if not same:
        raise EigenarchError(f"{name}: build.py's network computes other outputs than "
                             "eigenarch's; it cannot be exported")  # fmt: skip
    return PortableTable(base, modules, tensors, timm_model, not_timm)


def _fpn_outputs(model: nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return dict(model(image))


def _backbone_onnx(body: nn.Module, path: Path) -> dict[str, Any]:
    """The body with its FPN as ONNX at ``path``, one output per level: its inputs, outputs,
    opset and relative error."""
    model = body_with_fpn(body).eval()
    keys = list(_fpn_outputs(model, torch.zeros(1, 3, *TRACE_SIZE)))
    names = [f"fpn.{k}" for k in keys]
    axes = {"image": {0: "batch", 2: "height", 3: "width"}} | {n: {0: "batch"} for n in names}
    _onnx_export(model, (torch.zeros(1, 3, *TRACE_SIZE),), path, names, axes)
    image = torch.randn(2, 3, *CHECK_SIZE, generator=torch.Generator().manual_seed(1))
    expected = _fpn_outputs(model, image)
    body.train()
    return _onnx_entry(path, image, names, [expected[k] for k in keys])


def _in_order_of(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """PyTorch's detections (boxes, labels, scores, masks) reordered to pair with
    onnxruntime's: each with the one of its label whose box is nearest. Scores of random
    heads lie close enough that the two runtimes can sort near-ties apart."""
    boxes, labels = got[0], got[1]
    distance = (boxes[:, None, :] - want[0][None, :, :]).abs().amax(-1)
    distance[labels[:, None] != want[1][None, :]] = float("inf")
    order = distance.argmin(1) if len(want[0]) else torch.zeros(0, dtype=torch.long)
    return [w[order] for w in want]


def _detector_onnx(
    body: nn.Module, kind: str, num_classes: int, path: Path, **options: Any
) -> dict[str, Any]:
    """The whole detector over the body as ONNX (one image in; boxes, labels, scores and,
    for Mask R-CNN, masks out), its score threshold 0 (the top 100 detections, so that the
    check compares boxes, not an empty list); its entry, checked on another image size."""
    size = {"min_size": TRACE_SIZE[0], "max_size": max(TRACE_SIZE + CHECK_SIZE)}
    options = {"box_score_thresh": 0.0, **size, **options}
    model = build_detector(kind, body, num_classes, **options).eval()
    names = ["boxes", "labels", "scores"] + (["masks"] if kind == "mask_rcnn" else [])
    axes = {"image": {1: "height", 2: "width"}} | {n: {0: "detections"} for n in names}
    _onnx_export(model, ([torch.rand(3, *TRACE_SIZE)],), path, names, axes)
    image = torch.rand(3, *CHECK_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        found = model([image])[0]
    body.train()
    return _onnx_entry(path, image, names, [found[n] for n in names], _in_order_of)


def _onnx_export(
    model: nn.Module, args: tuple, path: Path, outputs: Sequence[str], axes: dict
) -> None:
    """``torch.onnx.export`` with the TorchScript exporter: torch.export's (``dynamo=True``)
    cannot export a torchvision detector (a data-dependent guard in its post-processing),
    and takes ten times as long on a backbone (docs/export.md)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning, UserWarning))
        torch.onnx.export(model, args, str(path), input_names=["image"], output_names=list(outputs),
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)  # fmt: skip


def _onnx_entry(
    path: Path,
    image: torch.Tensor,
    names: list[str],
    expected: Sequence[torch.Tensor],
    pair: Pairing | None = None,
) -> dict[str, Any]:
    """The ``spec.json`` entry of an ONNX file, checked (:func:`check_onnx`)."""
    error = check_onnx(path, image, expected, pair)
    return {"inputs": ["image"], "outputs": names, "opset": ONNX_OPSET,
            "max_relative_error": error}  # fmt: skip


def check_onnx(
    path: Path, image: torch.Tensor, expected: Sequence[torch.Tensor], pair: Pairing | None = None
) -> float:
    """``onnx.checker`` on ``path``, then onnxruntime on ``image``: the largest error of an
    output relative to the largest magnitude of PyTorch's (``expected``, in order, or as
    ``pair(onnxruntime's, expected)`` reorders it); over :data:`ONNX_TOLERANCE`, or another
    shape, is an error."""
    import onnx
    import onnxruntime

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        first = (str(exc).strip().splitlines() or ["?"])[0]
        raise EigenarchError(f"{path.name}: onnx.checker refuses it: {first}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    found = [torch.from_numpy(o) for o in session.run(None, {"image": image.numpy()})]
    shapes = [tuple(o.shape) for o in found] == [tuple(w.shape) for w in expected]
    if pair is not None and shapes:
        expected = pair(found, expected)
    worst = 0.0
    for output, got, want in zip(session.get_outputs(), found, expected, strict=True):
        if tuple(got.shape) != tuple(want.shape):
            raise EigenarchError(f"{path.name}: output {output.name} has shape "
                                 f"{tuple(got.shape)} in onnxruntime, {tuple(want.shape)} in "
                                 "PyTorch")  # fmt: skip
        if want.numel():
            scale = float(want.abs().max())
            error = float((got.double() - want.double()).abs().max())
            worst = max(worst, error / scale if scale else error)
    if worst > ONNX_TOLERANCE:
        raise EigenarchError(f"{path.name}: onnxruntime's outputs differ from PyTorch's by "
                             f"{worst:.2e} (relative), over {ONNX_TOLERANCE:g}")  # fmt: skip
    return worst


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` onto ``out`` (an existing one is removed after)."""
    old = None
    with unwritable_as_error(out):
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
