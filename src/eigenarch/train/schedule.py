"""Learning-rate schedules of the paper (SPEC section 7): linear warm-up, x0.1 steps."""

from __future__ import annotations

import bisect
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
    """``lr(it)``: linear warm-up from ``warmup_factor * base_lr``, x``gamma`` at each milestone."""

    iterations: int
    milestones: tuple[int, ...]
    base_lr: float
    warmup: int
    warmup_factor: float = WARMUP_FACTOR
    gamma: float = 0.1

    def lr(self, iteration: int) -> float:
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
