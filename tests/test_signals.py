"""SIGTERM and SIGINT end a command in one line after it has unwound; the rerun finishes the
job exactly as an uninterrupted run (the rest of the kill matrix: benchmarks/fault_matrix.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eigenarch.train.checkpoint import load_checkpoint

from .train.conftest import TINY_ARGS

#: ``eigenarch data shapes`` whose generation sends this process SIGTERM half-way through an
#: atomic write: the command must unwind (no temporary file) and say so in one line.
TERMINATED_MID_WRITE = """
import os, signal, sys
import eigenarch.cli.data
from eigenarch.cli.app import main
from eigenarch.io import atomic_path

def generate(root, *args, **kwargs):
    with atomic_path(os.path.join(root, "half.json")) as tmp:
        tmp.write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()

eigenarch.cli.data.generate_shapes = generate
main(["data", "shapes", "--out", sys.argv[1]])
"""


def test_sigterm_unwinds_and_prints_terminated(tmp_path):
    result = subprocess.run([sys.executable, "-c", TERMINATED_MID_WRITE, str(tmp_path / "d")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "terminated"
    assert "Traceback" not in result.stderr
    assert list(tmp_path.rglob("*")) in ([], [tmp_path / "d"])


#: A loader worker's file-descriptor server (multiprocessing's resource sharer) whose
#: receiver, the main process, goes away mid-handshake: what SIGTERM during ``train
#: --workers 2`` did, printing ``ConnectionResetError: [Errno 104]`` after our one line.
LOST_RECEIVER = """
import os, socket, sys, time
from multiprocessing import resource_sharer
from eigenarch.cli.app import main
import eigenarch.cli.data

def lose_receiver(*args, **kwargs):
    shared = resource_sharer.DupFd(os.open(os.devnull, os.O_RDONLY))
    client = socket.socket(socket.AF_UNIX)
    client.connect(shared._id[0])
    time.sleep(0.3)  # the challenge arrives unread: closing resets the connection
    client.close()
    time.sleep(0.3)
    raise KeyboardInterrupt

eigenarch.cli.data.generate_shapes = lose_receiver
main(["data", "shapes", "--out", sys.argv[1]])
"""


def test_a_worker_losing_its_receiver_prints_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-c", LOST_RECEIVER, str(tmp_path / "d")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 130 and result.stderr.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in result.stderr and "ConnectionResetError" not in result.stderr


def test_the_sigterm_handler_is_only_there_while_a_command_runs(run_cli):
    before = signal.getsignal(signal.SIGTERM), sys.excepthook
    assert run_cli("spectrum", "--help").code == 0
    assert (signal.getsignal(signal.SIGTERM), sys.excepthook) == before


def _train(out: Path, *extra: str, data: Path | None = None) -> subprocess.Popen:
    args = ["train", "--out", str(out), *extra]
    if data is not None:
        args += ["--data", str(data), *TINY_ARGS[:-2], "--iters", "4", "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "eigenarch", *args], stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)  # fmt: skip


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return any(
        Path(p).read_text().rsplit(")", 1)[1].split()[0] != "Z"
        for p in map(str, Path("/proc").glob("[0-9]*/stat"))
        if _in_group(p, group)
    )


def _in_group(stat: str, group: int) -> bool:
    try:
        return int(Path(stat).read_text().rsplit(")", 1)[1].split()[2]) == group
    except (OSError, IndexError, ValueError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM])  # SIGINT: cli/test_app.py, fault_matrix.py
def test_a_signal_during_train_with_loader_workers_then_resume_is_exact(shapes_root, tmp_path, sig):
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert _train(reference, "--workers", "2", data=shapes_root).wait(300) == 0
    process = _train(run, "--workers", "2", data=shapes_root)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "iter_0000002.pt").exists() and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    if sig == signal.SIGINT:  # Ctrl-C: the whole process group, loader workers too
        os.killpg(process.pid, sig)
    else:  # kill PID: the command only
        process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, stderr
    assert stderr.strip().splitlines()[-1] == ("terminated" if sig == signal.SIGTERM
                                               else "interrupted")  # fmt: skip
    for word in ("Traceback", "Error", "worker"):
        assert word not in stderr, stderr
    deadline = time.monotonic() + 15
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(process.pid)  # no loader worker left behind
    assert not list(run.rglob(".*.tmp")) and not (run / ".lock").exists()

    resumed = _train(run, "--resume")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    last = [load_checkpoint(r / "checkpoints" / "iter_0000004.pt") for r in (reference, run)]
    for key, value in last[0]["model"].items():
        assert torch.equal(value, last[1]["model"][key]), key
    assert last[0]["iteration"] == last[1]["iteration"] == 4


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_python_imports_the_cli_is_one_line(sig):
    process = subprocess.Popen([sys.executable, "-m", "eigenarch", "count"],
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.5)  # importing torch takes seconds
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + sig, stderr
    assert stderr.strip().splitlines() == ["interrupted" if sig == signal.SIGINT else "terminated"]
