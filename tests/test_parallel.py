"""The worker pool of ``run_parallel``: its workers end with the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: A command (``eigenarch demo`` in small) whose two workers write their pid, then wait.
SCRIPT = """
import os, sys, time
from functools import partial
from pathlib import Path

from eigenarch.parallel import run_parallel


def hold(folder, name):
    (Path(folder) / f"{name}.pid").write_text(str(os.getpid()))
    time.sleep(120)


if __name__ == "__main__":
    if sys.argv[2] == "handled":  # as the eigenarch command handles SIGTERM
        import signal
        from eigenarch.errors import Terminated

        def terminate(signum, frame):
            raise Terminated

        signal.signal(signal.SIGTERM, terminate)
    run_parallel({n: partial(hold, sys.argv[1], n) for n in "ab"}, 2, lambda n: (0, 1), "hold")
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has ended; only its parent's reaping is left


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize(
    ("sig", "handling"),
    [(signal.SIGKILL, "default"), (signal.SIGTERM, "default"), (signal.SIGTERM, "handled")],
    ids=["kill-9", "SIGTERM", "SIGTERM-handled"],
)
def test_workers_end_when_their_parent_is_killed(tmp_path, sig, handling):
    script = tmp_path / "hold.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path), handling], env=env)
    try:
        files = [tmp_path / "a.pid", tmp_path / "b.pid"]
        assert _wait_for(lambda: all(f.is_file() and f.read_text() for f in files), 120)
        workers = [int(f.read_text()) for f in files]
        assert all(_alive(pid) for pid in workers)
        parent.send_signal(sig)
        parent.wait(30)  # handled: the parent unwinds, it does not wait for the running calls
        assert _wait_for(lambda: not any(_alive(pid) for pid in workers), 10), workers
    finally:
        parent.kill()
        parent.wait()
