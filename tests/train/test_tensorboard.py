"""TensorBoard events of training runs, read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import json
import sys

import pytest

from eigenarch.evaluation.coco import COCO_METRICS
from eigenarch.train.engine import Trainer
from eigenarch.train.loop import train_command, train_detector
from eigenarch.train.tensorboard import event_writer

from .conftest import TINY_ARGS, f32

EVENTS = "events.out.tfevents.*"


def jsonl(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_events_hold_the_metrics_log_and_every_evaluation(
    tiny_config, tmp_path, tensorboard_events
):
    cfg = tiny_config("run", kind="mask_rcnn", iters=2, checkpoint_every=0, eval_every=1)
    train_detector(cfg)
    run = tmp_path / "run"
    found, _ = tensorboard_events(run)
    lines = jsonl(run)
    losses = [key for key in lines[0] if key.startswith("loss_")]
    assert "loss_mask" in losses and len(losses) == 5
    coco = [f"{iou}/{name}" for iou in ("bbox", "segm") for name in COCO_METRICS]
    assert set(found) == {*losses, "total_loss", "lr", "time", "data_time", *coco}
    for tag, key in [("total_loss", "loss"), ("lr", "lr"), *((k, k) for k in losses)]:
        assert found[tag] == [(line["iteration"], f32(line[key])) for line in lines], tag
    evaluations = {  # the periodic evaluation at 1, the run's own at its end
        1: json.loads((run / "eval" / "iter_0000001" / "metrics.json").read_text()),
        2: json.loads((run / "metrics.json").read_text()),
    }
    for tag in coco:
        iou, name = tag.split("/")
        assert found[tag] == [(it, f32(m[iou][name])) for it, m in evaluations.items()], tag
    assert [step for step, _ in found["time"]] == [step for step, _ in found["data_time"]] == [1, 2]
    timings = zip(found["time"], found["data_time"], strict=True)
    assert all(0 <= data < time for (_, time), (_, data) in timings)


def test_a_resumed_run_repeats_no_step(tiny_config, tmp_path, monkeypatch, tensorboard_events):
    original = Trainer.run_step

    def killed_at_iteration_4(self, images, targets):
        if self.iter == 3:
            raise KeyboardInterrupt
        original(self, images, targets)

    monkeypatch.setattr(Trainer, "run_step", killed_at_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        train_detector(tiny_config("run"))  # checkpoints at 0 and 2, steps 1..3 logged
    monkeypatch.setattr(Trainer, "run_step", original)
    run = tmp_path / "run"
    found, _ = tensorboard_events(run)
    assert [step for step, _ in found["total_loss"]] == [1, 2, 3]
    train_detector(tiny_config("run"), resume=True)  # from 2: step 3 again, then 4
    found, _ = tensorboard_events(run)
    assert len(list(run.glob(EVENTS))) == 3  # the killed run's, the resumed one's, the final AP
    lines = jsonl(run)
    assert found["total_loss"] == [(line["iteration"], f32(line["loss"])) for line in lines]
    assert [step for step, _ in found["lr"]] == [step for step, _ in found["time"]] == [1, 2, 3, 4]
    assert [step for step, _ in found["bbox/AP"]] == [4]


def test_no_tensorboard_writes_no_events_and_never_loads_tensorboard(
    shapes_root, tmp_path, run_cli, monkeypatch
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it fails
    with pytest.raises(ImportError):
        event_writer(tmp_path / "on").__enter__()  # a writer loads it when it opens
    out = tmp_path / "off"
    r = run_cli("train", "--data", shapes_root, "--out", out, *TINY_ARGS, "--iters", "1",
                "--batch-size", "2", "--no-tensorboard")  # fmt: skip
    assert r.code == 0, r.stderr
    assert not list(out.rglob(EVENTS)) and len(jsonl(out)) == 1
    config = json.loads((out / "config.json").read_text())
    assert config["tensorboard"] is False
    assert train_command(config).endswith(" --no-tensorboard")  # the command that made it
    assert "-tensorboard" not in train_command({**config, "tensorboard": True})  # the default
