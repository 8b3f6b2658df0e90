"""A tiny detector configuration that trains in seconds on 2 CPU cores."""

from __future__ import annotations

import pytest

from eigenarch.train.loop import TrainConfig

TINY_WIDTHS = "16,16,32,16,32,32,64,32,64"
TINY_ARGS = [
    "--backbone",
    TINY_WIDTHS,
    "--gn-groups",
    "8",
    "--fpn-channels",
    "32",
    "--head-channels",
    "32",
    "--representation",
    "64",
    "--min-size",
    "128",
    "--max-size",
    "128",
    "--anchor-sizes",
    "16,32,64,128,256",
    "--roi-batch",
    "64",
    "--rpn-batch",
    "64",
    "--workers",
    "0",
]


@pytest.fixture
def tiny_config(shapes_root, tmp_path):
    """``tiny_config(name, **overrides)`` -> a TrainConfig writing to ``tmp_path / name``."""

    def make(name: str = "run", **overrides) -> TrainConfig:
        settings = dict(
            data=str(shapes_root),
            out=str(tmp_path / name),
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
        settings.update(overrides)
        return TrainConfig(**settings)

    return make
