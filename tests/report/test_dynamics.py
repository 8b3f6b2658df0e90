"""Dropping / rebounding rules, and ``compute_dynamics`` on runs with known dynamics."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

from eigenarch.report.dynamics import (
    Criteria,
    Event,
    analyse,
    compute_dynamics,
    find_events,
    load_dynamics,
)
from eigenarch.spectrum import Spectra
from eigenarch.train.rundir import RunDir

MILESTONES = (60_000, 80_000)  # the 1x schedule: 90k iterations
ITERS = list(range(0, 90_001, 10_000))


def test_dropping_at_first_checkpoint_below_the_fraction():
    dims = [200, 150, 120, 100, 100, 100, 100, 100, 100, 100]
    events = find_events(ITERS, dims, MILESTONES, 90_000, Criteria(drop=0.3, early=0.25))
    # 150 is a fall of 25% (not > 30%); 120 at 20k is 40%: dropping there.
    assert events == [Event("dropping", 20_000, 200, 120, 0)]
    assert events[0].change == pytest.approx(-0.4)


def test_no_dropping_after_the_first_part_or_below_the_fraction():
    late = [200, 190, 180, 170, 60, 60, 60, 60, 60, 60]  # the fall comes at 40k > 22.5k
    assert find_events(ITERS, late, MILESTONES, 90_000) == []
    mild = [200, 150, 141, 141, 141, 141, 141, 141, 141, 141]  # 29.5% < 30%
    assert find_events(ITERS, mild, MILESTONES, 90_000) == []
    assert find_events(ITERS, late, MILESTONES, 90_000, Criteria(early=0.5))[0].iteration == 40_000


def test_rebounding_right_after_each_decay():
    dims = [100, 90, 80, 80, 80, 80, 80, 95, 95, 120]
    events = find_events(ITERS, dims, MILESTONES, 90_000, Criteria(rise=0.1, window=0.15))
    assert events == [
        Event("rebounding", 70_000, 80, 95, 60_000, 60_000),
        Event("rebounding", 90_000, 95, 120, 80_000, 80_000),
    ]
    # A rise before the decay, or one too small, is no rebounding.
    assert find_events(ITERS, [80] * 5 + [120] * 5, MILESTONES, 90_000) == []
    assert find_events(ITERS, [80] * 7 + [87] * 3, MILESTONES, 90_000) == []


def test_rebounding_window_and_sparse_checkpoints():
    # No checkpoint in the window (60k, 69k]: the first one after the decay (70k) is used.
    dims = [100] * 7 + [130] * 3
    events = find_events(ITERS, dims, MILESTONES, 90_000, Criteria(window=0.1))
    assert events == [Event("rebounding", 70_000, 100, 130, 60_000, 60_000)]
    # A rise at the checkpoint of the decay itself (80k) happened before it; at 70k it was
    # still flat, so there is no rebounding at all.
    assert find_events(ITERS, [100] * 8 + [130] * 2, MILESTONES, 90_000) == []
    # From a dead map (0) any rise counts; its change is infinite.
    zero = find_events([0, 10, 20], [0, 0, 3], [10], 20)
    assert zero == [Event("rebounding", 20, 0, 3, 10, 10)] and zero[0].change == float("inf")


@given(st.integers(0, 4096), st.lists(st.integers(1, 100_000), max_size=3, unique=True))
def test_constant_series_is_never_flagged(dim, milestones):
    iterations = list(range(0, 100_001, 5_000))
    assert find_events(iterations, [dim] * len(iterations), milestones, 100_000) == []


def test_criteria_are_fractions():
    with pytest.raises(Exception, match="--drop 1.5"):
        Criteria(drop=1.5)


def _spectra(counts: dict[str, int], channels: int = 32) -> Spectra:
    """Diagonal covariances with exactly ``count`` eigenvalues above 1e-3 of the largest."""
    covs = {}
    for name, count in counts.items():
        values = torch.full((channels,), 1e-5, dtype=torch.float64)
        values[:count] = torch.logspace(0, -2.5, count, dtype=torch.float64)
        covs[name] = torch.diag(values)
    return Spectra(covs, {name: 10 for name in counts})


def test_synthetic_spectra_sequence(tmp_path):
    """Dimensionalities computed from spectra at each checkpoint, then the events."""
    series = {
        "drops:out": [32, 30, 12, 10, 10, 10, 11, 10, 10, 10],
        "rebounds:in": [20, 20, 20, 18, 18, 18, 18, 27, 27, 27],
        "steady:in": [16] * 10,
    }
    sequence = [_spectra({n: s[k] for n, s in series.items()}) for k in range(len(ITERS))]
    dims = {n: [sp.intrinsic_dim(n) for sp in sequence] for n in series}
    assert dims == series
    result = analyse(tmp_path, ITERS, dims, {n: 32 for n in series}, MILESTONES, 90_000, 1e-3)
    flagged = {m.name: [(e.kind, e.iteration) for e in m.events] for m in result.maps}
    assert flagged == {
        "drops:out": [("dropping", 20_000)],
        "rebounds:in": [("rebounding", 70_000)],
        "steady:in": [],
    }
    result.save()
    again = load_dynamics(tmp_path)
    assert again.to_dict() == result.to_dict()


def test_dynamics_of_a_run_with_known_events(analysed_runs, known):
    result = load_dynamics(analysed_runs["A"])
    assert result.iterations == list(known.iterations)
    assert result.milestones == [27, 36] and result.length == 40
    target = result.map(known.target + ":out")
    assert target.channels == 16
    assert target.dims[1] <= 4 < target.dims[0] and target.dims[3] == target.dims[0]
    kinds = [(e.kind, e.iteration, e.milestone) for e in target.events]
    assert kinds == [("dropping", 10, None), ("rebounding", 30, 27)]
    # The stored spectra are those of each checkpoint: knocked-out channels are zero.
    spectra = Spectra.load(RunDir(analysed_runs["A"]).spectra(10))
    cov = spectra.covariance(known.target + ":out")
    assert not cov[4:].any() and cov[:4].diagonal().gt(0).all()
    assert spectra.samples(known.target + ":out") == known.images
    assert all(
        target.dims[k]
        == Spectra.load(RunDir(analysed_runs["A"]).spectra(it)).intrinsic_dim(known.target + ":out")
        for k, it in enumerate(known.iterations)
    )
    unchanged = load_dynamics(analysed_runs["B"])
    assert not any(m.events for m in unchanged.maps)
    assert all(len(set(m.dims)) == 1 for m in unchanged.maps)


def _dynamics_worker(rank: int, world: int, init: str, run: str, images: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        compute_dynamics(run, images=images, layers=["backbone.body.layer1.*"])
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(analysed_runs, known, copy_run, tmp_path):
    """Under torch.distributed each rank streams its share; rank 0 writes the same result."""
    run = copy_run(analysed_runs["A"])
    shutil.rmtree(run / "spectra")
    (run / "dynamics.json").unlink()
    # fork: the workers start with everything imported (one intra-op thread, see conftest)
    args = (2, f"file://{tmp_path}/init", str(run), known.images)
    mp.start_processes(_dynamics_worker, args=args, nprocs=2, start_method="fork")
    single, double = load_dynamics(analysed_runs["A"]), load_dynamics(run)
    assert [m.name for m in double.maps] == [
        m.name for m in single.maps if m.name.startswith("backbone.body.layer1.")
    ]
    for m in double.maps:
        assert (m.dims, m.events) == (single.map(m.name).dims, single.map(m.name).events)
    for iteration in known.iterations:
        one = Spectra.load(RunDir(analysed_runs["A"]).spectra(iteration))
        two = Spectra.load(RunDir(run).spectra(iteration))
        assert two.meta["images"] == known.images
        for name in two.names:
            assert two.samples(name) == one.samples(name)
            expected = one.covariance(name)
            # float32 forward passes of other batches: equal to float32 round-off
            assert (two.covariance(name) - expected).norm() <= 1e-5 * expected.norm()


def test_a_run_still_training_is_said_so_and_marked_partial(analysed_runs, known, copy_run,
                                                             run_cli):  # fmt: skip
    import os
    import threading
    import time

    from eigenarch.io import output_lock

    run = copy_run(analysed_runs["A"])
    args = ["dynamics", "--run", run, "--images", known.images, "--workers", "0"]
    with output_lock(run):  # as the training process holds it
        r = run_cli(*args)
    assert r.code == 0, r.stderr
    assert (f"{run}: still training (pid {os.getpid()}); these dynamics cover its checkpoints "
            "so far and are marked partial (--wait waits for it)") in r.stderr  # fmt: skip
    assert json.loads((run / "dynamics.json").read_text())["partial"] is True
    assert load_dynamics(run).partial is True
    lock = output_lock(run)
    lock.__enter__()
    released = []

    def release() -> None:
        time.sleep(1.0)
        released.append(time.monotonic())
        lock.__exit__(None, None, None)

    threading.Thread(target=release).start()
    r = run_cli(*args, "--wait")
    assert r.code == 0 and released and time.monotonic() >= released[0], r.stderr
    assert f"{run}: still training; waiting for it to end" in r.stderr
    assert json.loads((run / "dynamics.json").read_text())["partial"] is False


def test_tensorboard_shows_each_maps_dims_and_eigenvalues_at_each_checkpoint(
    analysed_runs, known, copy_run, run_cli, tensorboard_events
):
    run = copy_run(analysed_runs["A"])
    result = load_dynamics(run)

    def dims(result) -> dict[str, list[tuple[int, int]]]:
        return {
            f"spectrum/{m.name}/dim": list(zip(result.iterations, m.dims, strict=True))
            for m in result.maps
        }

    found, events = tensorboard_events(run / "dynamics")
    assert found == dims(result)
    names = {f"spectrum/{m.name}/eigenvalues" for m in result.maps}
    assert set(events.Tags()["histograms"]) == names
    target = known.target + ":out"
    histograms = events.Histograms(f"spectrum/{target}/eigenvalues")
    assert [h.step for h in histograms] == list(known.iterations)
    for h in histograms:
        eigenvalues = Spectra.load(RunDir(run).spectra(h.step)).eigenvalues(target).numpy()
        value = h.histogram_value
        assert (value.num, value.min, value.max) == (16, eigenvalues.min(), 1.0)
        assert value.sum == pytest.approx(eigenvalues.sum(), rel=1e-12)

    # Another threshold writes the events anew: its dims, each checkpoint once.
    args = ["dynamics", "--run", run, "--images", known.images, "--workers", "0"]
    assert run_cli(*args, "--threshold", "1e-1").code == 0
    again = load_dynamics(run)
    assert again.threshold == 0.1 and dims(again) != dims(result)
    assert tensorboard_events(run / "dynamics")[0] == dims(again)
    assert len(list((run / "dynamics").iterdir())) == 1 and not list(run.glob(".dynamics*"))
    shutil.rmtree(run / "dynamics")
    assert run_cli(*args, "--no-tensorboard").code == 0
    assert not (run / "dynamics").exists()
