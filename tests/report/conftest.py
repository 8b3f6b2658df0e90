"""Small training runs with known dynamics, analysed once per test session.

Run ``A``'s checkpoints knock out 12 of the 16 output channels of
``backbone.body.layer1.0.conv3`` at iterations 10 and 20 and restore them at 30: its ``:out``
map drops at 10 (within the first quarter of 40 iterations) and rebounds at 30 (right after
the learning-rate decay at 27). Run ``B`` keeps the same initial weights at every checkpoint:
nothing changes, so nothing is flagged.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import pytest
import torch
from filelock import FileLock

from eigenarch.data.coco import CocoDetection
from eigenarch.report.dynamics import Criteria, compute_dynamics
from eigenarch.train.checkpoint import (
    DETECTOR_FORMAT,
    detector_from_config,
    save_checkpoint,
)
from eigenarch.train.loop import TrainConfig, model_config
from eigenarch.train.rundir import RunDir

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
    cfg = TrainConfig(data=str(data), out=str(out), seed=seed, **TINY)
    dataset = CocoDetection.from_root(data, "train", verbose=False)
    config = model_config(cfg, dataset.num_classes)
    torch.manual_seed(seed)
    model = detector_from_config(config)
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


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test worker (the suite runs one worker per core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
