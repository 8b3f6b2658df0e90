"""``eigenarch spectrum``: collect the eigenspectra of a model on a data set; ``show`` a file."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Column, Table

from eigenarch.cli.options import (
    App,
    AsJson,
    Device,
    Include,
    MaxChannels,
    Sides,
    SketchRank,
    Threshold,
    Workers,
    comma_list,
    trusting,
)
from eigenarch.distributed import init_distributed, is_main
from eigenarch.errors import EigenarchError
from eigenarch.options import parse_device, parse_sides, parse_threshold
from eigenarch.progress import console
from eigenarch.spectrum.spectra import Spectra
from eigenarch.spectrum.stream import collect_spectra

spectrum_app = App(
    help="Eigenspectra of every conv / linear map of a model, and their intrinsic dimensions.",
    no_args_is_help=True,
)


def summary_table(spectra: Spectra, threshold: float) -> Table:
    """Map, channels, samples, intrinsic dimension at ``threshold`` and share of channels; a
    sketched map's dimension is shown as the lower bound it is, with its sketch's rank."""
    table = Table(Column("map", overflow="fold"), "channels", "samples",
                  f"dim @ {threshold:.3g}", "share", title="intrinsic dimensionality")  # fmt: skip
    for row in spectra.summary(threshold):
        rank = row["sketch_rank"]
        dim = f">= {row['intrinsic_dim']} (sketch {rank})" if rank else str(row["intrinsic_dim"])
        table.add_row(row["name"], str(row["channels"]), str(row["samples"]), dim,
                      f"{100 * row['share']:.1f}%")  # fmt: skip
    return table


def _report(spectra: Spectra, threshold: float, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"threshold": threshold, "maps": spectra.summary(threshold)}, indent=2))
    else:
        Console().print(summary_table(spectra, threshold))


def collect(
    ctx: typer.Context,
    model: str = typer.Option(
        None,
        help="torchvision builder name (random weights, e.g. fasterrcnn_resnet50_fpn, "
        "resnet50), timm:NAME (timm's classifier, never downloaded), a checkpoint file, or "
        "file.py:factory / package.module:factory (calls your function: runs your code).",
    ),
    weights: Path = typer.Option(
        None,
        help="State dict for a builder name or factory: plain or .safetensors, a checkpoint "
        "of torchvision's references ('model') or timm's train.py ('state_dict'), module./model. "
        "prefixes removed; read with weights_only=True.",
    ),
    data: Path = typer.Option(None, help="COCO-layout data folder (see `eigenarch data`)."),
    split: str = typer.Option("train", help="Split to sample images from."),
    images: int = typer.Option(5000, help="Images sampled at random (all if fewer)."),
    seed: int = typer.Option(0, help="Seed of the image sample and of random weights."),
    out: Path = typer.Option(
        Path("spectra.safetensors"), help="Spectra file to write (and <out>.json beside it)."
    ),
    batch_size: int = typer.Option(2, help="Images per forward pass (per process)."),
    threshold: Threshold = "1e-3",
    sides: Sides = "in,out",
    include: Include = None,
    max_channels: MaxChannels = 4096,
    sketch_rank: SketchRank = 0,
    min_size: int = typer.Option(
        None,
        help="Detectors: shorter side the model's transform "
        "resizes images to (default: the model's own, 800).",
    ),
    device: Device = None,
    workers: Workers = 2,
    as_json: AsJson = False,
    force: bool = typer.Option(False, help="Overwrite --out if it exists."),
) -> None:
    """Collect eigenspectra: random images of a data set through a model, every map hooked.

    Runs unchanged under `torchrun --nproc_per_node=N -m eigenarch spectrum ...`: each
    process takes its share of the images; rank 0 writes the file.
    """
    if ctx.invoked_subcommand is not None:
        return
    if model is None or data is None:
        raise EigenarchError("eigenarch spectrum needs --model and --data (see --help)")
    cut, device = parse_threshold(threshold), parse_device(device)
    init_distributed(device)
    spectra = collect_spectra(model, data, out, weights=weights, split=split, images=images,
                              seed=seed, batch_size=batch_size, include=comma_list(include),
                              sides=parse_sides(sides), max_channels=max_channels,
                              sketch_rank=sketch_rank, min_size=min_size, device=device,
                              workers=workers, force=force)  # fmt: skip
    if is_main():
        _report(spectra, cut, as_json)
        console.print(f"wrote {out} ({len(spectra.names)} maps, {spectra.meta['images']} images)",
                      highlight=False)  # fmt: skip


@spectrum_app.command("show")
def show(
    file: Path = typer.Argument(..., help="Spectra file written by `eigenarch spectrum`."),
    threshold: Threshold = "1e-3",
    as_json: AsJson = False,
) -> None:
    """Re-threshold a saved spectra file (no data needed): intrinsic dimension of every map."""
    _report(Spectra.load(file), parse_threshold(threshold), as_json)


def register(app: typer.Typer) -> None:
    """Add ``eigenarch spectrum`` (and ``spectrum show``) to the main CLI."""
    spectrum_app.callback(invoke_without_command=True)(trusting(collect))
    app.add_typer(spectrum_app, name="spectrum")
