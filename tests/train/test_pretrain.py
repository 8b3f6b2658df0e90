"""Classifier pre-training: runs, resumes exactly, and feeds detector initialisation."""

from __future__ import annotations

import pytest
import torch

import eigenarch.io
import eigenarch.train.pretrain as pretrain
from eigenarch.data.shapes import ShapesClsConfig, generate_shapes_cls
from eigenarch.errors import EigenarchError
from eigenarch.models.weights import read_backbone_weights
from eigenarch.train.schedule import classifier_schedule

from .conftest import TINY_WIDTHS, f32


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    generate_shapes_cls(root, ShapesClsConfig(2, 1, size=32), workers=1)
    return root


def _config(cls_root, out, **overrides):
    settings = dict(
        data=str(cls_root),
        out=str(out),
        backbone=TINY_WIDTHS,
        gn_groups=8,
        epochs=2,
        batch_size=16,
        lr=0.4,
        size=32,
        workers=0,
    )
    return pretrain.PretrainConfig(**{**settings, **overrides})


def test_pretraining_resumes_exactly_and_initialises_a_detector(
    cls_root, tmp_path, monkeypatch, tensorboard_events
):
    whole = pretrain.pretrain_classifier(_config(cls_root, tmp_path / "whole.pt"))
    assert len(whole["history"]) == 2 and 0.0 <= whole["val_accuracy"] <= 1.0
    assert all(0.0 <= e["val_accuracy"] <= e["val_top5"] <= 1.0 for e in whole["history"])
    original = pretrain.ClassifierTrainer.run_step

    def killed_in_epoch_2(self, images, labels):
        if self.iter == self.max_iter // 2 + 1:
            raise KeyboardInterrupt
        return original(self, images, labels)

    monkeypatch.setattr(pretrain.ClassifierTrainer, "run_step", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain_classifier(_config(cls_root, tmp_path / "killed.pt"))
    monkeypatch.setattr(pretrain.ClassifierTrainer, "run_step", original)
    assert not (tmp_path / "killed.pt").exists()
    resumed = pretrain.pretrain_classifier(_config(cls_root, tmp_path / "killed.pt"), resume=True)
    assert resumed["history"] == whole["history"]
    a = torch.load(tmp_path / "whole.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not pretrain.resume_path(tmp_path / "killed.pt").exists()
    state, info = read_backbone_weights(tmp_path / "whole.pt")
    assert info["format"] == "eigenarch.classifier" and "fc.weight" not in state
    assert torch.equal(state["conv1.weight"], a["conv1.weight"])

    # TensorBoard: each step's losses and lr, each epoch's loss and accuracies; a resumed run
    # purges the steps past its epoch's checkpoint, so each step is there once, as unbroken.
    found, _ = tensorboard_events(pretrain.events_folder(tmp_path / "whole.pt"))
    epochs = {"epoch_loss": "loss", "val_accuracy": "val_accuracy", "val_top5": "val_top5"}
    assert set(found) == {"total_loss", "loss_cls", "lr", "time", "data_time", *epochs}
    steps = [step for step, _ in found["total_loss"]]
    epoch = len(steps) // 2
    assert epoch >= 2 and steps == list(range(1, 2 * epoch + 1))
    assert found["loss_cls"] == found["total_loss"]
    schedule = classifier_schedule("cosine", 2 * epoch, 0.4 * 16 / 256)
    assert found["lr"] == [(step, f32(schedule.lr(step - 1))) for step in steps]
    for tag, key in epochs.items():
        assert found[tag] == [(e["epoch"] * epoch, f32(e[key])) for e in whole["history"]], tag
    first = [loss for step, loss in found["total_loss"][:epoch]]
    assert whole["history"][0]["loss"] == pytest.approx(sum(first) / epoch, rel=1e-6)
    again, _ = tensorboard_events(pretrain.events_folder(tmp_path / "killed.pt"))
    assert {tag: [s for s, _ in v] for tag, v in again.items()} == {
        tag: [s for s, _ in v] for tag, v in found.items()
    }
    assert all(again[tag] == found[tag] for tag in ("total_loss", "lr", *epochs))


def test_pretrain_command_and_bad_input(cls_root, tmp_path, run_cli):
    out = tmp_path / "cli.pt"
    args = [
        "--data",
        cls_root,
        "--out",
        out,
        "--backbone",
        TINY_WIDTHS,
        "--gn-groups",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--size",
        "32",
        "--workers",
        "0",
    ]
    result = run_cli("pretrain", *args)
    assert result.code == 0, result.stderr
    assert "val top-1" in result.stderr and out.is_file()
    result = run_cli("pretrain", *args[2:], "--data", tmp_path)
    assert result.code == 2 and "expected ImageFolder trees train/<class>/" in result.stderr
    with pytest.raises(EigenarchError, match="--schedule 'linear'"):
        pretrain.pretrain_classifier(_config(cls_root, tmp_path / "x.pt", schedule="linear"))


def test_pretrain_resume_takes_the_settings_of_the_run(cls_root, tmp_path, run_cli, monkeypatch):
    out = tmp_path / "bn.pt"
    original = pretrain.ClassifierTrainer.run_step

    def killed_in_epoch_2(self, images, labels):
        if self.iter == self.max_iter // 2:
            raise KeyboardInterrupt
        return original(self, images, labels)

    monkeypatch.setattr(pretrain.ClassifierTrainer, "run_step", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain_classifier(_config(cls_root, out, norm="bn"))
    monkeypatch.setattr(pretrain.ClassifierTrainer, "run_step", original)
    reads = []
    read = eigenarch.io.file_bytes
    monkeypatch.setattr(eigenarch.io, "file_bytes", lambda path: reads.append(path) or read(path))
    result = run_cli("pretrain", "--out", out, "--resume")
    assert result.code == 0, result.stderr
    assert reads.count(pretrain.resume_path(out)) == 1  # settings, device and state: one read
    saved = torch.load(out, weights_only=True)
    assert saved["pretrain"]["norm"] == "bn" and saved["pretrain"]["data"] == str(cls_root)
    assert "bn1.running_mean" in saved["model"] and len(saved["history"]) == 2
    assert saved["val_top5"] == saved["history"][-1]["val_top5"]
    result = run_cli("pretrain", "--out", tmp_path / "none.pt", "--resume")
    assert result.code == 2 and "none.pt.resume not found" in result.stderr
