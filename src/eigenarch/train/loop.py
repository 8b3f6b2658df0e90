"""Detector training: a short, deterministic, resumable loop with hooks.

Everything random is a function of ``(seed, iteration)``: the images of each iteration come
from a per-epoch permutation and flip mask, and the model's own sampling (RPN / RoI) is
seeded per iteration and image (:mod:`eigenarch.train.sampling`). So a run resumed from a
checkpoint repeats an uninterrupted run's losses exactly, and under ``torchrun`` each rank
takes its slice of every global batch and samples as one process would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from eigenarch.data.coco import CocoDetection, collate_detection, hflip
from eigenarch.distributed import (
    all_gather_objects,
    is_distributed,
    is_main,
    launch_rank,
    local_device,
    lost_rank_as_error,
    rank,
    world_size,
)
from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_write_json, output_lock
from eigenarch.models.builders import TIMM
from eigenarch.models.detector import (
    DEFAULT_ANCHOR_SIZES,
    MASK_KINDS,
    as_backbone,
    build_detector,
)
from eigenarch.models.factory import check_trusted, is_factory
from eigenarch.models.weights import DETECTRON_MEAN, DETECTRON_STD, load_init_weights
from eigenarch.options import command_line
from eigenarch.progress import console
from eigenarch.train.checkpoint import (
    DETECTOR_FORMAT,
    restore_latest,
)
from eigenarch.train.engine import Checkpointer, Hook, Trainer
from eigenarch.train.evaluate import evaluate_model
from eigenarch.train.hooks import (
    LRScheduler,
    MetricsWriter,
    PeriodicCheckpointer,
    PeriodicEvaluator,
    ProgressBar,
)
from eigenarch.train.rundir import RunDir
from eigenarch.train.schedule import Schedule, make_schedule
from eigenarch.train.tensorboard import TensorBoardWriter, append_scalars

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4

T = TypeVar("T")


@dataclass
class TrainConfig:
    """Settings of a detector training run (saved as ``RUN_DIR/config.json``).

    ``batch_size`` counts images per iteration over all ranks. ``lr`` overrides the
    paper's 0.02 x batch / 16. ``roi_batch`` is RoIs sampled per image for the box head.
    """

    data: str
    out: str
    kind: str = "faster_rcnn"
    backbone: str | dict[str, Any] = "resnet50"
    norm: str | None = None
    init: str = "scratch"
    schedule: str = "1x"
    schedule_scale: float | None = None
    iters: int | None = None
    batch_size: int = 16
    lr: float | None = None
    checkpoint_every: int = 5000
    eval_every: int = 0
    seed: int = 0
    min_size: int = 800
    max_size: int = 1333
    gn_groups: int = 32
    fpn_channels: int = 256
    head_channels: int = 256
    representation: int = 1024
    anchor_sizes: Sequence[int] = field(default=DEFAULT_ANCHOR_SIZES)
    rpn_batch: int = 256
    roi_batch: int = 512
    proposals: Sequence[int] = (2000, 1000)
    flip: bool = True
    workers: int = 2
    device: str = "cpu"
    tensorboard: bool = True

    @property
    def masks(self) -> bool:
        return self.kind in MASK_KINDS

    def __post_init__(self) -> None:
        proposal_counts(self.proposals)  # checked before any data is read

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


class IterationBatches(torch.utils.data.Dataset):
    """Item ``k`` is this rank's share of the global batch of iteration ``start + k``.

    Global sample position ``p = iteration * batch_size + j`` is sample ``perm_e[p % n]`` of
    epoch ``e = p // n``, flipped by ``flip`` if ``flip_e[p % n]``; both drawn from ``seed``
    and ``e``. The data set's own random transforms (a classifier's crops) draw from the
    global generator seeded by ``(seed, p)``, restored afterwards. ``collate`` makes the
    batch of the samples (a detector's lists of images and targets by default).
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        seed: int,
        start: int,
        end: int,
        flip: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        collate: Callable[[list], Any] = collate_detection,
    ) -> None:
        if batch_size % world_size():
            raise EigenarchError(
                f"--batch-size {batch_size} is not a multiple of the {world_size()} processes"
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.start, self.end, self.flip, self.collate = start, end, flip, collate
        self.local = batch_size // world_size()
        self.rank = rank()

    def __len__(self) -> int:
        return self.end - self.start

    @lru_cache(maxsize=2)  # noqa: B019 - one data set per run, two epochs at a time
    def _epoch(self, epoch: int) -> tuple[list[int], list[bool]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        flips = (torch.rand(len(self.dataset), generator=generator) < 0.5).tolist()
        return order, flips

    def _sample(self, position: int) -> tuple[Any, Any]:
        epoch, offset = divmod(position, len(self.dataset))
        order, flips = self._epoch(epoch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + position) % 2**63)
            image, target = self.dataset[order[offset]]
        if self.flip is not None and flips[offset]:
            image, target = self.flip(image, target)
        return image, target

    def __getitem__(self, k: int) -> Any:
        first = (self.start + k) * self.batch_size + self.rank * self.local
        return self.collate([self._sample(p) for p in range(first, first + self.local)])


def run_batches(dataset: CocoDetection, cfg: TrainConfig, start: int, end: int):
    """The :class:`IterationBatches` of a detector run from iteration ``start`` to ``end``."""
    return IterationBatches(
        dataset, cfg.batch_size, cfg.seed, start, end, hflip if cfg.flip else None
    )


def own_rng(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` on a fork of the global random state: whatever it seeds (a run's init, the
    samplers' per-iteration seeds), the caller's state is back afterwards."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return fn(*args, **kwargs)

    return run


def holds_output(folder: bool = True) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Run ``fn(cfg, ...)`` holding the lock of its output ``cfg.out`` (a run ``folder``, or
    a file) in the first process (:func:`eigenarch.io.output_lock`): a second process given
    the same output, to start or to resume it, is refused in one line meanwhile."""

    def hold(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def run(cfg: Any, *args: Any, **kwargs: Any) -> T:
            with contextlib.ExitStack() as stack:
                refused = None
                if launch_rank() == 0:
                    try:
                        stack.enter_context(
                            RunDir(cfg.out).lock() if folder else output_lock(cfg.out, folder=False)
                        )
                    except EigenarchError as exc:
                        refused = str(exc)
                if is_distributed():  # every rank ends with the first one's refusal
                    refused = all_gather_objects(refused)[0]
                if refused is not None:
                    raise EigenarchError(refused if rank() == 0 else f"rank {rank()}: {refused}")
                return fn(cfg, *args, **kwargs)

        return run

    return hold


def model_config(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The keyword arguments of :func:`build_detector` that rebuild this run's model."""
    detectron = str(cfg.init).endswith(".pkl")
    return {
        "kind": cfg.kind,
        "backbone": as_backbone(cfg.backbone, cfg.gn_groups, cfg.norm).to_dict(),
        "num_classes": num_classes,
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "gn_groups": cfg.gn_groups,
        "fpn_channels": cfg.fpn_channels,
        "head_channels": cfg.head_channels,
        "representation": cfg.representation,
        "anchor_sizes": list(cfg.anchor_sizes),
        "image_mean": list(DETECTRON_MEAN) if detectron else None,
        "image_std": list(DETECTRON_STD) if detectron else None,
        "rpn_batch_size_per_image": cfg.rpn_batch,
        "box_batch_size_per_image": cfg.roi_batch,
        **proposal_counts(cfg.proposals),
    }


def proposal_counts(proposals: Sequence[int]) -> dict[str, int]:
    """torchvision's RPN top-n settings from ``(training, testing)`` proposal counts.

    Each count is kept both before NMS (per FPN level) and after it (per image), as
    torchvision's defaults (2000 in training, 1000 in testing) do.
    """
    if len(proposals) != 2 or min(proposals) < 1:
        raise EigenarchError(
            f"--proposals {','.join(map(str, proposals))}: expected two positive counts "
            "(training, testing)"
        )
    train, test = proposals
    return {
        "rpn_pre_nms_top_n_train": train,
        "rpn_post_nms_top_n_train": train,
        "rpn_pre_nms_top_n_test": test,
        "rpn_post_nms_top_n_test": test,
    }


def prepare_model(
    cfg: TrainConfig, num_classes: int, schedule: Schedule, device: torch.device, resume: bool
) -> tuple[dict[str, Any], nn.Module, torch.optim.Optimizer, int, dict | None]:
    """Build a run's detector (seeded) and SGD optimizer; load ``--init`` weights, or with
    ``resume`` the run's last checkpoint. Returns ``(config, model, optimizer, start
    iteration, init info)``."""
    torch.manual_seed(cfg.seed)
    config = model_config(cfg, num_classes)
    model = build_detector(**config)
    init_info = None
    if cfg.init != "scratch" and not resume:
        timm = str(config["backbone"].get("builder", "")).startswith(TIMM)  # its own state dict
        init_info = load_init_weights(model, cfg.init, complete=timm)
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=schedule.lr(0), momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    start = restore_latest(cfg.out, model, optimizer) if resume else 0
    return config, model, optimizer, start, init_info


#: TrainConfig fields that are not options of ``eigenarch train``.
NOT_OPTIONS = ("flip",)


def train_command(config: dict[str, Any]) -> str:
    """The ``eigenarch train`` command line of a run's settings (its ``config.json``)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(NOT_OPTIONS)
    options = {k: v for k, v in config.items() if k in names}
    return command_line(["eigenarch", "train"], options, on_by_default=("tensorboard",))


def load_run_config(run_dir: Path, config_class: type = TrainConfig, what: str = "training"):
    """The ``config_class`` saved in ``run_dir/config.json``, with ``out=run_dir`` (for
    ``--resume``)."""
    run = RunDir(run_dir)
    saved = run.read_config(what)
    for option in ("backbone", "kind"):
        named = saved.get(option)
        if isinstance(named, str) and is_factory(named):  # a data file runs no code
            check_trusted(named, str(run.config_file))
    tuples = {k: tuple(saved[k]) for k in ("anchor_sizes", "proposals") if k in saved}
    return config_class(**{**saved, **tuples, "out": str(run_dir)})


def run_device(out: str | Path, resume: bool, device: str) -> str:
    """The device a run trains on: ``device``, or with ``resume`` the one its
    ``config.json`` saved (``device`` if it cannot be read: the run's own checks say why)."""
    return RunDir(out).saved_device(device) if resume else device


def start_run(
    cfg: TrainConfig, resume: bool, config_class: type = TrainConfig, what: str = "training"
) -> TrainConfig:
    """The run's settings: with ``resume`` those saved in ``cfg.out``; else ``cfg``, which
    must not overwrite a run."""
    run_dir = Path(cfg.out)
    if resume:
        cfg = load_run_config(run_dir, config_class, what)
    elif RunDir(run_dir).checkpoints():
        raise EigenarchError(
            f"--out {run_dir}: already holds a run; use --resume or another folder"
        )
    return cfg


def run_schedule(cfg: TrainConfig) -> Schedule:
    """The learning-rate schedule and length of a run."""
    return make_schedule(cfg.schedule, cfg.batch_size, cfg.schedule_scale, cfg.iters, cfg.lr)


def run_payload(
    config: dict[str, Any], cfg: TrainConfig, dataset: CocoDetection, **data: Any
) -> dict[str, Any]:
    """What every checkpoint of a run holds besides weights: the model's config, the run's
    settings, the categories (and ``data``'s extra fields)."""
    categories = {"category_ids": dataset.category_ids, "category_names": dataset.category_names}
    return {
        "format": DETECTOR_FORMAT,
        "config": config,
        "train": cfg.to_dict(),
        "data": {**categories, **data},
    }


def distributed_model(model: nn.Module, device: torch.device, **options: Any) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` under ``torchrun``, else itself."""
    if not is_distributed():
        return model
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, **options)


def run_hooks(
    cfg: TrainConfig, schedule: Schedule, *extra: Hook, description: str = "train"
) -> list[Hook]:
    """The hooks of every training run: LR schedule, metrics log and bar, checkpoints, the
    ``extra`` ones (evaluators), and last the TensorBoard writer (``cfg.tensorboard``)."""
    board = [TensorBoardWriter(cfg.out)] if cfg.tensorboard else []
    return [
        LRScheduler(schedule),
        MetricsWriter(RunDir(cfg.out).log_file),
        ProgressBar(description),
        PeriodicCheckpointer(cfg.checkpoint_every),
        *extra,
        *board,
    ]


def detector_trainer(
    cfg: TrainConfig,
    resume: bool,
    dataset: CocoDetection,
    hooks: Sequence[Hook] = (),
    files: dict[Path, Any] | None = None,
    description: str = "train",
    sync_bn: bool = False,
    **data: Any,
) -> Trainer:
    """The :class:`Trainer` of the detector run ``cfg`` (settings as :func:`start_run`
    returned them) on ``dataset``: the model built (or restored, with ``resume``), the
    run's hooks plus ``hooks``, ``config.json`` and ``files`` (path -> JSON) written on a
    new run, checkpoint 0 saved. ``data`` goes into every checkpoint's ``data``; ``sync_bn``
    converts BatchNorm to SyncBatchNorm under torchrun on GPUs."""
    run, device, schedule = RunDir(cfg.out), local_device(cfg.device), run_schedule(cfg)
    config, model, optimizer, start, init_info = prepare_model(
        cfg, dataset.num_classes, schedule, device, resume
    )
    if not resume and is_main():
        for path, obj in {run.config_file: cfg.to_dict(), **(files or {})}.items():
            atomic_write_json(path, obj)
    if init_info is not None and is_main():
        atomic_write_json(run.init_file, {k: v for k, v in init_info.items() if k != "unmatched"})
    wrapped: nn.Module = model
    if is_distributed() and device.type == "cuda" and sync_bn:
        wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif is_distributed() and sync_bn and is_main():
        console.print("SyncBN needs GPUs: each process keeps its own BatchNorm statistics")
    unused = any(hook.unused_parameters for hook in hooks)  # DDP must look for them
    trainer = Trainer(
        distributed_model(wrapped, device, find_unused_parameters=unused),
        optimizer,
        run_batches(dataset, cfg, start, schedule.iterations),
        schedule.iterations,
        run_hooks(cfg, schedule, *hooks, description=description),
        device,
        cfg.seed,
        Checkpointer(run_payload(config, cfg, dataset, **data), run.checkpoint),
    )
    if start == 0:
        trainer.save_checkpoint(0)
    return trainer


@holds_output()
@own_rng
def train_detector(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train (or, with ``resume``, continue) the run in ``cfg.out``; returns final metrics.

    Writes ``config.json``, ``checkpoints/iter_XXXXXXX.pt`` (iteration 0 = the initial
    weights, then every ``checkpoint_every`` and the last), ``metrics.jsonl`` (and TensorBoard
    events, :mod:`eigenarch.train.tensorboard`), and the final ``metrics.json`` /
    ``detections.json`` of the val split. Only rank 0 writes.
    """
    cfg = start_run(cfg, resume)
    run, device, length = RunDir(cfg.out), local_device(cfg.device), run_schedule(cfg).iterations
    train_set = CocoDetection.from_root(cfg.data, "train", masks=cfg.masks, verbose=is_main())
    val_set = CocoDetection.from_root(cfg.data, "val", masks=cfg.masks, verbose=is_main())
    if val_set.category_ids != train_set.category_ids:
        raise EigenarchError(f"{cfg.data}: train and val splits have different categories")
    iou_types = ("bbox", "segm") if cfg.masks else ("bbox",)

    def evaluate(iteration: int) -> dict:
        out = run.path if iteration == length else run.evaluation(iteration)
        model = getattr(trainer.model, "module", trainer.model)  # not DDP's wrapper
        return evaluate_model(model, val_set, device, iou_types, out_dir=out)

    trainer = detector_trainer(
        cfg, resume, train_set, [PeriodicEvaluator(evaluate, cfg.eval_every)]
    )
    with lost_rank_as_error(run.resume_hint):
        trainer.train(cfg.workers)
        metrics = evaluate(length)
        if cfg.tensorboard and is_main():
            append_scalars(run.path, length, metrics)
        return metrics
