"""``eigenarch spectrum``: collect the eigenspectra of a model on a data set; ``show`` a file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torchvision
import typer
from rich.console import Console
from rich.table import Column, Table
from torchvision.transforms import v2

from eigenarch.data.coco import CocoDetection
from eigenarch.distributed import init_distributed, local_device, world_size
from eigenarch.distributed import rank as dist_rank
from eigenarch.errors import EigenarchError
from eigenarch.io import load_torch, output_file
from eigenarch.models.backbones import classifier_by_name
from eigenarch.progress import console, progress_bar
from eigenarch.spectrum.collector import SIDES, SpectrumCollector
from eigenarch.spectrum.spectra import Spectra
from eigenarch.train.checkpoint import DETECTOR_FORMAT, detector_from_config, load_weights
from eigenarch.widths.cli import parse_threshold

spectrum_app = typer.Typer(
    help="Eigenspectra of every conv / linear map of a model, and their intrinsic dimensions.",
    no_args_is_help=True,
)

#: ImageNet statistics, as torchvision's classification weights normalise their inputs.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_sides(text: str) -> tuple[str, ...]:
    """``"in,out"`` -> ``("in", "out")``: the maps ``--sides`` selects."""
    sides = tuple(part.strip() for part in text.split(","))
    if not sides or any(side not in SIDES for side in sides):
        raise EigenarchError(f"--sides {text!r}: expected in, out or in,out")
    return sides


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
        else v2.Compose([v2.Resize(256), v2.CenterCrop(224), v2.Normalize(_MEAN, _STD)])
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


def summary_table(spectra: Spectra, threshold: float) -> Table:
    """Map, channels, samples, intrinsic dimension at ``threshold`` and share of channels."""
    table = Table(Column("map", overflow="fold"), "channels", "samples",
                  f"dim @ {threshold:.3g}", "share", title="intrinsic dimensionality")  # fmt: skip
    for row in spectra.summary(threshold):
        table.add_row(row["name"], str(row["channels"]), str(row["samples"]),
                      str(row["intrinsic_dim"]), f"{100 * row['share']:.1f}%")  # fmt: skip
    return table


def _report(spectra: Spectra, threshold: float, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"threshold": threshold, "maps": spectra.summary(threshold)}, indent=2))
    else:
        Console().print(summary_table(spectra, threshold))


@spectrum_app.callback(invoke_without_command=True)
def collect(
    ctx: typer.Context,
    model: str = typer.Option(
        None,
        help="torchvision builder name (random weights) or a "
        "checkpoint file, e.g. fasterrcnn_resnet50_fpn, resnet50.",
    ),
    data: Path = typer.Option(None, help="COCO-layout data folder (see `eigenarch data`)."),
    split: str = typer.Option("train", help="Split to sample images from."),
    images: int = typer.Option(5000, help="Images sampled at random (all if fewer)."),
    seed: int = typer.Option(0, help="Seed of the image sample and of random weights."),
    out: Path = typer.Option(
        Path("spectra.safetensors"), help="Spectra file to write (and <out>.json beside it)."
    ),
    batch_size: int = typer.Option(2, help="Images per forward pass (per process)."),
    threshold: str = typer.Option(
        "1e-3", help="Eigenvalue threshold T of the table; 1e-3.5 means 10^-3.5."
    ),
    sides: str = typer.Option("in,out", help="Maps to collect: in, out or in,out."),
    include: list[str] = typer.Option(
        None,
        help="fnmatch pattern over module paths or map names (repeatable), e.g. 'backbone.body.*'.",
    ),
    max_channels: int = typer.Option(
        4096, help="Skip maps wider than this unless --include names them exactly (0: no limit)."
    ),
    min_size: int = typer.Option(
        None,
        help="Detectors: shorter side the model's transform "
        "resizes images to (default: the model's own, 800).",
    ),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda if available)."),
    workers: int = typer.Option(
        2, min=0, help="Data-loading worker processes (0: load in the main process)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Collect eigenspectra: random images of a data set through a model, every map hooked.

    Runs unchanged under `torchrun --nproc_per_node=N -m eigenarch spectrum ...`: each
    process takes its share of the images; rank 0 writes the file.
    """
    if ctx.invoked_subcommand is not None:
        return
    if model is None or data is None:
        raise EigenarchError("eigenarch spectrum needs --model and --data (see --help)")
    cut = parse_threshold(threshold)
    if images < 1 or batch_size < 1:
        raise EigenarchError(f"--images {images} / --batch-size {batch_size}: expected >= 1")
    if min_size is not None and min_size < 1:
        raise EigenarchError(f"--min-size {min_size}: expected a positive number of pixels")
    output_file(out)  # a folder there fails now, not after the data pass
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EigenarchError(f"--device {device}: CUDA is not available on this machine")
    dataset = CocoDetection.from_root(data, split=split, masks=False)
    if len(dataset) == 0:
        raise EigenarchError(f"{data} {split}: no images to collect spectra from")
    rank, world = init_distributed(device)
    device = str(local_device(device))
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # NCCL reduces on the current device
    torch.manual_seed(seed)
    net, detector = build_model(model, dataset.num_classes, min_size)
    net.eval().to(device)
    if images > len(dataset) and rank == 0:
        console.print(f"{data} {split}: {len(dataset)} images, using all of them")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    chosen = order[: min(images, len(dataset))].tolist()
    spectra = stream_spectra(net, detector, dataset, chosen, batch_size=batch_size,
                             workers=workers, device=device, include=include or None,
                             sides=parse_sides(sides), max_channels=max_channels)  # fmt: skip
    spectra.meta = {"model": model, "data": str(data), "split": split, "images": len(chosen),
                    "seed": seed, "processes": world}  # fmt: skip
    if rank == 0:
        spectra.save(out)
        _report(spectra, cut, as_json)
        console.print(f"wrote {out} ({len(spectra.names)} maps, {len(chosen)} images)",
                      highlight=False)  # fmt: skip


@spectrum_app.command("show")
def show(
    file: Path = typer.Argument(..., help="Spectra file written by `eigenarch spectrum`."),
    threshold: str = typer.Option("1e-3", help="Eigenvalue threshold T; 1e-3.5 means 10^-3.5."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Re-threshold a saved spectra file (no data needed): intrinsic dimension of every map."""
    _report(Spectra.load(file), parse_threshold(threshold), as_json)


def register(app: typer.Typer) -> None:
    """Add ``eigenarch spectrum`` (and ``spectrum show``) to the main CLI."""
    app.add_typer(spectrum_app, name="spectrum")
