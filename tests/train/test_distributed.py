"""The train command under torchrun: 2 CPU processes (gloo) train, and their sharded
evaluation equals a single-process evaluation of the same checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from .conftest import TINY_ARGS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_training_and_sharded_evaluation(shapes_root, tmp_path, run_cli):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "eigenarch",
        "train",
        "--data",
        str(shapes_root),
        "--out",
        str(out),
        "--iters",
        "2",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "1",
        *TINY_ARGS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A new session, so that a hung run's workers are killed with the launcher.
    launcher = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 0, stderr[-3000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2]
    distributed = json.loads((out / "metrics.json").read_text())
    # Evaluate the same checkpoint in one process.
    result = run_cli(
        "evaluate",
        "--checkpoint",
        out / "checkpoints" / "iter_0000002.pt",
        "--out",
        tmp_path / "single",
    )
    assert result.code == 0, result.stderr
    assert json.loads((tmp_path / "single" / "metrics.json").read_text()) == distributed
    # Detections match up to float rounding (the runs use different thread counts).
    single = json.loads((tmp_path / "single" / "detections.json").read_text())
    sharded = json.loads((out / "detections.json").read_text())
    assert len(single) == len(sharded) > 0
    for a, b in zip(single, sharded, strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["bbox"] == pytest.approx(b["bbox"], abs=0.02)
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
