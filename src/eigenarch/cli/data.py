"""``eigenarch data ...``: generate the embedded data sets and check COCO-format data."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from eigenarch.cli.options import App, CpuWorkers, comma_list
from eigenarch.data.coco import CocoDetection
from eigenarch.data.shapes import (
    ShapesClsConfig,
    ShapesConfig,
    classification_classes,
    generate_shapes,
    generate_shapes_cls,
)
from eigenarch.progress import console, progress_bar

data_app = App(
    help="Generate the embedded data sets; check COCO-format data.", no_args_is_help=True
)


@data_app.command("shapes")
def shapes(
    out: Path = typer.Option(..., help="Output folder (COCO layout)."),
    train: int = typer.Option(2000, help="Training images."),
    val: int = typer.Option(500, help="Validation images."),
    size: int = typer.Option(256, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical files."),
    workers: CpuWorkers = None,
) -> None:
    """Write the synthetic shapes detection set: 8 classes, boxes, areas and polygon masks."""
    cfg = ShapesConfig(train=train, val=val, size=size, seed=seed)
    with progress_bar() as bar:
        task = bar.add_task("shapes", total=train + val)
        files = generate_shapes(out, cfg, workers=workers, on_image=lambda: bar.advance(task))
    for split, path in files.items():
        console.print(f"{split}: {path}", highlight=False)


@data_app.command("shapes-cls")
def shapes_cls(
    out: Path = typer.Option(..., help="Output folder (ImageFolder layout: split/class/image)."),
    train_per_class: int = typer.Option(200, help="Training images per class."),
    val_per_class: int = typer.Option(40, help="Validation images per class."),
    size: int = typer.Option(64, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Random seed."),
    workers: CpuWorkers = None,
) -> None:
    """Write the shapes classification set (shape x colour, 24 classes) for pre-training."""
    cfg = ShapesClsConfig(train_per_class, val_per_class, size, seed)
    total = (train_per_class + val_per_class) * len(classification_classes())
    with progress_bar() as bar:
        task = bar.add_task("shapes-cls", total=total)
        classes = generate_shapes_cls(out, cfg, workers=workers, on_image=lambda: bar.advance(task))
    console.print(f"{len(classes)} classes in {out}/train and {out}/val", highlight=False)


@data_app.command("check")
def check(
    data: Path = typer.Argument(..., help="COCO-layout folder (annotations/ + image folders)."),
    split: str = typer.Option(
        "train,val", metavar="SPLIT,...", help="Splits to check, comma-separated."
    ),
    masks: bool = typer.Option(False, help="Also rasterise every mask."),
) -> None:
    """Load every image and target of a COCO-format data set as training would; report counts."""
    table = Table("split", "images", "without annotations", "annotations", "crowd", "classes",
                  "dropped boxes", "clipped boxes")  # fmt: skip
    with progress_bar() as bar:
        for name in comma_list(split):
            dataset = CocoDetection.from_root(data, name, masks=masks)
            for _ in bar.track(dataset, description=f"check {name}"):
                pass
            table.add_row(
                name,
                str(len(dataset)),
                str(dataset.images_without_annotations),
                str(len(dataset.coco.anns)),
                str(dataset.crowd_annotations),
                str(dataset.num_classes - 1),
                str(dataset.dropped_boxes),
                str(dataset.clipped_boxes),
            )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``eigenarch data`` to the main app."""
    app.add_typer(data_app, name="data")
