"""Backbone pre-training as an image classifier (the paper's "I" starting point).

ImageNet-style: an ImageFolder tree ``DATA/train/<class>/*`` and ``DATA/val/<class>/*``, SGD
with momentum, cosine or step decay per iteration, one checkpoint per epoch for ``--resume``.
The final file is a classifier checkpoint that ``eigenarch train --init`` reads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import datasets, transforms

from eigenarch.data.coco import IMAGENET_MEAN, IMAGENET_STD, open_image
from eigenarch.distributed import (
    all_gather_objects,
    init_distributed,
    is_distributed,
    is_main,
    local_device,
    mean_over_ranks,
    world_size,
)
from eigenarch.errors import EigenarchError
from eigenarch.models.detector import backbone_config, build_classifier
from eigenarch.progress import console, progress_bar
from eigenarch.train.checkpoint import CLASSIFIER_FORMAT, load_checkpoint, save_checkpoint
from eigenarch.train.loop import finite_on_all_ranks, holds_output, own_rng

#: torchvision's ImageNet normalisation, also the detectors' default, so weights carry over.


@dataclass
class PretrainConfig:
    """Settings of a classifier pre-training run; ``lr`` is for 256 images per iteration."""

    data: str
    out: str
    backbone: str = "resnet50"
    gn_groups: int = 32
    epochs: int = 90
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    size: int = 224
    seed: int = 0
    workers: int = 2
    device: str = "cpu"


def _loaders(cfg: PretrainConfig) -> tuple[Any, Any, list[str]]:
    root = Path(cfg.data)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise EigenarchError(f"--data {root}: expected ImageFolder trees {split}/<class>/")
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(cfg.size, scale=(0.35, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    val_tf = transforms.Compose(
        [
            transforms.Resize(round(cfg.size / 0.875)),
            transforms.CenterCrop(cfg.size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    train_set = datasets.ImageFolder(root / "train", train_tf, loader=open_image)
    val_set = datasets.ImageFolder(root / "val", val_tf, loader=open_image)
    if train_set.classes != val_set.classes:
        raise EigenarchError(f"--data {root}: train and val have different class folders")
    if cfg.batch_size % world_size():
        raise EigenarchError(
            f"--batch-size {cfg.batch_size} is not a multiple of the {world_size()} processes"
        )
    local = cfg.batch_size // world_size()
    sampler = torch.utils.data.DistributedSampler
    train_sampler = sampler(train_set, seed=cfg.seed) if is_distributed() else None
    val_sampler = sampler(val_set, shuffle=False) if is_distributed() else None
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(
        train_set,
        local,
        shuffle=train_sampler is None,
        sampler=train_sampler,
        num_workers=cfg.workers,
        drop_last=True,
        generator=generator,
    )
    val_loader = torch.utils.data.DataLoader(
        val_set, local, sampler=val_sampler, num_workers=cfg.workers
    )
    return train_loader, val_loader, train_set.classes


def _lr(cfg: PretrainConfig, progress: float) -> float:
    """Learning rate at ``progress`` in [0, 1) of the run (cosine, or x0.1 at 1/3 and 2/3)."""
    base = cfg.lr * cfg.batch_size / 256
    if cfg.schedule == "cosine":
        return 0.5 * base * (1 + math.cos(math.pi * progress))
    return base * 0.1 ** int(progress * 3)


def train_epoch(model, loader, optimizer, cfg, epoch, device, bar) -> float:
    """One epoch of SGD; returns the mean training loss."""
    model.train()
    task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader))
    total, count = 0.0, 0
    for step, (images, labels) in enumerate(loader):
        # Set the learning rate for this iteration
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, (epoch + step / len(loader)) / cfg.epochs)
        # Forward, loss, backward, update
        images, labels = images.to(device), labels.to(device)
        loss = nn.functional.cross_entropy(model(images), labels)
        if not finite_on_all_ranks(loss):  # every rank stops together
            raise EigenarchError(f"non-finite loss in epoch {epoch + 1}, step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, count = total + float(loss.detach()), count + 1
        bar.update(task, advance=1, info=f"loss {total / count:.3f}")
    return mean_over_ranks({"loss": total / max(count, 1)}, device)["loss"]


@torch.no_grad()
def test_epoch(model, loader, device) -> float:
    """Top-1 accuracy over the validation set (all ranks' shares)."""
    model.eval()
    correct, count = 0, 0
    for images, labels in loader:
        predicted = model(images.to(device)).argmax(1)
        correct += int((predicted == labels.to(device)).sum())
        count += len(labels)
    parts = all_gather_objects((correct, count))
    return sum(c for c, _ in parts) / max(1, sum(n for _, n in parts))


def resume_path(out: str | Path) -> Path:
    """Where the end-of-epoch state of a pre-training run lives until it finishes."""
    return Path(str(out) + ".resume")


@holds_output(folder=False)
@own_rng
def pretrain_classifier(
    cfg: PretrainConfig,
    resume: bool = False,
    step_model: Callable[[nn.Module, int], nn.Module] | None = None,
) -> dict[str, Any]:
    """Pre-train ``cfg.backbone`` as a classifier; writes ``cfg.out``; returns its summary.

    ``step_model(model, steps_done)``, if given, wraps the model that each epoch trains (a
    DetNAS supernet samples a path per step); DDP then allows unused parameters.
    """
    if cfg.schedule not in ("cosine", "step"):
        raise EigenarchError(f"--schedule {cfg.schedule!r}: expected cosine or step")
    init_distributed(cfg.device)
    device = local_device(cfg.device)
    train_loader, val_loader, classes = _loaders(cfg)
    backbone = backbone_config(cfg.backbone, cfg.gn_groups)
    torch.manual_seed(cfg.seed)
    model = build_classifier(backbone, len(classes)).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=_lr(cfg, 0.0), momentum=0.9, weight_decay=cfg.weight_decay
    )
    start, history = 0, []
    if resume:
        state = load_checkpoint(resume_path(cfg.out), expect=CLASSIFIER_FORMAT)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["epoch"], state["history"]
    ddp = (
        nn.parallel.DistributedDataParallel(model, find_unused_parameters=step_model is not None)
        if is_distributed()
        else model
    )
    payload = {
        "format": CLASSIFIER_FORMAT,
        "config": {"backbone": backbone, "num_classes": len(classes), "classes": classes},
        "pretrain": dataclasses.asdict(cfg),
    }
    with progress_bar(disable=not is_main()) as bar:
        for epoch in range(start, cfg.epochs):
            # Same seed, same order, crops and flips, however the run was interrupted
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)
            train_loader.generator.manual_seed(cfg.seed * 1_000_003 + epoch)
            if is_distributed():
                train_loader.sampler.set_epoch(epoch)
            net = step_model(ddp, epoch * len(train_loader)) if step_model else ddp
            loss = train_epoch(net, train_loader, optimizer, cfg, epoch, device, bar)
            accuracy = test_epoch(model, val_loader, device)
            history.append({"epoch": epoch + 1, "loss": loss, "val_accuracy": accuracy})
            if is_main():
                console.print(f"epoch {epoch + 1}: loss {loss:.3f}, val top-1 {accuracy:.3f}")
                save_checkpoint(
                    resume_path(cfg.out),
                    {
                        **payload,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "history": history,
                    },
                )
    summary = {
        "epochs": cfg.epochs,
        "history": history,
        "val_accuracy": history[-1]["val_accuracy"] if history else None,
    }
    if is_main():
        save_checkpoint(cfg.out, {**payload, "model": model.state_dict(), **summary})
        resume_path(cfg.out).unlink(missing_ok=True)
    return summary
