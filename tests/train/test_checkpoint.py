"""Checkpoints a user gives (``evaluate``, ``train --resume``, ``spectrum --model``): a
foreign, corrupt, truncated or edited file is one line of ours naming it, never a traceback
nor torch's ``weights_only`` advice."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from eigenarch.errors import EigenarchError
from eigenarch.train.checkpoint import detector_from_checkpoint, load_checkpoint
from eigenarch.train.rundir import RunDir


@pytest.fixture
def run(tiny_run, tmp_path):
    """A private copy of the one-iteration tiny run."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def _last(run):
    return RunDir(run).checkpoints()[-1][1]


def _one_line(result, *parts: str) -> str:
    assert result.code == 2, result.stderr
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1, (
        result.stderr
    )
    assert "weights_only" not in result.stderr and "Traceback" not in result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr
    return result.stderr


def _edit(path, change) -> None:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def test_a_checkpoint_without_its_config_is_named(run, shapes_root, run_cli):
    path = _last(run)
    _edit(path, lambda payload: payload.pop("config"))
    result = run_cli("evaluate", "--checkpoint", path, "--data", shapes_root)
    _one_line(result, str(path), "lacks 'config'", "eigenarch.detector checkpoint")
    with pytest.raises(EigenarchError, match="lacks 'config'"):
        load_checkpoint(path)


def test_resume_names_a_checkpoint_without_its_optimizer(run, shapes_root, run_cli):
    path = _last(run)
    _edit(path, lambda payload: payload.pop("optimizer"))
    result = run_cli("train", "--out", run, "--resume", "--data", shapes_root)
    _one_line(result, str(path), "lacks 'optimizer'", "which --resume needs")


def test_head_shapes_that_differ_are_one_line_naming_the_first_key(run, shapes_root, run_cli):
    path = _last(run)
    _edit(path, lambda payload: payload["config"].update(num_classes=5))
    result = run_cli("evaluate", "--checkpoint", path, "--data", shapes_root)
    _one_line(result, str(path), "weights do not fit",
              "roi_heads.box_predictor.cls_score.weight has shape (9, 64), expected (5, 64)",
              "(and 3 more)")  # fmt: skip
    _edit(path, lambda payload: payload["config"].update(num_classes=9))
    _edit(path, lambda payload: payload["model"].pop("rpn.head.conv.0.0.weight"))
    with pytest.raises(EigenarchError, match="rpn.head.conv.0.0.weight is missing from the file"):
        detector_from_checkpoint(path)


FOREIGN = {
    "garbage": (lambda p: p.write_bytes(b"hello, not a checkpoint"), "not a torch.save file"),
    "JSON": (lambda p: p.write_text('{"model": {}}'), "a JSON file"),
    "empty": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:4000]), "truncated or damaged"),
    "numpy": (lambda p: torch.save({"model": np.zeros(3)}, p), "it holds a numpy"),
}


@pytest.mark.parametrize("case", FOREIGN)
def test_foreign_files_are_one_line_for_every_command(case, run, shapes_root, tmp_path, run_cli):
    make, reason = FOREIGN[case]
    path = _last(run)
    make(path)
    message = f"{path}: not a readable checkpoint ({reason}"
    _one_line(run_cli("evaluate", "--checkpoint", path, "--data", shapes_root), message)
    resumed = run_cli("train", "--out", run, "--resume", "--data", shapes_root)
    _one_line(resumed, message)
    spectrum = run_cli("spectrum", "--model", path, "--data", shapes_root, "--images", "1",
                       "--workers", "0", "--out", tmp_path / "s.safetensors")  # fmt: skip
    _one_line(spectrum, f"{path}: not a readable torch checkpoint ({reason}")


def test_a_full_disk_keeps_the_previous_checkpoint_and_same_payload_same_bytes(
    tmp_path, monkeypatch
):
    from eigenarch.train.checkpoint import save_checkpoint

    payload = {"format": "x", "model": {"w": torch.arange(6.0)}}
    path = save_checkpoint(tmp_path / "iter_0000001.pt", payload)
    before = path.read_bytes()
    assert save_checkpoint(tmp_path / "again.pt", payload).read_bytes() == before
    real_save = torch.save

    def full(obj, f):  # torch.save into a file on a full disk
        real_save(obj, f)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(EigenarchError) as info:
        save_checkpoint(path, {**payload, "iteration": 2})
    assert str(info.value) == (f"{path}: cannot write (No space left on device); the previous "
                               "file is intact")  # fmt: skip
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.pt", "iter_0000001.pt"]
