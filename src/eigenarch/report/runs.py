"""The training runs ``eigenarch dynamics`` reads: a run folder of ``eigenarch train``, or the
checkpoints someone else's training wrote, as torchvision's detection reference scripts
(``references/detection/train.py``) save them.

Those scripts save ``{"model": state_dict, "optimizer": ..., "lr_scheduler": ..., "args":
argparse.Namespace, "epoch": e}`` after every epoch ``e`` (counted from 0) as
``model_{e}.pth``, and the latest again as ``checkpoint.pth``. Such a run is measured in
epochs trained: the checkpoint of epoch ``e`` is at ``e + 1``, so that a decay of
``--lr-steps 16`` (``MultiStepLR``: the rate falls once 16 epochs are trained) lies between
the checkpoints of epochs 15 (at 16) and 16 (at 17), as a run of ours puts a decay at
iteration ``m`` between its checkpoints at ``<= m`` and ``> m``.

timm's ``train.py`` saves a classifier's training the same way: ``{"state_dict": ...,
"epoch": e, "args": argparse.Namespace, ...}`` as ``checkpoint-{e}.pth.tar`` (its
``version`` 2: ``e`` is the epoch just trained, from 0), the latest again as
``last.pth.tar`` and the best as ``model_best.pth.tar``; its ``args.sched`` ``multistep``
decays after ``args.decay_milestones`` epochs, ``step`` every ``args.decay_epochs``.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from eigenarch.errors import EigenarchError
from eigenarch.io import load_torch_fields
from eigenarch.models.backbone import Backbone, backbone_from_dict
from eigenarch.models.builders import TIMM, BuilderBackbone
from eigenarch.models.resianet import ResiaNetBackbone
from eigenarch.models.weights import CHECKPOINT_KEYS
from eigenarch.spectrum.stream import build_model
from eigenarch.train.checkpoint import detector_from_checkpoint, load_checkpoint
from eigenarch.train.rundir import RunDir
from eigenarch.train.schedule import make_schedule
from eigenarch.widths.cost import DEFAULT_DEPTHS, RESNET50_WIDTHS

#: The files holding again the epoch of another: torchvision's reference scripts' latest
#: (beside ``model_{e}.pth``), timm's ``train.py``'s latest and best.
LATEST = ("checkpoint.pth", "last.pth.tar", "model_best.pth.tar")
#: torchvision's R-CNN builders on ResNet-50 with an FPN over its four stages, as ours: the
#: backbone is ResNet-50's widths, its maps named as a ResiaNet's (``backbone.body.layer1...``);
#: normalised by frozen BatchNorm (the ``_v2`` builders: BatchNorm).
_RESNET50_RCNN = re.compile(r"^(?:fasterrcnn|maskrcnn|keypointrcnn)_resnet50_fpn(_v2)?$")


@dataclass
class TrainingRun:
    """A run's checkpoints ``(position, file)``, ascending, and its schedule, in its unit."""

    out: Path  # where ``spectra/`` and ``dynamics.json`` are written
    checkpoints: list[tuple[int, Path]]
    length: int
    milestones: list[int]
    source: dict[str, Any]  # the options naming the run: {"run": ...} or {"checkpoints": ...}
    unit: str = "iteration"
    data: str | None = None  # the data it was trained on: the default of --data
    model: str | None = None  # builder or factory of another's run; None: a run of ours
    trained: dict[str, Any] | None = field(default=None)  # the settings its checkpoints hold

    def load(self, path: Path, num_classes: int, min_size: int | None) -> tuple[nn.Module, bool]:
        """The model of checkpoint ``path`` with its weights, and whether it is a detector."""
        if self.model is None:
            return detector_from_checkpoint(path)[0], True
        return build_model(self.model, num_classes, min_size, path)

    def backbone(self) -> Backbone | None:
        """The run's backbone: a run of ours, its last checkpoint's; a timm model's
        (``timm:NAME``, a classifier: its maps are named as the builder's); a torchvision
        R-CNN on ResNet-50, ResNet-50's; otherwise ``None`` (not known)."""
        if self.model is None:
            last = self.checkpoints[-1][1]
            return backbone_from_dict(load_checkpoint(last)["config"]["backbone"], f"{last}")
        if self.model.startswith(TIMM):
            return BuilderBackbone(self.model, source={"name": self.model})
        match = _RESNET50_RCNN.match(self.model)
        if match is None:
            return None
        norm = "bn" if match.group(1) else "frozen_bn"
        return ResiaNetBackbone(RESNET50_WIDTHS, DEFAULT_DEPTHS, norm, 32, {"name": self.model})


def run_schedule(config: Mapping[str, Any]) -> tuple[int, list[int]]:
    """``(iterations, learning-rate decay iterations)`` of a run's schedule."""
    try:
        schedule = make_schedule(
            config["schedule"],
            config["batch_size"],
            config.get("schedule_scale"),
            config.get("iters"),
            config.get("lr"),
        )
    except KeyError as exc:
        raise EigenarchError(f"run config: missing field {exc}") from None
    return schedule.iterations, list(schedule.milestones)


def our_run(run_dir: str | os.PathLike[str]) -> TrainingRun:
    """A run folder of ``eigenarch train``: its checkpoints and schedule, in iterations."""
    run = RunDir(run_dir)
    config = run.read_config()
    checkpoints = run.checkpoints()
    if not checkpoints:
        raise EigenarchError(f"{run.path}: no checkpoints/iter_XXXXXXX.pt files")
    length, milestones = run_schedule(config)
    return TrainingRun(run.path, checkpoints, length, milestones, {"run": str(run.path)},
                       data=config.get("data"))  # fmt: skip


def _reference_checkpoint(path: Path) -> tuple[int, dict[str, Any]]:
    """``(epoch, args as a dict)`` of a checkpoint of torchvision's reference scripts or
    timm's ``train.py`` (only its pickle read: the weights are read once, when the
    checkpoint is analysed)."""
    payload = load_torch_fields(path, "checkpoint of torchvision's reference scripts")
    held = isinstance(payload, dict) and any(isinstance(payload.get(k), dict)
                                             for k in CHECKPOINT_KEYS)  # fmt: skip
    epoch = payload.get("epoch") if held else None
    if type(epoch) is not int or epoch < 0:
        raise EigenarchError(
            f"{path}: expected a checkpoint of torchvision's reference scripts or timm's "
            "train.py, a dict with 'model' or 'state_dict' (a state dict) and 'epoch' (an int "
            ">= 0)"
        )
    args = payload.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    args = args if isinstance(args, dict) else {}
    return epoch, json.loads(json.dumps(args, default=str))  # JSON for dynamics.json


def _by_epoch(files: Sequence[Path]) -> list[tuple[int, Path, dict[str, Any]]]:
    """``(epoch, file, args)`` ordered by the files' ``epoch`` field; a ``checkpoint.pth``
    holding the epoch of another file (the latest ``model_{e}.pth``) is left out."""
    found: dict[int, list[tuple[Path, dict[str, Any]]]] = {}
    for path in files:
        epoch, args = _reference_checkpoint(path)
        found.setdefault(epoch, []).append((path, args))
    chosen = []
    for epoch, same in sorted(found.items()):
        named = [item for item in same if item[0].name not in LATEST] or same
        if len(named) > 1:
            raise EigenarchError(f"--checkpoints: {named[0][0]} and {named[1][0]} both hold epoch "
                                 f"{epoch}; give a pattern that matches one of them")  # fmt: skip
        chosen.append((epoch, *named[0]))
    return chosen


def _decays(args: Mapping[str, Any], epochs: int) -> Any:
    """The epochs after which a run's ``args`` decay the rate: torchvision's ``MultiStepLR``
    (``lr_scheduler`` ``multisteplr``, the scripts' default) at ``lr_steps``; timm's
    (``sched``) ``multistep`` at ``decay_milestones``, ``step`` every ``decay_epochs``
    (its rate falls at the first epoch index >= each multiple); none for another (cosine)."""
    if "sched" not in args:
        multistep = args.get("lr_scheduler", "multisteplr") == "multisteplr"
        return (args.get("lr_steps") or []) if multistep else []
    if args["sched"] == "multistep":
        return args.get("decay_milestones") or []
    every = args.get("decay_epochs")
    if args["sched"] != "step" or not isinstance(every, int | float) or every <= 0:
        return []
    steps = (math.ceil(k * every) for k in itertools.count(1))
    return list(itertools.takewhile(lambda m: m < epochs, steps))


def reference_run(
    pattern: str,
    model: str,
    out: str | os.PathLike[str] | None = None,
    lr_steps: Sequence[int] | None = None,
    epochs: int | None = None,
) -> TrainingRun:
    """The checkpoints matching ``pattern`` (a glob such as ``'run/model_*.pth'``) of a run of
    torchvision's reference scripts, of the builder or factory ``model``, in epochs trained.

    Milestones are ``lr_steps``, else the checkpoints' ``args.lr_steps`` (with their
    ``MultiStepLR``); the length ``epochs``, else ``args.epochs``, else the last checkpoint's.
    Results go to ``out``, by default the checkpoints' folder.
    """
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)) if Path(p).is_file())
    if not files:
        raise EigenarchError(f"--checkpoints {pattern!r}: no file matches")
    found = _by_epoch(files)
    args = found[-1][2]  # the last checkpoint's settings: those of the run as it ended
    checkpoints = [(epoch + 1, path) for epoch, path, _ in found]
    last = checkpoints[-1][0]
    trained_for = args.get("epochs") if type(args.get("epochs")) is int else 0
    if lr_steps is None:
        lr_steps = _decays(args, max(trained_for, last))
    length = epochs if epochs is not None else max(trained_for, last)
    if not isinstance(lr_steps, list | tuple):
        raise EigenarchError(f"{found[-1][1]}: args.lr_steps {lr_steps!r}: expected a list of "
                             "epochs; give --lr-steps")  # fmt: skip
    if length < last or any(type(s) is not int or s < 1 for s in lr_steps):
        raise EigenarchError(f"--epochs {length} / --lr-steps {lr_steps}: expected epochs >= "
                             f"{last} (the last checkpoint's) and steps >= 1")  # fmt: skip
    out = Path(out) if out is not None else Path(os.path.commonpath([p.parent for p in files]))
    source = {"checkpoints": pattern, "model": model, "out": str(out),
              "lr_steps": list(lr_steps), "epochs": length}  # fmt: skip
    trained = {"checkpoints": pattern, "model": model, "epochs": [e for e, _, _ in found],
               "args": args}  # fmt: skip
    return TrainingRun(out, checkpoints, length, sorted(lr_steps), source, "epoch",
                       args.get("data_path"), model, trained)  # fmt: skip


def training_run(
    run: str | os.PathLike[str] | None = None,
    checkpoints: str | None = None,
    model: str | None = None,
    out: str | os.PathLike[str] | None = None,
    lr_steps: Sequence[int] | None = None,
    epochs: int | None = None,
    min_size: int | None = None,
) -> TrainingRun:
    """``--run RUN`` (a run of ours) or ``--checkpoints PATTERN --model NAME`` (another's;
    ``min_size`` is only checked here: a run of ours resizes as its config says)."""
    if (run is None) == (checkpoints is None):
        raise EigenarchError(
            "eigenarch dynamics needs --run RUN (a run of `eigenarch train`) or --checkpoints "
            "'PATTERN' with --model (another's training)"
        )
    if run is not None:
        options = {"--model": model, "--out": out, "--lr-steps": lr_steps, "--epochs": epochs,
                   "--min-size": min_size}  # fmt: skip
        given = [option for option, value in options.items() if value is not None]
        if given:
            raise EigenarchError(f"{', '.join(given)}: for --checkpoints only; --run {run} "
                                 "has its own model, resize, folder and schedule")  # fmt: skip
        return our_run(run)
    if model is None:
        raise EigenarchError(f"--checkpoints {checkpoints!r}: give --model, the torchvision "
                             "builder or file.py:factory the checkpoints are of")  # fmt: skip
    return reference_run(checkpoints, model, out, lr_steps, epochs)
