"""``eigenarch train`` and ``eigenarch pretrain``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from eigenarch.cli.options import Device, TensorBoard, Workers, trusting
from eigenarch.cli.tables import metrics_table
from eigenarch.distributed import init_distributed, is_main
from eigenarch.errors import EigenarchError
from eigenarch.models.detector import TORCHVISION_KINDS
from eigenarch.options import parse_device, parse_ints
from eigenarch.progress import console
from eigenarch.train.loop import TrainConfig, run_device, train_detector
from eigenarch.train.pretrain import PretrainConfig, load_resume, pretrain_classifier

#: The library's defaults, the options' defaults (written once, in the dataclasses).
_TRAIN = TrainConfig(data="", out="")
_PRETRAIN = PretrainConfig(data=None, out="")


def _joined(numbers: Sequence[int]) -> str:
    return ",".join(map(str, numbers))


def train_options(options: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The :class:`TrainConfig` fields and ``--resume`` among the parsed options of
    ``eigenarch train`` (which ``detnas supernet`` and ``detnas retrain`` take too)."""
    if options["data"] is None and not options["resume"]:
        raise EigenarchError("--data: required (a COCO-layout folder), unless --resume")
    fields = _fields(TrainConfig, options)
    for name in ("anchor_sizes", "proposals"):
        fields[name] = parse_ints(fields[name], "--" + name.replace("_", "-"))
    return fields, bool(options["resume"])


def pretrain_options(options: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The :class:`PretrainConfig` fields and ``--resume`` among the parsed options of
    ``eigenarch pretrain`` (which ``detnas pretrain`` takes too)."""
    return _fields(PretrainConfig, options), bool(options["resume"])


def _fields(config: type, options: dict[str, Any]) -> dict[str, Any]:
    """``config``'s fields among ``options`` (paths as text, the device resolved)."""
    names = {f.name for f in dataclasses.fields(config)}
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k in names}
    fields["device"] = parse_device(fields["device"])
    return fields


def train(
    data: Path = typer.Option(
        None,
        help="COCO-layout folder with train and val splits (with --resume: the run's own).",
        show_default=False,
    ),
    out: Path = typer.Option(..., help="Run folder: config, checkpoints, metrics."),
    kind: str = typer.Option(
        _TRAIN.kind,
        help="faster_rcnn or mask_rcnn; or a torchvision builder ("
        + ", ".join(TORCHVISION_KINDS)
        + ") or file.py:factory / package.module:factory returning a FasterRCNN (runs your "
        "code): its FPN, anchors and heads on --backbone.",
    ),
    backbone: str = typer.Option(
        _TRAIN.backbone,
        help="resnet50 (a ResiaNet), nine comma-separated widths, a builder name (resnet18, "
        "mobilenet_v3_large, regnet_y_400mf, efficientnet_b0, convnext_tiny, detnet59, ...) "
        "or a width-spec JSON file.",
    ),
    norm: str = typer.Option(
        None,
        help="Backbone normalisation for names and widths: gn, bn or frozen_bn.",
        show_default="gn",
    ),
    init: str = typer.Option(
        _TRAIN.init, help="scratch, or a backbone state dict / our checkpoint / Detectron .pkl."
    ),
    schedule: str = typer.Option(
        _TRAIN.schedule, help="1x, 2x or 3x (90k / 180k / 270k iterations)."
    ),
    schedule_scale: float | None = typer.Option(
        _TRAIN.schedule_scale, help="Multiply the schedule's length."
    ),
    iters: int | None = typer.Option(
        _TRAIN.iters, help="Set the length; milestones scale with it."
    ),
    batch_size: int = typer.Option(
        _TRAIN.batch_size, help="Images per iteration over all processes."
    ),
    lr: float | None = typer.Option(_TRAIN.lr, help="Base learning rate (default 0.02 x B / 16)."),
    checkpoint_every: int = typer.Option(
        _TRAIN.checkpoint_every, help="Keep a checkpoint every K iterations."
    ),
    eval_every: int = typer.Option(
        _TRAIN.eval_every, help="Also evaluate on val every K iterations (0: end)."
    ),
    seed: int = typer.Option(_TRAIN.seed, help="Random seed: same seed, same losses."),
    min_size: int = typer.Option(_TRAIN.min_size, help="Resize the shorter image side to this."),
    max_size: int = typer.Option(_TRAIN.max_size, help="Cap the longer image side."),
    gn_groups: int = typer.Option(
        _TRAIN.gn_groups, help="GroupNorm groups (fewer for narrow test nets)."
    ),
    fpn_channels: int = typer.Option(_TRAIN.fpn_channels, help="FPN width."),
    head_channels: int = typer.Option(
        _TRAIN.head_channels, help="Conv width of the box and mask heads."
    ),
    representation: int = typer.Option(_TRAIN.representation, help="fc width of the box head."),
    anchor_sizes: str = typer.Option(
        _joined(_TRAIN.anchor_sizes), metavar="N,...", help="Anchor size per level P2..P6."
    ),
    rpn_batch: int = typer.Option(
        _TRAIN.rpn_batch, help="Anchors sampled per image for the RPN loss."
    ),
    roi_batch: int = typer.Option(
        _TRAIN.roi_batch, help="RoIs sampled per image for the box head."
    ),
    proposals: str = typer.Option(
        _joined(_TRAIN.proposals),
        metavar="N,...",
        help="RPN proposals kept per image (and per level before NMS): train,test.",
    ),
    workers: Workers = _TRAIN.workers,
    device: Device = None,
    tensorboard: TensorBoard = _TRAIN.tensorboard,
    resume: bool = typer.Option(
        False, help="Continue OUT's run from its last checkpoint with its saved settings."
    ),
) -> None:
    """Train Faster R-CNN / Mask R-CNN on a ResiaNet backbone (runs under torchrun too)."""
    fields, resume = train_options(locals())
    cfg = TrainConfig(**fields)
    init_distributed(run_device(out, resume, cfg.device))
    metrics = train_detector(cfg, resume=resume)
    if is_main():
        console.print(metrics_table(metrics))
        console.print(f"run written to {out}", highlight=False)


def pretrain(
    data: Path = typer.Option(
        None,
        help="ImageFolder root with train/<class>/ and val/<class>/ (with --resume: the run's).",
        show_default=False,
    ),
    out: Path = typer.Option(..., help="The classifier checkpoint to write (for train --init)."),
    backbone: str = typer.Option(
        _PRETRAIN.backbone,
        help="resnet50, nine comma-separated widths, a builder name or a width-spec JSON file.",
    ),
    norm: str = typer.Option(
        None, help="Normalisation for names and widths: gn, bn or frozen_bn.", show_default="gn"
    ),
    gn_groups: int = typer.Option(_PRETRAIN.gn_groups, help="GroupNorm groups."),
    epochs: int = typer.Option(_PRETRAIN.epochs, help="Training epochs."),
    batch_size: int = typer.Option(
        _PRETRAIN.batch_size, help="Images per iteration over all processes."
    ),
    lr: float = typer.Option(
        _PRETRAIN.lr, help="Learning rate at 256 images per iteration (scaled)."
    ),
    schedule: str = typer.Option(_PRETRAIN.schedule, help="cosine, or step (x0.1 at 1/3 and 2/3)."),
    size: int = typer.Option(
        _PRETRAIN.size, help="Crop size in pixels (64 for the shapes-cls set)."
    ),
    seed: int = typer.Option(_PRETRAIN.seed, help="Random seed."),
    workers: Workers = _PRETRAIN.workers,
    device: Device = None,
    tensorboard: TensorBoard = _PRETRAIN.tensorboard,
    resume: bool = typer.Option(
        False, help="Continue the unfinished run writing OUT (OUT.resume) with its settings."
    ),
) -> None:
    """Pre-train a backbone as an image classifier (the "I" start; runs under torchrun too)."""
    fields, resume = pretrain_options(locals())
    cfg = PretrainConfig(**fields)
    saved = load_resume(out) if resume else None  # OUT.resume, read once
    init_distributed(saved.config.device if saved else cfg.device)
    summary = pretrain_classifier(cfg, resume=saved or False)
    if is_main():
        console.print(
            f"val top-1 {summary['val_accuracy']:.3f}, top-5 {summary['val_top5']:.3f}; "
            f"weights written to {cfg.out}",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add ``eigenarch train`` and ``eigenarch pretrain`` to the main app."""
    app.command("train")(trusting(train))
    app.command("pretrain")(trusting(pretrain))
