"""Detector training: it learns, checkpoints, resumes exactly, stops on a non-finite loss."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torchvision.models.detection.roi_heads as roi_heads
from torchvision.ops import FrozenBatchNorm2d

from eigenarch.errors import EigenarchError
from eigenarch.io import output_lock
from eigenarch.models.backbone import BackboneOptions, parse_backbone
from eigenarch.models.detector import build_detector
from eigenarch.models.factory import trusted_factories
from eigenarch.train.checkpoint import detector_from_checkpoint
from eigenarch.train.engine import Trainer
from eigenarch.train.loop import TrainConfig, model_config, train_detector
from eigenarch.train.rundir import RunDir

from .conftest import TINY_ARGS


def test_training_lowers_the_loss_and_keeps_checkpoints(tiny_config, tmp_path, logged_steps):
    metrics = train_detector(tiny_config("run", iters=6, checkpoint_every=3))
    run = tmp_path / "run"
    losses = [entry["loss"] for entry in logged_steps(run)]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert [it for it, _ in RunDir(run).checkpoints()] == [0, 3, 6]
    assert set(metrics["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert json.loads((run / "metrics.json").read_text()) == metrics
    model, payload = detector_from_checkpoint(run / "checkpoints" / "iter_0000006.pt")
    assert payload["iteration"] == 6 and payload["train"]["seed"] == 0
    assert payload["data"]["category_names"][0] == "circle"
    assert model.roi_heads.box_predictor.cls_score.out_features == 9


def test_resume_after_a_kill_repeats_the_uninterrupted_run(
    tiny_config, tmp_path, monkeypatch, logged_steps
):
    train_detector(tiny_config("whole"))
    original = Trainer.run_step

    def killed_at_iteration_3(self, images, targets):
        if self.iter == 2:
            raise KeyboardInterrupt
        original(self, images, targets)

    monkeypatch.setattr(Trainer, "run_step", killed_at_iteration_3)
    with pytest.raises(KeyboardInterrupt):
        train_detector(tiny_config("killed"))
    monkeypatch.setattr(Trainer, "run_step", original)
    killed = tmp_path / "killed"
    assert [it for it, _ in RunDir(killed).checkpoints()] == [0, 2]
    train_detector(tiny_config("killed", seed=123), resume=True)  # saved settings win
    assert logged_steps(killed) == logged_steps(tmp_path / "whole")
    a = torch.load(killed / "checkpoints" / "iter_0000004.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "whole" / "checkpoints" / "iter_0000004.pt", weights_only=True)
    for key, value in a.items():
        assert torch.equal(value, b["model"][key]), key


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = roi_heads.fastrcnn_loss

    def poisoned(*args):
        calls["n"] += 1
        loss, box = original(*args)
        return (loss * float("nan"), box) if calls["n"] == 3 else (loss, box)

    monkeypatch.setattr(roi_heads, "fastrcnn_loss", poisoned)
    with pytest.raises(EigenarchError, match="non-finite loss at iteration 3.*iter_0000002.pt"):
        train_detector(tiny_config("nan"))
    assert [it for it, _ in RunDir(tmp_path / "nan").checkpoints()] == [0, 2]


def test_mask_rcnn_trains_and_reports_segm(tiny_config):
    metrics = train_detector(tiny_config("mask", kind="mask_rcnn", iters=2, checkpoint_every=0))
    assert set(metrics) == {"bbox", "segm"}


def test_training_leaves_the_callers_random_state_alone(tiny_config):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train_detector(tiny_config("rng", iters=1, checkpoint_every=0))
    assert torch.equal(torch.get_rng_state(), before)


def test_resume_takes_everything_from_the_runs_config(shapes_root, tmp_path, run_cli):
    out = tmp_path / "run"
    args = ["--out", out, "--iters", "2", "--batch-size", "2", "--checkpoint-every", "1"]
    assert run_cli("train", "--data", shapes_root, *args, *TINY_ARGS).code == 0
    (out / "checkpoints" / "iter_0000002.pt").unlink()
    resumed = run_cli("train", "--out", out, "--resume")  # as docs/train.md writes it
    assert resumed.code == 0, resumed.stderr
    assert (out / "checkpoints" / "iter_0000002.pt").is_file()
    missing = run_cli("train", "--out", tmp_path / "new")
    assert missing.code == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "--data: required (a COCO-layout folder), unless --resume" in missing.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("resume", [False, True], ids=["train", "resume"])
def test_a_second_process_on_the_same_run_is_refused(shapes_root, tmp_path, run_cli, resume):
    out = tmp_path / "run"
    args = ["--out", out, "--iters", "1", "--batch-size", "2", *TINY_ARGS]
    if resume:
        assert run_cli("train", "--data", shapes_root, *args).code == 0
    with output_lock(out):  # the first process, still training
        second = run_cli("train", "--data", shapes_root, *args, *(["--resume"] if resume else []))
    assert second.code == 2 and len(second.stderr.strip().splitlines()) == 1
    assert f"--out {out}: in use by another process (pid {os.getpid()})" in second.stderr
    assert not list(out.rglob(".*lock"))


#: The module each recorded norm builds.
NORM_MODULES = {"gn": torch.nn.GroupNorm, "bn": torch.nn.BatchNorm2d,
                "frozen_bn": FrozenBatchNorm2d}  # fmt: skip
#: A factory whose network sets its own normalisation (BatchNorm).
FACTORY = "import torchvision\n\n\ndef net():\n    return torchvision.models.resnet18()\n"


def _backbone_text(kind: str, tmp_path) -> str:
    """``--backbone`` of each kind: ResiaNet widths, a builder, and width-spec files of a
    ResiaNet (GroupNorm) and of a factory (its own norm)."""
    if kind == "resianet":
        return "16,16,32,16,32,32,64,32,64"
    if kind == "builder":
        return "resnet18"
    spec = tmp_path / f"{kind}.json"
    if kind == "resianet_spec":
        parse_backbone("16,16,32,16,32,32,64,32,64", BackboneOptions("gn", 8)).save(spec)
    else:
        (tmp_path / "mynet.py").write_text(FACTORY)
        parse_backbone(f"{tmp_path / 'mynet.py'}:net").save(spec)
    return str(spec)


@pytest.mark.parametrize("norm", [None, "gn", "bn", "frozen_bn"])
@pytest.mark.parametrize("kind", ["resianet", "builder", "resianet_spec", "factory_spec"])
def test_the_built_backbone_normalises_as_config_json_says(kind, norm, tmp_path):
    """``--norm`` either builds the norm config.json records or is refused in one line;
    never recorded and ignored (a factory's spec used to record ``gn`` and build BN)."""
    text = _backbone_text(kind, tmp_path)
    cfg = TrainConfig(data="d", out="o", backbone=text, norm=norm, gn_groups=8)
    with trusted_factories([f"{tmp_path / 'mynet.py'}:net"]):
        try:
            config = model_config(cfg, 3)
        except EigenarchError as exc:
            # only where the backbone sets its own: a factory, or a spec file's other norm
            own = kind == "factory_spec" or (kind == "resianet_spec" and norm != "gn")
            assert own and norm is not None and "does not apply" in str(exc), exc
            return
        body = build_detector(**config).backbone.body
    recorded = config["backbone"]["norm"]
    assert norm in (None, recorded)
    types = {type(m) for m in body.modules() if isinstance(m, tuple(NORM_MODULES.values()))}
    own = torch.nn.BatchNorm2d if kind == "factory_spec" else None  # the factory's own
    assert types == {NORM_MODULES[recorded] if recorded else own}, (recorded, types)
