"""Atomic writes: all or nothing, the usual file mode, one-line errors for a folder."""

from __future__ import annotations

import os
import stat

import pytest

from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_path, atomic_write_text


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
