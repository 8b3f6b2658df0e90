"""A factory named inside a data file never runs unless the user trusts it (issue 27.1)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from eigenarch.train.checkpoint import save_checkpoint
from eigenarch.train.rundir import RunDir

EVIL = """
from pathlib import Path
import torchvision

def net():
    Path("MARKER").write_text("ran")
    return torchvision.models.resnet18()
"""


@pytest.fixture
def poisoned(tiny_run, tmp_path, monkeypatch):
    """A copy of a finished run whose checkpoint and config.json name ``evil.py:net``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.py").write_text(EVIL)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for _, path in RunDir(run).checkpoints():
        payload = torch.load(path, weights_only=True)
        payload["config"]["backbone"] = {"format": "eigenarch.backbone", "builder": "evil.py:net",
                                         "groups": {}, "norm": None}  # fmt: skip
        save_checkpoint(path, payload)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "backbone": "evil.py:net"}))
    return run


def test_a_file_naming_a_factory_runs_no_code(run_cli, poisoned, shapes_root, tmp_path):
    checkpoint = str(RunDir(poisoned).checkpoints()[-1][1])
    commands = {
        "evaluate": ("evaluate", "--checkpoint", checkpoint, "--data", shapes_root),
        "spectrum": ("spectrum", "--model", checkpoint, "--data", shapes_root, "--images", "2",
                     "--out", tmp_path / "s.safetensors"),
        "dynamics": ("dynamics", "--run", poisoned, "--data", shapes_root, "--images", "2"),
        "train --resume": ("train", "--resume", "--out", poisoned),
    }  # fmt: skip
    for name, args in commands.items():
        r = run_cli(*args)
        assert r.code == 2, (name, r.stderr)
        assert "names the factory 'evil.py:net'" in r.stderr, (name, r.stderr)
        assert "--trust-factory evil.py:net" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / "MARKER").exists(), name  # refused before any code ran
    r = run_cli("evaluate", "--checkpoint", checkpoint, "--data", shapes_root,
                "--trust-factory", "other.py:net")  # fmt: skip
    assert r.code == 2 and not (tmp_path / "MARKER").exists()  # trust names one factory
    run_cli("evaluate", "--checkpoint", checkpoint, "--data", shapes_root,
            "--trust-factory", "evil.py:net")  # fmt: skip
    assert (tmp_path / "MARKER").read_text() == "ran"  # trusted: it is built (then may not fit)
