"""Faults met for real: a read-only or full file system (tmpfs mounts, see ``small_disk``),
a symbolic link loop, hostile files. Each is one line and exit 2, and loses nothing."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .train.conftest import TINY_ARGS


def _error(result) -> str:
    """The one line a failed command printed last (no traceback before it)."""
    assert result.code == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    return last.removeprefix("error: ")


def _files(folder) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_read_only_out_is_one_line(small_disk, run_cli, tiny_run, shapes_root):
    disk = small_disk.mount(16 * 1024)
    run = shutil.copytree(tiny_run, disk / "run")
    before = _files(run)
    small_disk.freeze(disk)
    refused = "cannot write (Read-only file system)"
    new = disk / "new"
    train = ["train", "--data", shapes_root, "--out", new, *TINY_ARGS, "--iters", "1"]
    assert _error(run_cli(*train)) == f"{new}: {refused}"
    assert _error(run_cli("train", "--out", run, "--resume")) == f"{run}: {refused}"
    assert (
        _error(run_cli("demo", "--quick", "--out", disk / "demo")) == f"{disk / 'demo'}: {refused}"
    )
    dynamics = ["dynamics", "--run", run, "--images", "2", "--workers", "0"]
    assert _error(run_cli(*dynamics)) == f"{run / 'spectra'}: {refused}"
    assert _files(run) == before


@pytest.mark.parametrize("where", ["loop", "loop/deeper"])
def test_a_symbolic_link_loop_in_out_is_one_line(tmp_path, run_cli, shapes_root, where):
    (tmp_path / "loop").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop")
    out = tmp_path / where
    expected = (f"{tmp_path / 'loop'}: a symbolic link that leads nowhere (a loop or a missing "
                "target); expected a folder")  # fmt: skip
    train = ["train", "--data", shapes_root, "--out", out, *TINY_ARGS, "--iters", "1"]
    assert _error(run_cli(*train)) == expected
    assert _error(run_cli("demo", "--quick", "--out", out)) == expected
    spectrum = ["spectrum", "--model", "resnet18", "--data", shapes_root, "--images", "1",
                "--out", out / "s.safetensors"]  # fmt: skip
    assert _error(run_cli(*spectrum)) == expected


class _RunsCode:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_asks_to_run_code_is_refused_naming_it(tmp_path, run_cli, shapes_root):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "eigenarch-detector", "model": _RunsCode(marker)}, evil)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"model": _RunsCode(marker)}, protocol=4))
    evaluate = ["evaluate", "--checkpoint", evil, "--data", shapes_root]
    assert (
        _error(run_cli(*evaluate)) == f"{evil}: refused: the file asks to run code (posix.system)"
    )
    spectrum = ["spectrum", "--model", evil, "--data", shapes_root, "--out", tmp_path / "s"]
    assert (
        _error(run_cli(*spectrum)) == f"{evil}: refused: the file asks to run code (posix.system)"
    )
    evaluate[2] = plain
    message = _error(run_cli(*evaluate))
    assert message == f"{plain}: not a readable checkpoint (a plain pickle, not a torch.save file)"
    assert not marker.exists()


FULL = "cannot write (No space left on device)"


def _no_temps(folder) -> None:
    assert sorted(folder.rglob(".*.tmp")) == []


def test_a_full_disk_during_training_keeps_the_earlier_checkpoints(small_disk, run_cli,
                                                                  shapes_root):  # fmt: skip
    disk = small_disk.mount(6 * 1024)  # iter 0 (1.5 MB) and 1 (2.9 MB) fit, not iter 2
    run = disk / "run"
    train = ["train", "--data", shapes_root, "--out", run, *TINY_ARGS, "--iters", "2",
             "--checkpoint-every", "1"]  # fmt: skip
    assert _error(run_cli(*train)) == f"{run / 'checkpoints' / 'iter_0000002.pt'}: {FULL}"
    _no_temps(disk)
    from eigenarch.train.checkpoint import detector_from_checkpoint
    from eigenarch.train.rundir import RunDir

    assert [i for i, _ in RunDir(run).checkpoints()] == [0, 1]
    detector_from_checkpoint(run / "checkpoints" / "iter_0000001.pt")


def test_a_full_disk_keeps_the_previous_spectra(small_disk, run_cli, shapes_root):
    disk = small_disk.mount(4 * 1024)
    out = disk / "s.safetensors"
    spectrum = ["spectrum", "--model", "resnet18", "--data", shapes_root, "--images", "2",
                "--workers", "0", "--include", "layer1.*", "--out", out]  # fmt: skip
    assert run_cli(*spectrum).code == 0
    before = _files(disk)
    small_disk.fill(disk, leave=4096)
    assert _error(run_cli(*spectrum, "--seed", "1", "--force")).startswith(f"{out}")
    assert FULL in _error(run_cli(*spectrum, "--seed", "1", "--force"))
    (disk / "filler").unlink()
    assert _files(disk) == before
    _no_temps(disk)


def test_a_full_disk_during_the_report_and_the_demo_is_one_line(small_disk, run_cli, tiny_run):
    disk = small_disk.mount(32 * 1024)
    run = shutil.copytree(tiny_run, disk / "run")
    dynamics = ["dynamics", "--run", run, "--images", "2", "--workers", "0"]
    assert run_cli(*dynamics).code == 0
    before = _files(run)
    small_disk.fill(disk, leave=60_000)
    message = _error(run_cli("report", run, "--out", disk / "report"))
    assert message.startswith(f"{disk / 'report'}") and message.endswith(FULL)
    message = _error(run_cli(*dynamics, "--images", "1"))  # new spectra: no room for them
    assert message.endswith(f"iter_0000000.safetensors: {FULL}; the previous file is intact")
    (disk / "filler").unlink()
    small_disk.fill(disk, leave=2 * 1024 * 1024)
    message = _error(run_cli("demo", "--quick", "--out", disk / "demo"))
    assert message.startswith(f"{disk / 'demo'}") and message.endswith(FULL)
    assert _files(run) == before
    _no_temps(disk)


def _eigenarch(*args, cwd=None, **env) -> subprocess.CompletedProcess:
    """``python -m eigenarch ARGS`` in a fresh process with ``env`` over this one's."""
    src = Path(__file__).resolve().parents[1] / "src"
    environ = {**os.environ, "PYTHONPATH": str(src), **env}
    return subprocess.run([sys.executable, "-m", "eigenarch", *map(str, args)], cwd=cwd,
                          env=environ, capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("threads", ["0", "-2", "many"])
def test_a_bad_omp_num_threads_is_one_note_and_the_command_works(threads):
    done = _eigenarch("count", "--backbone", "resnet50", OMP_NUM_THREADS=threads)
    assert done.returncode == 0, done.stderr
    note = (f"note: OMP_NUM_THREADS={threads!r} ignored (expected a positive integer); torch "
            "uses its default thread count")  # fmt: skip
    assert done.stderr.splitlines() == [note]


def test_an_unwritable_home_a_missing_tmpdir_and_a_read_only_cwd(small_disk, shapes_root):
    home = small_disk.mount(1024)
    small_disk.freeze(home)
    # the CLI imports matplotlib, whose cache would go to HOME: no two-line warning about it
    done = _eigenarch("count", "--backbone", "resnet50", HOME=str(home), TMPDIR="/absent")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    spectrum = ["spectrum", "--model", "resnet18", "--data", shapes_root, "--images", "1",
                "--workers", "0", "--include", "fc"]  # fmt: skip
    done = _eigenarch(*spectrum, cwd=home)  # the default --out is in the current folder
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: spectra.safetensors: cannot write (Read-only file system)"
    )


def test_non_ascii_paths_under_the_c_locale(shapes_root, tmp_path):
    data = shutil.copytree(shapes_root, tmp_path / "dätä ünïcode")
    out = tmp_path / "spéctra.safetensors"
    spectrum = ["spectrum", "--model", "resnet18", "--data", data, "--images", "1",
                "--workers", "0", "--include", "fc", "--out", out]  # fmt: skip
    done = _eigenarch(*spectrum, LC_ALL="C", LANG="C")
    assert done.returncode == 0, done.stderr
    assert out.is_file() and str(out) in done.stderr + done.stdout
