"""Hooks of the training loop (detectron2 style).

A hook overrides any of ``before_train``, ``before_step``, ``after_backward``,
``after_step`` and ``after_train``; each receives the :class:`~eigenarch.train.loop.Trainer`,
whose ``iter`` is the iteration being run (0-based), ``max_iter`` the run's length and
``losses`` the last step's losses. ``after_train`` runs also when training stops on an error
or an interruption: close files and bars there, do no work that needs a finished run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from eigenarch.distributed import is_main, mean_over_ranks
from eigenarch.io import atomic_write_text
from eigenarch.progress import progress_bar
from eigenarch.train.schedule import Schedule

if TYPE_CHECKING:
    from eigenarch.train.loop import Trainer


class Hook:
    """Base hook: every method does nothing; override the ones you need."""

    def before_train(self, trainer: Trainer) -> None:
        """Called once before the first iteration (also after a resume)."""

    def before_step(self, trainer: Trainer) -> None:
        """Called before each iteration."""

    def after_backward(self, trainer: Trainer) -> None:
        """Called after each backward pass, before the optimizer step (change gradients)."""

    def after_step(self, trainer: Trainer) -> None:
        """Called after each iteration, with ``trainer.losses`` set."""

    def after_train(self, trainer: Trainer) -> None:
        """Called once when training ends: after the last iteration, or on a failure."""


class LRScheduler(Hook):
    """Sets the learning rate of every parameter group from a :class:`Schedule`."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def before_step(self, trainer: Trainer) -> None:
        lr = self.schedule.lr(trainer.iter)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr


class MetricsLogger(Hook):
    """Appends losses (averaged over ranks) to ``metrics.jsonl`` (unless ``path`` is None)
    and drives the progress bar; the line logged is also ``trainer.metrics``.

    On a resume, lines past the starting iteration are dropped so none is repeated.
    """

    def __init__(self, path: str | Path | None, every: int = 1, description: str = "train") -> None:
        self.path = Path(path) if path is not None else None
        self.every = every
        self.description = description

    def before_train(self, trainer: Trainer) -> None:
        if is_main() and self.path is not None:
            kept = []
            if self.path.is_file():
                lines = self.path.read_text().splitlines()
                kept = [ln for ln in lines if json.loads(ln).get("iteration", 0) <= trainer.iter]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._file = self.path.open("a") if is_main() and self.path is not None else None
        self._bar = progress_bar(disable=not is_main())
        self._bar.start()
        self._task = self._bar.add_task(
            self.description, total=trainer.max_iter, completed=trainer.iter
        )
        self._start = time.perf_counter()

    def after_step(self, trainer: Trainer) -> None:
        done = trainer.iter + 1
        if done % self.every and done != trainer.max_iter:
            self._bar.update(self._task, completed=done)
            return
        losses = mean_over_ranks(trainer.losses, trainer.device)
        lr = trainer.optimizer.param_groups[0]["lr"]
        trainer.metrics = {
            "iteration": done,
            **losses,
            "lr": lr,
            "time": round(time.perf_counter() - self._start, 3),
        }
        if self._file is not None:
            self._file.write(json.dumps(trainer.metrics) + "\n")
            self._file.flush()
        self._bar.update(self._task, completed=done, info=f"loss {losses['loss']:.3f} lr {lr:.4g}")

    def after_train(self, trainer: Trainer) -> None:
        self._bar.stop()
        if self._file is not None:
            self._file.close()


class PeriodicCheckpointer(Hook):
    """Saves ``trainer.checkpoint()`` every ``every`` iterations and after the last one."""

    def __init__(self, every: int) -> None:
        self.every = every

    def after_step(self, trainer: Trainer) -> None:
        done = trainer.iter + 1
        if (self.every and done % self.every == 0) or done == trainer.max_iter:
            trainer.save_checkpoint(done)


class PeriodicEvaluator(Hook):
    """Runs ``evaluate(iteration)`` every ``every`` iterations (0: never) before the last,
    adding its metrics to ``trainer.metrics``; the run's final evaluation is the caller's,
    once :meth:`Trainer.train` has returned."""

    def __init__(self, evaluate: Callable[[int], dict], every: int = 0) -> None:
        self.evaluate = evaluate
        self.every = every

    def after_step(self, trainer: Trainer) -> None:
        done = trainer.iter + 1
        if self.every and done % self.every == 0 and done != trainer.max_iter:
            trainer.metrics.update(self.evaluate(done))
