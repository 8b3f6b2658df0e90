"""Build a model by name or from a checkpoint, sample images, stream them through it with
every map hooked: the data pass of ``eigenarch spectrum`` and ``eigenarch dynamics``."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torchvision
from torchvision.transforms import v2

from eigenarch.data.coco import IMAGENET_MEAN, IMAGENET_STD, CocoDetection
from eigenarch.distributed import rank as dist_rank
from eigenarch.distributed import world_size
from eigenarch.errors import EigenarchError
from eigenarch.io import load_torch
from eigenarch.models.backbones import classifier_by_name
from eigenarch.progress import console, progress_bar
from eigenarch.spectrum.collector import SpectrumCollector
from eigenarch.spectrum.spectra import Spectra
from eigenarch.train.checkpoint import DETECTOR_FORMAT, detector_from_config, load_weights


def build_model(spec: str, num_classes: int, min_size: int | None) -> tuple[torch.nn.Module, bool]:
    """A model from a torchvision builder name (random weights) or a checkpoint file.

    Returns ``(model, is_detector)``. Nothing is ever downloaded. Builder names: detectors
    get ``num_classes`` (background included), classifiers keep their 1000 ImageNet classes.
    Checkpoints: a detector checkpoint of ``eigenarch train``, or a ``torch.save``'d dict with
    ``"model"`` (state dict) and ``"config"`` naming the torchvision builder in ``"arch"``
    (and optionally ``"num_classes"``, for a detector or a classifier). ``min_size``
    overrides a detector's resize (detectors only).
    """
    resize = {"min_size": min_size} if min_size is not None else {}
    if not Path(spec).is_file():
        return _torchvision_model(spec, num_classes, resize), _is_detector(spec)
    checkpoint = load_torch(spec, "torch checkpoint")
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or not isinstance(checkpoint.get("model"), dict):
        raise EigenarchError(f"{spec}: expected a checkpoint dict with 'model' (a state dict) "
                             "and 'config'")  # fmt: skip
    if checkpoint.get("format") == DETECTOR_FORMAT:
        model, arch, detector = detector_from_config({**config, **resize}), "detector", True
    elif isinstance(config.get("arch"), str):
        arch, classes = config["arch"], config.get("num_classes")
        if classes is not None and (not isinstance(classes, int) or classes < 1):
            raise EigenarchError(f"{spec}: config num_classes {classes!r}: expected an int >= 1")
        model = _torchvision_model(arch, num_classes, resize, classes)
        detector = _is_detector(arch)
    else:
        raise EigenarchError(f"{spec}: neither an eigenarch detector checkpoint nor a 'config' "
                             "naming a torchvision builder in 'arch'")  # fmt: skip
    load_weights(model, checkpoint["model"], spec, arch)
    return model, detector


def _is_detector(name: str) -> bool:
    return name in torchvision.models.list_models(module=torchvision.models.detection)


def _torchvision_model(
    name: str, num_classes: int, resize: dict, classes: int | None = None
) -> torch.nn.Module:
    """A torchvision builder's model, random weights; ``classes`` (a checkpoint's
    ``num_classes``) wins over ``num_classes`` (the data set's) and sizes classifiers too;
    ``resize`` (``--min-size``) is for detectors only."""
    if _is_detector(name):
        return torchvision.models.get_model(
            name, weights=None, weights_backbone=None, num_classes=classes or num_classes, **resize
        )
    classifiers = torchvision.models.list_models(module=torchvision.models)
    if name in classifiers or name == "detnet59":
        if resize:
            raise EigenarchError(f"--min-size: detectors only, not the classifier {name}")
        if name == "detnet59":  # eigenarch's own builder (DetNet-59, GroupNorm)
            return classifier_by_name(name, num_classes=classes or 1000)
        extra = {"num_classes": classes} if classes else {}
        return torchvision.models.get_model(name, weights=None, **extra)
    raise EigenarchError(
        f"--model {name!r}: not a file, nor a torchvision detector or classifier, nor detnet59 "
        "(e.g. fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn, resnet50)"
    )


class _Images(torch.utils.data.Dataset):
    """The images of ``dataset`` at ``indices``, through ``transform``."""

    def __init__(self, dataset: CocoDetection, indices: list[int], transform) -> None:
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.dataset.load_image(self.indices[i]))


def stream_spectra(
    net: torch.nn.Module,
    detector: bool,
    dataset: CocoDetection,
    indices: list[int],
    *,
    batch_size: int = 2,
    workers: int = 0,
    device: str = "cpu",
    include: list[str] | None = None,
    sides: list[str] | tuple[str, ...] = ("in", "out"),
    max_channels: int = 4096,
    description: str = "spectrum",
) -> Spectra:
    """The spectra of ``net`` (in eval mode, on ``device``) over the images ``indices``.

    Under ``torch.distributed`` each rank takes every world-size-th image; the result is
    summed over the ranks (identical on every rank).
    """
    rank, world = dist_rank(), world_size()
    transform = (
        v2.Identity()
        if detector
        else v2.Compose(
            [v2.Resize(256), v2.CenterCrop(224), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        )
    )
    loader = torch.utils.data.DataLoader(
        _Images(dataset, indices[rank::world], transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list if detector else torch.stack,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collector = SpectrumCollector(net, include, sides, max_channels or None)
    if collector.skipped and rank == 0:
        console.print(f"skipping {len(collector.skipped)} map(s) wider than {max_channels} "
                      f"channels: {', '.join(collector.skipped)}", highlight=False)  # fmt: skip
    with collector, torch.no_grad(), progress_bar(disable=rank != 0) as bar:
        task = bar.add_task(description, total=len(loader.dataset), info="")
        for batch in loader:
            net([image.to(device) for image in batch] if detector else batch.to(device))
            bar.update(task, advance=len(batch))
    return collector.spectra()


def sample_images(total: int, images: int, seed: int) -> list[int]:
    """``images`` indices of ``range(total)`` drawn at random with ``seed`` (all if fewer)."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[: min(images, total)].tolist()
