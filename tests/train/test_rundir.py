"""RunDir: the one owner of a run folder's layout and reading (issue 20 item 3)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eigenarch.errors import EigenarchError
from eigenarch.train.rundir import RunDir

SRC = Path(__file__).resolve().parents[2] / "src" / "eigenarch"


def test_layout(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint(7) == tmp_path / "checkpoints" / "iter_0000007.pt"
    assert run.spectra(7) == tmp_path / "spectra" / "iter_0000007.safetensors"
    assert run.evaluation(7) == tmp_path / "eval" / "iter_0000007"
    assert (run.config_file.name, run.log_file.name, run.metrics_file.name) == (
        "config.json", "metrics.jsonl", "metrics.json")  # fmt: skip
    assert Path(run) == tmp_path  # os.fspath: usable wherever a path is


def test_checkpoints_are_the_iter_files_in_iteration_order(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoints() == []  # no folder yet
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("iter_0000010.pt", "iter_0000002.pt", "iter_0000000.pt", "iter_12.pt",
                 "iter_0000003.pt.tmp", "iter_00000040.pt", "notes.pt"):  # fmt: skip
        (folder / name).write_bytes(b"")
    assert [it for it, _ in run.checkpoints()] == [0, 2, 10]
    assert run.checkpoints()[-1][1] == run.checkpoint(10)
    assert "the last complete checkpoint is iter_0000010.pt" in run.resume_hint()
    assert "no checkpoint" in RunDir(tmp_path / "other").resume_hint()


def test_config_and_metrics(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(EigenarchError, match=r"no config.json \(not a training run folder"):
        run.read_config()
    assert run.saved_device("cpu") == "cpu" and run.read_metrics() is None
    run.config_file.write_text(json.dumps({"device": "cuda:1", "iters": 5}))
    assert run.read_config()["iters"] == 5 and run.saved_device("cpu") == "cuda:1"
    run.config_file.write_text("[1, 2]")  # damaged: the run's own checks say why, later
    assert run.saved_device("cpu") == "cpu"
    with pytest.raises(EigenarchError, match="expected a JSON object, got list"):
        run.read_config()
    run.metrics_file.write_text(json.dumps({"bbox": {"AP": 0.5}}))
    assert run.read_metrics() == {"bbox": {"AP": 0.5}}
    assert run.logged_iterations() == 0
    run.log_file.write_text('{"iteration": 1}\n{"iteration": 2}\n')
    assert run.logged_iterations() == 2


def test_lock_refuses_a_second_holder(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        with pytest.raises(EigenarchError, match="in use by another process"):
            with RunDir(tmp_path / "run").lock():
                pass
    with run.lock():  # released
        pass


def test_no_other_module_spells_the_run_folder_layout():
    # the file names of a run folder appear in rundir.py alone (docstrings aside)
    pattern = re.compile(
        r"""["'](config\.json|metrics\.jsonl?|checkpoints|dynamics\.json)["'](?!:)"""
    )
    found = [
        f"{path.relative_to(SRC)}:{n}"
        for path in SRC.rglob("*.py")
        if path.name != "rundir.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith(("#", "``"))
    ]
    assert found == []
