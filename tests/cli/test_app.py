"""The ``eigenarch`` entry point: clean finishes leave the process group, failures do not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch.distributed as dist


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group, as ``torchrun`` would have made (destroyed if still there)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_clean_finish_leaves_the_process_group(process_group, run_cli):
    assert run_cli("spectrum", "--help").code == 0
    assert not dist.is_initialized()


def test_a_failure_keeps_the_process_group(process_group, run_cli):
    # Another rank may still wait in a collective: destroying the group could hang it.
    result = run_cli("search", "--target", "macs=resnet50", "--out", "x.json")
    assert result.code == 2 and "error:" in result.stderr
    assert dist.is_initialized()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("search", "--spectra", "s", "--target", "t"), "eigenarch search: Missing option '--out'"),
        (("spectrum", "show"), "eigenarch spectrum show: Missing argument 'file'"),
        (("search", "--side", "sideways"), "Invalid value for '--side'"),
        (("nonsense",), "eigenarch: No such command 'nonsense'"),
    ],
)
def test_command_line_mistakes_give_one_line(run_cli, args, message):
    result = run_cli(*args)
    assert result.code == 2 and result.stderr.startswith("error:"), result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_ctrl_c_prints_one_line_and_exits_130(run_cli, monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("eigenarch.cli.data.generate_shapes", interrupted)
    result = run_cli("data", "shapes", "--out", tmp_path / "d")
    assert result.code == 130 and result.stderr.strip().splitlines()[-1] == "interrupted"


def test_sigint_to_a_command_with_worker_processes_prints_interrupted(tmp_path):
    # As Ctrl-C in a terminal does: SIGINT to the command's whole process group.
    out = tmp_path / "big"
    command = [sys.executable, "-m", "eigenarch", "data", "shapes", "--out", str(out),
               "--train", "100000", "--val", "1", "--size", "64", "--workers", "2"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any((out / "train").glob("*.jpg")) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=30)  # not after every queued job has run
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in stderr
