"""A run folder: the one owner of its layout and of reading it.

``eigenarch train`` / ``detnas supernet`` / ``detnas retrain`` write a run folder,
``eigenarch dynamics`` adds to it, ``report`` / ``compare`` / ``evaluate`` / ``demo``
read it::

    RUN/config.json                         the run's settings (TrainConfig)
    RUN/metrics.jsonl                       losses, one line per iteration
    RUN/metrics.json, detections.json       the final COCO metrics of the val split
    RUN/init.json                           what --init loaded
    RUN/holdout.json                        the images a supernet run held out
    RUN/checkpoints/iter_XXXXXXX.pt         iteration 0 = the initial weights
    RUN/eval/iter_XXXXXXX/                  evaluations during training (--eval-every)
    RUN/spectra/iter_XXXXXXX.safetensors    one checkpoint's spectra (dynamics)
    RUN/dynamics.json                       their dimensionalities over the run
    RUN/events.out.tfevents.*               TensorBoard events of training
    RUN/dynamics/events.out.tfevents.*      TensorBoard events of the dynamics
    RUN/.lock                               held by the process writing the run

(``eigenarch pretrain`` writes one checkpoint file, ``OUT`` and ``OUT.resume``: no folder.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eigenarch.errors import EigenarchError
from eigenarch.io import output_lock, read_json_object

_ITER_FILE = re.compile(r"^iter_(\d{7})\.pt$")


class RunDir:
    """The files of one run folder (the layout above) and their reading."""

    CONFIG = "config.json"
    LOG = "metrics.jsonl"
    METRICS = "metrics.json"
    INIT = "init.json"
    HOLDOUT = "holdout.json"
    CHECKPOINTS = "checkpoints"
    EVAL = "eval"
    SPECTRA = "spectra"
    DYNAMICS = "dynamics.json"
    DYNAMICS_EVENTS = "dynamics"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def log_file(self) -> Path:
        return self.path / self.LOG

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def init_file(self) -> Path:
        return self.path / self.INIT

    @property
    def holdout_file(self) -> Path:
        return self.path / self.HOLDOUT

    @property
    def dynamics_file(self) -> Path:
        return self.path / self.DYNAMICS

    @property
    def dynamics_events(self) -> Path:
        """The TensorBoard events of ``eigenarch dynamics`` (those of training: in the run
        folder itself)."""
        return self.path / self.DYNAMICS_EVENTS

    def checkpoint(self, iteration: int) -> Path:
        """``RUN/checkpoints/iter_XXXXXXX.pt``."""
        return self.path / self.CHECKPOINTS / f"iter_{iteration:07d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """The run's checkpoints as ``(iteration, path)``, oldest first."""
        folder = self.path / self.CHECKPOINTS
        found = []
        for path in folder.glob("iter_*.pt") if folder.is_dir() else []:
            match = _ITER_FILE.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def evaluation(self, iteration: int) -> Path:
        """``RUN/eval/iter_XXXXXXX``: the folder of an evaluation during training."""
        return self.path / self.EVAL / f"iter_{iteration:07d}"

    def spectra(self, iteration: int) -> Path:
        """``RUN/spectra/iter_XXXXXXX.safetensors``: the spectra of one checkpoint."""
        return self.path / self.SPECTRA / f"iter_{iteration:07d}.safetensors"

    def has_config(self) -> bool:
        return self.config_file.is_file()

    def read_config(self, what: str = "training") -> dict[str, Any]:
        """``config.json`` as a dict; one line naming the folder if it has none."""
        if not self.has_config():
            raise EigenarchError(
                f"{self.path}: no {self.CONFIG} (not a {what} run folder of eigenarch)"
            )
        return read_json_object(self.config_file, f"{what} settings")

    def saved_device(self, default: str) -> str:
        """The device ``config.json`` names (``default`` when it cannot be read: the run's
        own checks say why when it is loaded)."""
        try:
            return str(self.read_config().get("device", default))
        except EigenarchError:
            return default

    def read_metrics(self) -> dict[str, Any] | None:
        """The final COCO metrics (``metrics.json``), or ``None`` before the run ends."""
        return (
            read_json_object(self.metrics_file, "metrics") if self.metrics_file.is_file() else None
        )

    def logged_iterations(self) -> int:
        """How many lines ``metrics.jsonl`` holds (0 before the first)."""
        return len(self.log_file.read_text().splitlines()) if self.log_file.is_file() else 0

    def resume_hint(self) -> str:
        """Where a stopped run resumes from, as an error message's tail."""
        found = self.checkpoints()
        last = f"the last complete checkpoint is {found[-1][1].name}" if found else "no checkpoint"
        return f"; {last}; resume with --resume"

    @contextmanager
    def lock(self, option: str = "--out") -> Iterator[RunDir]:
        """Hold the folder's ``.lock`` while the block runs (:func:`eigenarch.io.output_lock`)."""
        with output_lock(self.path, option, folder=True):
            yield self
