"""Covariances of feature maps and what follows from them (SPEC section 3), on disk too.

A spectra file is a ``safetensors`` file holding, per map, the upper triangle of its float64
covariance (``covariance/<map>``, row-major, the order of ``torch.triu_indices``) and its
normalised eigenvalues (``eigenvalues/<map>``, so re-thresholding needs no decomposition),
plus a JSON sidecar ``<file>.json`` with the format tag, every map's name, channel and sample
count, free-form metadata and the SHA-256 of the tensor file; the tensor file's header holds
a copy of those fields. A corrupted, foreign, mismatched or edited pair is refused on loading.

A map too wide for its covariance may be *sketched* (:class:`Sketched`, from
:mod:`eigenarch.spectrum.sketch`): the file then holds its ``(rank, C)`` sketch
(``sketch/<map>``) instead of a covariance, and its ``maps`` entry a ``"sketch"`` field with
the rank and the shrinkage bound.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_path

FORMAT = "eigenarch-spectra"
VERSION = 3
#: Default threshold T on normalised eigenvalues (the paper's 1e-3).
THRESHOLD = 1e-3


@dataclass(frozen=True)
class Sketched:
    """A map known through a Frequent Directions sketch: ``rows`` ``(rank, C)`` float64 with
    ``0 <= Sigma - rows^T rows <= shrinkage * I`` (in ``Sigma``'s units)."""

    rows: Tensor
    shrinkage: float

    @property
    def rank(self) -> int:
        return self.rows.shape[0]

    def eigenvalues(self) -> Tensor:
        """Lower bounds of ``Sigma``'s normalised eigenvalues, descending, ``(C,)``: the
        sketch's eigenvalues divided by an upper bound of ``lambda_max`` (the sketch's own
        plus the shrinkage), zeros past the rank (0 for a dead map)."""
        channels = self.rows.shape[1]
        values = torch.zeros(channels, dtype=torch.float64)
        top = torch.linalg.eigvalsh(self.rows @ self.rows.T).flip(0).clamp_(min=0)[:channels]
        bound = (top[0].item() if len(top) else 0.0) + self.shrinkage
        if bound > 0:
            values[: len(top)] = top / bound
        return values


class Spectra:
    """Per feature map: float64 covariance, sample count, eigenvalues and derived measures.

    Args:
        covariances: map name -> float64 ``(C, C)`` covariance ``Sigma``.
        samples: map name -> number of samples ``n`` behind it.
        meta: free-form JSON-serialisable information (model, data, seed, ...).
        sketches: map name -> :class:`Sketched`, for maps known only through a sketch (their
            eigenvalues are lower bounds, their intrinsic dimensionality a lower bound at most
            the rank; they have no covariance).

    Maps are in the order of ``samples``.
    """

    def __init__(
        self,
        covariances: Mapping[str, Tensor],
        samples: Mapping[str, int],
        meta: dict[str, Any] | None = None,
        sketches: Mapping[str, Sketched] | None = None,
    ) -> None:
        sketches = dict(sketches or {})
        if set(covariances) & set(sketches) or set(covariances) | set(sketches) != set(samples):
            raise ValueError("covariances and sketches must name the maps of samples, once each")
        tensors = {**covariances, **{n: s.rows for n, s in sketches.items()}}
        bad = [name for name, cov in tensors.items() if not torch.isfinite(cov).all()]
        if bad:
            shown = ", ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
            raise EigenarchError(
                f"non-finite covariance (NaN or infinite activations) in {len(bad)} map(s): "
                f"{shown}; check the model's weights and the input images"
            )
        self._covariances = {n: c.to(torch.float64) for n, c in covariances.items()}
        self._sketches = sketches
        self._samples = {n: int(samples[n]) for n in samples}
        self.meta = dict(meta or {})
        self._eigenvalues: dict[str, Tensor] = {}

    @property
    def names(self) -> list[str]:
        """Map names such as ``"backbone.body.layer1.0.conv1:in"``, in module order."""
        return list(self._samples)

    def _get(self, name: str) -> Tensor:
        """The covariance of map ``name``, or the rows of its sketch."""
        if name in self._covariances:
            return self._covariances[name]
        if name in self._sketches:
            return self._sketches[name].rows
        close = [n for n in self._samples if name in n][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise EigenarchError(f"no map named {name!r} in these spectra{hint}")

    def covariance(self, name: str) -> Tensor:
        """The float64 ``(C, C)`` covariance ``Sigma`` of map ``name`` (none for a sketched
        map: a one-line error)."""
        cov = self._get(name)
        if name in self._sketches:
            rank = self.sketch_rank(name)
            raise EigenarchError(f"map {name!r} is sketched (rank {rank}): no covariance "
                                 "kept; collect it with --include naming it")  # fmt: skip
        return cov

    def sketch(self, name: str) -> Sketched | None:
        """Map ``name``'s sketch; ``None`` for a map with its full covariance."""
        self._get(name)
        return self._sketches.get(name)

    def sketch_rank(self, name: str) -> int:
        """The rank of map ``name``'s sketch; 0 for a map with its full covariance."""
        sketch = self.sketch(name)
        return sketch.rank if sketch else 0

    def samples(self, name: str) -> int:
        """The number of samples ``n`` behind map ``name``."""
        self._get(name)
        return self._samples[name]

    def channels(self, name: str) -> int:
        """The width ``C`` of map ``name``."""
        return self._get(name).shape[-1]

    def eigenvalues(self, name: str) -> Tensor:
        """Float64 eigenvalues, descending, negatives clamped to 0, divided by the largest.

        A dead map (largest eigenvalue 0) gives all zeros, never NaN. Computed on first use
        by :meth:`decompose` (for this map only).
        """
        self._get(name)
        if name not in self._eigenvalues:
            self.decompose([name])
        return self._eigenvalues[name]

    def decompose(
        self, names: list[str] | None = None, advance: Callable[[], object] | None = None
    ) -> None:
        """Compute the eigenvalues of every map (or of ``names``) not computed yet, calling
        ``advance()`` after each.

        The whole step runs on one intra-op thread, and the caller's thread count is back
        afterwards: LAPACK's threaded tridiagonalisation of these (C, C) float64 matrices is
        slower, by 12x for C = 1024 on a busy 2-core machine (0.11 s vs 1.3 s).
        """
        todo = [name for name in names or self.names if name not in self._eigenvalues]
        if not todo:
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for name in todo:
                sketch = self._sketches.get(name)
                self._eigenvalues[name] = (
                    sketch.eigenvalues() if sketch else _eigenvalues(self._covariances[name])
                )
                if advance is not None:
                    advance()
        finally:
            torch.set_num_threads(threads)

    def intrinsic_dim(self, name: str, threshold: float = THRESHOLD) -> int:
        """``#{lambda_k / lambda_max > threshold}`` (0 for a dead map); for a sketched map a
        lower bound, at most its :meth:`sketch_rank`."""
        return int((self.eigenvalues(name) > threshold).sum())

    def intrinsic_dims(self, threshold: float = THRESHOLD) -> dict[str, int]:
        """``{map name: intrinsic dimensionality}`` of every map: what a width search reads."""
        self.decompose()
        return {name: self.intrinsic_dim(name, threshold) for name in self.names}

    def degrees_of_freedom(self, name: str, gamma: float = THRESHOLD) -> float:
        """``sum_k lambda_k / (lambda_k + gamma * lambda_max)`` (Suzuki); 0 for a dead map."""
        values = self.eigenvalues(name)
        return float((values / (values + gamma)).sum())

    def effective_rank(self, name: str) -> float:
        """``exp(entropy(lambda / sum lambda))``; 0 for a dead map."""
        values = self.eigenvalues(name)
        total = values.sum()
        if total <= 0:
            return 0.0
        p = values[values > 0] / total
        return math.exp(float(-(p * p.log()).sum()))

    def summary(self, threshold: float = THRESHOLD) -> list[dict[str, Any]]:
        """One row per map: name, channels, samples, intrinsic dim at ``threshold``, share of
        channels used, degrees of freedom (``gamma = threshold``), effective rank and sketch
        rank (0: exact; else the dim is a lower bound at most it)."""
        self.decompose()
        rows = []
        for name in self.names:
            channels, dim = self.channels(name), self.intrinsic_dim(name, threshold)
            rows.append({
                "name": name,
                "channels": channels,
                "samples": self.samples(name),
                "intrinsic_dim": dim,
                "share": dim / channels,
                "degrees_of_freedom": self.degrees_of_freedom(name, threshold),
                "effective_rank": self.effective_rank(name),
                "sketch_rank": self.sketch_rank(name),
            })  # fmt: skip
        return rows

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (safetensors), whose header holds every field and the SHA-256 of
        them and of the tensors, and its readable copy ``path.json`` (the sidecar).

        Both are written to temporary files before either is renamed, so a failed write
        (a full disk) leaves the previous pair as it was; the tensor file is the one that
        counts, so a process stopped between the two renames leaves a file that loads. The
        same spectra give byte-identical files."""
        path = Path(path)
        self.decompose()
        tensors, maps = {}, []
        for name in self.names:
            entry = {"name": name, "channels": self.channels(name), "samples": self._samples[name]}
            if name in self._sketches:
                sketch = self._sketches[name]
                tensors[f"sketch/{name}"] = sketch.rows.contiguous()
                entry["sketch"] = {"rank": sketch.rank, "shrinkage": sketch.shrinkage}
            else:
                cov = self._covariances[name]
                rows, cols = torch.triu_indices(*cov.shape)
                tensors[f"covariance/{name}"] = cov[rows, cols].contiguous()
            tensors[f"eigenvalues/{name}"] = self.eigenvalues(name)
            maps.append(entry)
        info = {"format": FORMAT, "version": VERSION, "maps": maps, "meta": self.meta}
        info["sha256"] = _digest(info, tensors)
        # one metadata entry: safetensors writes several in a random (hash) order
        data = save(tensors, metadata={FORMAT: json.dumps(info, separators=(",", ":"))})
        copy = json.dumps({**info, "tensors_sha256": hashlib.sha256(data).hexdigest()}, indent=2)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
            with atomic_path(sidecar(path)) as side_tmp:
                side_tmp.write_text(copy + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Spectra:
        """Read a file written by :meth:`save`; refuses corrupted, foreign, truncated or
        older files, and an edited sidecar, in one line naming the file."""
        path = Path(path)
        stored, tensors = _read(path)
        _check_sidecar(path, stored)
        covariances, sketches, samples, eigenvalues = {}, {}, {}, {}
        for entry in stored["maps"]:
            name, channels, sketch = entry["name"], entry["channels"], entry.get("sketch")
            values = tensors.get(f"eigenvalues/{name}")
            if sketch is not None:
                rows = tensors.get(f"sketch/{name}")
                shape = (sketch["rank"], channels)
            else:
                rows = tensors.get(f"covariance/{name}")
                shape = (channels * (channels + 1) // 2,)
            if rows is None or values is None or rows.shape != shape or values.shape != (channels,):
                what = f"rank-{sketch['rank']} sketch" if sketch else "covariance"
                raise EigenarchError(
                    f"{path}: no {channels}-channel {what} tensors for map {name!r}"
                )
            if sketch is not None:
                sketches[name] = Sketched(rows, sketch["shrinkage"])
            else:
                covariances[name] = _unpack(rows, channels)
            samples[name], eigenvalues[name] = entry["samples"], values
        spectra = cls(covariances, samples, stored.get("meta") or {}, sketches)
        spectra._eigenvalues = eigenvalues
        return spectra


def _unpack(packed: Tensor, channels: int) -> Tensor:
    """The symmetric ``(C, C)`` matrix whose upper triangle, row-major, is ``packed``."""
    cov = torch.empty(channels, channels, dtype=torch.float64)
    rows, cols = torch.triu_indices(channels, channels)
    cov[rows, cols] = packed
    cov[cols, rows] = packed
    return cov


def _eigenvalues(cov: Tensor) -> Tensor:
    """``eigvalsh`` of ``cov``, descending, clamped at 0, normalised (all 0 for a dead map)."""
    values = torch.linalg.eigvalsh(cov).flip(0).clamp_(min=0)
    largest = values[0].item() if len(values) else 0.0
    return values / largest if largest > 0 else values.zero_()


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The fields (format, version, maps, meta, sha256) of the spectra file ``path``, read
    from its header without loading or checking its tensors; one-line errors as :meth:`load`."""
    path = Path(path)
    _check_file(path)
    try:
        with safe_open(path, framework="pt") as f:
            return _info(path, f.metadata())
    except SafetensorError as exc:
        raise EigenarchError(f"{path}: damaged spectra file ({exc})") from None


def _check_file(path: Path) -> None:
    if not path.is_file():
        folder = path.is_dir()
        what = "is a folder; expected a spectra file" if folder else "spectra file not found"
        raise EigenarchError(f"{path}: {what}")
    if not _looks_like_safetensors(path):
        raise EigenarchError(f"{path}: not a spectra file (expected the safetensors file "
                             "that eigenarch spectrum writes)")  # fmt: skip


def _info(path: Path, metadata: Mapping[str, str] | None) -> dict[str, Any]:
    """The fields in a spectra file's header ``metadata``, format and version checked."""
    try:
        info = json.loads((metadata or {})[FORMAT])
    except (KeyError, ValueError):
        raise EigenarchError(f"{path}: not a spectra file (a safetensors file without "
                             f"eigenarch's {FORMAT!r} header)") from None  # fmt: skip
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise EigenarchError(f"{path}: damaged spectra file (its {FORMAT!r} header is altered)")
    if info.get("version") != VERSION:
        older = " (an older eigenarch's: compute it again)" if info.get("version") in (1, 2) else ""
        raise EigenarchError(
            f"{path}: spectra format version {info.get('version')!r}, expected {VERSION}{older}"
        )
    return info


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The fields and tensors of the spectra file ``path``, after checking the SHA-256 its
    header holds; one-line errors otherwise."""
    _check_file(path)
    try:
        with safe_open(path, framework="pt") as f:
            info = _info(path, f.metadata())
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise EigenarchError(f"{path}: damaged spectra file ({exc})") from None
    fields = {key: value for key, value in info.items() if key != "sha256"}
    if not _well_formed(fields) or info.get("sha256") != _digest(fields, tensors):
        raise EigenarchError(f"{path}: damaged spectra file (fails its SHA-256 check)")
    return info, tensors


def _well_formed(info: dict[str, Any]) -> bool:
    maps = info.get("maps")
    return isinstance(maps, list) and all(
        isinstance(m, dict) and isinstance(m.get("name"), str)
        and type(m.get("channels")) is int and type(m.get("samples")) is int
        and ("sketch" not in m or _well_formed_sketch(m["sketch"]))
        for m in maps
    )  # fmt: skip


def _well_formed_sketch(sketch: Any) -> bool:
    """A map entry's ``"sketch"`` field: ``{"rank": int >= 1, "shrinkage": float >= 0}``."""
    return (
        isinstance(sketch, dict) and set(sketch) == {"rank", "shrinkage"}
        and type(sketch["rank"]) is int and sketch["rank"] >= 1
        and isinstance(sketch["shrinkage"], (int, float)) and sketch["shrinkage"] >= 0
    )  # fmt: skip


def _digest(info: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of the fields ``info`` (canonical JSON) and of every tensor's name, dtype,
    shape and little-endian bytes, in name order: what a spectra file's header holds."""
    digest = hashlib.sha256(json.dumps(info, sort_keys=True, separators=(",", ":")).encode())
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        digest.update(f"\n{key}:{tensor.dtype}:{list(tensor.shape)}\n".encode())
        digest.update(memoryview(tensor.numpy()).cast("B"))
    return digest.hexdigest()


def _check_sidecar(path: Path, stored: dict[str, Any]) -> None:
    """Refuse a damaged sidecar, or one of this very file (its ``tensors_sha256``) that
    differs from the header; a sidecar of another write is left aside: the tensor file,
    checked by itself, is what counts (its sidecar may be older where a write was stopped
    between its two renames, or missing where only the tensor file was copied)."""
    side = sidecar(path)
    if not side.is_file():
        return
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EigenarchError(f"{side}: not valid JSON (corrupted sidecar?)") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise EigenarchError(f"{side}: not an eigenarch spectra sidecar")
    if info.get("tensors_sha256") != _sha256(path):
        return
    edited = _difference({**info, "tensors_sha256": None}, {**stored, "tensors_sha256": None})
    if edited:
        field, found, expected = edited
        raise EigenarchError(f"{side}: field {field!r} is {found}, but {path.name} holds "
                             f"{expected} (an edited sidecar?)")  # fmt: skip


def _difference(found: Any, expected: Any, field: str = "") -> tuple[str, str, str] | None:
    """The first difference of JSON value ``found`` from ``expected``: ``(field, found,
    expected)``, the field named as in ``maps[0].samples``; None where they are equal."""
    if isinstance(found, dict) and isinstance(expected, dict):
        for key in [*expected, *(key for key in found if key not in expected)]:
            where = f"{field}.{key}" if field else key
            if key not in found or key not in expected:
                mine = _short(found[key]) if key in found else "missing"
                return where, mine, _short(expected[key]) if key in expected else "none"
            difference = _difference(found[key], expected[key], where)
            if difference:
                return difference
        return None
    if isinstance(found, list) and isinstance(expected, list) and len(found) == len(expected):
        for i, (a, b) in enumerate(zip(found, expected, strict=True)):
            difference = _difference(a, b, f"{field}[{i}]")
            if difference:
                return difference
        return None
    if found == expected and type(found) is type(expected):
        return None
    return field, _short(found), _short(expected)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _looks_like_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: a little-endian 8-byte header
    length, then the JSON header (a torch ``.pt`` zip, a JSON file or an image do not); the
    rest is left to the SHA-256 check, so a truncated spectra file is called corrupted."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and 0 < int.from_bytes(head[:8], "little") < 1 << 32 and head[8:] == b"{"


def sidecar(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar of a spectra file: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
