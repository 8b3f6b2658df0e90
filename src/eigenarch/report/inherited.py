"""What ``eigenarch resize`` does: a trained checkpoint on a width spec's widths, its weights
inherited from the covariances of its own maps (SPEC section 6c), written as a checkpoint
that ``eigenarch train --init`` takes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eigenarch.errors import EigenarchError
from eigenarch.models.backbone import Backbone, backbone_from_dict, load_backbone
from eigenarch.models.detector import inherit_detector
from eigenarch.spectrum.spectra import Spectra
from eigenarch.train.checkpoint import (
    CLASSIFIER_FORMAT,
    DETECTOR_FORMAT,
    detector_from_config,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)


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
) -> Resized:
    """Resize the detector (or classifier) of ``checkpoint`` to the backbone of the width
    spec ``spec``, inheriting its weights with ``spectra`` (its own maps), and write it
    atomically to ``out`` (an existing file only with ``force``). The checkpoint keeps its
    format, with the new backbone in its config and ``"inherited"`` saying from what."""
    out = Path(out)
    if out.exists() and not force:
        raise EigenarchError(f"--out {out}: already exists; give --force to overwrite it")
    target = load_backbone(spec)
    payload = load_checkpoint(checkpoint, (DETECTOR_FORMAT, CLASSIFIER_FORMAT))
    config = payload["config"]
    source = backbone_from_dict(config.get("backbone"), f"{checkpoint}: config 'backbone'")
    covariances = Spectra.load(spectra)
    detector = payload["format"] == DETECTOR_FORMAT
    new_config = {**config, "backbone": target.to_dict()}
    if detector:
        model = detector_from_config(config)
        load_weights(model, payload["model"], checkpoint, "detector of its config")
        resized = inherit_detector(model, source, target, covariances, seed)
        fresh = detector_from_config(new_config)
    else:
        classes = config.get("num_classes")
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise EigenarchError(f"{checkpoint}: config 'num_classes' {classes!r}: expected an "
                                 "integer >= 1")  # fmt: skip
        model = source.build(classes)
        load_weights(model, payload["model"], checkpoint, "classifier of its config")
        resized = source.inherit(model, target, covariances, seed=seed)
        fresh = target.build(classes)
    state = resized.state_dict()
    load_weights(fresh, state, out, "model its config builds")  # what train and evaluate build
    written: dict[str, Any] = {
        **{k: v for k, v in payload.items() if k != "optimizer"},
        "config": new_config,
        "model": state,
        "inherited": {
            "from": str(checkpoint),
            "spectra": str(spectra),
            "backbone": source.to_dict(),
            "iteration": payload.get("iteration"),
            "seed": seed,
        },
    }
    if detector:
        written["train"] = {**payload["train"], "backbone": target.to_dict()}
        written["iteration"] = 0
    save_checkpoint(out, written)
    return Resized(out, "detector" if detector else "classifier", source, target)
