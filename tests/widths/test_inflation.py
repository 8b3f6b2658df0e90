"""Widths the greedy fill inflates past k x their ideal width: named by ``search``."""

from __future__ import annotations

import json

from eigenarch.widths.ias import WidthSearchResult
from eigenarch.widths.inflation import Inflated, inflated_widths, inflation_note

SE_NET = """
from torch import nn
from torchvision.ops import SqueezeExcitation


def net():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        SqueezeExcitation(64, 8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10),
    )
"""


def _result(ties, adjusted, widths, omega, fixed=()) -> WidthSearchResult:
    return WidthSearchResult(
        widths=widths, adjusted=adjusted, omega=omega, macs=0, params=0, metric="macs",
        target=0, side="out", multiple=8, intrinsic={}, base_widths=widths, base_macs=0,
        base_params=0, ties=ties, group_widths={}, fixed=fixed,
    )  # fmt: skip


def test_a_width_past_k_times_its_rounded_ideal_is_inflated():
    # omega 0.25, multiple 8: ideal widths R(8) = 8, R(8) = 8, R(16) = 16, R(1) = 8 (the
    # floor of one multiple), and the fixed tie's base width is not searched.
    result = _result(("a", "b", "c", "e", "kept"), (32.0, 32.0, 64.0, 4.0, 64.0),
                     (16, 24, 16, 16, 64), 0.25, fixed=("kept",))  # fmt: skip
    assert inflated_widths(result) == [Inflated("b", 24, 8, 2.0)]  # a: exactly 2 x, not past
    assert [i.tie for i in inflated_widths(result, factor=1.5)] == ["a", "b", "e"]
    assert inflation_note(inflated_widths(result)) == (
        "warning: 1 width(s) grew past 2 x their ideal width R(omega x adjusted) in the greedy "
        "fill, the budget going to layers that cost little: b 24 (ideal 8)"
    )
    assert inflation_note([]) == ""


def test_search_warns_of_an_se_block_grown_by_the_greedy_fill(run_cli, tmp_path):
    (tmp_path / "senet.py").write_text(SE_NET)
    dims = {"0:out": 16, "3:out": 16, "6.fc1:out": 4, "9:out": 16}
    (tmp_path / "dims.json").write_text(json.dumps(dims))
    out = tmp_path / "w.json"
    r = run_cli("search", "--model", f"{tmp_path / 'senet.py'}:net", "--dims",
                tmp_path / "dims.json", "--target", "macs=base", "--multiple", "8", "--side",
                "out", "--out", out)  # fmt: skip
    assert r.code == 0, r.stderr
    spec = json.loads(out.read_text())
    assert spec["groups"] == {"0": 40, "3": 48, "6.fc1": 2768, "9": 11048}  # SPEC 6: literal
    assert (
        "warning: 2 width(s) grew past 2 x their ideal width R(omega x adjusted) in the greedy "
        "fill, the budget going to layers that cost little: 6.fc1 2768 (ideal 8), 9 11048 "
        "(ideal 40)"
    ) in " ".join(r.stderr.split())
