"""``eigenarch train`` and ``eigenarch pretrain``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from eigenarch.cli.options import TensorBoard, trusting
from eigenarch.cli.tables import metrics_table
from eigenarch.distributed import init_distributed, is_main
from eigenarch.errors import EigenarchError
from eigenarch.options import parse_ints
from eigenarch.progress import console
from eigenarch.train.loop import TrainConfig, run_device, train_detector
from eigenarch.train.pretrain import PretrainConfig, load_resume, pretrain_classifier


def train_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The :class:`TrainConfig` fields among ``eigenarch train``'s parsed options."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k in names}
    for name in ("anchor_sizes", "proposals"):
        fields[name] = parse_ints(fields[name], "--" + name.replace("_", "-"))
    return fields


def train(
    data: Path = typer.Option(
        None,
        help="COCO-layout folder with train and val splits (with --resume: the run's own).",
        show_default=False,
    ),
    out: Path = typer.Option(..., help="Run folder: config, checkpoints, metrics."),
    kind: str = typer.Option("faster_rcnn", help="faster_rcnn or mask_rcnn."),
    backbone: str = typer.Option(
        "resnet50",
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
        "scratch", help="scratch, or a backbone state dict / our checkpoint / Detectron .pkl."
    ),
    schedule: str = typer.Option("1x", help="1x, 2x or 3x (90k / 180k / 270k iterations)."),
    schedule_scale: float | None = typer.Option(None, help="Multiply the schedule's length."),
    iters: int | None = typer.Option(None, help="Set the length; milestones scale with it."),
    batch_size: int = typer.Option(16, help="Images per iteration over all processes."),
    lr: float | None = typer.Option(None, help="Base learning rate (default 0.02 x B / 16)."),
    checkpoint_every: int = typer.Option(5000, help="Keep a checkpoint every K iterations."),
    eval_every: int = typer.Option(0, help="Also evaluate on val every K iterations (0: end)."),
    seed: int = typer.Option(0, help="Random seed: same seed, same losses."),
    min_size: int = typer.Option(800, help="Resize the shorter image side to this."),
    max_size: int = typer.Option(1333, help="Cap the longer image side."),
    gn_groups: int = typer.Option(32, help="GroupNorm groups (fewer for narrow test nets)."),
    fpn_channels: int = typer.Option(256, help="FPN width."),
    head_channels: int = typer.Option(256, help="Conv width of the box and mask heads."),
    representation: int = typer.Option(1024, help="fc width of the box head."),
    anchor_sizes: str = typer.Option("32,64,128,256,512", help="Anchor size per level P2..P6."),
    rpn_batch: int = typer.Option(256, help="Anchors sampled per image for the RPN loss."),
    roi_batch: int = typer.Option(512, help="RoIs sampled per image for the box head."),
    proposals: str = typer.Option(
        "2000,1000", help="RPN proposals kept per image (and per level before NMS): train,test."
    ),
    workers: int = typer.Option(
        2, min=0, help="Data-loading worker processes (0: load in the main process)."
    ),
    device: str = typer.Option("cpu", help="cpu or cuda (cuda:LOCAL_RANK under torchrun)."),
    tensorboard: TensorBoard = True,
    resume: bool = typer.Option(
        False, help="Continue OUT's run from its last checkpoint with its saved settings."
    ),
) -> None:
    """Train Faster R-CNN / Mask R-CNN on a ResiaNet backbone (runs under torchrun too)."""
    if data is None and not resume:
        raise EigenarchError("--data: required (a COCO-layout folder), unless --resume")
    cfg = TrainConfig(**train_fields(locals()))
    init_distributed(run_device(out, resume, device))
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
        "resnet50",
        help="resnet50, nine comma-separated widths, a builder name or a width-spec JSON file.",
    ),
    norm: str = typer.Option(
        None, help="Normalisation for names and widths: gn, bn or frozen_bn.", show_default="gn"
    ),
    gn_groups: int = typer.Option(32, help="GroupNorm groups."),
    epochs: int = typer.Option(90, help="Training epochs."),
    batch_size: int = typer.Option(256, help="Images per iteration over all processes."),
    lr: float = typer.Option(0.1, help="Learning rate at 256 images per iteration (scaled)."),
    schedule: str = typer.Option("cosine", help="cosine, or step (x0.1 at 1/3 and 2/3)."),
    size: int = typer.Option(224, help="Crop size in pixels (64 for the shapes-cls set)."),
    seed: int = typer.Option(0, help="Random seed."),
    workers: int = typer.Option(
        2, min=0, help="Data-loading worker processes (0: load in the main process)."
    ),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    tensorboard: TensorBoard = True,
    resume: bool = typer.Option(
        False, help="Continue the unfinished run writing OUT (OUT.resume) with its settings."
    ),
) -> None:
    """Pre-train a backbone as an image classifier (the "I" start; runs under torchrun too)."""
    cfg = PretrainConfig(**pretrain_fields(locals()))
    saved = load_resume(out) if resume else None  # OUT.resume, read once
    init_distributed(saved.config.device if saved else device)
    summary = pretrain_classifier(cfg, resume=saved or False)
    if is_main():
        console.print(
            f"val top-1 {summary['val_accuracy']:.3f}, top-5 {summary['val_top5']:.3f}; "
            f"weights written to {cfg.out}",
            highlight=False,
        )


def pretrain_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The :class:`PretrainConfig` fields among ``eigenarch pretrain``'s parsed options."""
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k in names}


def register(app: typer.Typer) -> None:
    """Add ``eigenarch train`` and ``eigenarch pretrain`` to the main app."""
    app.command("train")(trusting(train))
    app.command("pretrain")(trusting(pretrain))
