"""DetNAS on detection: supernet training, BN recalibration, path evaluation and search.

Supernet training (the paper's Algorithm 1, SPEC section 8) is detector training whose every
iteration runs one uniformly sampled path, the same on every rank (drawn from the seed and
the iteration). Modules off the path take no part in the forward pass, and their gradients
are set to ``None`` before each optimizer step, so SGD gives them no gradient, momentum or
weight-decay update. The body uses BatchNorm (SyncBN under ``torchrun`` on GPUs). A fixed
share of the training images (by seed) is held out: the search's validation split.

The search (Algorithm 2) evaluates each candidate path on that held-out split after
resetting the body's BatchNorm statistics and recomputing them as a plain average over a
fixed subset of the remaining training images. Under ``torchrun`` each rank evaluates its own
candidates; the fitness values are gathered, so every rank follows the same search.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from eigenarch.data.coco import CocoDetection, collate_detection
from eigenarch.distributed import (
    all_gather_objects,
    is_main,
    local_device,
    lost_rank_as_error,
    rank,
    world_size,
)
from eigenarch.errors import EigenarchError
from eigenarch.evaluation import evaluate_detections
from eigenarch.io import atomic_write_json
from eigenarch.models.detector import build_detector
from eigenarch.nas.evolution import (
    SearchConfig,
    SearchResult,
    load_generations,
    plot_choices,
    plot_fitness,
    run_search,
)
from eigenarch.nas.shufflenet import (
    CHOICES,
    DETNAS_FORMAT,
    SPACES,
    SearchSpace,
    detnas_config,
    format_path,
    off_path_parameters,
    path_cost,
    read_detnas_config,
    set_path,
)
from eigenarch.progress import progress_bar
from eigenarch.spectrum.stream import sample_images
from eigenarch.train.checkpoint import load_checkpoint
from eigenarch.train.engine import Hook, Trainer
from eigenarch.train.evaluate import predict
from eigenarch.train.loop import TrainConfig, detector_trainer, holds_output, own_rng, start_run
from eigenarch.train.pretrain import PretrainConfig, Resume, pretrain_classifier
from eigenarch.train.rundir import RunDir


def sample_path(space: SearchSpace, seed: int, iteration: int) -> tuple[int, ...]:
    """The uniformly random path of ``iteration``: a function of seed and iteration only."""
    rng = random.Random(f"detnas-path:{seed}:{iteration}")
    return tuple(rng.randrange(len(CHOICES)) for _ in range(space.num_blocks))


def holdout_split(
    image_ids: Sequence[int], holdout: float, seed: int
) -> tuple[list[int], list[int]]:
    """``(training ids, held-out ids)``: ``holdout`` images (a count, or a fraction if < 1)
    drawn by ``seed`` from ``image_ids``; both lists sorted."""
    n = len(image_ids)
    count = round(holdout * n) if 0 < holdout < 1 else int(holdout)
    if (holdout >= 1 and holdout != count) or not 1 <= count < n:
        raise EigenarchError(
            f"--holdout {holdout:g}: expected a fraction in (0, 1) or a whole number of images "
            f"from 1 to {n - 1} (the training split has {n})"
        )
    held = sorted(image_ids[k] for k in sample_images(n, count, seed))
    chosen = set(held)
    return [i for i in image_ids if i not in chosen], held


def subset(dataset: CocoDetection, image_ids: Sequence[int]) -> CocoDetection:
    """The same data set restricted to ``image_ids`` (sharing the loaded annotations)."""
    part = copy.copy(dataset)
    part.image_ids = list(image_ids)
    return part


class PathSampling(Hook):
    """Each step trains one sampled path of the supernet: step ``k`` runs
    ``sample_path(space, seed, k)``, so a resumed run samples what an uninterrupted one
    would, the same path on every rank. After the backward pass the gradients of the
    parameters off the path are set to ``None``: SGD then skips them (no weight decay, no
    momentum)."""

    unused_parameters = True

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.path: tuple[int, ...] | None = None

    def before_step(self, trainer: Trainer) -> None:
        self.path = sample_path(self.space, trainer.seed, trainer.iter)
        set_path(trainer.model, self.path)

    def after_backward(self, trainer: Trainer) -> None:
        for parameter in off_path_parameters(trainer.model):
            parameter.grad = None


@dataclass
class SupernetConfig(TrainConfig):
    """A detector training run whose ``backbone`` is a DetNAS supernet description.

    ``holdout``: training images kept out for the search's validation (a fraction if < 1,
    else a count), drawn by ``seed``. ``sync_bn``: SyncBN under torchrun on GPUs.
    """

    backbone: Any = field(default_factory=lambda: detnas_config(SPACES[1], None))
    holdout: float = 0.05
    sync_bn: bool = True


@holds_output()
@own_rng
def train_supernet(cfg: SupernetConfig, resume: bool = False) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) the supernet run in ``cfg.out``.

    Writes what a detector run writes (``config.json``, ``checkpoints/iter_XXXXXXX.pt``,
    ``metrics.jsonl``, TensorBoard events) plus ``holdout.json``; the checkpoints are detector
    checkpoints whose backbone is the supernet and whose ``data`` keeps the held-out image ids.
    """
    cfg = start_run(cfg, resume, SupernetConfig, "supernet")
    space, path = read_detnas_config(cfg.backbone)
    if path is not None:
        raise EigenarchError("supernet training needs a supernet description (path null)")
    full = CocoDetection.from_root(cfg.data, "train", masks=cfg.masks, verbose=is_main())
    train_ids, held_ids = holdout_split(full.image_ids, cfg.holdout, cfg.seed)
    held = {RunDir(cfg.out).holdout_file: {"train": train_ids, "holdout": held_ids}}
    trainer = detector_trainer(
        cfg, resume, subset(full, train_ids), [PathSampling(space)], held, "supernet",
        cfg.sync_bn, holdout_ids=held_ids,
    )  # fmt: skip
    with lost_rank_as_error(RunDir(cfg.out).resume_hint):
        trainer.train(cfg.workers)
    return {
        "iterations": trainer.max_iter,
        "train_images": len(train_ids),
        "holdout_images": len(held_ids),
        "loss": trainer.losses.get("loss"),
    }


# --- evaluation of paths --------------------------------------------------------------------


@torch.no_grad()
def recalibrate_bn(
    model: GeneralizedRCNN,
    dataset: CocoDetection,
    device: torch.device | str = "cpu",
    batch_size: int = 2,
) -> None:
    """Reset the body's BatchNorm statistics and recompute them over ``dataset``.

    The images go through the detector's own transform (resize, normalise, pad) and the
    body only. With ``momentum=None`` BatchNorm keeps the plain average of the batch
    statistics, not an exponential one: the result does not depend on earlier statistics.
    """
    body = model.backbone.body
    norms = [m for m in body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for start in range(0, len(dataset), batch_size):
        images, _ = collate_detection(
            [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        )
        batch, _ = model.transform([image.to(device) for image in images])
        body(batch.tensors)
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum
    model.train(was_training)


class DetectionFitness:
    """Fitness of paths: bbox AP on ``val_set`` after BN recalibration on ``bn_set``.

    Called with a list of paths, rank ``r`` evaluates paths ``r, r + N, ...`` (``N`` ranks)
    and every rank returns all the values.
    """

    def __init__(
        self,
        model: GeneralizedRCNN,
        bn_set: CocoDetection,
        val_set: CocoDetection,
        device: torch.device | str = "cpu",
        batch_size: int = 2,
    ) -> None:
        self.model, self.bn_set, self.val_set = model, bn_set, val_set
        self.device, self.batch_size = device, batch_size

    def evaluate(self, path: Sequence[int]) -> float:
        """The bbox AP (0..1) of one path."""
        set_path(self.model, path)
        recalibrate_bn(self.model, self.bn_set, self.device, self.batch_size)
        results = predict(
            self.model, self.val_set, self.device, batch_size=self.batch_size, progress=False
        )
        metrics = evaluate_detections(
            self.val_set.coco, results, ("bbox",), image_ids=self.val_set.image_ids
        )
        return metrics["bbox"]["AP"]

    def __call__(self, paths: list[tuple[int, ...]]) -> list[float]:
        mine = {k: self.evaluate(paths[k]) for k in range(rank(), len(paths), world_size())}
        merged = {k: v for part in all_gather_objects(mine) for k, v in part.items()}
        return [merged[k] for k in range(len(paths))]


def load_supernet(checkpoint: str | os.PathLike[str]) -> tuple[GeneralizedRCNN, dict, SearchSpace]:
    """A supernet detector with its weights, its checkpoint payload, and its search space."""
    payload = load_checkpoint(checkpoint)
    backbone = payload["config"].get("backbone", {})
    if backbone.get("format") != DETNAS_FORMAT or backbone.get("path") is not None:
        raise EigenarchError(f"--supernet {checkpoint}: not a checkpoint of a DetNAS supernet")
    space, _ = read_detnas_config(backbone, str(checkpoint))
    model = build_detector(**payload["config"])
    model.load_state_dict(payload["model"])
    return model, payload, space


@dataclass
class DetectionSearch:
    """Settings of a search on a trained supernet (saved as ``OUT/search.json``)."""

    supernet: str
    out: str
    search: SearchConfig
    data: str | None = None
    bn_images: int = 500
    batch_size: int = 2
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "search": self.search.to_dict()}


def _load_search_settings(out: Path) -> DetectionSearch:
    path = out / "search.json"
    if not path.is_file():
        raise EigenarchError(f"--resume: {path} not found (is {out} a search folder?)")
    saved = json.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(DetectionSearch)}
    settings = {k: v for k, v in saved.items() if k in fields}  # also: space, holdout_images
    search = dict(saved["search"])
    if "flops" in search:  # a search saved before the field was named for what it holds
        search["max_macs"] = search.pop("flops")
    return DetectionSearch(**{**settings, "search": SearchConfig(**search)})


def _search_images(
    settings: DetectionSearch, payload: dict[str, Any]
) -> tuple[CocoDetection, CocoDetection]:
    """The supernet's training images for BatchNorm recalibration (``bn_images`` drawn by
    the search's seed from those not held out) and its held-out images (the fitness)."""
    held_ids = payload["data"].get("holdout_ids") or []
    if not held_ids:
        raise EigenarchError(f"--supernet {settings.supernet}: keeps no held-out image ids")
    data = settings.data or payload["train"]["data"]
    full = CocoDetection.from_root(data, "train", verbose=is_main())
    if full.category_ids != payload["data"]["category_ids"]:
        raise EigenarchError(f"--data {data}: categories differ from the supernet's")
    unknown = sorted(set(held_ids) - set(full.image_ids))
    if unknown:
        raise EigenarchError(
            f"--data {data}: held-out image ids {unknown[:5]} of the supernet are not in its "
            "train split"
        )
    held = set(held_ids)
    rest = [i for i in full.image_ids if i not in held]
    bn_ids = [rest[k] for k in sample_images(len(rest), settings.bn_images, settings.search.seed)]
    return subset(full, bn_ids), subset(full, held_ids)


def search_supernet(settings: DetectionSearch, resume: bool = False) -> dict[str, Any]:
    """Search a trained supernet for the best path within the FLOPs limit.

    Writes ``search.json`` (settings), ``generations/gen_XXX.json`` (as it goes),
    ``result.json``, ``best_path.json`` (a DetNAS description for ``eigenarch train
    --backbone`` / ``eigenarch detnas retrain``) and the plots ``fitness.{png,svg}`` and
    ``choices.{png,svg}``. Returns the content of ``result.json``.
    """
    out = Path(settings.out)
    if resume:
        settings = dataclasses.replace(_load_search_settings(out), out=str(out))
    elif (out / "generations").is_dir() and any((out / "generations").iterdir()):
        raise EigenarchError(f"--out {out}: already holds a search; use --resume or another one")
    if settings.bn_images < 1 or settings.batch_size < 1:
        raise EigenarchError(
            f"--bn-images {settings.bn_images} / --batch-size {settings.batch_size}: "
            "expected positive numbers"
        )
    device = local_device(settings.device)
    model, payload, space = load_supernet(settings.supernet)
    bn_images, held_out = _search_images(settings, payload)
    fitness = DetectionFitness(model.to(device), bn_images, held_out, device, settings.batch_size)
    if is_main() and not resume:
        atomic_write_json(
            out / "search.json",
            {**settings.to_dict(), "space": space.to_dict(), "holdout_images": len(held_out)},
        )
    cfg = settings.search
    done = [c.fitness for g in load_generations(out) for c in g if c.fitness is not None]
    with progress_bar(disable=not is_main()) as bar:
        task = bar.add_task(
            f"{cfg.strategy} search", total=cfg.population * cfg.generations, completed=len(done)
        )
        best = [max(done, default=-1.0)]

        def advance(generation: int, candidates: list) -> None:
            best[0] = max(best[0], *(c.fitness for c in candidates))
            bar.update(
                task, advance=len(candidates), info=f"gen {generation}  best AP {best[0]:.4f}"
            )

        result = run_search(space, cfg, fitness, out, chunk=world_size(), on_evaluated=advance)
        bar.update(task, total=len(result.evaluated), completed=len(result.evaluated))
    return write_search_report(result, out, settings.supernet)


def write_search_report(result: SearchResult, out: Path, source: str) -> dict[str, Any]:
    """``result.json``, ``best_path.json`` and the two plots (rank 0); returns the result."""
    best = result.best
    macs, params = path_cost(result.space, best.path)
    report = {**result.to_dict(), "best_path": format_path(best.path), "best_params": params}
    if is_main():
        atomic_write_json(out / "result.json", report)
        atomic_write_json(
            out / "best_path.json",
            {
                **detnas_config(result.space, best.path),
                "macs": macs,
                "params": params,
                "fitness": best.fitness,
                "source": {"search": str(out), "supernet": source},
            },
        )
        plot_fitness(result, out / "fitness")
        plot_choices(result, out / "choices")
    return report


# --- classifier pre-training of the supernet ------------------------------------------------


def pretrain_supernet(cfg: PretrainConfig, resume: bool | Resume = False) -> dict[str, Any]:
    """ImageNet-style pre-training of the supernet ``cfg.backbone`` (path null), one
    sampled path per step; the checkpoint initialises ``detnas supernet --init``."""
    space, path = read_detnas_config(cfg.backbone)
    if path is not None:
        raise EigenarchError("supernet pre-training needs a supernet description (path null)")
    return pretrain_classifier(cfg, resume, hooks=[PathSampling(space)])
