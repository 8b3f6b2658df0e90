"""Is the resized network really faster? Latency and peak memory against its base, measured.

:func:`bench_backbones` builds, for a spec and a base network, the whole detector (random
weights, eval mode), and times single forwards of it, of its backbone (body and FPN) and of
the body alone (what IAS resizes), the six interleaved in one process (each round in a
rotated order, after warm-up rounds), so that load on the machine falls on all alike. The
detectors' RPN keeps its top proposals without NMS (``rpn_nms_thresh=1``): random weights
leave an arbitrary number after NMS, so the box heads of spec and base would do different
work; without it both pool the same number (1,000 per image) and differ by the backbone
alone. It also counts each forward's MACs at the bench input (``FlopCounterMode`` / 2)
beside the spec's classifier cost at 224 px (SPEC section 4): fewer MACs need not mean less
time.

Peak memory of one forward: on CUDA ``torch.cuda.max_memory_allocated`` above what was
allocated before; on the CPU the resident set's high-water mark above the resident set
before (``/proc/self/status`` ``VmHWM`` after resetting it through ``/proc/self/clear_refs``),
glibc's free memory first given back to the system (``malloc_trim(0)``), so that blocks an
earlier forward freed, still resident, do not hide this one's. Elsewhere: not measured.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from eigenarch.errors import EigenarchError
from eigenarch.models.backbone import Backbone, BackboneOptions, parse_backbone
from eigenarch.models.detector import KINDS, build_detector

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


@dataclasses.dataclass(frozen=True)
class BenchRow:
    """One network's part: its SPEC-4 cost (classifier, 224 px), the MACs of the benched
    forward, latencies in seconds (median, min over the repeats) and peak memory in bytes
    (``None``: not measurable here)."""

    network: str
    part: str
    cost_macs: int
    cost_params: int
    macs: int
    median_s: float
    min_s: float
    peak_bytes: int | None


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Every row, and the set-up they were measured in."""

    rows: list[BenchRow]
    size: int
    batch: int
    threads: int
    repeats: int
    device: str
    memory: str

    def row(self, network: str, part: str) -> BenchRow:
        """The row of ``network`` (``"spec"`` or ``"base"``) and ``part``."""
        return next(r for r in self.rows if (r.network, r.part) == (network, part))


def _check(size: int, batch: int, threads: int, repeats: int, warmup: int, kind: str) -> None:
    for name, value, low in (("--size", size, 32), ("--batch", batch, 1),
                             ("--threads", threads, 1), ("--repeats", repeats, 1),
                             ("--warmup", warmup, 0)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise EigenarchError(f"{name} {value!r}: expected an integer >= {low}")
    if kind not in KINDS:
        raise EigenarchError(f"--detector {kind!r}: expected one of {', '.join(KINDS)}")


def bench_backbones(
    spec: Backbone | str | os.PathLike[str],
    base: Backbone | str | None = None,
    size: int = 800,
    batch: int = 1,
    threads: int = 1,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    detector: str = "faster_rcnn",
    detector_options: Mapping[str, Any] | None = None,
) -> BenchResult:
    """Latency, peak memory and MACs of ``spec`` and ``base``: backbone with FPN on a
    ``(batch, 3, size, size)`` tensor, the ``detector`` on ``batch`` images of ``size`` x
    ``size`` (resized to ``size``), ``threads`` intra-op threads (restored afterwards).

    ``spec`` and ``base`` are backbones or ``--backbone`` texts (a width-spec file, a
    builder name, nine widths: with the spec's norm and GroupNorm groups); ``base`` defaults
    to the network the spec resizes (:meth:`Backbone.unresized`); ``detector_options`` go
    to :func:`~eigenarch.models.detector.build_detector`."""
    _check(size, batch, threads, repeats, warmup, detector)
    spec = parse_backbone(spec)
    if base is None:
        base = spec.unresized()
    elif not isinstance(base, Backbone):
        options = BackboneOptions(spec.norm, getattr(spec, "gn_groups", 32), own_norm=True)
        base = parse_backbone(base, options)
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise EigenarchError(f"--device {device}: CUDA is not available here")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(batch, 3, size, size, generator=generator).to(target)
        options = {"min_size": size, "max_size": size, "rpn_nms_thresh": 1.0,
                   **(detector_options or {})}  # fmt: skip
        runs = {}
        for network, backbone in (("spec", spec), ("base", base)):
            whole = build_detector(detector, backbone, **options).eval().to(target)
            parts = {"body": (whole.backbone.body, images), "backbone": (whole.backbone, images),
                     "detector": (whole, list(images))}  # fmt: skip
            for part, (model, feed) in parts.items():  # the backbone: the detector's own
                runs[network, part] = (backbone, _forward(model, feed, target))
        times = _interleaved({k: f for k, (_, f) in runs.items()}, repeats, warmup, target)
        memory, measure = _memory_probe(target)
        rows = []
        for (network, part), (backbone, forward) in runs.items():
            cost = backbone.cost()
            rows.append(BenchRow(network, part, cost.macs, cost.params, _macs(forward),
                                 statistics.median(times[network, part]),
                                 min(times[network, part]), measure(forward)))  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    return BenchResult(rows, size, batch, threads, repeats, str(target), memory)


def _forward(model: nn.Module, feed: object, device: torch.device) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(feed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def _interleaved(
    forwards: dict[tuple[str, str], Callable[[], None]], repeats: int, warmup: int, device
) -> dict[tuple[str, str], list[float]]:
    """Seconds of each forward per round; round ``r`` starts at the ``r``-th forward (a
    rotation), the first ``warmup`` rounds are not kept."""
    keys, times = list(forwards), {k: [] for k in forwards}
    for r in range(warmup + repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            forwards[key]()
            if r >= warmup:
                times[key].append(time.perf_counter() - start)
    return times


def _macs(forward: Callable[[], None]) -> int:
    """Multiply-accumulates of one forward: ``FlopCounterMode``'s count / 2 (ops it does not
    know, such as RoIAlign and NMS, count 0)."""
    with FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops() // 2


def _memory_probe(device: torch.device) -> tuple[str, Callable[[Callable[[], None]], int | None]]:
    """How peak memory is measured here, and the function measuring one forward's."""
    if device.type == "cuda":

        def cuda_peak(forward: Callable[[], None]) -> int:
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            forward()
            return torch.cuda.max_memory_allocated(device) - before

        return "torch.cuda.max_memory_allocated above the allocated before", cuda_peak
    libc = _resettable_libc()
    if libc is None:
        return "not measured (no glibc or /proc/self/clear_refs here)", lambda forward: None

    def rss_peak(forward: Callable[[], None]) -> int:
        libc.malloc_trim(0)  # freed blocks leave the resident set
        before = _status_bytes("VmRSS")
        _CLEAR_REFS.write_text("5")  # the high-water mark VmHWM := the resident set now
        forward()
        return max(0, _status_bytes("VmHWM") - before)

    return "resident-set high-water mark above the resident set before (VmHWM)", rss_peak


def _resettable_libc() -> ctypes.CDLL | None:
    """glibc (for ``malloc_trim``) where the resident-set peak can be reset here."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 -- glibc's, not musl's
        _CLEAR_REFS.write_text("5")
        return libc if _status_bytes("VmHWM") > 0 else None
    except (OSError, AttributeError):
        return None


def _status_bytes(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0
