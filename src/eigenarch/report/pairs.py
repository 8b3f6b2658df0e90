"""What ``eigenarch compare`` does: two spectra files or analysed run folders, labelled,
compared map by map, and the paper's Figure 5 of their backbone stages."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from eigenarch.errors import EigenarchError
from eigenarch.report.compare import Comparison, compare_spectra, final_spectra, plot_stages
from eigenarch.report.plots import compare_figure, save_figure
from eigenarch.spectrum import Spectra


def pair_labels(paths: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    """Two labels: ``names``, else the file stems or folder names (``(A)``, ``(B)`` added
    where they are the same)."""
    labels = list(names) if names else [p.stem if p.is_file() else p.name for p in paths]
    if len(labels) != 2 or not all(labels):
        raise EigenarchError(f"--names {','.join(labels)}: expected two labels, --names A,B")
    if labels[0] == labels[1]:
        labels = [f"{labels[0]} (A)", f"{labels[1]} (B)"]
    return labels


def compare_files(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    threshold: float = 1e-3,
    plot: str | os.PathLike[str] | None = None,
    stages: Sequence[str] | None = None,
    side: str = "in",
) -> tuple[Comparison, list[Path]]:
    """The comparison of ``a`` and ``b`` (spectra files, or run folders: their last
    checkpoint's spectra) at ``threshold``, and the files of its ``plot`` (PNG, SVG) of the
    ``side`` maps of ``stages`` (every backbone stage by default), when asked for."""
    paths = [Path(a), Path(b)]
    labels = pair_labels(paths, names)
    spectra = [Spectra.load(final_spectra(p)) for p in paths]
    comparison = compare_spectra(spectra[0], spectra[1], threshold, labels)
    if plot is None:
        return comparison, []
    chosen = plot_stages([m.name for m in comparison.maps], stages)
    if not chosen:
        raise EigenarchError("--plot: these spectra have no backbone maps to plot")
    return comparison, save_figure(compare_figure(comparison, chosen, side), plot)
