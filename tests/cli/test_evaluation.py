"""``eigenarch evaluate``: detections or a run evaluated; ``--out`` ending in .json is the
metrics file, else a folder."""

from __future__ import annotations

import json

import pytest
from pycocotools import mask as mask_utils

from eigenarch.data.coco import load_coco_json


def test_out_json_is_the_metrics_file(tiny_run, tmp_path, run_cli):
    out = tmp_path / "results" / "metrics.json"
    result = run_cli("evaluate", "--run", tiny_run, "--out", out)
    assert result.code == 0, result.stderr
    assert out.is_file() and json.loads(out.read_text()) == json.loads(
        (tiny_run / "metrics.json").read_text()
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.json"]
    assert f"metrics written to {out}" in result.stderr
    detections = tmp_path / "dets.json"
    detections.write_text((tiny_run / "detections.json").read_text())
    again = tmp_path / "from-detections.json"
    data = json.loads((tiny_run / "config.json").read_text())["data"]
    result = run_cli("evaluate", "--detections", detections, "--data", data, "--out", again)
    assert result.code == 0 and json.loads(again.read_text()) == json.loads(out.read_text())


def test_out_folder_gets_metrics_and_detections(tiny_run, tmp_path, run_cli):
    out = tmp_path / "eval"
    assert run_cli("evaluate", "--run", tiny_run, "--out", out).code == 0
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "metrics.json"]


@pytest.mark.parametrize(("name", "message"), [("m.json", "is a folder"), ("m.txt", "is a file")])
def test_an_out_of_the_wrong_kind_is_refused_before_evaluating(
    tiny_run, tmp_path, run_cli, name, message
):
    out = tmp_path / name
    out.mkdir() if name.endswith(".json") else out.write_text("")
    result = run_cli("evaluate", "--run", tiny_run, "--out", out)
    assert result.code == 2 and result.stderr.startswith("error:") and message in result.stderr
    assert "evaluate" not in result.stderr.split("error:")[0]  # before the pass over the images


def test_metrics_table_says_n_a_for_an_absent_area():
    from rich.console import Console

    from eigenarch.cli.evaluation import metrics_table

    console = Console(record=True, width=120)
    values = {"AP": 0.5, "AP50": 0.75, "AP75": 0.25, "APs": -1.0, "APm": 0.125, "APl": 0.0}
    console.print(metrics_table({"bbox": values}))
    row = next(line for line in console.export_text().splitlines() if "bbox" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells == ["bbox", "50.0", "75.0", "25.0", "n/a", "12.5", "0.0"]  # 0 is a value


def test_evaluate_command(shapes_root, tmp_path, run_cli):
    gt = load_coco_json(shapes_root / "annotations" / "instances_val.json")
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
            "segmentation": mask_utils.frPyObjects(a["segmentation"], 128, 128),
        }
        for a in gt.anns.values()
    ]
    for det in dets:
        det["segmentation"] = mask_utils.merge(det["segmentation"])
        det["segmentation"]["counts"] = det["segmentation"]["counts"].decode()
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    args = ["--iou-type", "bbox,segm", "--out", tmp_path / "ev"]
    result = run_cli("evaluate", "--data", shapes_root, "--detections", path, *args)
    assert result.code == 0, result.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP50"] == 1.0
    assert "100.0" in result.stderr
    path.write_text("[{")
    result = run_cli("evaluate", "--data", shapes_root, "--detections", path)
    assert result.code == 2 and "invalid JSON" in result.stderr
    result = run_cli("evaluate", "--detections", path, "--run", tmp_path)
    assert result.code == 2
    assert "exactly one of --run, --checkpoint and --detections" in result.stderr
