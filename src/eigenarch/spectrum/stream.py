"""Build a model by name or from a checkpoint, sample images, stream them through it with
every map hooked: the data pass of ``eigenarch spectrum`` (:func:`collect_spectra`) and
``eigenarch dynamics``."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d
from torchvision.transforms import v2

from eigenarch.data.coco import IMAGENET_MEAN, IMAGENET_STD, CocoDetection
from eigenarch.distributed import local_device, world_size
from eigenarch.distributed import rank as dist_rank
from eigenarch.errors import EigenarchError
from eigenarch.io import check_writable, load_torch, output_lock
from eigenarch.models.builders import TIMM, classifier_by_name
from eigenarch.models.factory import call_factory, is_factory
from eigenarch.models.weights import read_weights_file
from eigenarch.options import parse_device
from eigenarch.progress import console, progress_bar
from eigenarch.spectrum.collector import SpectrumCollector, unhooked_note
from eigenarch.spectrum.functional import UncollectedMapsWarning, missed_note
from eigenarch.spectrum.spectra import Spectra
from eigenarch.train.checkpoint import DETECTOR_FORMAT, detector_from_config, load_weights


def build_model(
    spec: str, num_classes: int, min_size: int | None, weights: str | Path | None = None
) -> tuple[torch.nn.Module, bool]:
    """A model from a torchvision builder name, a factory of the user's, or a checkpoint file.

    Returns ``(model, is_detector)``; a detector is a model whose ``transform`` is torchvision's
    ``GeneralizedRCNNTransform`` (Faster / Mask / Keypoint R-CNN, RetinaNet, FCOS, SSD,
    SSDlite). Nothing is ever downloaded.

    - A builder name: random weights; detectors get ``num_classes`` (background included),
      classifiers keep their 1000 ImageNet classes.
    - ``path/to/file.py:factory`` or ``package.module:factory``: ``factory()`` is called with
      no arguments (this runs the user's code) and must return an ``nn.Module``.
    - A checkpoint file: a detector checkpoint of ``eigenarch train``, or a ``torch.save``'d
      dict with ``"model"`` (state dict) and ``"config"`` naming the torchvision builder in
      ``"arch"`` (and optionally ``"num_classes"``, for a detector or a classifier).

    ``weights`` (a builder name or a factory only) is a state dict file, read with
    ``weights_only=True`` (see ``weights_state``); a builder detector takes its number of
    classes from the file's box predictor or classification head, and a builder's
    BatchNorm that the file holds without ``num_batches_tracked`` is frozen, as torchvision
    builds it for pre-trained weights (``weights_backbone``). ``min_size`` overrides a
    detector's resize.
    """
    if Path(spec).is_file():
        if weights is not None:
            raise EigenarchError(f"--weights: --model {spec} is a checkpoint (its own weights); "
                                 "--weights goes with a builder name or a factory")  # fmt: skip
        model, state, what = _checkpoint_model(spec, num_classes)
        load_weights(model, state, spec, what)
    else:
        state = weights_state(weights) if weights is not None else None
        if is_factory(spec):
            model, what = call_factory(spec), f"model of {spec}"
        else:
            model, what = _torchvision_model(spec, num_classes), spec
            classes = _detector_classes(model, state, num_classes)
            if classes is not None:  # the file's detector was trained on other classes
                model = _torchvision_model(spec, num_classes, classes)
            if state is not None:
                _freeze_saved_norms(model, state)
        if state is not None:
            load_weights(model, state, weights, what)
    detector = _is_detector(model)
    if min_size is not None:
        _set_min_size(model, min_size, spec)
    return model, detector


def _checkpoint_model(spec: str, num_classes: int) -> tuple[torch.nn.Module, dict, str]:
    """The model a checkpoint file's ``config`` describes, its state dict and its name."""
    checkpoint = load_torch(spec, "torch checkpoint")
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or not isinstance(checkpoint.get("model"), dict):
        raise EigenarchError(f"{spec}: expected a checkpoint dict with 'model' (a state dict) "
                             "and 'config'")  # fmt: skip
    if checkpoint.get("format") == DETECTOR_FORMAT:
        return detector_from_config(config, spec), checkpoint["model"], "detector"
    if isinstance(config.get("arch"), str):
        arch, classes = config["arch"], config.get("num_classes")
        if classes is not None and (not isinstance(classes, int) or classes < 1):
            raise EigenarchError(f"{spec}: config num_classes {classes!r}: expected an int >= 1")
        return _torchvision_model(arch, num_classes, classes), checkpoint["model"], arch
    raise EigenarchError(f"{spec}: neither an eigenarch detector checkpoint nor a 'config' "
                         "naming a torchvision builder in 'arch'")  # fmt: skip


#: Prefixes a wrapper adds to every key of a state dict: DDP / DataParallel, Lightning-style.
WRAPPER_PREFIXES = ("module.", "model.")


def weights_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a ``--weights`` file (read with ``weights_only=True``, or a
    ``.safetensors`` file): a plain state dict, or a checkpoint dict holding it under
    ``"model"`` (torchvision's reference scripts, ``eigenarch train``) or ``"state_dict"``
    (timm's ``train.py``); a ``module.`` (DDP) or ``model.`` prefix on
    every key is removed."""
    state = read_weights_file(path, "state dict or checkpoint")
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())
    ):
        raise EigenarchError(f"{path}: expected a state dict (names to tensors) or a checkpoint "
                             "dict holding one under 'model' or 'state_dict'")  # fmt: skip
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                stripped = True
    return state


def _detector_classes(model: torch.nn.Module, state: dict | None, num_classes: int) -> int | None:
    """The number of classes (background included) of the detector in ``state`` where it
    differs from ``model``'s ``num_classes``: read from the class-dependent head weights (box
    predictor, classification head: first dimension ``k * num_classes``), which all agree."""
    if state is None or not _is_detector(model):
        return None
    own, found = model.state_dict(), set()
    for key, value in state.items():
        mine = own.get(key)
        if mine is None or value.shape == mine.shape:
            continue
        if value.shape[1:] != mine.shape[1:] or mine.shape[0] % num_classes:
            return None  # not a class count that differs: load_weights names it
        per_class = mine.shape[0] // num_classes
        if value.shape[0] % per_class:
            return None
        found.add(value.shape[0] // per_class)
    return found.pop() if len(found) == 1 else None


def _freeze_saved_norms(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Make each ``BatchNorm2d`` of ``model`` that ``state`` holds without
    ``num_batches_tracked`` a ``FrozenBatchNorm2d``, as the file's model had it (torchvision's
    builders freeze their backbone's norms when trained from pre-trained weights)."""
    for name, module in list(model.named_modules()):
        if (
            type(module) is torch.nn.BatchNorm2d
            and f"{name}.running_mean" in state
            and f"{name}.num_batches_tracked" not in state
        ):
            parent, _, child = name.rpartition(".")
            frozen = FrozenBatchNorm2d(module.num_features, module.eps)
            setattr(model.get_submodule(parent), child, frozen)


def _is_detector(model: torch.nn.Module) -> bool:
    return isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform)


def _set_min_size(model: torch.nn.Module, min_size: int, spec: str) -> None:
    """``--min-size``: the shorter side a detector's transform resizes images to; refused
    for classifiers and for fixed-size detectors (SSD, SSDlite)."""
    transform = getattr(model, "transform", None)
    if not isinstance(transform, GeneralizedRCNNTransform):
        raise EigenarchError(f"--min-size: detectors only, not the classifier {spec}")
    if transform.fixed_size is not None:
        side = "x".join(map(str, transform.fixed_size))
        raise EigenarchError(f"--min-size: {spec} resizes every image to a fixed {side}; "
                             "it has no shorter-side option")  # fmt: skip
    transform.min_size = (min_size,)


def _torchvision_model(name: str, num_classes: int, classes: int | None = None) -> torch.nn.Module:
    """A torchvision builder's model, random weights; ``classes`` (a checkpoint's
    ``num_classes``) wins over ``num_classes`` (the data set's) and sizes classifiers too."""
    if name in torchvision.models.list_models(module=torchvision.models.detection):
        return torchvision.models.get_model(
            name, weights=None, weights_backbone=None, num_classes=classes or num_classes
        )
    classifiers = torchvision.models.list_models(module=torchvision.models)
    if name == "detnet59" or name.startswith(TIMM):  # eigenarch's DetNet-59, timm's models
        return classifier_by_name(name, num_classes=classes or 1000)
    if name in classifiers:
        extra = {"num_classes": classes} if classes else {}
        return torchvision.models.get_model(name, weights=None, **extra)
    raise EigenarchError(
        f"--model {name!r}: not a file, nor a torchvision detector or classifier, nor detnet59, "
        "nor timm:NAME, nor file.py:factory / package.module:factory "
        "(e.g. fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn, resnet50, timm:resnet50d)"
    )


class _Images(torch.utils.data.Dataset):
    """The images of ``dataset`` at ``indices``, through ``transform``."""

    def __init__(self, dataset: CocoDetection, indices: list[int], transform) -> None:
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.dataset.load_image(self.indices[i]))


def rank_share(indices: list[int], batch_size: int, rank: int, world: int) -> list[int]:
    """The images one rank of ``world`` takes: whole batches of the one-process order,
    batch ``k`` to rank ``k % world``. Each batch holds the images one process would pad
    together, so per-image maps (GroupNorm statistics include the padding) are the same."""
    starts = range(rank * batch_size, len(indices), world * batch_size)
    return [i for start in starts for i in indices[start : start + batch_size]]


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
    sketch_rank: int = 0,
    description: str = "spectrum",
) -> Spectra:
    """The spectra of ``net`` (in eval mode, on ``device``) over the images ``indices``.

    Under ``torch.distributed`` each rank takes whole batches of the one-process order
    (:func:`rank_share`); the result is summed over the ranks (identical on every rank).
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
        _Images(dataset, rank_share(indices, batch_size, rank, world), transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list if detector else torch.stack,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collector = SpectrumCollector(net, include, sides, max_channels or None,
                                      images=max(1, len(loader.dataset)),
                                      sketch_rank=sketch_rank)  # fmt: skip
    if collector.skipped and rank == 0:
        console.print(f"skipping {len(collector.skipped)} map(s) wider than {max_channels} "
                      f"channels: {', '.join(collector.skipped)}", highlight=False)  # fmt: skip
    if collector.sketched and rank == 0:
        console.print(f"sketching {len(collector.sketched)} map(s) wider than {max_channels} "
                      f"channels at rank {sketch_rank} (their intrinsic dims are lower bounds, "
                      f"at most {sketch_rank}): {', '.join(collector.sketched)}",
                      highlight=False)  # fmt: skip
    if collector.unhooked and rank == 0:
        console.print(unhooked_note(collector.unhooked), highlight=False)
    with progress_bar(disable=rank != 0) as bar:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UncollectedMapsWarning)  # said below, on rank 0
            with collector, torch.no_grad():
                task = bar.add_task(description, total=len(loader.dataset), info="")
                for batch in loader:
                    net([image.to(device) for image in batch] if detector else batch.to(device))
                    bar.update(task, advance=len(batch))
        spectra = collector.spectra()
        if rank == 0:  # the decompositions take a while too (29 s for convnext_tiny): shown
            for note in uncollected_notes(collector, spectra):
                console.print(note, highlight=False)
            task = bar.add_task("eigenvalues", total=len(spectra.names), info="")
            spectra.decompose(advance=lambda: bar.update(task, advance=1))
    return spectra


def uncollected_notes(collector: SpectrumCollector, spectra: Spectra) -> list[str]:
    """One line each for the selected maps the spectra lack: those of layers whose weight
    the model used in a way that cannot be collected, and those that saw no sample."""
    notes = [missed_note(collector.missed)] if collector.missed else []
    unseen = [n for n in collector.names if n not in spectra.names and n not in collector.missed]
    if unseen:
        listed = ", ".join(unseen[:3]) + (f" and {len(unseen) - 3} more" if len(unseen) > 3 else "")
        notes.append(f"{len(unseen)} map(s) saw no sample on these images (their layer never "
                     f"ran, or on nothing) and are left out: {listed}")  # fmt: skip
    return notes


def sample_images(total: int, images: int, seed: int) -> list[int]:
    """``images`` indices of ``range(total)`` drawn at random with ``seed`` (all if fewer)."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[: min(images, total)].tolist()


def collect_spectra(
    model: str,
    data: str | Path,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    split: str = "train",
    images: int = 5000,
    seed: int = 0,
    batch_size: int = 2,
    include: list[str] | None = None,
    sides: list[str] | tuple[str, ...] = ("in", "out"),
    max_channels: int = 4096,
    sketch_rank: int = 0,
    min_size: int | None = None,
    device: str | None = None,
    workers: int = 2,
    force: bool = False,
) -> Spectra:
    """``eigenarch spectrum``: the spectra of ``model`` (see :func:`build_model`) over
    ``images`` images of ``data``'s ``split`` drawn with ``seed``, written to ``out`` (and its
    sidecar) by rank 0. Under ``torchrun``, join the process group first
    (:func:`eigenarch.distributed.init_distributed`): each process takes its share of the
    images. Every input and the writability of ``out`` are checked before the data pass; an
    existing ``out`` (an earlier run's spectra) is refused unless ``force``.
    """
    if images < 1 or batch_size < 1:
        raise EigenarchError(f"--images {images} / --batch-size {batch_size}: expected >= 1")
    if min_size is not None and min_size < 1:
        raise EigenarchError(f"--min-size {min_size}: expected a positive number of pixels")
    check_writable(out)  # a folder or a read-only place fails now, not after the data pass
    # a second process given the same --out is refused while this one works (rank 0 holds)
    with output_lock(out, folder=False) if dist_rank() == 0 else nullcontext():
        if Path(out).exists() and not force:
            raise EigenarchError(f"{out}: exists (an earlier run's spectra); pass --force to "
                                 f"overwrite it")  # fmt: skip
        device = parse_device(device)
        dataset = CocoDetection.from_root(data, split=split, masks=False)
        if len(dataset) == 0:
            raise EigenarchError(f"{data} {split}: no images to collect spectra from")
        device = str(local_device(device))
        if device.startswith("cuda"):
            torch.cuda.set_device(device)  # NCCL reduces on the current device
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
            torch.manual_seed(seed)
            net, detector = build_model(model, dataset.num_classes, min_size, weights)
            net.eval().to(device)
            if images > len(dataset) and dist_rank() == 0:
                console.print(f"{data} {split}: {len(dataset)} images, using all of them")
            chosen = sample_images(len(dataset), images, seed)
            spectra = stream_spectra(net, detector, dataset, chosen, batch_size=batch_size,
                                     workers=workers, device=device, include=include,
                                     sides=sides, max_channels=max_channels,
                                     sketch_rank=sketch_rank)  # fmt: skip
        spectra.meta = {"model": model, "data": str(data), "split": split, "images": len(chosen),
                        "seed": seed, "processes": world_size()}  # fmt: skip
        if weights is not None:
            spectra.meta["weights"] = str(weights)
        if dist_rank() == 0:
            spectra.save(out)
        return spectra
