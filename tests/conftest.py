"""Shared test fixtures."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import pytest
import torch
from filelock import FileLock

os.environ.setdefault("MPLBACKEND", "Agg")

#: Widths of the tiny detector of ``tiny_config`` (tests/train's ``TINY_ARGS`` repeat them).
TINY_WIDTHS = "16,16,32,16,32,32,64,32,64"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """Run ``eigenarch ARGS...`` in-process; returns exit code, stdout and stderr."""
    from eigenarch.cli.app import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


@pytest.fixture
def one_thread():
    """One intra-op thread (a folder's conftest makes it autouse): the suite runs one worker
    per core, and OpenMP's spinning threads or multi-threaded LAPACK on an oversubscribed
    machine stall each small op by a scheduler time slice (10 to 100 times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A tiny shapes detection set (12 train / 6 val images at 128 px), made once per session."""
    from eigenarch.data.shapes import ShapesConfig, generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, ShapesConfig(train=12, val=6, size=128, seed=0), workers=1)
    return root


#: ``TrainConfig`` settings of a tiny detector that trains in seconds on 2 CPU cores.
TINY_SETTINGS = dict(
    backbone=TINY_WIDTHS,
    gn_groups=8,
    fpn_channels=32,
    head_channels=32,
    representation=64,
    min_size=128,
    max_size=128,
    anchor_sizes=(16, 32, 64, 128, 256),
    roi_batch=64,
    rpn_batch=64,
    workers=0,
    iters=4,
    batch_size=2,
    checkpoint_every=2,
    lr=0.01,
)


@pytest.fixture
def tiny_config(shapes_root, tmp_path):
    """``tiny_config(name, **overrides)`` -> a TrainConfig writing to ``tmp_path / name``: a
    tiny detector that trains in seconds on 2 CPU cores."""

    from eigenarch.train.loop import TrainConfig

    def make(name: str = "run", **overrides) -> TrainConfig:
        settings = dict(data=str(shapes_root), out=str(tmp_path / name), **TINY_SETTINGS)
        settings.update(overrides)
        return TrainConfig(**settings)

    return make


@pytest.fixture(scope="session")
def tiny_run(shapes_root, tmp_path_factory):
    """A finished one-iteration ``eigenarch train`` run of the tiny detector on the shapes set
    (made once per session; copy what a test changes)."""
    from eigenarch.train.loop import TrainConfig, train_detector

    out = tmp_path_factory.mktemp("tiny_run")
    settings = {**TINY_SETTINGS, "iters": 1, "checkpoint_every": 1}
    train_detector(TrainConfig(data=str(shapes_root), out=str(out), **settings))
    return out


def _logged_steps(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


@pytest.fixture
def logged_steps():
    """``run_dir -> [one dict per iteration of its metrics.jsonl, wall-clock "time" left out]``."""
    return _logged_steps


@pytest.fixture
def tensorboard_events():
    """``folder -> ({tag: [(step, value), ...]} of its scalars, the accumulator)``, as
    TensorBoard's own ``EventAccumulator`` reads the event files there (histograms: from
    the accumulator)."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    def read(folder):
        keep_all = {ea.SCALARS: 0, ea.HISTOGRAMS: 0}  # 0: every event, not a sample
        events = ea.EventAccumulator(str(folder), size_guidance=keep_all).Reload()
        tags = events.Tags()["scalars"]
        return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags}, events

    return read


#: The reason a ``read_only`` folder gives: EROFS (root) or EACCES (anyone else).
REFUSED = r"\((Read-only file system|Permission denied)\)"


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: ``folder`` refuses new files and renames as a read-only mount
    does: mode 0555, and where that does not stop this process (root), creating, making or
    renaming anything in it raises ``OSError(EROFS)``. :data:`REFUSED` matches the reason
    either gives."""
    import errno
    from pathlib import Path

    folders = []
    real = {name: getattr(os, name) for name in ("open", "mkdir", "replace")}

    def refuse(path) -> None:
        if any(Path(os.fsdecode(path)).resolve().is_relative_to(f) for f in folders):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    unnamed = getattr(os, "O_TMPFILE", 0)  # tempfile.TemporaryFile's unnamed file

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT or (unnamed and flags & unnamed == unnamed):
            refuse(path)
        return real["open"](path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real["mkdir"](path, *args, **kwargs)

    def replace(src, dst, **kwargs):
        refuse(dst)
        return real["replace"](src, dst, **kwargs)

    def make(folder):
        folder.chmod(0o555)
        folders.append(Path(folder).resolve())
        if os.access(folder, os.W_OK):  # root: the mode alone does not stop writes
            for name, patched in (("open", open_), ("mkdir", mkdir), ("replace", replace)):
                monkeypatch.setattr(os, name, patched)
        return folder

    yield make
    for folder in folders:
        folder.chmod(0o755)


class SmallDisk:
    """Real small file systems for fault tests: tmpfs mounts (root only; elsewhere the test
    is skipped, saying why), unmounted after the test."""

    def __init__(self, base) -> None:
        self.base, self.mounted = base, []

    def mount(self, kilobytes: int, name: str = "disk"):
        """A new folder ``name`` holding a file system of ``kilobytes`` KiB."""
        import shutil
        import subprocess

        folder = self.base / name
        folder.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a real small disk needs root to mount a tmpfs; not root here")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs",
                               str(folder)], capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.mounted.append(folder)
        return folder

    def freeze(self, folder) -> None:
        """Remount ``folder``'s file system read-only."""
        import subprocess

        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    def fill(self, folder, leave: int = 0) -> None:
        """Fill ``folder``'s file system but for ``leave`` bytes."""
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        with open(os.path.join(folder, "filler"), "wb") as f:
            f.write(b"\0" * max(free - leave, 0))

    def unmount_all(self) -> None:
        import subprocess

        for folder in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """:class:`SmallDisk` in ``tmp_path``."""
    disk = SmallDisk(tmp_path)
    yield disk
    disk.unmount_all()


def resnet_tie_maps(depths=(3, 4, 6, 3)) -> list[tuple[list[str], list[str]]]:
    """For each of the nine widths of a bottleneck ResNet's traced graph, its ``(:out maps,
    :in maps)``: producers and readers."""
    from eigenarch.widths.cost import resnet_graph
    from eigenarch.widths.ias import group_maps

    graph, ties = resnet_graph(tuple(depths))
    maps = group_maps(graph)
    out = []
    for tie in ties:
        produced, read = [], []
        for i in tie.groups:
            for producer, readers in maps.units[i]:
                produced.append(f"{producer}:out")
                read.extend(f"{r}:in" for r in readers)
        out.append((produced, read))
    return out


# Small training runs with known dynamics, analysed once per test session (``analysed_runs``).
# Run ``A``'s checkpoints knock out 12 of the 16 output channels of
# ``backbone.body.layer1.0.conv3`` at iterations 10 and 20 and restore them at 30: its ``:out``
# map drops at 10 (within the first quarter of 40 iterations) and rebounds at 30 (right after
# the learning-rate decay at 27). Run ``B`` keeps the same initial weights at every checkpoint:
# nothing changes, so nothing is flagged.
TARGET = "backbone.body.layer1.0.conv3"
ITERATIONS = (0, 10, 20, 30, 40)
KNOCKED_OUT = (10, 20)
IMAGES = 3
TINY = dict(
    backbone="8,8,16,8,16,8,16,8,16",
    gn_groups=8,
    fpn_channels=8,
    head_channels=8,
    representation=16,
    min_size=64,
    max_size=64,
    iters=40,
    batch_size=2,
    checkpoint_every=10,
    workers=0,
)


def make_run(out, data, seed: int, knock_out: bool):
    """Write ``config.json`` and checkpoints 0..40 of a tiny detector, as `eigenarch train`."""
    from eigenarch.data.coco import CocoDetection
    from eigenarch.train.checkpoint import DETECTOR_FORMAT, detector_from_config, save_checkpoint
    from eigenarch.train.loop import TrainConfig, model_config
    from eigenarch.train.rundir import RunDir

    cfg = TrainConfig(data=str(data), out=str(out), seed=seed, **TINY)
    dataset = CocoDetection.from_root(data, "train", verbose=False)
    config = model_config(cfg, dataset.num_classes)
    torch.manual_seed(seed)
    model = detector_from_config(config, "the written run")
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    for iteration in ITERATIONS:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        if knock_out and iteration in KNOCKED_OUT:
            state[TARGET + ".weight"][4:] = 0
        payload = {
            "format": DETECTOR_FORMAT,
            "config": config,
            "train": cfg.to_dict(),
            "data": {"category_ids": dataset.category_ids},
            "model": state,
            "iteration": iteration,
        }
        save_checkpoint(RunDir(out).checkpoint(iteration), payload)
    return out


@dataclass(frozen=True)
class Known:
    """What the runs of :func:`analysed_runs` are made of."""

    target: str = TARGET
    iterations: tuple[int, ...] = ITERATIONS
    images: int = IMAGES


@pytest.fixture(scope="session")
def known() -> Known:
    return Known()


@pytest.fixture(scope="session")
def analysed_runs(tmp_path_factory, shapes_root, worker_id):
    """``{"A": run, "B": run}``, both analysed by ``compute_dynamics`` (read-only: copy a run
    with :func:`copy_run` before changing it). Made once, shared by the xdist workers."""
    from eigenarch.report.dynamics import Criteria, compute_dynamics

    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent
    folder = root / "report-runs"
    with FileLock(str(root / "report-runs.lock")):
        if not (folder / "done").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            data = shutil.copytree(shapes_root, folder / "data")
            for name, seed, knock in (("A", 0, True), ("B", 1, False)):
                run = make_run(folder / name, data, seed, knock)
                compute_dynamics(run, images=IMAGES, criteria=Criteria())
            torch.set_num_threads(threads)
            (folder / "done").touch()
    return {"A": folder / "A", "B": folder / "B"}


@pytest.fixture
def copy_run(tmp_path):
    """``copy_run(run)``: a copy of a run folder in ``tmp_path`` that keeps the files' times
    (so its cached spectra stay valid)."""
    return lambda run: shutil.copytree(run, tmp_path / run.name, copy_function=shutil.copy2)
