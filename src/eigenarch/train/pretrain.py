"""Backbone pre-training as an image classifier (the paper's "I" starting point).

ImageNet-style: an ImageFolder tree ``DATA/train/<class>/*`` and ``DATA/val/<class>/*``, SGD
with momentum, cosine or step decay per iteration, top-1 / top-5 on val and one checkpoint
(``OUT.resume``) per epoch for ``--resume``. It runs on the detectors' :class:`Trainer`, so
every crop, flip and step is a function of the seed and the iteration. The final file is a
classifier checkpoint that ``eigenarch train --init`` reads; TensorBoard events go to
``OUT.tensorboard/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate
from torchvision import datasets, transforms

from eigenarch.data.coco import IMAGENET_MEAN, IMAGENET_STD, open_image
from eigenarch.distributed import (
    all_gather_objects,
    is_distributed,
    is_main,
    local_device,
    mean_over_ranks,
    world_size,
)
from eigenarch.errors import EigenarchError
from eigenarch.models.detector import as_backbone, build_classifier
from eigenarch.progress import console
from eigenarch.train.checkpoint import (
    CLASSIFIER_FORMAT,
    load_checkpoint,
    restore_state,
    save_checkpoint,
)
from eigenarch.train.engine import Checkpointer, Hook, Trainer
from eigenarch.train.hooks import LRScheduler, PeriodicCheckpointer, ProgressBar
from eigenarch.train.loop import (
    MOMENTUM,
    IterationBatches,
    distributed_model,
    holds_output,
    own_rng,
)
from eigenarch.train.schedule import Schedule, classifier_schedule
from eigenarch.train.tensorboard import TensorBoardWriter


@dataclass
class PretrainConfig:
    """Settings of a classifier pre-training run; ``lr`` is for 256 images per iteration.
    ``norm``: gn (the default), bn or frozen_bn for a builder name or widths."""

    data: str | None
    out: str
    backbone: str = "resnet50"
    norm: str | None = None
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
    tensorboard: bool = True


def _data_sets(cfg: PretrainConfig) -> tuple[Any, Any]:
    """The train and val ImageFolders; the flips are the training batches' own."""
    root = Path(cfg.data)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise EigenarchError(f"--data {root}: expected ImageFolder trees {split}/<class>/")
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(cfg.size, scale=(0.35, 1.0)),
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
    return train_set, val_set


def _hflip(image: torch.Tensor, label: int) -> tuple[torch.Tensor, int]:
    return image.flip(-1), label


class ClassifierTrainer(Trainer):
    """A :class:`Trainer` of an image classifier: the loss is the cross-entropy."""

    def compute_losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.model(images.to(self.device))
        return {"loss_cls": nn.functional.cross_entropy(logits, labels.to(self.device))}


@torch.no_grad()
def test_epoch(model: nn.Module, loader, device: torch.device) -> dict[str, float]:
    """Top-1 and top-5 accuracy over the validation set (all ranks' shares), as
    ``val_accuracy`` and ``val_top5``; with fewer than 5 classes top-5 counts them all."""
    was_training = model.training
    model.eval()
    top1, top5, count = 0, 0, 0
    for images, labels in loader:
        logits = model(images.to(device))
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = ranked == labels.to(device)[:, None]
        top1, top5 = top1 + int(hits[:, 0].sum()), top5 + int(hits.any(1).sum())
        count += len(labels)
    model.train(was_training)
    parts = all_gather_objects((top1, top5, count))
    total = max(1, sum(n for _, _, n in parts))
    return {
        "val_accuracy": sum(c for c, _, _ in parts) / total,
        "val_top5": sum(c for _, c, _ in parts) / total,
    }


class EpochEvaluator(Hook):
    """At the end of each epoch: the epoch's mean loss and the val accuracies appended to
    ``history`` (which the checkpoints hold) and added to ``trainer.metrics`` (``epoch_loss``,
    ``val_accuracy``, ``val_top5``), and one printed line. Put it before the checkpointer, so
    an epoch's checkpoint holds its evaluation."""

    def __init__(self, model: nn.Module, val_loader, epoch_iters: int, history: list) -> None:
        self.model, self.val_loader = model, val_loader
        self.epoch_iters, self.history = epoch_iters, history
        self.total, self.count = 0.0, 0

    def after_step(self, trainer: Trainer) -> None:
        self.total, self.count = self.total + trainer.losses["loss"], self.count + 1
        done = trainer.iter + 1
        if done % self.epoch_iters:
            return
        loss = mean_over_ranks({"loss": self.total / self.count}, trainer.device)["loss"]
        entry = {"epoch": done // self.epoch_iters, "loss": loss}
        entry.update(test_epoch(self.model, self.val_loader, trainer.device))
        self.history.append(entry)
        trainer.metrics.update(
            {("epoch_loss" if k == "loss" else k): v for k, v in entry.items() if k != "epoch"}
        )
        self.total, self.count = 0.0, 0
        if is_main():
            console.print(
                f"epoch {entry['epoch']}: loss {loss:.3f}, val top-1 {entry['val_accuracy']:.3f}"
                f", top-5 {entry['val_top5']:.3f}",
                highlight=False,
            )


def resume_path(out: str | Path) -> Path:
    """Where the end-of-epoch state of a pre-training run lives until it finishes."""
    return Path(str(out) + ".resume")


def events_folder(out: str | Path) -> Path:
    """Where a pre-training run writing ``out`` keeps its TensorBoard events."""
    return Path(str(out) + ".tensorboard")


@dataclass
class Resume:
    """The unfinished pre-training run writing ``out``, as its ``OUT.resume`` holds it (read
    once: pass this on rather than reading the file again)."""

    path: Path
    state: dict[str, Any]  # the checkpoint
    config: PretrainConfig  # its settings (for ``--resume`` without the other options)


def load_resume(out: str | Path) -> Resume:
    """Read ``OUT.resume`` of the unfinished pre-training run writing ``out``."""
    path = resume_path(out)
    if not path.is_file():
        raise EigenarchError(f"--resume: {path} not found (no unfinished run writes {out})")
    state = load_checkpoint(path, expect=CLASSIFIER_FORMAT)
    saved = state.get("pretrain")
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    if not isinstance(saved, dict) or not {"data", "out"} <= saved.keys() <= names:
        raise EigenarchError(f"{path}: lacks its run's 'pretrain' settings (an edited file?)")
    return Resume(path, state, PretrainConfig(**{**saved, "out": str(out)}))


@holds_output(folder=False)
@own_rng
def pretrain_classifier(
    cfg: PretrainConfig,
    resume: bool | Resume = False,
    hooks: Sequence[Hook] = (),
) -> dict[str, Any]:
    """Pre-train ``cfg.backbone`` as a classifier (with ``resume``, continue the unfinished
    run writing ``cfg.out``, with its saved settings: ``True`` reads them, a :class:`Resume`
    has them); writes ``cfg.out``; returns its summary
    (``history`` per epoch, the last ``val_accuracy`` (top-1) and ``val_top5``).

    ``hooks`` join the run's own (a DetNAS supernet's path sampling).
    """
    if resume is True:
        resume = load_resume(cfg.out)
    if resume:  # the saved settings win, as for a detector run
        cfg = resume.config
    elif cfg.data is None:
        raise EigenarchError("--data: required (an ImageFolder root), unless --resume")
    device = local_device(cfg.device)
    train_set, val_set = _data_sets(cfg)
    # An epoch: the whole iterations that fit in the set (at least one; the batches run on
    # through the next epoch's order, so a set smaller than a batch still trains).
    epoch_iters = max(1, len(train_set) // cfg.batch_size)
    iterations = epoch_iters * cfg.epochs
    schedule = classifier_schedule(cfg.schedule, iterations, cfg.lr * cfg.batch_size / 256)
    model, optimizer, payload = _prepare_classifier(cfg, train_set.classes, schedule, device)
    history = payload["history"]  # the same list the evaluator appends to
    start = 0
    if resume:
        state = restore_state(resume.state, resume.path, model, optimizer)
        start, history[:] = state["iteration"], state["history"]
    batches = IterationBatches(
        train_set, cfg.batch_size, cfg.seed, start, iterations, _hflip, default_collate
    )
    val_loader = _val_loader(val_set, cfg)
    unused = any(hook.unused_parameters for hook in hooks)  # DDP must look for them
    trainer = ClassifierTrainer(
        distributed_model(model, device, find_unused_parameters=unused),
        optimizer,
        batches,
        iterations,
        [
            LRScheduler(schedule),
            ProgressBar("pretrain"),
            EpochEvaluator(model, val_loader, epoch_iters, history),
            PeriodicCheckpointer(epoch_iters),
            *hooks,
            *([TensorBoardWriter(events_folder(cfg.out))] if cfg.tensorboard else []),
        ],
        device,
        cfg.seed,
        Checkpointer(payload, lambda iteration: resume_path(cfg.out)),
    )
    trainer.train(cfg.workers)
    summary = {"epochs": cfg.epochs, "history": history, **_last(history)}
    if is_main():
        final = {k: v for k, v in payload.items() if k != "history"}
        save_checkpoint(cfg.out, {**final, "model": model.state_dict(), **summary})
        resume_path(cfg.out).unlink(missing_ok=True)
    return summary


def _prepare_classifier(
    cfg: PretrainConfig, classes: list[str], schedule: Schedule, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    """The run's classifier (seeded), its SGD optimizer, and what its checkpoints hold
    besides weights (``history`` empty)."""
    backbone = as_backbone(cfg.backbone, cfg.gn_groups, cfg.norm).to_dict()
    torch.manual_seed(cfg.seed)
    model = build_classifier(backbone, len(classes)).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=schedule.lr(0), momentum=MOMENTUM, weight_decay=cfg.weight_decay
    )
    payload = {
        "format": CLASSIFIER_FORMAT,
        "config": {"backbone": backbone, "num_classes": len(classes), "classes": classes},
        "pretrain": dataclasses.asdict(cfg),
        "history": [],
    }
    return model, optimizer, payload


def _last(history: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {"val_accuracy": last.get("val_accuracy"), "val_top5": last.get("val_top5")}


def _val_loader(val_set, cfg: PretrainConfig):
    local = cfg.batch_size // max(1, world_size())
    sampler = (
        torch.utils.data.DistributedSampler(val_set, shuffle=False) if is_distributed() else None
    )
    return torch.utils.data.DataLoader(val_set, local, sampler=sampler, num_workers=cfg.workers)
