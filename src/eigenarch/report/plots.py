"""The paper's figures with matplotlib's object API (no display, no pyplot): PNG and SVG.

- :func:`eigenspectra_figure` — normalised eigenspectra at several checkpoints (Figure 3);
- :func:`dims_figure` — intrinsic dimensionality over iterations, decays marked (Figure 4);
- :func:`compare_figure` — two models' dimensionality per layer of chosen stages (Figure 5);
- :func:`widths_figure` — width diagrams, one bar per layer (Figure 2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from eigenarch.io import atomic_path
from eigenarch.report.compare import Comparison, map_stage
from eigenarch.report.dynamics import Event
from eigenarch.widths import ModelCost

#: Colours of Figure 2: 7x7 purple, 1x1 green, 3x3 blue; bottleneck blocks grey.
KERNEL_COLORS = {7: "#8d5fb3", 1: "#5aa55a", 3: "#4a7fc9"}
BLOCK_COLOR = "#e6e6e6"
FORMATS = ("png", "svg")


def save_figure(fig: Figure, stem: str | os.PathLike[str], dpi: int = 120) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` (each atomically, reproducibly); their paths."""
    stem = Path(stem)
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": "eigenarch"}):
        for ext in FORMATS:
            path = stem.with_name(f"{stem.name}.{ext}")
            metadata = {"Date": None} if ext == "svg" else {"Software": None}
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext, dpi=dpi, metadata=metadata, bbox_inches="tight")
            paths.append(path)
    return paths


def short_name(name: str) -> str:
    """A map name without the detector's ``backbone.body.`` / ``backbone.`` prefix."""
    for prefix in ("backbone.body.", "backbone."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def eigenspectra_figure(
    curves: Mapping[str, Sequence[tuple[int, np.ndarray]]],
    threshold: float,
    unit: str = "iteration",
) -> Figure:
    """Figure 3: per map, normalised eigenvalues (log scale) by index at each checkpoint.

    ``curves`` maps a map name to ``[(iteration, descending normalised eigenvalues), ...]``
    (iterations or epochs: ``unit``);
    zero eigenvalues are left out (log scale), the axis stops 5 decades below the threshold
    (the dashed line).
    """
    fig = Figure(figsize=(5.2 * min(len(curves), 3), 3.8 * -(-len(curves) // 3)))
    cols = min(len(curves), 3)
    for k, (name, series) in enumerate(curves.items()):
        ax = fig.add_subplot(-(-len(curves) // 3), cols, k + 1)
        colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, max(len(series), 1)))
        for color, (iteration, values) in zip(colors, series, strict=False):
            values = np.asarray(values, dtype=float)
            shown = np.where(values > 0, values, np.nan)
            ax.plot(
                np.arange(1, len(values) + 1),
                shown,
                color=color,
                lw=1.4,
                label=f"{'iter' if unit == 'iteration' else unit} {iteration:,}",
            )
        ax.axhline(threshold, color="#c0392b", ls="--", lw=1, label=f"T = {threshold:.3g}")
        ax.set_yscale("log")
        ax.set_ylim(max(ax.get_ylim()[0], threshold * 1e-5), 2)  # not down to round-off
        ax.set_title(short_name(name), fontsize=9)
        ax.set_xlabel("index")
        ax.set_ylabel("normalised eigenvalue")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def dims_figure(
    iterations: Sequence[int],
    series: Mapping[str, Sequence[int]],
    milestones: Sequence[int] = (),
    events: Mapping[str, Sequence[Event]] | None = None,
    threshold: float = 1e-3,
    unit: str = "iteration",
) -> Figure:
    """Figure 4: intrinsic dimensionality of each map over iterations (or epochs: ``unit``),
    decays dashed,
    droppings (down triangles) and reboundings (up triangles) marked; a log scale when the
    maps' largest counts differ by more than 20 times."""
    fig = Figure(figsize=(8.5, 4.6))
    ax = fig.add_subplot()
    for name, dims in series.items():
        (line,) = ax.plot(iterations, dims, marker="o", ms=3, lw=1.4, label=short_name(name))
        for event in (events or {}).get(name, ()):
            ax.plot(
                event.iteration,
                event.after,
                ls="none",
                ms=10,
                mfc="none",
                mew=1.6,
                marker="v" if event.kind == "dropping" else "^",
                color=line.get_color(),
            )
    for k, m in enumerate(milestones):
        ax.axvline(m, color="grey", ls="--", lw=1, label="lr decay (x0.1)" if k == 0 else None)
    peaks = [max(dims) for dims in series.values() if len(dims)]
    if peaks and max(peaks) >= 20 * max(1, min(peaks)):  # maps of very different widths
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(0, 1.5 * max(peaks))
    ax.set_xlabel(unit)
    ax.set_ylabel(f"# eigenvalues > {threshold:.3g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def compare_figure(
    comparison: Comparison, stages: Sequence[str], side: str | None = "in"
) -> Figure:
    """Figure 5: per chosen stage, both models' dimensionality of each map (``side`` maps
    only, if given), over the maps' widths (grey)."""
    fig = Figure(figsize=(10, 3.2 * len(stages)))
    for k, stage in enumerate(stages):
        ax = fig.add_subplot(len(stages), 1, k + 1)
        maps = [
            m
            for m in comparison.maps
            if map_stage(m.name) == stage and (side is None or m.name.endswith(f":{side}"))
        ]
        x = np.arange(len(maps))
        ax.bar(x, [m.channels for m in maps], color="#dddddd", label="channels")
        for values, marker, label in (
            ([m.a for m in maps], "o", comparison.names[0]),
            ([m.b for m in maps], "s", comparison.names[1]),
        ):
            ax.plot(x, values, marker=marker, ms=4, lw=1.2, label=label)
        ax.set_xticks(x, [short_name(m.name) for m in maps], rotation=60, ha="right", fontsize=6)
        ax.set_title(
            f"{stage}: intrinsic dimensionality (T = {comparison.threshold:.3g})", fontsize=9
        )
        ax.set_ylabel("dimensions")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


#: Module names of projection shortcuts (torchvision's ResNet / RegNet): not drawn, as in
#: the paper's Figure 2, which shows the main path only.
SHORTCUTS = ("downsample", "proj")


def diagram_layers(cost: ModelCost) -> list[tuple[str, int, int]]:
    """``(layer, output width, kernel)`` of every conv on a backbone's main path, stem
    first: every conv / linear layer but the classifier (the last) and projection shortcuts."""
    return [
        (layer.name, layer.out_channels, layer.kernel)
        for layer in cost.layers[:-1]
        if not any(part in SHORTCUTS for part in layer.name.split("."))
    ]


#: The white space between two blocks' grey boxes, in bar rows.
BLOCK_GAP = 0.3


def widths_figure(
    architectures: Sequence[tuple[str, Sequence[tuple[str, float, int]]]],
) -> Figure:
    """Figure 2: one panel per architecture, one bar per layer from the stem (bottom) up,
    bar width proportional to the layer's output width, coloured by kernel size, blocks
    on grey. ``architectures`` is ``[(title, [(layer, width, kernel), ...]), ...]``."""
    layers = max((len(a[1]) for a in architectures), default=1)
    widest = max((w for _, ls in architectures for _, w, _ in ls), default=1)
    fig = Figure(figsize=(2.6 * max(len(architectures), 1), 1.2 + 0.17 * layers))
    for k, (title, items) in enumerate(architectures):
        ax = fig.add_subplot(1, max(len(architectures), 1), k + 1)
        blocks: dict[str, list[int]] = {}
        for y, (layer, _, _) in enumerate(items):
            if layer.count(".") >= 2:
                blocks.setdefault(layer.rsplit(".", 1)[0], []).append(y)
        for rows in blocks.values():  # a white gap between adjacent blocks
            ax.add_patch(
                Rectangle(
                    (-0.55 * widest, min(rows) - 0.5 + BLOCK_GAP / 2),
                    1.1 * widest,
                    len(rows) - BLOCK_GAP,
                    color=BLOCK_COLOR,
                    lw=0,
                )
            )
        for y, (_, width, kernel) in enumerate(items):
            color = KERNEL_COLORS.get(kernel, KERNEL_COLORS[3])
            ax.barh(y, width, left=-width / 2, height=0.72, color=color)
            ax.text(0.57 * widest, y, f"{width:.0f}", va="center", fontsize=5)
        ax.set_xlim(-0.6 * widest, 0.75 * widest)
        ax.set_ylim(-0.8, layers - 0.2)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.legend(
        handles=[
            Patch(color=KERNEL_COLORS[7], label="7x7 conv"),
            Patch(color=KERNEL_COLORS[1], label="1x1 conv"),
            Patch(color=KERNEL_COLORS[3], label="3x3 (or other) conv"),
            Patch(color=BLOCK_COLOR, label="block"),
        ],
        loc="lower center",
        ncol=4,
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
