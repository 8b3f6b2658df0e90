"""What ``eigenarch search`` does: Intrinsic Architecture Search from measured intrinsic
dimensionalities (a spectra file at a threshold, or a dims file) to a budget, the width
spec written, and both costs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eigenarch.errors import EigenarchError
from eigenarch.models.backbone import Backbone, BackboneOptions, parse_backbone
from eigenarch.models.builders import SSD_EXTRA, SSD_REFUSAL
from eigenarch.options import parse_target
from eigenarch.spectrum.spectra import THRESHOLD, Spectra
from eigenarch.widths.cost import DEFAULT_DEPTHS, ModelCost
from eigenarch.widths.ias import WidthSearchResult, load_dims


@dataclass(frozen=True)
class SearchOutcome:
    """A search's result, the width spec written and the costs of the base and the found."""

    result: WidthSearchResult
    spec: Backbone
    found: ModelCost
    base: ModelCost
    metric: str


def measured_dims(
    spectra: str | os.PathLike[str] | None,
    dims: str | os.PathLike[str] | None,
    threshold: float | None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, int] | None]:
    """``(map name -> dimensionality, how they were measured, map name -> width)`` from
    exactly one of a spectra file (at ``threshold``, by default 1e-3) and a dims file
    (which records no widths: None)."""
    if (spectra is None) == (dims is None):
        raise EigenarchError("give exactly one of --spectra FILE or --dims FILE.json")
    if spectra is not None:
        cut = THRESHOLD if threshold is None else threshold
        loaded = Spectra.load(spectra)
        _refuse_ssd(loaded.names, f"--spectra {spectra}")
        channels = {name: loaded.channels(name) for name in loaded.names}
        return loaded.intrinsic_dims(cut), {"threshold": cut, "spectra": str(spectra)}, channels
    if threshold is not None:
        raise EigenarchError("--threshold applies to --spectra only; --dims are final")
    values = load_dims(dims)
    _refuse_ssd(values, f"--dims {dims}")
    return values, {"dims": str(dims)}, None


def _refuse_ssd(names: Iterable[str], source: str) -> None:
    """Refuse maps of SSD's extra blocks: its backbone is not a searchable classifier."""
    extra = next((n for n in names if n.startswith(SSD_EXTRA)), None)
    if extra is not None:
        raise EigenarchError(f"{source}: map {extra!r}: {SSD_REFUSAL}")


def search_to_file(
    out: str | os.PathLike[str],
    target: str,
    model: str | None = None,
    spectra: str | os.PathLike[str] | None = None,
    dims: str | os.PathLike[str] | None = None,
    threshold: float | None = None,
    multiple: int = 32,
    side: str = "in",
    depths: Sequence[int] = DEFAULT_DEPTHS,
    norm: str | None = None,
    gn_groups: int = 32,
) -> SearchOutcome:
    """Search the widths of ``model`` (a builder name, a factory ``file.py:factory``, a
    width-spec file; by default a bottleneck ResNet of ``depths``) to ``target``
    (``macs=base``, ``params=20M``, ...) and write the width spec to ``out``."""
    metric, value = parse_target(target)
    values, measured, channels = measured_dims(spectra, dims, threshold)
    source = {"command": "search", "target": target, **measured}
    if model is not None:
        source["model"] = model
    analysed = parse_backbone(model or "resnet50", BackboneOptions(norm, gn_groups, depths))
    result, spec = analysed.search(values, value, metric, multiple, side, source, channels)
    spec.save(Path(out), result.to_dict())
    return SearchOutcome(result, spec, spec.cost(), analysed.cost(), metric)
