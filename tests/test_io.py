"""Atomic writes: all or nothing, the usual file mode, one-line errors for a folder."""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import subprocess
import sys

import pytest
import torch

from eigenarch.errors import EigenarchError
from eigenarch.io import (
    HOST,
    atomic_path,
    atomic_write_text,
    check_writable,
    load_torch,
    output_lock,
)

from .conftest import REFUSED

#: A process killed (SIGKILL) halfway through an atomic write into ``sys.argv[1]``.
KILLED_WRITE = """
import os, signal, sys
from eigenarch.io import atomic_path

with atomic_path(os.path.join(sys.argv[1], "spectra.safetensors")) as tmp:
    tmp.write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""

#: A process that holds the lock of the folder ``sys.argv[1]`` until it is killed.
HOLDER = """
import sys, time
from eigenarch.io import output_lock

with output_lock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_files_get_the_usual_mode_even_when_the_writer_recreates_them(tmp_path, umask_022):
    def recreate(tmp):  # as safetensors' save_file does
        tmp.unlink()
        tmp.write_bytes(b"data")
        tmp.chmod(0o600)

    with atomic_path(tmp_path / "a.bin") as tmp:
        recreate(tmp)
    atomic_write_text(tmp_path / "b.txt", "text")
    for name in ("a.bin", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_not_an_output_file(tmp_path):
    with pytest.raises(EigenarchError, match="is a folder; expected the path of a file"):
        atomic_write_text(tmp_path, "text")


def _temps(folder):
    return sorted(p.name for p in folder.rglob(".*.tmp"))


def test_the_next_write_removes_the_temp_file_of_a_killed_writer(tmp_path):
    killed = subprocess.Popen([sys.executable, "-c", KILLED_WRITE, str(tmp_path)])
    assert killed.wait() == -signal.SIGKILL
    assert len(_temps(tmp_path)) == 1 and not (tmp_path / "spectra.safetensors").exists()
    alive = f".a.{HOST}-{os.getpid()}.abc123.tmp"  # this process's write in progress
    elsewhere = f".a.{HOST}x-{killed.pid}.abc123.tmp"  # another host's
    for name in (alive, elsewhere, ".notes.tmp"):
        (tmp_path / name).write_text("keep")
    atomic_write_text(tmp_path / "other.txt", "text")
    assert _temps(tmp_path) == sorted([alive, elsewhere, ".notes.tmp"])


def test_a_folder_lock_removes_killed_writers_temp_files_in_its_subfolders(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    subprocess.run([sys.executable, "-c", KILLED_WRITE, str(checkpoints)])
    assert len(_temps(checkpoints)) == 1
    with output_lock(tmp_path / "run"):
        assert _temps(tmp_path) == []
    assert list((tmp_path / "run").iterdir()) == [checkpoints]  # no lock file left


def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(EigenarchError) as refused, output_lock(run):
            pass
        assert str(refused.value) == (
            f"--out {run}: in use by another process (pid {holder.pid}); wait for it to end"
        )
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".lock").exists()  # left by the killed holder, but not held
    with output_lock(run):
        with pytest.raises(EigenarchError, match="in use by another process"), output_lock(run):
            pass
    assert not (run / ".lock").exists()


def test_a_file_output_is_locked_beside_it(tmp_path):
    out = tmp_path / "backbone.pt"
    with output_lock(out, "--out", folder=False):
        assert (tmp_path / ".backbone.pt.lock").is_file() and not out.exists()
        with pytest.raises(EigenarchError, match=f"--out {out}: in use"):
            with output_lock(out, "--out", folder=False):
                pass
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_folder_is_one_line_naming_the_file_and_keeps_it(tmp_path, read_only):
    target = atomic_write_text(tmp_path / "out" / "metrics.json", "before")
    read_only(target.parent)
    with pytest.raises(EigenarchError) as info:
        atomic_write_text(target, "after")
    message = str(info.value)
    assert re.fullmatch(f"{target}: cannot write {REFUSED}; the previous file is intact", message)
    with pytest.raises(EigenarchError, match=f"^{target}: cannot write {REFUSED}; the previous"):
        check_writable(target)
    with pytest.raises(EigenarchError, match=f"new/deeper/x.json: cannot write {REFUSED}$"):
        check_writable(target.parent / "new" / "deeper" / "x.json")  # made later: probed above
    assert target.read_text() == "before" and _temps(tmp_path) == []


@pytest.mark.parametrize("where", ["write", "rename"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES])
def test_a_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch, where, code):
    target = atomic_write_text(tmp_path / "spectra.json", "before")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    if where == "rename":
        monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(EigenarchError) as info, atomic_path(target) as tmp:
        tmp.write_text("half")
        if where == "write":
            fail()
    assert (
        str(info.value)
        == f"{target}: cannot write ({os.strerror(code)}); the previous file is intact"
    )
    assert target.read_text() == "before" and _temps(tmp_path) == []


def test_other_os_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "x.json"):
        open(tmp_path / "absent" / "y", "rb")


def test_check_writable_leaves_nothing(tmp_path):
    assert check_writable(tmp_path / "a" / "b.json") == tmp_path / "a" / "b.json"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(EigenarchError, match="is a folder"):
        check_writable(tmp_path)


def test_a_flipped_byte_in_a_torch_file_is_refused(tmp_path):
    path = tmp_path / "w.pt"
    with open(path, "wb") as f:
        torch.save({"weight": torch.arange(4096.0)}, f)
    data = bytearray(path.read_bytes())
    start = data.index(b"archive/data/0") + 1000  # inside the tensor's 16 KB
    data[start] ^= 0x01
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["weight"], torch.arange(4096.0))
    with pytest.raises(EigenarchError) as info:
        load_torch(path, "checkpoint")
    assert str(info.value) == (f"{path}: not a readable checkpoint (damaged torch.save file: "
                               "record data/0 fails its CRC check)")  # fmt: skip
