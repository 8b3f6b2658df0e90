"""DetNAS under torchrun: 2 CPU processes (gloo) train the supernet, then search it with
candidates spread over the processes; the search equals a single-process search."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from .conftest import DETECTOR_ARGS, SEARCH_ARGS, SPACE_ARGS


def _torchrun(*args: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={port}", "-m", "eigenarch", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_process_supernet_training_and_search(shapes_root, tmp_path, run_cli):
    supernet = tmp_path / "supernet"
    _torchrun("detnas", "supernet", "--data", str(shapes_root), "--out", str(supernet),
              *SPACE_ARGS, *DETECTOR_ARGS, "--iters", "2", "--batch-size", "4",
              "--holdout", "3")  # fmt: skip
    lines = (supernet / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2]
    checkpoint = supernet / "checkpoints" / "iter_0000002.pt"
    _torchrun("detnas", "search", "--supernet", str(checkpoint), "--out",
              str(tmp_path / "parallel"), *SEARCH_ARGS)  # fmt: skip
    r = run_cli("detnas", "search", "--supernet", checkpoint, "--out", tmp_path / "single",
                *SEARCH_ARGS)  # fmt: skip
    assert r.code == 0, r.stderr
    for g in range(2):
        parallel, single = (
            json.loads((tmp_path / run / "generations" / f"gen_{g:03d}.json").read_text())
            for run in ("parallel", "single")
        )
        assert [c["path"] for c in parallel["candidates"]] == [
            c["path"] for c in single["candidates"]
        ]
        for a, b in zip(parallel["candidates"], single["candidates"], strict=True):
            assert a["fitness"] == pytest.approx(b["fitness"], abs=1e-6)
