"""What ``eigenarch resize`` does: a trained checkpoint (ours, or a torchvision R-CNN's of
another code base) on a width spec's widths, its weights inherited from the covariances of
its own maps (SPEC section 6c), written as a checkpoint that ``eigenarch train --init``
takes."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from eigenarch.errors import EigenarchError
from eigenarch.io import load_torch_fields
from eigenarch.models.backbone import Backbone, backbone_from_dict, fpn_norm, load_backbone
from eigenarch.models.detector import (
    TORCHVISION_KINDS,
    build_detector,
    check_factory_detector,
    inherit_detector,
)
from eigenarch.models.factory import is_factory
from eigenarch.spectrum.spectra import Spectra
from eigenarch.spectrum.stream import build_model
from eigenarch.train.checkpoint import (
    CLASSIFIER_FORMAT,
    DETECTOR_FORMAT,
    detector_from_config,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from eigenarch.train.loop import TrainConfig, model_config


@dataclass(frozen=True)
class Resized:
    """A checkpoint ``resize`` wrote: ``kind`` ``"detector"`` or ``"classifier"``, the
    analysed backbone and the one it now has."""

    out: Path
    kind: str
    source: Backbone
    target: Backbone


def resize_checkpoint(
    spec: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    spectra: str | os.PathLike[str],
    out: str | os.PathLike[str],
    force: bool = False,
    seed: int = 0,
    model: str | None = None,
) -> Resized:
    """Resize the detector (or classifier) of ``checkpoint`` to the backbone of the width
    spec ``spec``, inheriting its weights with ``spectra`` (its own maps), and write it
    atomically to ``out`` (an existing file only with ``force``).

    ``checkpoint`` is one of ours (it keeps its format, with the new backbone in its config
    and ``"inherited"`` saying from what), or with ``model`` (one of
    :data:`~eigenarch.models.detector.TORCHVISION_KINDS`, or a factory of such an R-CNN) a
    checkpoint of torchvision's reference scripts or a bare state dict of that detector, on
    the base network of ``spec``: written as a detector checkpoint of ours of that kind."""
    out = Path(out)
    if out.exists() and not force:
        raise EigenarchError(f"--out {out}: already exists; give --force to overwrite it")
    target = load_backbone(spec)
    if model is None:
        trained = _ours(checkpoint, target)
    else:
        trained = _theirs(checkpoint, model, spec, target)
    covariances = Spectra.load(spectra)
    detector = trained.payload["format"] == DETECTOR_FORMAT
    if detector:
        resized = inherit_detector(trained.model, trained.source, target, covariances, seed)
        fresh = build_detector(**trained.config)  # its factory checked where it was read
    else:
        resized = trained.source.inherit(trained.model, target, covariances, seed=seed)
        fresh = target.build(trained.config["num_classes"])
    state = resized.state_dict()
    load_weights(fresh, state, out, "model its config builds")  # what train and evaluate build
    written: dict[str, Any] = {
        **trained.payload,
        "config": trained.config,
        "model": state,
        "inherited": {
            "from": str(checkpoint),
            "spectra": str(spectra),
            "backbone": trained.source.to_dict(),
            **trained.position,
            "seed": seed,
        },
    }
    save_checkpoint(out, written)
    return Resized(out, "detector" if detector else "classifier", trained.source, target)


@dataclass(frozen=True)
class _Trained:
    """A trained model to resize: its checkpoint's fields to keep (``format`` among them),
    the config of the resized model, the analysed backbone, the model with its weights and
    where its training stood (``{"iteration": ...}`` or ``{"model": NAME, "epoch": ...}``)."""

    payload: dict[str, Any]
    config: dict[str, Any]
    source: Backbone
    model: nn.Module
    position: dict[str, Any]


def _ours(checkpoint: str | os.PathLike[str], target: Backbone) -> _Trained:
    """A detector checkpoint of ``eigenarch train`` or a classifier of ``pretrain``."""
    payload = load_checkpoint(checkpoint, (DETECTOR_FORMAT, CLASSIFIER_FORMAT))
    config = payload["config"]
    source = backbone_from_dict(config.get("backbone"), f"{checkpoint}: config 'backbone'")
    kept = {k: v for k, v in payload.items() if k != "optimizer"}
    new_config = {**config, "backbone": target.to_dict()}
    position = {"iteration": payload.get("iteration")}
    if payload["format"] == DETECTOR_FORMAT:
        model = detector_from_config(config, checkpoint)
        load_weights(model, payload["model"], checkpoint, "detector of its config")
        kept.update(train={**payload["train"], "backbone": target.to_dict()}, iteration=0)
        return _Trained(kept, new_config, source, model, position)
    classes = config.get("num_classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise EigenarchError(f"{checkpoint}: config 'num_classes' {classes!r}: expected an "
                             "integer >= 1")  # fmt: skip
    model = source.build(classes)
    load_weights(model, payload["model"], checkpoint, "classifier of its config")
    return _Trained(kept, new_config, source, model, position)


def _theirs(
    checkpoint: str | os.PathLike[str], name: str, spec: str | os.PathLike[str], target: Backbone
) -> _Trained:
    """A detector of the torchvision builder ``name`` in ``checkpoint`` (a checkpoint of
    torchvision's reference scripts or a bare state dict), whose backbone must be the base
    network of the width spec ``spec`` (``target``)."""
    if name not in TORCHVISION_KINDS and not is_factory(name):
        raise EigenarchError(f"--model {name}: resize takes the detector of a torchvision "
                             f"R-CNN builder on ResNet-50 ({', '.join(TORCHVISION_KINDS)}) or "
                             "of file.py:factory, which eigenarch train can rebuild on new "
                             "widths")  # fmt: skip
    model, _ = build_model(name, 91, None, checkpoint)  # the classes: the file's heads
    if is_factory(name):
        check_factory_detector(model, name, "--model")
    source = target.unresized()
    base = source.with_fpn(model.backbone.out_channels, *fpn_norm(model.backbone))
    load_weights(base, model.backbone.state_dict(), f"{name}'s backbone (in {checkpoint})",
                 f"base network of {spec} ({source.describe()}, norm {source.norm})")  # fmt: skip
    fields = load_torch_fields(checkpoint, "checkpoint or state dict")
    fields = fields if isinstance(fields, dict) else {}
    args = fields.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else {}
    data = args.get("data_path") if isinstance(args.get("data_path"), str) else None
    transform = model.transform
    train = TrainConfig(data=data or "", out="", kind=name, backbone=target.to_dict(),
                        min_size=transform.min_size[0], max_size=transform.max_size)  # fmt: skip
    classes = model.roi_heads.box_predictor.cls_score.out_features
    settings = {**train.to_dict(), "data": data}  # None: not known (evaluate asks for --data)
    payload = {"format": DETECTOR_FORMAT, "train": settings, "data": {}, "iteration": 0}
    epoch = fields.get("epoch") if type(fields.get("epoch")) is int else None
    position = {"model": name, "epoch": epoch}
    return _Trained(payload, model_config(train, classes), source, model, position)
