"""A tiny DetNAS configuration: 5 blocks of narrow ShuffleNetV2, a 128 px detector."""

from __future__ import annotations

import pytest

from eigenarch.nas.shufflenet import SearchSpace

TINY_SPACE = SearchSpace(8, (16, 32, 48, 64), (1, 1, 2, 1), last=64)
SPACE_ARGS = ["--stem", "8", "--channels", "16,32,48,64", "--depths", "1,1,2,1"]
DETECTOR_ARGS = [
    "--gn-groups", "8", "--fpn-channels", "16", "--head-channels", "16",
    "--representation", "32", "--min-size", "96", "--max-size", "96",
    "--anchor-sizes", "16,32,64,128,256", "--roi-batch", "32", "--rpn-batch", "32",
    "--workers", "0", "--batch-size", "2", "--lr", "0.01",
]  # fmt: skip
#: ``eigenarch detnas search`` options of a short search of the tiny space.
SEARCH_ARGS = [
    "--population", "4", "--topk", "2", "--mutations", "1", "--crossovers", "1",
    "--generations", "2", "--bn-images", "2", "--flops", "14M",
]  # fmt: skip
DETECTOR_KWARGS = dict(
    gn_groups=8, fpn_channels=16, head_channels=16, representation=32, min_size=96,
    max_size=96, anchor_sizes=(16, 32, 64, 128, 256),
)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """Every test here runs with one intra-op thread (tests/conftest.py's ``one_thread``)."""


@pytest.fixture
def supernet_config(shapes_root, tmp_path):
    """``supernet_config(name, **overrides)`` -> a tiny SupernetConfig under ``tmp_path``."""
    from eigenarch.nas.shufflenet import detnas_config
    from eigenarch.nas.supernet import SupernetConfig

    def make(name: str = "supernet", **overrides) -> SupernetConfig:
        settings = dict(
            data=str(shapes_root), out=str(tmp_path / name),
            backbone=detnas_config(TINY_SPACE, None), roi_batch=32, rpn_batch=32,
            workers=0, iters=3, batch_size=2, checkpoint_every=1, lr=0.01, holdout=4,
            **DETECTOR_KWARGS,
        )  # fmt: skip
        settings.update(overrides)
        return SupernetConfig(**settings)

    return make
