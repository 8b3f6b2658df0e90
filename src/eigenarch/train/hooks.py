"""The standard hooks of :class:`~eigenarch.train.engine.Trainer` (see
:mod:`eigenarch.train.engine` for what a hook may override): the learning-rate schedule,
the metrics file, the progress bar, periodic checkpoints and evaluations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from eigenarch.distributed import is_main
from eigenarch.io import atomic_write_text
from eigenarch.progress import progress_bar
from eigenarch.train.engine import Hook, Trainer
from eigenarch.train.schedule import Schedule


class LRScheduler(Hook):
    """Sets the learning rate of every parameter group from a :class:`Schedule`."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def before_step(self, trainer: Trainer) -> None:
        lr = self.schedule.lr(trainer.iter)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr


class MetricsWriter(Hook):
    """Appends ``trainer.metrics`` (the losses averaged over ranks, the learning rate, the
    time) every ``every`` iterations (and after the last) to ``path``, one JSON line each
    (rank 0). Put it before the evaluators: their metrics are not in the line.

    On a resume, lines past the starting iteration are dropped so none is repeated.
    """

    def __init__(self, path: str | Path, every: int = 1) -> None:
        self.path = Path(path)
        self.every = every

    def before_train(self, trainer: Trainer) -> None:
        self._file = None
        if is_main():
            kept = []
            if self.path.is_file():
                lines = self.path.read_text().splitlines()
                kept = [ln for ln in lines if json.loads(ln).get("iteration", 0) <= trainer.iter]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
            self._file = self.path.open("a")

    def after_step(self, trainer: Trainer) -> None:
        done = trainer.iter + 1
        if done % self.every and done != trainer.max_iter:
            return
        if self._file is not None:
            self._file.write(json.dumps(trainer.metrics) + "\n")
            self._file.flush()

    def after_train(self, trainer: Trainer) -> None:
        if self._file is not None:
            self._file.close()


class ProgressBar(Hook):
    """A progress bar of the iterations (rank 0), with the loss (averaged over ranks) and
    the learning rate."""

    def __init__(self, description: str = "train") -> None:
        self.description = description

    def before_train(self, trainer: Trainer) -> None:
        self._bar = progress_bar(disable=not is_main())
        self._bar.start()
        self._task = self._bar.add_task(
            self.description, total=trainer.max_iter, completed=trainer.iter
        )

    def after_step(self, trainer: Trainer) -> None:
        info = f"loss {trainer.metrics['loss']:.3f} lr {trainer.metrics['lr']:.4g}"
        self._bar.update(self._task, completed=trainer.iter + 1, info=info)

    def after_train(self, trainer: Trainer) -> None:
        self._bar.stop()


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
