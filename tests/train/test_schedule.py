"""Learning-rate schedules: the paper's milestones, scaled, with linear warm-up."""

from __future__ import annotations

import pytest

from eigenarch.errors import EigenarchError
from eigenarch.train.schedule import make_schedule


def test_1x_at_batch_16_is_the_paper_schedule():
    schedule = make_schedule("1x", batch_size=16)
    assert schedule.iterations == 90_000 and schedule.milestones == (60_000, 80_000)
    assert schedule.lr(0) == pytest.approx(0.02 * 0.001)
    assert schedule.lr(500) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert schedule.lr(1000) == schedule.lr(59_999) == pytest.approx(0.02)
    assert schedule.lr(60_000) == pytest.approx(0.002)
    assert schedule.lr(85_000) == pytest.approx(0.0002)


def test_lr_scales_with_batch_and_length_scales_milestones():
    schedule = make_schedule("2x", batch_size=4, scale=0.01)
    assert schedule.iterations == 1800 and schedule.milestones == (1200, 1600)
    assert schedule.warmup == 10 and schedule.lr(10) == pytest.approx(0.005)
    stretched = make_schedule("3x", iterations=540)
    assert stretched.milestones == (420, 500) and stretched.iterations == 540


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "4x"}, "--schedule '4x'"),
        ({"scale": 0.5, "iterations": 10}, "give at most one"),
        ({"iterations": 0}, "--iters 0"),
        ({"scale": -1.0}, "--schedule-scale -1.0"),
        ({"batch_size": 0}, "--batch-size 0"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(EigenarchError, match=message):
        make_schedule(**kwargs)
