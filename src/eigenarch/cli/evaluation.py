"""``eigenarch evaluate``: COCO metrics of a trained detector or of a detections file."""

from __future__ import annotations

from pathlib import Path

import typer

from eigenarch.cli.options import Device, comma_list, trusting
from eigenarch.cli.tables import metrics_table
from eigenarch.data.coco import CocoDetection, find_split
from eigenarch.distributed import init_distributed, is_main, local_device
from eigenarch.errors import EigenarchError
from eigenarch.evaluation.coco import evaluate_detections
from eigenarch.io import atomic_write_json, check_writable, output_file
from eigenarch.models.detector import MASK_KINDS
from eigenarch.options import parse_device
from eigenarch.progress import console
from eigenarch.train.checkpoint import detector_from_checkpoint
from eigenarch.train.evaluate import evaluate_model
from eigenarch.train.rundir import RunDir


def _model_metrics(
    checkpoint: Path,
    data: Path | None,
    split: str,
    out: Path | None,
    device: str,
    batch_size: int,
) -> tuple[dict, Path]:
    init_distributed(device)
    model, payload = detector_from_checkpoint(checkpoint)
    data = data or payload["train"].get("data")
    if data is None:
        raise EigenarchError(f"{checkpoint}: names no data folder; give --data")
    masks = payload["config"].get("kind") in MASK_KINDS
    dataset = CocoDetection.from_root(data, split, masks=masks)
    if dataset.category_ids != payload["data"].get("category_ids"):
        raise EigenarchError(f"{data}: categories differ from those {checkpoint} was trained on")
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == RunDir.CHECKPOINTS else None
    out = out or (run_dir or checkpoint.parent) / RunDir.EVAL / f"{checkpoint.stem}-{split}"
    check_writable(out, folder=not _is_file(out))  # before the pass over the data
    iou_types = ("bbox", "segm") if masks else ("bbox",)
    device_ = local_device(device)
    folder = None if _is_file(out) else out
    metrics = evaluate_model(model.to(device_), dataset, device_, iou_types, folder, batch_size)
    return metrics, out


def _is_file(out: Path) -> bool:
    """``--out`` ending in ``.json`` is the metrics file; any other path is a folder."""
    return out.suffix.lower() == ".json"


def _check_out(out: Path | None) -> None:
    """Refuse an ``--out`` that cannot be written before any work is done."""
    if out is None:
        return
    if _is_file(out):
        output_file(out)
    elif out.exists() and not out.is_dir():
        raise EigenarchError(
            f"--out {out}: is a file; expected a folder for metrics.json and detections.json "
            "(or a path ending in .json for the metrics alone)"
        )


def evaluate(
    run: Path | None = typer.Option(None, help="A training run: evaluate its last checkpoint."),
    checkpoint: Path | None = typer.Option(None, help="A detector checkpoint to evaluate."),
    detections: Path | None = typer.Option(None, help="A COCO results JSON to evaluate."),
    data: Path | None = typer.Option(None, help="COCO-layout folder (default: the run's data)."),
    split: str = typer.Option("val", help="Split whose annotations are the ground truth."),
    iou_type: str = typer.Option(
        "bbox", metavar="TYPE,...", help="For --detections: bbox, segm or bbox,segm."
    ),
    out: Path | None = typer.Option(
        None,
        help="A .json file for the metrics, or a folder for metrics.json (and, for a model, "
        "detections.json).",
    ),
    device: Device = None,
    batch_size: int = typer.Option(2, help="Images per forward pass."),
) -> None:
    """Print COCO AP, AP50, AP75, APs, APm, APl (bbox, and segm for Mask R-CNN)."""
    if sum(x is not None for x in (run, checkpoint, detections)) != 1:
        raise EigenarchError("give exactly one of --run, --checkpoint and --detections")
    _check_out(out)
    if detections is not None:
        if data is None:
            raise EigenarchError("--detections needs --data (the ground truth's folder)")
        annotation_file, _ = find_split(data, split)
        metrics = evaluate_detections(annotation_file, detections, iou_types=comma_list(iou_type))
    else:
        if run is not None:
            found = RunDir(run).checkpoints()
            if not found:
                raise EigenarchError(f"--run {run}: no checkpoints/iter_*.pt in it")
            checkpoint = found[-1][1]
        metrics, out = _model_metrics(
            checkpoint, data, split, out, parse_device(device), batch_size
        )
    if is_main():
        console.print(metrics_table(metrics))
        if out is not None:
            target = out if _is_file(out) else out / RunDir.METRICS
            if detections is not None or _is_file(out):  # else evaluate_model wrote it
                atomic_write_json(target, metrics)
            console.print(f"metrics written to {target}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``eigenarch evaluate`` to the main app."""
    app.command("evaluate")(trusting(evaluate))
