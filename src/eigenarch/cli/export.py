"""``eigenarch export`` and ``eigenarch bench``: a resized backbone to take away, measured."""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from eigenarch.cli.options import AsJson, Device, trusting
from eigenarch.cli.tables import bench_table
from eigenarch.models.bench import bench_backbones
from eigenarch.models.export import export_backbone
from eigenarch.options import parse_device

SPEC_HELP = "The backbone: a width-spec JSON (eigenarch search), a builder name or nine widths."


class Detector(str, Enum):
    faster_rcnn = "faster_rcnn"
    mask_rcnn = "mask_rcnn"


def export(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    out: Path = typer.Option(
        ..., help="Folder to write (model.safetensors, spec.json, build.py, model.onnx)."
    ),  # fmt: skip
    weights: Path = typer.Option(
        None, help="Backbone weights: a checkpoint or state dict (torch file or .safetensors)."
    ),
    force: bool = typer.Option(False, help="Replace --out if it exists and is not empty."),
    detector: Detector = typer.Option(
        None, help="Also write detector.onnx: the whole detector (fresh heads) over the backbone."
    ),
    num_classes: int = typer.Option(91, help="Classes of --detector, background included."),
) -> None:
    """Write a resized backbone for another code base: weights, spec, build.py, ONNX."""
    kind = None if detector is None else detector.value
    result = export_backbone(spec, out, weights, force, kind, num_classes)
    errors = ", ".join(f"{name} {error:.1e}" for name, error in result.onnx_errors.items())
    Console().print(
        f"wrote {result.out}: {', '.join(result.files)}; {result.loaded} tensors from "
        f"{weights or 'no weights file'}, {len(result.fresh)} fresh; onnxruntime vs PyTorch "
        f"(relative): {errors}",
        highlight=False,
    )


def bench(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    base: str = typer.Option(
        None,
        help="The network to compare with (a spec file, a builder name, nine widths).",
        show_default="the network the spec resizes",
    ),  # fmt: skip
    size: int = typer.Option(800, help="Image height and width in pixels."),
    batch: int = typer.Option(1, help="Images per forward."),
    threads: int = typer.Option(1, help="PyTorch intra-op threads."),
    repeats: int = typer.Option(10, help="Timed forwards of each network and part."),
    warmup: int = typer.Option(2, help="Untimed forwards of each before timing."),
    device: Device = None,
    detector: Detector = typer.Option(Detector.faster_rcnn, help="The detector benched."),
    as_json: AsJson = False,
) -> None:
    """Latency, peak memory and MACs of the backbone and the detector against the base network."""
    result = bench_backbones(spec, base, size, batch, threads, repeats, warmup,
                             parse_device(device), detector.value)  # fmt: skip
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(result)))
        return
    Console().print(bench_table(result))
    Console().print(f"peak memory: {result.memory}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``export`` and ``bench`` to the main CLI."""
    app.command("export")(trusting(export))
    app.command("bench")(trusting(bench))
