"""``eigenarch detnas``: supernet -> search -> retrain end to end, resume, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from eigenarch.data.shapes import ShapesClsConfig, generate_shapes_cls
from eigenarch.nas.shufflenet import make_space, path_macs
from eigenarch.nas.supernet import DetectionFitness
from eigenarch.train.checkpoint import load_checkpoint
from eigenarch.train.rundir import RunDir

from ..nas.conftest import DETECTOR_ARGS, SEARCH_ARGS, SPACE_ARGS

CLI_SPACE = make_space(1, 8, (16, 32, 48, 64), (1, 1, 2, 1))


def test_supernet_search_retrain_end_to_end(
    shapes_root, tmp_path, run_cli, monkeypatch, tensorboard_events
):
    supernet = tmp_path / "supernet"
    r = run_cli("detnas", "supernet", "--data", shapes_root, "--out", supernet,
                *SPACE_ARGS, *DETECTOR_ARGS, "--iters", "2", "--holdout", "3")  # fmt: skip
    assert r.code == 0, r.stderr
    lines = [json.loads(line) for line in (supernet / "metrics.jsonl").read_text().splitlines()]
    found, _ = tensorboard_events(supernet)  # the metrics log's losses and lr, and timings
    losses = [key for key in lines[0] if key.startswith("loss_")]
    assert set(found) == {*losses, "total_loss", "lr", "time", "data_time"}
    for tag, key in [("total_loss", "loss"), ("lr", "lr"), *((k, k) for k in losses)]:
        assert found[tag] == [(line["iteration"], float(np.float32(line[key]))) for line in lines]
    assert [it for it, _ in RunDir(supernet).checkpoints()] == [0, 2]
    held = json.loads((supernet / "holdout.json").read_text())["holdout"]
    assert len(held) == 3

    # The search reads the training split only: without the val split it runs all the same.
    data = tmp_path / "no-val"
    shutil.copytree(shapes_root, data)
    (data / "annotations" / "instances_val.json").unlink()
    evaluated, killed, original = [], [], DetectionFitness.evaluate

    class Killed(Exception):
        pass

    def interrupted(self, path):
        if len(evaluated) == 3 and not killed:
            killed.append(True)
            raise Killed
        evaluated.append(tuple(path))
        assert self.val_set.image_ids == held  # fitness on the held-out training images
        assert not set(self.bn_set.image_ids) & set(held) and len(self.bn_set) == 2
        return original(self, path)

    search = tmp_path / "search"
    checkpoint = supernet / "checkpoints" / "iter_0000002.pt"
    args = ["detnas", "search", "--supernet", checkpoint, "--data", data, "--out", search]
    monkeypatch.setattr(DetectionFitness, "evaluate", interrupted)
    with pytest.raises(Killed):
        run_cli(*args, *SEARCH_ARGS)
    assert run_cli(*args, *SEARCH_ARGS).code == 2  # the folder holds a search: --resume
    r = run_cli(*args, "--resume", "--population", "99", "--json")
    assert r.code == 0, r.stderr
    monkeypatch.setattr(DetectionFitness, "evaluate", original)
    result = json.loads(r.stdout)
    assert len(evaluated) == result["evaluations"] == 8 == len(set(evaluated))  # saved sizes
    assert [g["evaluated"] for g in result["generations"]] == [4, 4]
    best = result["best"]
    assert 0 <= best["fitness"] <= 1 and best["macs"] == path_macs(CLI_SPACE, best["path"])
    assert best["macs"] <= 14e6
    for name in ("fitness.png", "fitness.svg", "choices.png", "choices.svg"):
        assert (search / name).stat().st_size > 1000, name
    generation = json.loads((search / "generations" / "gen_001.json").read_text())
    assert {c["origin"] for c in generation["candidates"]} <= {"mutation", "crossover", "random"}

    retrain = tmp_path / "retrain"
    r = run_cli("detnas", "retrain", "--path", search, "--data", shapes_root, "--out", retrain,
                *DETECTOR_ARGS, "--iters", "2", "--no-tensorboard")  # fmt: skip
    assert r.code == 0, r.stderr
    assert not list(retrain.glob("events.out.tfevents.*"))
    metrics = json.loads((retrain / "metrics.json").read_text())
    assert 0 <= metrics["bbox"]["AP"] <= 1
    payload = load_checkpoint(retrain / "checkpoints" / "iter_0000002.pt")
    assert payload["config"]["backbone"]["path"] == best["path"]
    assert not any(".choices." in key for key in payload["model"])  # the stand-alone network
    r = run_cli("train", "--backbone", search / "best_path.json", "--data", shapes_root,
                "--out", tmp_path / "train", *DETECTOR_ARGS, "--iters", "1")  # fmt: skip
    assert r.code == 0, r.stderr


def test_supernet_pretraining_initialises_the_detection_supernet(
    tmp_path, shapes_root, run_cli, tensorboard_events
):
    images = tmp_path / "cls"
    generate_shapes_cls(images, ShapesClsConfig(1, 1, size=32), workers=1)
    weights = tmp_path / "supernet-cls.pt"
    r = run_cli("detnas", "pretrain", "--data", images, "--out", weights, *SPACE_ARGS,
                "--epochs", "1", "--batch-size", "8", "--size", "32", "--workers", "0",
                "--no-tensorboard")  # fmt: skip
    assert r.code == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls", "supernet-cls.pt"]
    pretrained = load_checkpoint(weights, expect="eigenarch.classifier")["model"]
    assert any(".choices.3." in key for key in pretrained)
    r = run_cli("detnas", "supernet", "--data", shapes_root, "--out", tmp_path / "sn",
                *SPACE_ARGS, *DETECTOR_ARGS, "--iters", "1", "--holdout", "2",
                "--init", weights)  # fmt: skip
    assert r.code == 0, r.stderr
    assert [step for step, _ in tensorboard_events(tmp_path / "sn")[0]["total_loss"]] == [1]
    start = load_checkpoint(tmp_path / "sn" / "checkpoints" / "iter_0000000.pt")["model"]
    key = "stage2.0.choices.1.main.0.weight"
    assert torch.equal(start["backbone.body." + key], pretrained[key])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["count", "--path", "1,2"], "has 2 choices; this search space has 20"),
        (["count", "--channels", "16,32"], "four numbers"),
        (["supernet", "--data", "x", "--out", "y", "--backbone", "resnet50"], "--backbone"),
        (["search", "--supernet", "missing.pt", "--out", "s"], "checkpoint not found"),
        (["search", "--supernet", "m.pt", "--out", "s", "--flops", "lots"], "--flops 'lots'"),
        (["search", "--supernet", "m.pt", "--out", "s", "--resume"], "search.json not found"),
        (["retrain", "--path", "0,1", "--data", "d", "--out", "o"], "has 2 choices"),
        (["retrain", "--path", "nowhere", "--data", "d", "--out", "o"], "not a search folder"),
        (["retrain", "--data", "d", "--out", "o"], "--path: required"),
    ],
)
def test_bad_input_gives_one_line_errors(args, message, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli("detnas", *args)
    assert r.code == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_count_reports_a_path_and_the_space(run_cli):
    path = "2,1,2,0,2,1,1,2,3,3,1,3,0,0,3,1,3,1,3,2"  # the paper's COCO-FPN-300M result
    r = run_cli("detnas", "count", "--path", path, "--json")
    assert r.code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["path"] == path and (info["macs"], info["params"]) == (321_219_008, 3_500_960)
    r = run_cli("detnas", "count", "--space", "2", "--json")
    info = json.loads(r.stdout)
    assert info["blocks"] == 40 and info["min_macs"] < 1.3e9 < info["max_macs"]
