"""``eigenarch evaluate``: COCO metrics of a detections file against a data set's split."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from eigenarch.data.coco import find_split
from eigenarch.evaluation.coco import COCO_METRICS, evaluate_detections
from eigenarch.io import atomic_write_json
from eigenarch.progress import console


def metrics_table(metrics: dict[str, dict[str, float]]) -> Table:
    """The COCO summary as a rich table: one row per IoU type, one column per metric."""
    table = Table("type", *COCO_METRICS)
    for iou_type, values in metrics.items():
        table.add_row(iou_type, *(f"{100 * values[m]:.1f}" if values[m] >= 0 else "-"
                                  for m in COCO_METRICS))  # fmt: skip
    return table


def evaluate(
    data: Path = typer.Option(..., help="COCO-layout folder holding the ground truth."),
    detections: Path = typer.Option(..., help="COCO results JSON (a list of detections)."),
    split: str = typer.Option("val", help="Split whose annotations are the ground truth."),
    iou_type: list[str] = typer.Option(["bbox"], help="IoU types: bbox, segm."),
    out: Path | None = typer.Option(None, help="Write the metrics here as JSON."),
) -> None:
    """Evaluate detections with pycocotools' COCOeval and print AP, AP50, AP75, APs, APm, APl."""
    annotation_file, _ = find_split(data, split)
    metrics = evaluate_detections(annotation_file, detections, iou_types=iou_type)
    console.print(metrics_table(metrics))
    if out is not None:
        atomic_write_json(out, metrics)
        console.print(f"metrics written to {out}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``eigenarch evaluate`` to the main app."""
    app.command("evaluate")(evaluate)
