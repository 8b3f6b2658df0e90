"""Checkpoints: ``torch.save`` of plain dicts, written atomically, read with weights_only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from eigenarch.distributed import is_main
from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_path, load_torch
from eigenarch.models.detector import build_detector
from eigenarch.models.factory import check_trusted, is_factory
from eigenarch.progress import console
from eigenarch.train.rundir import RunDir

DETECTOR_FORMAT = "eigenarch.detector"
CLASSIFIER_FORMAT = "eigenarch.classifier"


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` with ``torch.save`` to a temporary file, then rename it.

    Written through a Python file, so that the archive's records are named ``archive/...``
    whatever the temporary file's name (the same payload gives the same bytes), and so that
    a full disk is the ``OSError`` the file raised (a one-line error of
    :func:`eigenarch.io.atomic_path`), not the ``RuntimeError`` torch's zip writer makes of
    it (``enforce fail ... unexpected pos``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        recording = _KeepsWriteErrors(f)
        try:
            torch.save(payload, recording)
        except RuntimeError:
            if recording.error is not None:
                raise recording.error from None
            raise
    return Path(path)


class _KeepsWriteErrors:
    """A binary file's ``write`` and ``flush`` that keep the ``OSError`` they raise."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as exc:
            self.error = exc
            raise


#: What every checkpoint of a format holds, and of which type (those ``train`` writes add
#: ``optimizer``, which ``--resume`` needs; a resume file of ``pretrain`` adds ``epoch`` too).
_CONTENTS: dict[str, dict[str, type]] = {
    DETECTOR_FORMAT: {"config": dict, "train": dict, "data": dict, "model": dict, "iteration": int},
    CLASSIFIER_FORMAT: {"config": dict, "model": dict},
}


def load_checkpoint(
    path: str | os.PathLike[str], expect: str | tuple[str, ...] = DETECTOR_FORMAT
) -> dict:
    """Read a checkpoint of ours (``weights_only=True``) of format ``expect`` (or one of
    them); refuse foreign, corrupt, truncated or edited files in one line naming the file and
    what was expected."""
    formats = (expect,) if isinstance(expect, str) else expect
    payload = load_torch(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        raise EigenarchError(f"{path}: not an {' or '.join(formats)} checkpoint")
    for key, kind in _CONTENTS.get(payload["format"], {}).items():
        _require(payload, key, kind, path, f"as every {payload['format']} checkpoint holds")
    return payload


def _require(payload: dict, key: str, kind: type, path: object, why: str) -> None:
    if not isinstance(payload.get(key), kind):
        found = "lacks" if key not in payload else "has a malformed"
        raise EigenarchError(
            f"{path}: {found} {key!r} (expected a {kind.__name__}, {why}; an edited or "
            "foreign file?)"
        )


def load_weights(model: nn.Module, state: Mapping[str, Any], source: object, what: str = "model"):
    """``model.load_state_dict(state)`` (strict), where a key the model lacks, one the file
    lacks or a shape that differs is one line naming ``source``, the first such key (shapes
    first, in the model's order) and what the model expects, not torch's list of every
    difference."""
    own = model.state_dict()
    problems = [
        f"{key} has shape {_shape(state[key])}, expected {_shape(value)}"
        for key, value in own.items()
        if key in state and _shape(state[key]) != _shape(value)
    ]
    problems += [f"{key} is missing from the file" for key in own if key not in state]
    problems += [f"{key} is not in the {what}" for key in state if key not in own]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EigenarchError(f"{source}: weights do not fit the {what}: {problems[0]}{more}")
    model.load_state_dict(state)


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if torch.is_tensor(value) else f"a {type(value).__name__}"


def restore_latest(run_dir: str | os.PathLike[str], model, optimizer) -> int:
    """Load a run's last checkpoint into ``model`` and ``optimizer``; returns its iteration."""
    run = RunDir(run_dir)
    found = run.checkpoints()
    if not found:
        raise EigenarchError(f"--resume: no checkpoint in {run.path / run.CHECKPOINTS}")
    state = restore_checkpoint(found[-1][1], model, optimizer)
    if is_main():
        console.print(f"resuming {run_dir} from iteration {state['iteration']}", highlight=False)
    return state["iteration"]


def restore_checkpoint(
    path: str | os.PathLike[str], model, optimizer, expect: str = DETECTOR_FORMAT
) -> dict[str, Any]:
    """Load the checkpoint ``path`` (of format ``expect``) into ``model`` and ``optimizer``
    to resume its run; returns the checkpoint."""
    return restore_state(load_checkpoint(path, expect=expect), path, model, optimizer)


def restore_state(state: dict[str, Any], path: object, model, optimizer) -> dict[str, Any]:
    """Load the checkpoint ``state`` read from ``path`` into ``model`` and ``optimizer``;
    returns it."""
    _require(state, "optimizer", dict, path, "which --resume needs")
    _require(state, "iteration", int, path, "which --resume needs")
    load_weights(model, state["model"], path, "run's model")
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EigenarchError(f"{path}: optimizer state does not fit the run ({exc})") from None
    return state


def detector_from_config(config: dict[str, Any], what: object) -> GeneralizedRCNN:
    """Build the detector the ``config`` of the checkpoint ``what`` describes (weights not
    loaded); a factory it names as its ``kind`` runs only if trusted (``--trust-factory``)."""
    kind = config.get("kind")
    if isinstance(kind, str) and is_factory(kind):
        check_trusted(kind, f"{what}: config 'kind'")
    return build_detector(**config)


def detector_from_checkpoint(path: str | os.PathLike[str]) -> tuple[GeneralizedRCNN, dict]:
    """The detector of a checkpoint with its weights loaded, and the checkpoint's payload."""
    payload = load_checkpoint(path)
    model = detector_from_config(payload["config"], path)
    load_weights(model, payload["model"], path, "detector of its config")
    return model, payload
