"""Intrinsic Architecture Search (SPEC section 6): groups, adjust, expand, properties."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from eigenarch.errors import EigenarchError
from eigenarch.widths import (
    RESNET50_WIDTHS,
    adjust_widths,
    channel_groups,
    intrinsic_widths,
    resnet_cost,
    search_widths,
)
from eigenarch.widths.ias import expand_widths

from ..conftest import resnet_tie_maps


def dims_for(values, depths=(3, 4, 6, 3), rng=None, side_maps=("producers", "consumers")):
    """Dims where every map of the group feeding width ``i`` is ``values[i]`` (maybe jittered)."""
    dims = {}
    for index, (producers, consumers) in enumerate(resnet_tie_maps(depths)):
        for kind, names in (("producers", producers), ("consumers", consumers)):
            if kind in side_maps:
                for name in names:
                    v = values[index]
                    dims[name] = v if rng is None else rng.randint(0, v)
    return dims


def _spec_table(depths=(3, 4, 6, 3), after_last=("fc",)):
    """SPEC section 6's groups: ``{first producer: (producers, consumers)}``."""
    table = {"conv1": ({"conv1"}, {"layer1.0.conv1", "layer1.0.downsample.0"})}
    for s, depth in enumerate(depths, start=1):
        for b in range(depth):
            p = f"layer{s}.{b}."
            table[p + "conv1"] = ({p + "conv1"}, {p + "conv2"})
            table[p + "conv2"] = ({p + "conv2"}, {p + "conv3"})
        nxt = (
            {f"layer{s + 1}.0.conv1", f"layer{s + 1}.0.downsample.0"}
            if s < len(depths)
            else set(after_last)
        )
        table[f"layer{s}.0.conv3"] = (
            {f"layer{s}.{b}.conv3" for b in range(depth)} | {f"layer{s}.0.downsample.0"},
            {f"layer{s}.{b}.conv1" for b in range(1, depth)} | nxt,
        )
    return table


def test_resnet50_groups_follow_spec_table():
    groups = channel_groups(torchvision.models.resnet50(), torch.zeros(1, 3, 64, 64))
    found = {g.name: (set(g.producers), set(g.consumers)) for g in groups}
    assert found == _spec_table()
    stem = groups[0]
    assert stem.name == "conv1" and stem.norms == ("bn1",) and stem.width == 64
    shortcut = next(g for g in groups if g.name == "layer1.0.conv3")
    assert set(shortcut.norms) == {f"layer1.{b}.bn3" for b in range(3)} | {"layer1.0.downsample.1"}


def test_faster_rcnn_backbone_groups_follow_spec_table():
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    groups = channel_groups(model.backbone, torch.zeros(1, 3, 64, 64))
    body = {
        g.name[len("body.") :]: (
            {p[len("body.") :] for p in g.producers},
            {c[len("body.") :] for c in g.consumers if c.startswith("body.")},
        )
        for g in groups
        if g.name.startswith("body.")
    }
    assert body == _spec_table(after_last=())
    laterals = {
        g.name: {c for c in g.consumers if c.startswith("fpn.")}
        for g in groups
        if g.name.startswith("body.layer")
    }
    for s in range(1, 5):
        assert laterals[f"body.layer{s}.0.conv3"] == {f"fpn.inner_blocks.{s - 1}.0"}


def test_resnet50_dims_give_resnet50_back():
    for metric in ("macs", "params"):
        result = search_widths(dims_for(RESNET50_WIDTHS), "resnet50", metric)
        assert result.widths == RESNET50_WIDTHS
        assert result.adjusted == pytest.approx(RESNET50_WIDTHS, rel=1e-12)
        assert all(type(a) is float for a in result.adjusted)
        assert (result.macs, result.params) == (4_089_184_256, 25_502_912)
        assert (result.base_macs, result.base_params) == (result.macs, result.params)
        assert 1 <= result.omega < 1 + 16 / 2048  # o5 = 2048 rounds to 2048 below 2064


def test_adjust_rules():
    dims = dims_for((10, 20, 30, 40, 50, 60, 70, 80, 90))
    dims["layer3.4.conv3:out"] = 500  # one block's output sets the whole stage (max)
    dims["layer2.0.conv1:out"] = 2  # the stage's bottleneck is a geometric mean
    dims["layer1.1.conv2:out"] = 0  # clamped to 1
    out = adjust_widths(intrinsic_widths(dims, "out"), "out")
    assert out[6] == 500
    assert out[3] == pytest.approx(math.exp((math.log(2) + 7 * math.log(40)) / 8))
    assert out[1] == pytest.approx(math.exp((math.log(1) + 5 * math.log(20)) / 6))
    assert adjust_widths(intrinsic_widths(dims, "in"), "in") == pytest.approx(
        (10, 20, 30, 40, 50, 60, 70, 80, 90)
    )
    both = adjust_widths(intrinsic_widths(dims, "both"), "both")
    assert both[6] == 500 and both[3] == pytest.approx(40)


def test_detector_prefix_and_fpn_laterals():
    plain = dims_for((64, 40, 200, 80, 400, 160, 800, 300, 900))
    det = {"backbone.body." + k: v for k, v in plain.items() if not k.startswith("fc")}
    det["roi_heads.box_head.0.0:in"] = 4096  # other modules are ignored
    det["backbone.fpn.layer_blocks.0.0:in"] = 4096
    assert search_widths(det, "resnet50").widths == search_widths(plain, "resnet50").widths
    det["backbone.fpn.inner_blocks.2.0:in"] = 1500  # reads stage 3's output
    res = search_widths(det, "resnet50")
    assert res.adjusted[6] == 1500
    assert res.intrinsic["layer3.5.conv3"] == 1500


def _detector_dims(reads, p6=False):
    """One backbone's maps under an FPN whose lateral ``i`` reads stage ``reads[i]``: the
    lateral's input 50 above that stage's own maps (o3, o5, o7, o9 = 200, 400, 800, 900)."""
    plain = dims_for((64, 40, 200, 80, 400, 160, 800, 300, 900))
    dims = {"backbone.body." + k: v for k, v in plain.items() if not k.startswith("fc")}
    for i, stage in enumerate(reads):
        dims[f"backbone.fpn.inner_blocks.{i}.0:in"] = (200, 400, 800, 900)[stage - 1] + 50
        dims[f"backbone.fpn.layer_blocks.{i}.0:in"] = 5000  # reads the FPN, not the body
    for conv in ("p6", "p7") if p6 else ():
        dims[f"backbone.fpn.extra_blocks.{conv}:in"] = 3000
    return dims


def test_fpn_laterals_count_with_the_stage_they_read():
    faster = search_widths(_detector_dims((1, 2, 3, 4)), "resnet50")  # P2-P5 over layer1..4
    assert faster.adjusted == pytest.approx((64, 40, 250, 80, 450, 160, 850, 300, 950))
    retina = search_widths(_detector_dims((2, 3, 4), p6=True), "resnet50")  # RetinaNet / FCOS
    assert retina.adjusted == pytest.approx((64, 40, 200, 80, 450, 160, 850, 300, 950))
    # RetinaNet v2: its P6 reads layer4's 2048 channels (the FPN's are 256)
    dims = _detector_dims((2, 3, 4), p6=True)
    channels = {"backbone.fpn.extra_blocks.p6:in": 2048, "backbone.fpn.extra_blocks.p6:out": 256}
    assert search_widths(dims, "resnet50", channels=channels).adjusted[8] == 3000
    # laterals over layer1, layer3, layer4, told by their input widths
    dims = _detector_dims((1, 3, 4))
    channels = {f"backbone.fpn.inner_blocks.{i}.0:in": w for i, w in enumerate((256, 1024, 2048))}
    found = search_widths(dims, "resnet50", channels=channels)
    assert found.adjusted == pytest.approx((64, 40, 250, 80, 400, 160, 850, 300, 950))


def test_intrinsic_per_layer_for_plots():
    dims = {"conv1:out": 50, "layer1.0.conv1:out": 30, "layer1.0.conv2:in": 20}
    assert intrinsic_widths(dims, "out") == {"conv1": 50, "layer1.0.conv1": 30}
    assert intrinsic_widths(dims, "in") == {"layer1.0.conv1": 20}
    assert intrinsic_widths(dims, "both") == {"conv1": 50, "layer1.0.conv1": 30}


@pytest.mark.parametrize(
    "dims, kwargs, match",
    [
        (
            {"layer1.0.conv2:in": 3},
            {},
            r"width group 'conv1' \(and 35 more groups\) of bottleneck ResNet 3,4,6,3 on side 'in'",
        ),
        ({"layer1.0.conv1:in": 3, "layer1.0.conv2:in": 3}, {}, "basic-block ResNet"),
        ({"conv1": 3}, {}, "does not end in ':in'"),
        ({"conv1:out": -1}, {}, "expected a number >= 0"),
        ({"conv1:out": True}, {}, "expected a number >= 0"),
        ({"conv1:out": 10**12}, {}, "expected a number >= 0 and at most 1,000,000"),
        ({"conv1:out": float("inf")}, {}, "expected a number >= 0 and at most 1,000,000"),
        ({"a.layer1.0.conv1:in": 3, "b.layer1.0.conv1:in": 3}, {}, "more than one model"),
        ({"layer3.6.conv1:in": 3}, {}, "outside depths"),
        ({"layer5.0.conv1:in": 3}, {}, "outside depths"),
        (None, {"side": "sideways"}, "side 'sideways'"),
        (None, {"metric": "flops"}, "metric 'flops'"),
        (None, {"target": "resnet18"}, "target 'resnet18'"),
        (None, {"target": 0}, "not a positive number"),
        (None, {"target": float("nan")}, "not a positive number"),
        (
            None,
            {"target": 1e30},
            r"target 1e\+30 macs is above the largest this search takes, 1e\+12",
        ),
        (None, {"multiple": 0}, "multiple 0"),
        (None, {"target": 1e8}, r"below the smallest reachable 222,662,912 \(every width 32\)"),
    ],
)
def test_errors(dims, kwargs, match):
    dims = dims if dims is not None else dims_for(RESNET50_WIDTHS)
    with pytest.raises(EigenarchError, match=match):
        search_widths(dims, **{"target": "resnet50", **kwargs})


def test_greedy_fill_ties_go_to_the_earlier_group():
    # cost = sum of widths; equal adjusted widths give equal shortfalls everywhere
    widths, omega = expand_widths([10.0] * 9, 9 * 10 + 4, sum, 1)
    assert widths == (11, 11, 11, 11, 10, 10, 10, 10, 10)
    assert 10.5 - 1e-6 < omega * 10 < 10.5


def walled(widths: tuple[int, ...]) -> int:
    """Sum of widths, and a wall when the last grows past 10: that group pins omega < 1."""
    return sum(widths) + (1000 if widths[-1] > 10 else 0)


def test_greedy_fill_ranks_relative_not_absolute_shortfalls():
    # omega just below 1 (15 * omega must round to 10): ideal 13 and 104 round to 10 and
    # 100, cost 120, budget 130: one group may grow by 10. Relative shortfalls 3/13 > 4/104
    # grow the first; the absolute ones (3 < 4) would grow the second.
    widths, omega = expand_widths([13.0, 104.0, 15.0], 130, walled, 10)
    assert widths == (20, 100, 10)
    assert omega == pytest.approx(1.0, rel=1e-8) and omega < 1.0


def test_greedy_fill_equal_relative_shortfalls_go_to_the_earlier_group():
    # ideal 12 and 24 round to 10 and 20 (cost 40, budget 50): relative shortfalls 1/6 and
    # 1/6, exactly equal in floats (24 omega = 2 x 12 omega); the absolute ones (2 < 4) and
    # a tie to the later group would grow the second
    widths, _ = expand_widths([12.0, 24.0, 15.0], 50, walled, 10)
    assert widths == (20, 20, 10)


def test_greedy_fill_prefers_the_largest_relative_shortfall():
    # just below omega = 1.05 the ideal widths are 31.5 and 10.5, rounded to 31 and 10;
    # one unit of budget is left and 0.5 / 10.5 > 0.5 / 31.5: the last group grows
    widths, omega = expand_widths([30.0] * 8 + [10.0], 8 * 31 + 10 + 1, sum, 1)
    assert widths == (31,) * 8 + (11,)
    assert omega == pytest.approx(1.05, rel=1e-8) and omega < 1.05


# ---------------------------------------------------------------------------------- properties

params_st = st.fixed_dictionaries(
    {
        "rnd": st.randoms(use_true_random=False),
        "metric": st.sampled_from(["macs", "params"]),
        "multiple": st.sampled_from([8, 16, 32, 64]),
        "side": st.sampled_from(["in", "out", "both"]),
        "depths": st.sampled_from([(3, 4, 6, 3), (1, 1, 1, 1), (2, 3, 2, 1)]),
        "scale": st.floats(0.3, 3.0),
    }
)


def random_case(p):
    rng: random.Random = p["rnd"]
    values = [rng.randint(1, 2048) for _ in range(9)]
    dims = dims_for(values, p["depths"], rng=rng)
    smallest = resnet_cost((p["multiple"],) * 9, p["depths"]).metric(p["metric"])
    base = resnet_cost(RESNET50_WIDTHS, p["depths"]).metric(p["metric"])
    budget = int(smallest + p["scale"] * base)
    return dims, budget


@settings(max_examples=60, deadline=None)
@given(p=params_st)
def test_result_fits_is_maximal_and_rounded(p):
    dims, budget = random_case(p)
    q, depths, metric = p["multiple"], p["depths"], p["metric"]
    res = search_widths(dims, budget, metric, q, p["side"], depths)
    assert res.target == budget
    assert resnet_cost(res.widths, depths).metric(metric) == getattr(res, metric) <= budget
    assert all(w % q == 0 and w >= q for w in res.widths)
    for g in range(9):
        grown = list(res.widths)
        grown[g] += q
        assert resnet_cost(grown, depths).metric(metric) > budget


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.integers(1, 4096), min_size=9, max_size=9),
    depths=st.sampled_from([(3, 4, 6, 3), (1, 2, 1, 2)]),
    side=st.sampled_from(["in", "out", "both"]),
)
def test_identical_dims_come_back_before_expansion(values, depths, side):
    shrunk = intrinsic_widths(dims_for(values, depths), side, depths)
    assert adjust_widths(shrunk, side, depths) == pytest.approx(values, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(p=params_st, more=st.floats(1.0, 2.0))
def test_multiplier_grows_with_budget(p, more):
    dims, budget = random_case(p)
    args = (p["metric"], p["multiple"], p["side"], p["depths"])
    small = search_widths(dims, budget, *args)
    big = search_widths(dims, int(budget * more) + 1, *args)
    assert small.omega <= big.omega
    assert getattr(small, p["metric"]) <= getattr(big, p["metric"])


# ------------------------------------------------------------------- the rules' exact edges


def test_layers_come_in_network_order_and_a_bad_side_is_named():
    dims = {"layer1.0.conv1:out": 30, "conv1:out": 50}  # given in reverse order
    assert list(intrinsic_widths(dims, "out")) == ["conv1", "layer1.0.conv1"]
    with pytest.raises(EigenarchError) as error:
        intrinsic_widths(dims, "sideways")
    assert str(error.value) == "side 'sideways' is not one of in, out, both"


@pytest.mark.parametrize(
    "dropped, side, message",
    [
        (("layer1.0.conv1:in", "layer1.0.downsample.0:in"), "in",
         "'conv1' of bottleneck ResNet 3,4,6,3 on side 'in'; expected one of "
         "layer1.0.conv1:in, layer1.0.downsample.0:in"),
        (("layer1.0.conv1:in", "layer1.0.downsample.0:in", "layer1.0.conv2:in"), "in",
         "'conv1' (and 1 more groups) of bottleneck ResNet 3,4,6,3 on side 'in'; expected one "
         "of layer1.0.conv1:in, layer1.0.downsample.0:in"),
        (("conv1:out", "layer1.0.conv1:in", "layer1.0.downsample.0:in"), "both",
         "'conv1' of bottleneck ResNet 3,4,6,3 on side 'both'; expected one of conv1:out, "
         "layer1.0.conv1:in, layer1.0.downsample.0:in"),
    ],
)  # fmt: skip
def test_a_group_without_maps_is_named_with_the_maps_it_needs(dropped, side, message):
    dims = {k: v for k, v in dims_for(RESNET50_WIDTHS).items() if k not in dropped}
    with pytest.raises(EigenarchError) as error:
        search_widths(dims, "resnet50", side=side)
    assert str(error.value) == "no intrinsic dimensionality for width group " + message


def test_a_budget_equal_to_the_smallest_cost_is_reachable_and_below_it_is_not():
    assert expand_widths([10.0, 10.0], 20, sum, 10) == ((10, 10), pytest.approx(1.5, rel=1e-8))
    with pytest.raises(EigenarchError) as error:
        expand_widths([10.0], 9, sum, 10)
    assert str(error.value) == (
        "budget 9 cost is below the smallest reachable 10 (every width 10); raise the target "
        "or lower the multiple"
    )


def test_omega_is_found_to_relative_precision_however_small():
    # R(omega * 1e6) <= 100 holds below omega = 100.5e-6: found to 1e-9 of itself
    widths, omega = expand_widths([1e6], 100, sum, 1)
    assert widths == (100,)
    assert omega == pytest.approx(100.5e-6, rel=1e-8) and omega < 100.5e-6


def test_layers_come_in_network_order_not_by_name():
    # a stage of 11 blocks: block 2 runs before block 10, whose name sorts first
    dims = {"layer3.10.conv1:out": 5, "layer3.2.conv1:out": 7}
    found = intrinsic_widths(dims, "out", (1, 1, 11, 1))
    assert list(found) == ["layer3.2.conv1", "layer3.10.conv1"]
