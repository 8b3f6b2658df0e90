"""Frequent Directions sketches of wide maps against the exact covariance (SPEC section 3)."""

from __future__ import annotations

import json
import warnings

import pytest
import safetensors
import torch
from torch import nn

import eigenarch.spectrum.spectra as spectra_module
from eigenarch.errors import EigenarchError
from eigenarch.spectrum import Spectra, SpectrumCollector
from eigenarch.spectrum.sketch import FrequentDirections
from eigenarch.spectrum.spectra import sidecar

from .test_spectra import _rewrite_header


def decaying_rows(rows: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Rows whose covariance has eigenvalues decaying over three decades, random basis."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(channels, channels, generator=g, dtype=torch.float64))[0]
    scales = torch.logspace(0, -1.5, channels, dtype=torch.float64)
    return torch.randn(rows, channels, generator=g, dtype=torch.float64) * scales @ basis.T


def descending_eigenvalues(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(matrix).flip(0)


def assert_frequent_directions_bound(rows: torch.Tensor, sketch: FrequentDirections) -> None:
    """``0 <= lambda_i(A^T A) - lambda_i(B^T B) <= delta <= ||A - A_k||_F^2 / (l - k)``."""
    exact = descending_eigenvalues(rows.T @ rows)
    b = sketch.sketch()
    approx = descending_eigenvalues(b.T @ b)
    gap = exact - approx
    tol = 1e-9 * exact[0].item()
    assert gap.min() >= -tol
    assert gap.max() <= sketch.shrinkage + tol
    assert sketch.shrinkage > 0  # the test's streams are long enough to shrink
    tails = [exact[k:].sum().item() / (sketch.rank - k) for k in range(sketch.rank)]
    assert sketch.shrinkage <= min(tails) + tol


def test_top_eigenvalues_within_the_frequent_directions_bound():
    rows = decaying_rows(1500, 64)
    sketch = FrequentDirections(64, 16)
    for part in rows.split(97):  # uneven chunks: buffer fills mid-chunk
        sketch.add_gram(part.T, 1.0)
    assert_frequent_directions_bound(rows, sketch)
    # The shrinkage is the error: the top eigenvalue's gap is a real share of it (a sketch
    # that only truncated would leave it 0, and one subtracting too much would exceed it).
    b = sketch.sketch()
    top_gap = descending_eigenvalues(rows.T @ rows)[0] - descending_eigenvalues(b.T @ b)[0]
    assert 0.5 * sketch.shrinkage < top_gap.item() <= sketch.shrinkage * (1 + 1e-9)


def test_weights_scale_rows_and_few_rows_are_exact():
    rows = decaying_rows(10, 12)
    sketch = FrequentDirections(12, 16)  # 2 * 16 rows of buffer: never shrinks
    sketch.add_gram(rows.T, 0.25)
    b = sketch.sketch()
    torch.testing.assert_close(b.T @ b, 0.25 * rows.T @ rows, rtol=1e-12, atol=1e-12)
    assert sketch.shrinkage == 0.0


def test_merged_sketches_keep_the_bound_of_the_union():
    rows = decaying_rows(1200, 48, seed=3)
    halves = [FrequentDirections(48, 12) for _ in range(2)]
    halves[0].add_rows(rows[:500])
    halves[1].add_rows(rows[500:])
    merged = FrequentDirections(48, 12)
    for half in halves:
        merged.merge(half.sketch(), half.shrinkage)
    assert merged.shrinkage > halves[0].shrinkage + halves[1].shrinkage  # merging shrinks too
    assert_frequent_directions_bound(rows, merged)


def wide_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 24, 3), nn.ReLU(), nn.Conv2d(24, 8, 1), nn.Flatten(),
                         nn.Linear(8 * 5 * 5, 6)).eval()  # fmt: skip


def collect(model: nn.Module, images: torch.Tensor, **options) -> tuple[Spectra, list[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skip warning of the exact collector
        collector = SpectrumCollector(model, **options)
    with collector, torch.no_grad():
        for batch in images.split(3):
            model(batch)
    return collector.spectra(), collector.sketched


def test_collector_sketches_wide_maps_with_the_covariance_weights():
    model, images = wide_model(), torch.rand(7, 3, 7, 7, generator=torch.Generator().manual_seed(1))
    exact, _ = collect(model, images)
    # A rank at least the width is exact: the sketch's B^T B is the covariance, 1/(H W) and
    # 1/n weights included (a conv map :in with H W = 49, a Linear map with rows of weight 1).
    full, sketched = collect(model, images, max_channels=16, sketch_rank=200)
    assert sketched == ["0:out", "2:in", "4:in"]
    for name in sketched:
        rows = full.sketch(name).rows
        torch.testing.assert_close(rows.T @ rows, exact.covariance(name), rtol=1e-6, atol=1e-9)
        assert full.samples(name) == exact.samples(name)
    # Rank 4: lower bounds of the normalised eigenvalues, the intrinsic dim at most 4.
    small, _ = collect(model, images, max_channels=16, sketch_rank=4)
    for name in sketched:
        assert small.sketch_rank(name) == 4 and exact.sketch_rank(name) == 0
        values = small.eigenvalues(name)
        assert values.shape == (exact.channels(name),) and not values[4:].any()
        assert (values <= exact.eigenvalues(name) + 1e-9).all()
        assert 1 <= small.intrinsic_dim(name) <= min(4, exact.intrinsic_dim(name))
    assert small.covariance("0:in").shape == (3, 3)  # narrow maps as before
    with pytest.raises(EigenarchError, match=r"'2:in' is sketched \(rank 4\): no covariance"):
        small.covariance("2:in")
    with pytest.raises(EigenarchError, match="sketch_rank -1"):
        SpectrumCollector(model, sketch_rank=-1)


def test_sketched_maps_round_trip_and_are_checked(tmp_path):
    model, images = wide_model(), torch.rand(4, 3, 7, 7, generator=torch.Generator().manual_seed(2))
    spectra, _ = collect(model, images, max_channels=16, sketch_rank=4)
    path = spectra.save(tmp_path / "s.safetensors")
    loaded = Spectra.load(path)
    assert loaded.names == spectra.names
    assert loaded.intrinsic_dims() == spectra.intrinsic_dims()
    entry = json.loads(sidecar(path).read_text())["maps"][loaded.names.index("2:in")]
    assert entry["sketch"] == {"rank": 4, "shrinkage": spectra.sketch("2:in").shrinkage}
    assert "sketch" not in json.loads(sidecar(path).read_text())["maps"][0]
    torch.testing.assert_close(loaded.sketch("2:in").rows, spectra.sketch("2:in").rows)
    sidecar(path).unlink()
    _rewrite_header(path, lambda info: info["maps"][2]["sketch"].update(rank=5))
    with pytest.raises(EigenarchError, match="damaged spectra file"):  # SHA-256 of the fields
        Spectra.load(path)

    def forge(change) -> None:  # an edit whose SHA-256 is recomputed: the fields are checked
        def edit(info):
            info.pop("sha256")
            change(info)
            with safetensors.safe_open(path, framework="pt") as f:
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
            info["sha256"] = spectra_module._digest(info, tensors)

        spectra.save(path)
        sidecar(path).unlink()
        _rewrite_header(path, edit)

    forge(lambda info: info["maps"][2]["sketch"].update(rank=5))
    with pytest.raises(EigenarchError, match=r"no 24-channel rank-5 sketch tensors for map '2:in'"):
        Spectra.load(path)
    forge(lambda info: info["maps"][2]["sketch"].update(shrinkage=-1.0))
    with pytest.raises(EigenarchError, match="damaged spectra file"):
        Spectra.load(path)
    forge(lambda info: info["maps"][2].pop("sketch"))  # a sketch read as a covariance
    with pytest.raises(EigenarchError, match=r"no 24-channel covariance tensors for map '2:in'"):
        Spectra.load(path)


def test_shrinks_run_on_one_thread_and_restore_the_callers_count(monkeypatch):
    seen = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m: seen.append(torch.get_num_threads())
                        or eigh(m))  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sketch = FrequentDirections(8, 2)
        sketch.add_rows(decaying_rows(9, 8))
        sketch.sketch()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert seen == [1] * 4  # 9 rows, buffer 4 shrunk to 2: after rows 4, 6 and 8, then at the end
