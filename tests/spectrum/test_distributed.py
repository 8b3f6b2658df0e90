"""Two gloo processes on CPU give the same spectra as one process on the same images."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from eigenarch.spectrum import Spectra, SpectrumCollector
from eigenarch.spectrum.stream import rank_share


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 24, 3), nn.ReLU(), nn.Conv2d(24, 48, 1, bias=False),  # a derived :out
        nn.ReLU(), nn.Conv2d(48, 16, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 3 * 3, 10),
    ).eval()  # fmt: skip


def make_images() -> torch.Tensor:
    return torch.rand(10, 3, 9, 9, generator=torch.Generator().manual_seed(1))


def collect(images: torch.Tensor, batch_size: int = 2) -> Spectra:
    model = make_model()
    with SpectrumCollector(model) as collector, torch.no_grad():
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    assert collector.derived == (["2:out"] if len(images) else [])
    return collector.spectra()


def sketched(images: torch.Tensor) -> Spectra:
    """Maps wider than 16 channels as rank-3 sketches (``2:out``, ``7:in``: 48 and 144)."""
    model = make_model()
    with SpectrumCollector(model, max_channels=16, sketch_rank=3) as collector, torch.no_grad():
        for start in range(0, len(images), 3):
            model(images[start : start + 3])
    return collector.spectra()


def worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        images = make_images()
        collect(images[rank::world], batch_size=3).save(f"{out}.{rank}")
        # A rank that saw nothing at all still takes part in the reduction.
        collect(images if rank == 0 else images[:0]).save(f"{out}.idle.{rank}")
        sketched(images[rank::world]).save(f"{out}.sketch.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    world = 2
    mp.spawn(worker, args=(world, f"file://{tmp_path}/init", str(tmp_path / "s")),
             nprocs=world, join=True)  # fmt: skip
    single = collect(make_images())
    ranks = [Spectra.load(tmp_path / f"s{kind}.{r}") for kind in ("", ".idle") for r in range(2)]
    for name in single.names:
        expected = single.covariance(name)
        for spectra in ranks:
            assert spectra.samples(name) == single.samples(name)
            assert (spectra.covariance(name) - expected).norm() / expected.norm() < 1e-6
            assert spectra.intrinsic_dim(name) == single.intrinsic_dim(name)
        assert torch.equal(ranks[0].covariance(name), ranks[1].covariance(name))
    assert all(spectra.names == single.names for spectra in ranks)
    assert single.samples("7:in") == 10 and single.samples("0:in") == 10
    assert single.samples("2:out") == 10
    assert_sketches_merged(tmp_path, single)


@pytest.mark.parametrize("images, batch, world", [(10, 2, 2), (11, 3, 2), (7, 2, 3), (3, 2, 4)])
def test_each_rank_takes_whole_batches_of_the_one_process_order(images, batch, world):
    indices = [100 + i for i in range(images)]
    batches = [indices[i : i + batch] for i in range(0, images, batch)]  # one process
    shares = [rank_share(indices, batch, r, world) for r in range(world)]
    for r, share in enumerate(shares):  # the rank's own batches are the one-process ones
        assert [share[i : i + batch] for i in range(0, len(share), batch)] == batches[r::world]
    assert sorted(i for share in shares for i in share) == indices


def assert_sketches_merged(tmp_path, single: Spectra) -> None:
    """The ranks' sketches, gathered, stacked and shrunk: one result on every rank, whose
    top eigenvalues are within its shrinkage below the exact covariance's."""
    ranks = [Spectra.load(tmp_path / f"s.sketch.{r}") for r in range(2)]
    for name in ["2:out", "7:in"]:
        sketch = ranks[0].sketch(name)
        assert torch.equal(sketch.rows, ranks[1].sketch(name).rows)
        assert ranks[0].samples(name) == single.samples(name) and ranks[0].sketch_rank(name) == 3
        exact = torch.linalg.eigvalsh(single.covariance(name)).flip(0)[:3]
        gap = exact - torch.linalg.eigvalsh(sketch.rows @ sketch.rows.T).flip(0)
        assert sketch.shrinkage > 0
        assert gap.min() >= -1e-9 * exact[0] and gap.max() <= sketch.shrinkage * (1 + 1e-9)
