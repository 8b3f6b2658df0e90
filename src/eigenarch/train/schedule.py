"""Learning-rate schedules: the paper's detector schedules (SPEC section 7: linear warm-up,
x0.1 steps) and the classifier pre-training ones (cosine, or x0.1 at 1/3 and 2/3)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from eigenarch.errors import EigenarchError

#: name -> (iterations, milestones) at batch 16, Detectron's 1x / 2x / 3x.
SCHEDULES = {
    "1x": (90_000, (60_000, 80_000)),
    "2x": (180_000, (120_000, 160_000)),
    "3x": (270_000, (210_000, 250_000)),
}
BASE_LR = 0.02  # at 16 images per iteration
BASE_WARMUP = 1000
WARMUP_FACTOR = 0.001


@dataclass(frozen=True)
class Schedule:
    """``lr(it)``: linear warm-up from ``warmup_factor * base_lr``, then x``gamma`` at each
    milestone, or (``cosine``) half a cosine from ``base_lr`` to 0 over ``iterations``."""

    iterations: int
    milestones: tuple[int, ...]
    base_lr: float
    warmup: int
    warmup_factor: float = WARMUP_FACTOR
    gamma: float = 0.1
    cosine: bool = False

    def lr(self, iteration: int) -> float:
        if self.cosine:
            decay = 0.5 * (1 + math.cos(math.pi * iteration / self.iterations))
        else:
            decay = self.gamma ** bisect.bisect_right(self.milestones, iteration)
        if iteration < self.warmup:
            alpha = iteration / self.warmup
            return self.base_lr * decay * (self.warmup_factor * (1 - alpha) + alpha)
        return self.base_lr * decay


def make_schedule(
    name: str = "1x",
    batch_size: int = 16,
    scale: float | None = None,
    iterations: int | None = None,
    base_lr: float | None = None,
) -> Schedule:
    """The named schedule, shortened by ``scale`` or stretched to ``iterations``.

    Milestones and warm-up scale with the length; the learning rate is 0.02 x batch / 16
    unless ``base_lr`` is given.
    """
    if name not in SCHEDULES:
        raise EigenarchError(f"--schedule {name!r}: expected one of {', '.join(SCHEDULES)}")
    if scale is not None and iterations is not None:
        raise EigenarchError("--schedule-scale and --iters: give at most one")
    if batch_size < 1:
        raise EigenarchError(f"--batch-size {batch_size}: expected a positive integer")
    total, milestones = SCHEDULES[name]
    if iterations is not None:
        if iterations < 1:
            raise EigenarchError(f"--iters {iterations}: expected a positive integer")
        factor = iterations / total
    else:
        factor = 1.0 if scale is None else scale
        if factor <= 0:
            raise EigenarchError(f"--schedule-scale {scale}: expected a positive number")
    length = iterations if iterations is not None else max(1, round(total * factor))
    return Schedule(
        iterations=length,
        milestones=tuple(round(m * factor) for m in milestones),
        base_lr=BASE_LR * batch_size / 16 if base_lr is None else base_lr,
        warmup=min(length, max(1, round(BASE_WARMUP * factor))),
    )


#: Classifier pre-training schedules (``eigenarch pretrain --schedule``).
CLASSIFIER_SCHEDULES = ("cosine", "step")


def classifier_schedule(name: str, iterations: int, base_lr: float) -> Schedule:
    """A pre-training schedule of ``iterations`` without warm-up: ``cosine``, or ``step``
    (x0.1 at 1/3 and 2/3 of the run, as ImageNet's 30 / 60 of 90 epochs)."""
    if name not in CLASSIFIER_SCHEDULES:
        raise EigenarchError(
            f"--schedule {name!r}: expected one of {', '.join(CLASSIFIER_SCHEDULES)}"
        )
    milestones = () if name == "cosine" else tuple(math.ceil(iterations * k / 3) for k in (1, 2))
    return Schedule(iterations, milestones, base_lr, warmup=0, cosine=name == "cosine")
