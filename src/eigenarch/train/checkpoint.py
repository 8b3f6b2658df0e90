"""Checkpoints: ``torch.save`` of plain dicts, written atomically, read with weights_only."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from eigenarch.distributed import is_main
from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_path
from eigenarch.models.detector import build_detector
from eigenarch.progress import console

DETECTOR_FORMAT = "eigenarch.detector"
CLASSIFIER_FORMAT = "eigenarch.classifier"
_ITER_FILE = re.compile(r"^iter_(\d{7})\.pt$")


def checkpoint_path(run_dir: str | os.PathLike[str], iteration: int) -> Path:
    """``RUN_DIR/checkpoints/iter_XXXXXXX.pt``."""
    return Path(run_dir) / "checkpoints" / f"iter_{iteration:07d}.pt"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """A run's checkpoints as ``(iteration, path)``, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    for path in folder.glob("iter_*.pt") if folder.is_dir() else []:
        match = _ITER_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` with ``torch.save`` to a temporary file, then rename it."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str], expect: str = DETECTOR_FORMAT) -> dict:
    """Read a checkpoint of ours (``weights_only=True``); refuse foreign or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise EigenarchError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise EigenarchError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != expect:
        raise EigenarchError(f"{path}: not an {expect} checkpoint")
    return payload


def restore_latest(run_dir: str | os.PathLike[str], model, optimizer) -> int:
    """Load a run's last checkpoint into ``model`` and ``optimizer``; returns its iteration."""
    found = list_checkpoints(run_dir)
    if not found:
        raise EigenarchError(f"--resume: no checkpoint in {Path(run_dir) / 'checkpoints'}")
    state = load_checkpoint(found[-1][1])
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if is_main():
        console.print(f"resuming {run_dir} from iteration {state['iteration']}", highlight=False)
    return state["iteration"]


def detector_from_config(config: dict[str, Any]) -> GeneralizedRCNN:
    """Build the detector a checkpoint's ``config`` describes (weights not loaded)."""
    return build_detector(**config)


def detector_from_checkpoint(path: str | os.PathLike[str]) -> tuple[GeneralizedRCNN, dict]:
    """The detector of a checkpoint with its weights loaded, and the checkpoint's payload."""
    payload = load_checkpoint(path)
    model = detector_from_config(payload["config"])
    model.load_state_dict(payload["model"])
    return model, payload
