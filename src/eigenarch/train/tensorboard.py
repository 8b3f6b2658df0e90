"""TensorBoard event files of a run, in detectron2's names, written by rank 0.

The loops' :class:`TensorBoardWriter` hook writes, at each logged iteration (the step is
``metrics.jsonl``'s ``iteration``), every scalar of ``trainer.metrics``: the losses as logged
(``loss_*``), their sum as ``total_loss``, ``lr``, what evaluators added (``bbox/AP``, ...,
``segm/AP*``; a classifier's ``val_accuracy``, ...), and detectron2's ``time`` (seconds of the
iteration: data and step) and ``data_time`` (of it, waiting for the data). A resumed run's writer
purges the steps past its checkpoint, so none is repeated. :func:`append_scalars` adds a run's
final evaluation; :func:`replace_events` writes a folder of events anew (the dynamics').
``torch.utils.tensorboard`` (and tensorboard) is imported only when a writer is opened.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eigenarch.distributed import is_main
from eigenarch.io import make_folder, unwritable_as_error
from eigenarch.train.engine import Hook, Trainer

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


EVENTS_PREFIX = "events.out.tfevents."


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of a step's ``metrics``: ``loss`` as ``total_loss``, a nested
    mapping (an evaluation's ``{"bbox": {"AP": ...}}``) as ``bbox/AP``, ...; ``iteration`` (the
    step) and ``metrics.jsonl``'s wall-clock ``time`` (TensorBoard keeps its own) left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update({f"{key}/{name}": float(v) for name, v in value.items()})
        elif key not in ("iteration", "time"):
            out["total_loss" if key == "loss" else key] = float(value)
    return out


def _after_existing(folder: Path) -> None:
    """Wait, if needed, for the second after the newest event file's in ``folder``: files are
    named after the second they were opened and read in name order, so a new one (and the
    purge it starts with) must sort after every earlier one."""
    seconds = [
        int(stamp)
        for path in folder.glob(EVENTS_PREFIX + "*")
        if (stamp := path.name[len(EVENTS_PREFIX) :].split(".")[0]).isdigit()
    ]
    if seconds and max(seconds) == int(time.time()):
        time.sleep(max(seconds) + 1 - time.time())


@contextmanager
def event_writer(
    folder: str | os.PathLike[str], purge_step: int | None = None
) -> Iterator[SummaryWriter]:
    """A ``SummaryWriter`` writing a new event file in ``folder`` (made if needed), closed at
    the end; with ``purge_step``, TensorBoard drops the steps from it on of earlier files."""
    target = Path(folder)
    with unwritable_as_error(target):
        make_folder(target)
        _after_existing(target)
        from torch.utils.tensorboard import SummaryWriter  # tensorboard loads only when used

        writer = SummaryWriter(str(target), purge_step=purge_step)
    with unwritable_as_error(target):  # the writing thread's error comes at a write or close
        try:
            yield writer
        finally:
            writer.close()


def append_scalars(folder: str | os.PathLike[str], step: int, values: Mapping[str, Any]) -> None:
    """Add :func:`scalars` of ``values`` at ``step`` to the events in ``folder``."""
    with event_writer(folder) as writer:
        for tag, value in scalars(values).items():
            writer.add_scalar(tag, value, step)


def replace_events(folder: str | os.PathLike[str], write: Callable[[SummaryWriter], None]) -> Path:
    """Make ``folder`` hold only the events ``write(writer)`` adds: written in a new
    folder beside it, which then takes its place, so a failed write leaves the old one."""
    target = Path(folder)
    make_folder(target.parent)
    with unwritable_as_error(target):
        fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with event_writer(fresh) as writer:
            write(writer)
        with unwritable_as_error(target):
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
                os.replace(target, old / target.name)
                shutil.rmtree(old)
            os.replace(fresh, target)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return target


class TensorBoardWriter(Hook):
    """Writes each logged step's :func:`scalars` of ``trainer.metrics`` (and ``time``,
    ``data_time``) to event files in ``folder`` (rank 0). Put it after the hooks that fill
    ``trainer.metrics`` (the metrics logger, evaluators)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._open = ExitStack()
        self._writer: SummaryWriter | None = None

    def before_train(self, trainer: Trainer) -> None:
        if is_main():  # a resumed run's events past its checkpoint are dropped
            self._writer = self._open.enter_context(event_writer(self.folder, trainer.iter + 1))

    def after_step(self, trainer: Trainer) -> None:
        step = trainer.iter + 1
        if self._writer is None or trainer.metrics.get("iteration") != step:
            return
        timing = {"time": trainer.data_time + trainer.step_time, "data_time": trainer.data_time}
        with unwritable_as_error(self.folder):
            for tag, value in {**scalars(trainer.metrics), **timing}.items():
                self._writer.add_scalar(tag, value, step)

    def after_train(self, trainer: Trainer) -> None:
        self._writer = None
        self._open.close()
