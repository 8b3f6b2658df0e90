"""The four figures: drawn without a display, PNG and SVG, showing the numbers given."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from eigenarch.report.compare import Comparison, MapComparison
from eigenarch.report.dynamics import Event
from eigenarch.report.plots import (
    BLOCK_COLOR,
    BLOCK_GAP,
    KERNEL_COLORS,
    compare_figure,
    diagram_layers,
    dims_figure,
    eigenspectra_figure,
    save_figure,
    widths_figure,
)
from eigenarch.widths import resnet_cost

SCRIPT = """
import sys
import numpy as np
from eigenarch.report.compare import Comparison, MapComparison
from eigenarch.report.plots import (compare_figure, dims_figure, eigenspectra_figure,
                                    diagram_layers, save_figure, widths_figure)
from eigenarch.widths import resnet_cost
out = sys.argv[1]
values = np.logspace(0, -6, 32)
save_figure(eigenspectra_figure({"m:out": [(0, values), (10, values ** 2)]}, 1e-3), out + "/f3")
save_figure(dims_figure([0, 10, 20], {"m:out": [30, 12, 20]}, [15]), out + "/f4")
maps = [MapComparison(f"backbone.body.layer1.0.conv{k}:in", 16, k, 2 * k) for k in (1, 2, 3)]
save_figure(compare_figure(Comparison(("I", "S"), 1e-3, maps), ["layer1"]), out + "/f5")
layers = diagram_layers(resnet_cost((64,) * 9, (1, 1, 1, 1)))
save_figure(widths_figure([("base", layers)]), out + "/f2")
print("pyplot" if "matplotlib.pyplot" in sys.modules else "no pyplot")
"""


def test_figures_without_a_display(tmp_path):
    # A fresh process with no display and no backend chosen; pyplot is never imported.
    unset = ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no pyplot"
    for stem in ("f2", "f3", "f4", "f5"):
        with Image.open(tmp_path / f"{stem}.png") as image:
            assert image.format == "PNG" and min(image.size) > 100
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # not blank
        root = ET.parse(tmp_path / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg")


def test_svg_is_reproducible(tmp_path):
    fig = dims_figure([0, 10], {"a:in": [3, 4]}, [5])
    first = save_figure(fig, tmp_path / "one")[1].read_bytes()
    second = save_figure(dims_figure([0, 10], {"a:in": [3, 4]}, [5]), tmp_path / "two")[1]
    assert first == second.read_bytes()


def test_eigenspectra_figure_log_scale_and_threshold():
    values = {
        "a:out": [(0, np.array([1.0, 0.1, 0.0])), (5, np.array([1.0, 1e-4, 1e-6]))],
        "b:in": [(0, np.ones(4))],
    }
    fig = eigenspectra_figure(values, 1e-3)
    first, second = fig.axes
    assert first.get_yscale() == "log" and first.get_title() == "a:out"
    curves = [line for line in first.lines if line.get_label().startswith("iter")]
    assert [c.get_label() for c in curves] == ["iter 0", "iter 5"]
    assert np.isnan(curves[0].get_ydata()[2])  # a zero is not drawn on the log scale
    np.testing.assert_array_equal(curves[1].get_ydata(), [1.0, 1e-4, 1e-6])
    threshold = [line for line in first.lines if line.get_label().startswith("T =")]
    assert list(threshold[0].get_ydata()) == [1e-3, 1e-3]
    assert first.get_ylim()[0] < 1e-6  # the smallest value drawn is in view
    (deep,) = eigenspectra_figure({"c:in": [(0, np.array([1.0, 1e-2, 1e-30]))]}, 1e-3).axes
    assert deep.get_ylim()[0] == 1e-8  # round-off far below the threshold is cut off


def test_dims_figure_marks_decays_and_events():
    events = {"a:out": [Event("dropping", 10, 30, 12, 0), Event("rebounding", 30, 12, 20, 20, 25)]}
    fig = dims_figure(
        [0, 10, 20, 30], {"a:out": [30, 12, 12, 20], "b:in": [5, 5, 5, 5]}, [25, 35], events
    )
    (ax,) = fig.axes
    series = {
        line.get_label(): list(line.get_ydata())
        for line in ax.lines
        if not line.get_label().startswith("_")
    }
    assert series["a:out"] == [30, 12, 12, 20] and series["b:in"] == [5, 5, 5, 5]
    decays = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"]
    assert decays == [25, 35]
    markers = [
        (line.get_marker(), line.get_xdata()[0], line.get_ydata()[0])
        for line in ax.lines
        if line.get_marker() in ("v", "^")
    ]
    assert markers == [("v", 10, 12), ("^", 30, 20)]
    assert ax.get_yscale() == "linear"
    (wide,) = dims_figure([0, 10], {"a:out": [2, 3], "b:in": [900, 700]}).axes
    assert wide.get_yscale() == "symlog" and wide.get_ylim()[0] == 0


def test_compare_figure_per_stage():
    maps = [
        MapComparison("backbone.body.layer1.0.conv1:in", 16, 4, 8),
        MapComparison("backbone.body.layer1.0.conv1:out", 16, 9, 9),
        MapComparison("backbone.body.layer4.0.conv2:in", 32, 30, 10),
    ]
    fig = compare_figure(Comparison(("I", "S"), 1e-3, maps), ["layer1", "layer4"], side="in")
    top, bottom = fig.axes
    assert [t.get_text() for t in top.get_xticklabels()] == ["layer1.0.conv1:in"]
    lines = {line.get_label(): list(line.get_ydata()) for line in bottom.lines}
    assert lines == {"I": [30], "S": [10]}
    assert [p.get_height() for p in bottom.patches] == [32]


def test_widths_figure_bars_proportional_to_channels():
    widths, depths = (32, 16, 64, 32, 128, 64, 256, 128, 512), (1, 2, 1, 1)
    layers = diagram_layers(resnet_cost(widths, depths))
    assert [name for name, _, _ in layers] == [
        "conv1",
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer1.0.conv3",
        "layer2.0.conv1",
        "layer2.0.conv2",
        "layer2.0.conv3",
        "layer2.1.conv1",
        "layer2.1.conv2",
        "layer2.1.conv3",
        "layer3.0.conv1",
        "layer3.0.conv2",
        "layer3.0.conv3",
        "layer4.0.conv1",
        "layer4.0.conv2",
        "layer4.0.conv3",
    ]
    assert [w for _, w, _ in layers][:4] == [32, 16, 16, 64]
    assert [k for _, _, k in layers][:3] == [7, 1, 3]
    intrinsic = [(name, w / 2, k) for name, w, k in layers]
    fig = widths_figure([("base", layers), ("intrinsic", intrinsic)])
    colors = {to_hex(c) for c in KERNEL_COLORS.values()}
    for ax, expected in zip(fig.axes, (layers, intrinsic), strict=True):
        bars = [p for p in ax.patches if to_hex(p.get_facecolor()) in colors]
        assert [b.get_width() for b in bars] == [w for _, w, _ in expected]
        assert all(abs(b.get_x() + b.get_width() / 2) < 1e-9 for b in bars)  # centred
        kernels = [to_hex(b.get_facecolor()) for b in bars]
        assert kernels[:3] == [KERNEL_COLORS[7], KERNEL_COLORS[1], KERNEL_COLORS[3]]
        assert ax.get_xlim() == fig.axes[0].get_xlim()  # one scale for every panel
        # One grey box per block (rows 1-3, 4-6, 7-9, ...), a white gap between neighbours.
        boxes = sorted((p.get_y(), p.get_y() + p.get_height()) for p in ax.patches
                       if to_hex(p.get_facecolor()) == to_hex(BLOCK_COLOR))  # fmt: skip
        assert len(boxes) == 5
        for (_, top), (bottom, _) in itertools.pairwise(boxes):
            assert bottom - top == pytest.approx(BLOCK_GAP)
        assert boxes[0][0] < 1 and boxes[0][1] > 3 and boxes[1][0] > 3  # block layer1.0
