"""Eigenspectrum dynamics of a training run (paper section 4.2, Figures 3 and 4).

The spectra of every checkpoint of a run are collected once and kept under the run
(``RUN_DIR/spectra/iter_XXXXXXX.safetensors``); ``RUN_DIR/dynamics.json`` records the
settings, every map's intrinsic dimensionality over the iterations and the two phenomena
of the paper, found by :func:`find_events`:

- *dropping*: within the first part of training (iterations up to ``early`` x the run's
  length, at least the first checkpoint after the initial one) the dimensionality falls
  below ``(1 - drop)`` x its value at the first checkpoint; the event is at the first
  checkpoint where it does.
- *rebounding*: right after a learning-rate decay at iteration ``m`` (checkpoints in
  ``(m, m + window x length]``, at least the first one after ``m``, never past the next
  decay) the dimensionality rises above ``(1 + rise)`` x its value at the last checkpoint
  at or before ``m``; the event is at the first checkpoint where it does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eigenarch.data.coco import CocoDetection
from eigenarch.distributed import barrier, is_main, local_device
from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_write_json, check_writable, lock_holder
from eigenarch.options import command_line
from eigenarch.progress import console
from eigenarch.report.runs import TrainingRun, training_run
from eigenarch.spectrum import Spectra
from eigenarch.spectrum.spectra import read_info
from eigenarch.spectrum.stream import sample_images, stream_spectra
from eigenarch.train.rundir import RunDir
from eigenarch.train.tensorboard import replace_events

FORMAT = "eigenarch-dynamics"


@dataclass(frozen=True)
class Criteria:
    """Thresholds of the dropping / rebounding detectors (fractions; see the module doc)."""

    drop: float = 0.3
    early: float = 0.25
    rise: float = 0.1
    window: float = 0.1

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0 < value <= 1:
                raise EigenarchError(f"--{name} {value}: expected a fraction in (0, 1]")


@dataclass(frozen=True)
class Event:
    """A dropping or rebounding of one map: dimensionality ``before`` -> ``after``."""

    kind: str  # "dropping" or "rebounding"
    iteration: int  # the checkpoint where it is seen
    before: int
    after: int
    since: int  # iteration of ``before``: the first checkpoint, or the last before the decay
    milestone: int | None = None  # the learning-rate decay of a rebounding

    @property
    def change(self) -> float:
        """Relative change ``after / before - 1`` (``inf`` from 0)."""
        return self.after / self.before - 1 if self.before else float("inf")


@dataclass
class MapDynamics:
    """One map's intrinsic dimensionality at every checkpoint, and its events."""

    name: str
    channels: int
    dims: list[int]
    events: list[Event] = field(default_factory=list)

    def event(self, kind: str) -> Event | None:
        return next((e for e in self.events if e.kind == kind), None)


def _first_checkpoints(iterations: Sequence[int], start: int, end: int, stop: int) -> list[int]:
    """Indices of checkpoints in ``(start, end]``, else the first one in ``(start, stop]``."""
    inside = [i for i, it in enumerate(iterations) if start < it <= end]
    if inside:
        return inside
    after = [i for i, it in enumerate(iterations) if start < it <= stop]
    return after[:1]


def find_events(
    iterations: Sequence[int],
    dims: Sequence[int],
    milestones: Sequence[int],
    length: int,
    criteria: Criteria = Criteria(),
) -> list[Event]:
    """The dropping and reboundings of one dimensionality series (module doc for the rules).

    ``iterations`` are the checkpoints' iterations (ascending), ``dims`` the dimensionality
    at each, ``milestones`` the learning-rate decays and ``length`` the run's iterations.
    """
    if len(iterations) != len(dims):
        raise ValueError("iterations and dims must have the same length")
    events = []
    if len(dims) >= 2 and dims[0] > 0:
        cut = (1 - criteria.drop) * dims[0]
        span = _first_checkpoints(iterations, iterations[0], criteria.early * length, length)
        hit = next((i for i in span if dims[i] < cut), None)
        if hit is not None:
            events.append(Event("dropping", iterations[hit], dims[0], dims[hit], iterations[0]))
    bounds = [*sorted(milestones), max(length, iterations[-1] if iterations else 0)]
    for m, stop in zip(bounds, bounds[1:], strict=False):
        before = [i for i, it in enumerate(iterations) if it <= m]
        if not before:
            continue
        base = dims[before[-1]]
        span = _first_checkpoints(iterations, m, min(m + criteria.window * length, stop), stop)
        hit = next((i for i in span if dims[i] > base * (1 + criteria.rise)), None)
        if hit is not None:
            events.append(
                Event("rebounding", iterations[hit], base, dims[hit], iterations[before[-1]], m)
            )
    return events


@dataclass
class RunDynamics:
    """The dynamics of a run: settings, checkpoints, milestones and every map's series."""

    run: str
    iterations: list[int]
    milestones: list[int]
    length: int
    threshold: float
    criteria: Criteria
    maps: list[MapDynamics]
    spectra: list[str]  # spectra file of each checkpoint, relative to the run
    settings: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    backbone: dict[str, Any] | None = None  # the run's width spec (widths, depths, ...)
    unit: str = "iteration"  # of ``iterations``, ``milestones``, ``length``: or "epoch"
    trained: dict[str, Any] | None = None  # another's training: what its checkpoints hold
    partial: bool = False  # the run was still training: its later checkpoints are not in

    def map(self, name: str) -> MapDynamics:
        for m in self.maps:
            if m.name == name:
                return m
        raise EigenarchError(f"{self.run}: no map named {name!r} in its dynamics")

    def spectra_path(self, iteration: int) -> Path:
        return Path(self.run) / self.spectra[self.iterations.index(iteration)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "run": self.run,
            "command": self.command,
            "settings": self.settings,
            "threshold": self.threshold,
            "criteria": asdict(self.criteria),
            "length": self.length,
            "milestones": self.milestones,
            "iterations": self.iterations,
            "spectra": self.spectra,
            "backbone": self.backbone,
            "unit": self.unit,
            "trained": self.trained,
            "partial": self.partial,
            "maps": [
                {
                    "name": m.name,
                    "channels": m.channels,
                    "dims": m.dims,
                    "events": [
                        {**asdict(e), "change": None if math.isinf(e.change) else e.change}
                        for e in m.events
                    ],
                }
                for m in self.maps
            ],
        }

    def save(self) -> Path:
        """Write ``RUN_DIR/dynamics.json`` atomically."""
        return atomic_write_json(RunDir(self.run).dynamics_file, self.to_dict())


def analyse(
    run: str | os.PathLike[str],
    iterations: Sequence[int],
    dims: Mapping[str, Sequence[int]],
    channels: Mapping[str, int],
    milestones: Sequence[int],
    length: int,
    threshold: float,
    criteria: Criteria = Criteria(),
    spectra: Sequence[str] = (),
) -> RunDynamics:
    """A :class:`RunDynamics` from every map's dimensionality series (maps in ``dims`` order)."""
    maps = [
        MapDynamics(
            name,
            int(channels[name]),
            [int(d) for d in series],
            find_events(iterations, series, milestones, length, criteria),
        )
        for name, series in dims.items()
    ]
    return RunDynamics(
        str(run),
        list(iterations),
        sorted(milestones),
        length,
        threshold,
        criteria,
        maps,
        list(spectra),
    )


def load_dynamics(run_dir: str | os.PathLike[str]) -> RunDynamics:
    """Read ``RUN_DIR/dynamics.json`` written by ``eigenarch dynamics``."""
    path = RunDir(run_dir).dynamics_file
    if not path.is_file():
        raise EigenarchError(
            f"{run_dir}: no {path.name}; compute it with `eigenarch dynamics --run {run_dir}`"
        )
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        if obj.get("format") != FORMAT:
            raise ValueError("format")
        maps = [
            MapDynamics(
                m["name"],
                int(m["channels"]),
                [int(d) for d in m["dims"]],
                [Event(**{k: v for k, v in e.items() if k != "change"}) for e in m["events"]],
            )
            for m in obj["maps"]
        ]
        return RunDynamics(
            run=str(run_dir),
            iterations=[int(i) for i in obj["iterations"]],
            milestones=[int(i) for i in obj["milestones"]],
            length=int(obj["length"]),
            threshold=float(obj["threshold"]),
            criteria=Criteria(**obj["criteria"]),
            maps=maps,
            spectra=list(obj["spectra"]),
            settings=obj.get("settings") or {},
            command=obj.get("command", ""),
            backbone=obj.get("backbone"),
            unit=str(obj.get("unit", "iteration")),
            trained=obj.get("trained"),
            partial=bool(obj.get("partial", False)),
        )
    except (
        json.JSONDecodeError,
        UnicodeDecodeError,
        AttributeError,
        KeyError,
        TypeError,
        ValueError,
    ):
        raise EigenarchError(f"{path}: not a dynamics file written by eigenarch") from None


def write_events(result: RunDynamics, spectra_list: Sequence[Spectra]) -> Path:
    """``RUN_DIR/dynamics/``, written anew: TensorBoard events of every map's intrinsic
    dimensionality (``spectrum/<map>/dim``) and a histogram of its normalised eigenvalues
    (``spectrum/<map>/eigenvalues``) at each checkpoint's iteration (or epoch)."""

    def write(writer) -> None:
        for m in result.maps:
            for iteration, dim, spectra in zip(result.iterations, m.dims, spectra_list,
                                               strict=True):  # fmt: skip
                writer.add_scalar(f"spectrum/{m.name}/dim", dim, iteration)
                eigenvalues = spectra.eigenvalues(m.name)
                writer.add_histogram(f"spectrum/{m.name}/eigenvalues", eigenvalues, iteration)

    return replace_events(RunDir(result.run).dynamics_events, write)


def dynamics_command(source: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The ``eigenarch dynamics`` command line that reproduces ``settings`` over the run
    ``source`` names (``{"run": ...}`` or ``{"checkpoints": ..., "model": ..., ...}``)."""
    chosen = {k: v for k, v in settings.items() if k != "layers"}  # its option is --include
    options = {**source, **chosen, "include": settings.get("layers") or None}
    return command_line(["eigenarch", "dynamics"], options)


def run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A run's settings: the ``config.json`` of a run of ``eigenarch train``, or, for another's
    training analysed by ``eigenarch dynamics --checkpoints``, what its checkpoints hold."""
    run = RunDir(run_dir)
    if not run.has_config() and run.dynamics_file.is_file():
        trained = load_dynamics(run_dir).trained
        if trained is not None:
            return trained
    return run.read_config()


def _stamp(path: Path) -> dict[str, Any]:
    """What identifies a checkpoint file's contents for reuse: name, size and time."""
    info = path.stat()
    return {"file": path.name, "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _cached(path: Path, key: Mapping[str, Any]) -> bool:
    """Whether the spectra file ``path`` was computed with exactly ``key``, in this
    version's format (an older file is computed again)."""
    try:
        meta = read_info(path).get("meta")
    except (EigenarchError, OSError):  # missing, damaged or of an older version
        return False
    return isinstance(meta, dict) and meta.get("dynamics") == key


def _checkpoint_spectra(
    training: TrainingRun, settings: dict[str, Any], workers: int, device: str
) -> Iterator[tuple[Path, Spectra]]:
    """``(spectra file, spectra)`` of every checkpoint: loaded when computed before with the
    same settings, else streamed and saved (rank 0)."""
    dataset, chosen = None, []
    for k, (iteration, path) in enumerate(training.checkpoints):
        target = RunDir(training.out).spectra(iteration)
        key = {**settings, "checkpoint": _stamp(path)}
        if _cached(target, key):
            yield target, Spectra.load(target)
            continue
        if dataset is None:  # the data pass is only set up when a checkpoint needs it
            dataset = CocoDetection.from_root(settings["data"], settings["split"], masks=False,
                                              verbose=is_main())  # fmt: skip
            chosen = sample_images(len(dataset), settings["images"], settings["seed"])
        model, detector = training.load(path, dataset.num_classes, settings.get("min_size"))
        model.eval().to(local_device(device))
        spectra = stream_spectra(
            model, detector, dataset, chosen, batch_size=settings["batch_size"], workers=workers,
            device=str(local_device(device)), include=settings["layers"],
            sides=settings["sides"], max_channels=settings["max_channels"],
            sketch_rank=settings.get("sketch_rank", 0),
            description=f"{training.unit} {iteration} ({k + 1}/{len(training.checkpoints)})",
        )  # fmt: skip
        shown = {k: settings[k] for k in ("data", "split")}
        spectra.meta = {"model": str(path), **shown, "images": len(chosen),
                        "seed": settings["seed"], "dynamics": key}  # fmt: skip
        if is_main():
            spectra.save(target)
        barrier()
        yield target, spectra


def _dimension_series(spectra_list: Sequence[Spectra], threshold: float):
    """``(dims per map over the checkpoints, channels per map)``; maps missing at some
    checkpoint (no samples there) are left out, and said so."""
    dims: dict[str, list[int | None]] = {}
    channels: dict[str, int] = {}
    for k, spectra in enumerate(spectra_list):
        for name in spectra.names:
            dims.setdefault(name, [None] * k).append(spectra.intrinsic_dim(name, threshold))
            channels[name] = spectra.channels(name)
        for series in dims.values():
            series.extend([None] * (k + 1 - len(series)))
    partial = [name for name, series in dims.items() if None in series]
    if partial and is_main():
        console.print(
            f"left out {len(partial)} map(s) without samples at some checkpoint: "
            f"{', '.join(partial[:5])}{' ...' if len(partial) > 5 else ''}",
            highlight=False,
        )
    return {name: series for name, series in dims.items() if name not in partial}, channels


def compute_dynamics(
    run_dir: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    split: str = "train",
    images: int = 1000,
    seed: int = 0,
    layers: Sequence[str] | None = None,
    sides: Sequence[str] = ("in", "out"),
    max_channels: int = 4096,
    batch_size: int = 2,
    workers: int = 0,
    device: str = "cpu",
    threshold: float = 1e-3,
    criteria: Criteria = Criteria(),
    *,
    checkpoints: str | None = None,
    model: str | None = None,
    out: str | os.PathLike[str] | None = None,
    lr_steps: Sequence[int] | None = None,
    epochs: int | None = None,
    min_size: int | None = None,
    wait: bool = False,
    tensorboard: bool = True,
    sketch_rank: int = 0,
) -> RunDynamics:
    """Spectra of every checkpoint of a run (reused when already computed with the same
    settings), their dimensionalities at ``threshold`` and events; saved under the run.

    ``run_dir`` is a run of ``eigenarch train``; another's training is given instead by
    ``checkpoints`` (a glob) of ``model`` (a builder or factory), with ``out``, ``lr_steps``
    and ``epochs`` (:func:`~eigenarch.report.runs.reference_run`) and ``min_size`` (the
    detector's resize). ``data`` defaults to the run's training data. Under ``torchrun``
    each rank streams its share of the images; rank 0 writes the files (with ``tensorboard``,
    :func:`write_events` too). A run still training
    (its lock held) is said so, and its dynamics marked ``partial``; with ``wait``, it is
    waited for first. ``sketch_rank`` sketches the maps wider than ``max_channels``
    (:class:`~eigenarch.spectrum.SpectrumCollector`).
    """
    holder = None
    if run_dir is not None and is_main():
        if wait and lock_holder(run_dir) is not None:
            console.print(f"{run_dir}: still training; waiting for it to end", highlight=False)
        holder = lock_holder(run_dir, wait=wait)
        if holder is not None:
            by = f" (pid {holder})" if holder > 0 else ""
            note = "these dynamics cover its checkpoints so far and are marked partial"
            console.print(f"{run_dir}: still training{by}; {note} (--wait waits for it)",
                          highlight=False)  # fmt: skip
    training = training_run(run_dir, checkpoints, model, out, lr_steps, epochs, min_size)
    if images < 1 or batch_size < 1 or (min_size is not None and min_size < 1):
        raise EigenarchError(f"--images {images} / --batch-size {batch_size} / --min-size "
                             f"{min_size}: expected >= 1")  # fmt: skip
    data = data if data is not None else training.data
    if data is None:
        raise EigenarchError("--data: the checkpoints name no data folder; give one")
    settings = {"data": str(Path(data).resolve()), "split": split, "images": images,
                "seed": seed, "layers": list(layers) if layers else None, "sides": list(sides),
                "max_channels": max_channels, "batch_size": batch_size}  # fmt: skip
    if sketch_rank:  # only then: spectra computed before sketching stay reusable
        settings["sketch_rank"] = sketch_rank
    if training.model is not None:  # what the spectra of another's checkpoints depend on too
        settings.update(model=training.model, min_size=min_size)
    if is_main():  # a read-only or full run folder fails now, not after the data passes
        check_writable(training.out / RunDir.SPECTRA, folder=True)
    found = list(_checkpoint_spectra(training, settings, workers, device))
    dims, channels = _dimension_series([spectra for _, spectra in found], threshold)
    files = [str(target.relative_to(training.out)) for target, _ in found]
    iterations = [it for it, _ in training.checkpoints]
    result = analyse(training.out, iterations, dims, channels, training.milestones,
                     training.length, threshold, criteria, files)  # fmt: skip
    backbone = training.backbone()
    result.settings, result.backbone = settings, backbone and backbone.to_dict()
    result.unit, result.trained = training.unit, training.trained
    result.partial = holder is not None
    options = {**settings, "threshold": threshold, **asdict(criteria)}
    result.command = dynamics_command(training.source, options)
    if is_main():
        result.save()
        if tensorboard:
            write_events(result, [spectra for _, spectra in found])
    return result
