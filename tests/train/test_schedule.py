"""Learning-rate schedules: the paper's milestones, scaled, with linear warm-up."""

from __future__ import annotations

import math

import pytest

from eigenarch.errors import EigenarchError
from eigenarch.train.schedule import Schedule, classifier_schedule, make_schedule


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


def test_the_defaults_are_1x_at_batch_16():
    assert make_schedule() == make_schedule("1x", batch_size=16)
    assert make_schedule().base_lr == 0.02


def test_the_smallest_settings_are_accepted_with_at_least_one_iteration_and_warm_up_step():
    one = make_schedule(iterations=1, batch_size=1)  # 1 is the least --iters / --batch-size
    assert (one.iterations, one.milestones, one.warmup) == (1, (1, 1), 1)
    assert one.base_lr == pytest.approx(0.02 / 16)
    tiny = make_schedule(scale=1e-5)  # 90,000 x 1e-5 = 0.9 iterations: rounds to 1
    assert (tiny.iterations, tiny.warmup) == (1, 1)
    assert make_schedule(iterations=100).warmup == 1  # 1000 / 900 warm-up steps round to 1
    assert make_schedule(iterations=10).warmup == 1  # 0.11 rounds to 0: at least 1


def test_a_given_base_lr_replaces_the_batch_rule():
    assert make_schedule(batch_size=4, base_lr=0.1).base_lr == 0.1


def test_cosine_decays_from_the_base_to_zero_after_the_warm_up():
    schedule = Schedule(100, (), 0.1, warmup=10, cosine=True)
    assert schedule.lr(50) == pytest.approx(0.05) and schedule.lr(100) == pytest.approx(0.0)
    assert schedule.lr(25) == pytest.approx(0.1 * 0.5 * (1 + 2**-0.5))
    # warm-up: the cosine's value at the iteration, times the linear ramp from 0.001
    ramp = 0.001 * 0.5 + 0.5
    assert schedule.lr(5) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 20)) * ramp)
    assert schedule.lr(10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 10)))


def test_classifier_schedules():
    cosine = classifier_schedule("cosine", 90, 0.4)
    assert (cosine.cosine, cosine.warmup, cosine.milestones) == (True, 0, ())
    assert cosine.lr(0) == pytest.approx(0.4) and cosine.lr(45) == pytest.approx(0.2)
    step = classifier_schedule("step", 91, 0.4)
    assert step.milestones == (31, 61) and not step.cosine  # ceil(91 / 3), ceil(182 / 3)
    assert [step.lr(i) for i in (30, 31, 61)] == pytest.approx([0.4, 0.04, 0.004])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "4x"}, "--schedule '4x': expected one of 1x, 2x, 3x"),
        ({"scale": 0.5, "iterations": 10}, "--schedule-scale and --iters: give at most one"),
        ({"iterations": 0}, "--iters 0: expected a positive integer"),
        ({"scale": -1.0}, "--schedule-scale -1.0: expected a positive number"),
        ({"scale": 0.0}, "--schedule-scale 0.0: expected a positive number"),
        ({"batch_size": 0}, "--batch-size 0: expected a positive integer"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(EigenarchError) as error:
        make_schedule(**kwargs)
    assert str(error.value) == message


def test_a_bad_classifier_schedule_is_refused():
    with pytest.raises(EigenarchError) as error:
        classifier_schedule("linear", 10, 0.1)
    assert str(error.value) == "--schedule 'linear': expected one of cosine, step"
