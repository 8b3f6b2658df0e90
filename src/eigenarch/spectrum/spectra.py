"""Covariances of feature maps and what follows from them (SPEC section 3), on disk too.

A spectra file is a ``safetensors`` file holding, per map, the upper triangle of its float64
covariance (``covariance/<map>``, row-major, the order of ``torch.triu_indices``) and its
normalised eigenvalues (``eigenvalues/<map>``, so re-thresholding needs no decomposition),
plus a JSON sidecar ``<file>.json`` with the format tag, every map's name, channel and sample
count, free-form metadata and the SHA-256 of the tensor file; the tensor file's header holds
a copy of those fields. A corrupted, foreign, mismatched or edited pair is refused on loading.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_path, atomic_write_json

FORMAT = "eigenarch-spectra"
VERSION = 2
#: Default threshold T on normalised eigenvalues (the paper's 1e-3).
THRESHOLD = 1e-3


class Spectra:
    """Per feature map: float64 covariance, sample count, eigenvalues and derived measures.

    Args:
        covariances: map name -> float64 ``(C, C)`` covariance ``Sigma``.
        samples: map name -> number of samples ``n`` behind it.
        meta: free-form JSON-serialisable information (model, data, seed, ...).
    """

    def __init__(
        self,
        covariances: Mapping[str, Tensor],
        samples: Mapping[str, int],
        meta: dict[str, Any] | None = None,
    ) -> None:
        if set(covariances) != set(samples):
            raise ValueError("covariances and samples must name the same maps")
        bad = [name for name, cov in covariances.items() if not torch.isfinite(cov).all()]
        if bad:
            shown = ", ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
            raise EigenarchError(
                f"non-finite covariance (NaN or infinite activations) in {len(bad)} map(s): "
                f"{shown}; check the model's weights and the input images"
            )
        self._covariances = {n: c.to(torch.float64) for n, c in covariances.items()}
        self._samples = {n: int(samples[n]) for n in covariances}
        self.meta = dict(meta or {})
        self._eigenvalues: dict[str, Tensor] = {}

    @property
    def names(self) -> list[str]:
        """Map names such as ``"backbone.body.layer1.0.conv1:in"``, in module order."""
        return list(self._covariances)

    def _get(self, name: str) -> Tensor:
        try:
            return self._covariances[name]
        except KeyError:
            close = [n for n in self._covariances if name in n][:3]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise EigenarchError(f"no map named {name!r} in these spectra{hint}") from None

    def covariance(self, name: str) -> Tensor:
        """The float64 ``(C, C)`` covariance ``Sigma`` of map ``name``."""
        return self._get(name)

    def samples(self, name: str) -> int:
        """The number of samples ``n`` behind map ``name``."""
        self._get(name)
        return self._samples[name]

    def channels(self, name: str) -> int:
        """The width ``C`` of map ``name``."""
        return self._get(name).shape[0]

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
                values = torch.linalg.eigvalsh(self._get(name)).flip(0).clamp_(min=0)
                largest = values[0].item() if len(values) else 0.0
                self._eigenvalues[name] = values / largest if largest > 0 else values.zero_()
                if advance is not None:
                    advance()
        finally:
            torch.set_num_threads(threads)

    def intrinsic_dim(self, name: str, threshold: float = THRESHOLD) -> int:
        """``#{lambda_k / lambda_max > threshold}`` (0 for a dead map)."""
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
        channels used, degrees of freedom (``gamma = threshold``) and effective rank."""
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
            })  # fmt: skip
        return rows

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (safetensors) and ``path.json`` (sidecar), each atomically.

        The tensor file's header holds a copy of the sidecar's fields (which loading compares
        with the sidecar); the same spectra give byte-identical files."""
        path = Path(path)
        self.decompose()
        tensors = {}
        for name, cov in self._covariances.items():
            rows, cols = torch.triu_indices(*cov.shape)
            tensors[f"covariance/{name}"] = cov[rows, cols].contiguous()
            tensors[f"eigenvalues/{name}"] = self.eigenvalues(name)
        maps = [{"name": n, "channels": self.channels(n), "samples": self._samples[n]}
                for n in self.names]  # fmt: skip
        info = {"format": FORMAT, "version": VERSION, "maps": maps, "meta": self.meta}
        # one metadata entry: safetensors writes several in a random (hash) order
        data = save(tensors, metadata={FORMAT: json.dumps(info, separators=(",", ":"))})
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        atomic_write_json(sidecar(path), {**info, "tensors_sha256": digest})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Spectra:
        """Read a file written by :meth:`save`; refuses corrupted, foreign, mismatched or
        edited files (tensors, or any field of the sidecar) in one line naming the file."""
        path = Path(path)
        side, info = _read_sidecar(path)
        try:
            with safe_open(path, framework="pt") as f:
                stored = json.loads((f.metadata() or {})[FORMAT])
                tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        except (SafetensorError, KeyError, ValueError) as exc:
            raise EigenarchError(f"{path}: not a readable spectra file ({exc})") from None
        edited = _difference({**info, "tensors_sha256": None}, {**stored, "tensors_sha256": None})
        if edited:
            field, found, expected = edited
            raise EigenarchError(f"{side}: field {field!r} is {found}, but {path.name} holds "
                                 f"{expected} (an edited sidecar?)")  # fmt: skip
        covariances, samples, eigenvalues = {}, {}, {}
        for entry in stored["maps"]:
            name, channels = entry["name"], entry["channels"]
            packed = tensors.get(f"covariance/{name}")
            values = tensors.get(f"eigenvalues/{name}")
            if (
                packed is None
                or values is None
                or packed.shape != (channels * (channels + 1) // 2,)
                or values.shape != (channels,)
            ):
                raise EigenarchError(f"{path}: no {channels}-channel tensors for map {name!r}")
            cov = torch.empty(channels, channels, dtype=torch.float64)
            rows, cols = torch.triu_indices(channels, channels)
            cov[rows, cols] = packed
            cov[cols, rows] = packed
            covariances[name], samples[name], eigenvalues[name] = cov, entry["samples"], values
        spectra = cls(covariances, samples, stored.get("meta") or {})
        spectra._eigenvalues = eigenvalues
        return spectra


def _read_sidecar(path: Path) -> tuple[Path, dict[str, Any]]:
    """``path``'s sidecar and its fields, after checking that ``path`` is a spectra file
    whose SHA-256 the sidecar holds; one-line errors otherwise."""
    if not path.is_file():
        folder = path.is_dir()
        what = "is a folder; expected a spectra file" if folder else "spectra file not found"
        raise EigenarchError(f"{path}: {what}")
    if not _looks_like_safetensors(path):
        raise EigenarchError(f"{path}: not a spectra file (expected the safetensors file "
                             "that eigenarch spectrum writes)")  # fmt: skip
    side = sidecar(path)
    if not side.is_file():
        raise EigenarchError(f"{path}: its JSON sidecar {side.name} is missing")
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EigenarchError(f"{side}: not valid JSON (corrupted sidecar?)") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise EigenarchError(f"{side}: not an eigenarch spectra sidecar")
    if info.get("version") != VERSION:
        older = " (an older eigenarch's: compute it again)" if info.get("version") == 1 else ""
        raise EigenarchError(
            f"{side}: spectra format version {info.get('version')!r}, expected {VERSION}{older}"
        )
    if _sha256(path) != info.get("tensors_sha256"):
        raise EigenarchError(
            f"{path}: contents do not match {side.name} (corrupted or replaced file)"
        )
    return side, info


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
