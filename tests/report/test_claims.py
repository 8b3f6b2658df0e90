"""The claims' verdicts follow their rules on constructed numbers; Welch's test is SciPy's."""

from __future__ import annotations

import warnings

import pytest
from scipy.stats import ttest_ind

from eigenarch.report.claims import (
    AGREES,
    DISAGREES,
    NOT_MEASURED,
    claim_line,
    paper_claims,
    paper_name,
    welch_p,
)
from eigenarch.report.compare import Comparison, MapComparison
from eigenarch.report.dynamics import Criteria, Event, MapDynamics, RunDynamics

BODY = "backbone.body."
#: Claims on rows the demo makes only with an option: two schedules, Table 2, Mask R-CNN.
UNMEASURED = dict.fromkeys("ikl", NOT_MEASURED)


def comparison(
    layer1: tuple[int, int], mid: tuple[int, int], layer4_0: tuple[int, int], layer4_1: int
) -> Comparison:
    maps = [
        MapComparison(BODY + "layer1.0.conv1:in", 64, *layer1),
        MapComparison(BODY + "layer2.0.conv1:in", 100, *mid),
        MapComparison(BODY + "layer3.0.conv1:in", 100, *mid),
        MapComparison(BODY + "layer4.0.conv1:in", 100, *layer4_0),
        MapComparison(BODY + "layer4.1.conv1:in", 100, layer4_1, 80),
    ]
    return Comparison(("I", "S"), 1e-3, maps)


def dynamics(drops: int, rebound: bool) -> dict[str, RunDynamics]:
    names = ["layer4.0.conv3:out", "layer4.1.conv3:out", "layer4.2.conv3:out"]
    maps = [
        MapDynamics(BODY + n, 64, [40, 20], [Event("dropping", 10, 40, 20, 0)] if k < drops else [])
        for k, n in enumerate(names)
    ]
    if rebound:
        maps[0].events.append(Event("rebounding", 80, 20, 30, 60, milestone=60))
    run = RunDynamics("I", [0, 10, 80], [60, 90], 100, 1e-3, Criteria(), maps, [])
    return {"I": run, "S": replace_run(run, "S")}


def replace_run(run: RunDynamics, name: str) -> RunDynamics:
    return RunDynamics(
        name, run.iterations, run.milestones, run.length, run.threshold, run.criteria, [], []
    )


def row(
    label: str, params: float, ap: list[float], base: list[float] | None, key: str = "AP"
) -> dict:
    """A table row as the demo's ``results_table`` makes it, for one value ``key``."""
    p = welch_p(ap, base) if base is not None else None
    return {"backbone": label, "params": params, key: sum(ap) / len(ap), f"{key}_std": None,
            f"{key}_values": ap, f"{key}_p": p}  # fmt: skip


def table(s_ap: list[float], i_ap: list[float], uniform_ap: list[float]) -> list[dict]:
    base = [10.0, 10.5, 11.0]
    return [
        row("base", 2e6, base, None),
        row("ResiaNet S (MACs)", 0.6e6, s_ap, base),
        row("ResiaNet I (MACs)", 0.7e6, i_ap, base),
        row("ResiaNet I (params)", 2e6, base, base),
        row("uniform x0.50", 0.6e6, uniform_ap, base),
    ]


def verdicts(claims) -> dict[str, str]:
    return {c.key: c.verdict for c in claims}


def test_paper_naming_of_maps():
    assert paper_name(BODY + "layer1.0.conv1:in") == "before conv2_1.1"
    assert paper_name("layer4.1.conv1:in") == "before conv5_2.1"
    assert paper_name("layer4.0.conv3:out") == "after conv5_1_3"
    assert paper_name("layer4.0.downsample.0:out") == "after the projection shortcut in conv5_1"
    assert paper_name("fpn.layer_blocks.0:in") == "fpn.layer_blocks.0:in"


def test_welch_p_is_scipys_two_sided_unequal_variance_test():
    a, b = [31.2, 30.8, 31.9, 30.5, 31.1], [30.1, 29.7, 30.9, 30.3]
    assert welch_p(a, b) == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)
    assert welch_p(a, b) == pytest.approx(0.043679, abs=1e-6)  # fixed samples
    assert welch_p([1.0], b) is None and welch_p(a, [2.0]) is None
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0 and welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0
    assert welch_p([100 * (1 - 0.7), 30.0], [30.0, 30.0]) == 1.0  # float noise is no variance
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one constant sample: no SciPy warning
        one = welch_p([83.33333333333334, 83.33333333333333], [75.0, 80.0, 70.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ttest_ind([83.333333333] * 2, [75.0, 80.0, 70.0], equal_var=False).pvalue
    assert one == pytest.approx(expected, rel=1e-12)


def test_claims_agree_with_numbers_like_the_papers():
    claims = paper_claims(
        {"table1": table([10.4, 10.6, 10.5], [10.2, 10.9, 10.7], [8.0, 8.2, 8.1])},
        comparison((30, 32), (60, 50), (60, 20), 40),
        dynamics(drops=2, rebound=True),
    )
    assert [c.key for c in claims] == list("abcdefghijkl")
    assert verdicts(claims) == {**dict.fromkeys("abcdefghj", AGREES), **UNMEASURED}
    a = claims[0]
    assert (
        "before conv2_1.1 = layer1.0.conv1:in" in a.paper and a.ours == "I 30, S 32 of 64 channels"
    )
    assert "conv5_2.1 = layer4.1.conv1:in" in claims[2].paper
    for claim in claims:  # every row filled
        assert all(v for k, v in claim.to_dict().items() if k != "reason")
        assert claim_line(claim.to_dict()).startswith(f"({claim.key}) {claim.source}: ")


def test_claims_disagree_with_numbers_unlike_the_papers():
    claims = paper_claims(
        {"table1": table([7.0, 7.2, 7.1], [10.2, 10.9, 10.7], [10.4, 10.6, 10.9])},
        comparison((30, 50), (50, 50), (52, 50), 70),
        dynamics(drops=1, rebound=False),
    )
    assert verdicts(claims) == {**dict.fromkeys("abcdefgj", DISAGREES), "h": AGREES, **UNMEASURED}
    claims = paper_claims(
        {
            "table1": [
                {**r, "params": 3e6} if r["backbone"] == "ResiaNet S (MACs)" else r
                for r in table([10.4, 10.6, 10.5], [10.2, 10.9, 10.7], [8.0, 8.2, 8.1])
            ]
        },
        None,
        {},
    )
    assert verdicts(claims)["g"] == verdicts(claims)["h"] == DISAGREES  # S has more params


def test_claims_not_measured_say_why():
    one_seed = [
        row("base", 2e6, [10.0], None),
        row("ResiaNet S (MACs)", 0.6e6, [11.0], [10.0]),
        row("uniform x0.50", 0.6e6, [9.0], [10.0]),
    ]
    hints = {"table1_2x": "run the demo with --long-schedule", "table2": "with --table2"}
    claims = {c.key: c for c in paper_claims({"table1": one_seed}, None, {}, hints=hints)}
    for key in "abcdefgjikl":
        assert claims[key].verdict == NOT_MEASURED and claims[key].reason, key
    assert "one seed gives no Welch p-value" in claims["g"].reason
    assert "--seeds" in claims["j"].reason
    assert claims["k"].ours == "not run by this demo" and "Table 2" in claims["k"].reason
    assert "(with --table2)" in claims["k"].reason
    assert "Mask R-CNN" in claims["l"].reason and "has not made" in claims["l"].reason
    assert claims["i"].shown_verdict == (
        "not measured here: needs every Table 1 row at 2x the iterations (the paper's 2x "
        "beside its 1x) (run the demo with --long-schedule)"
    )
    assert claims["h"].verdict == AGREES  # a cost claim needs no p-value
    assert claims["a"].shown_verdict == "not measured here: no I-vs-S comparison"


def test_the_shorter_schedule_claim_needs_a_significant_lead_that_shrinks():
    def tables(i_1x, s_1x, i_2x, s_2x) -> dict:
        return {
            name: [row("base", 2e6, [9.0, 9.5], None), row("ResiaNet S (MACs)", 0.6e6, s, None),
                   row("ResiaNet I (MACs)", 0.7e6, i, None)]
            for name, i, s in (("table1", i_1x, s_1x), ("table1_2x", i_2x, s_2x))
        }  # fmt: skip

    def claim(*aps):
        (found,) = [c for c in paper_claims(tables(*aps), None, {}) if c.key == "i"]
        return found

    s_1x, s_2x = [10.0, 10.1, 10.2], [13.9, 14.0, 14.1]
    agrees = claim([12.0, 12.2, 12.1], s_1x, [14.0, 14.1, 14.2], s_2x)
    assert agrees.verdict == AGREES and "(I - S +2.0, p 0.000" in agrees.ours
    assert "2x: 14.1 vs 14.0 (I - S +0.1)" in agrees.ours
    grows = claim([12.0, 12.2, 12.1], s_1x, [16.0, 16.1, 16.2], s_2x)
    noise = claim([10.0, 10.9, 10.5], s_1x, [14.0, 14.1, 14.2], s_2x)  # p > 0.05
    assert grows.verdict == noise.verdict == DISAGREES
    one_seed = claim([12.0], [10.0], [14.1], [14.0])
    assert one_seed.verdict == NOT_MEASURED and "--seeds 2" in one_seed.reason


def test_the_classification_transfer_claim_follows_table2():
    def claim(s_err, i_err, i_params=0.7e6):
        def t2(label, params, err, base):
            top1 = row(label, params, err, base, "top1_err")
            return {**top1, **row(label, params, [e / 4 for e in err], None, "top5_err")}

        base = [20.0, 20.5, 21.0]
        rows = [t2("base", 2e6, base, None), t2("ResiaNet S (MACs)", 0.6e6, s_err, base),
                t2("ResiaNet I (MACs)", i_params, i_err, base)]  # fmt: skip
        (found,) = [c for c in paper_claims({"table2": rows}, None, {}) if c.key == "k"]
        return found

    agrees = claim([25.0, 25.5, 26.0], [20.2, 20.8, 20.4])
    assert agrees.verdict == AGREES
    assert agrees.ours.startswith("top-1 / top-5 error (%): base 20.5 / 5.1, 2.00 M params; ")
    assert "; ResiaNet S (MACs) 25.5 / 6.4 (p 0.00" in agrees.ours
    assert claim([19.0, 19.5, 19.2], [20.2, 20.8, 20.4]).verdict == DISAGREES  # S better
    assert claim([25.0, 25.5, 26.0], [30.0, 30.5, 31.0]).verdict == DISAGREES  # I worse
    assert claim([25.0, 25.5, 26.0], [20.2, 20.8, 20.4], 3e6).verdict == DISAGREES  # I bigger
    one_seed = paper_claims(
        {"table2": [row("base", 2e6, [20.0], None, "top1_err"),
                    row("ResiaNet S (MACs)", 0.6e6, [25.0], [20.0], "top1_err"),
                    row("ResiaNet I (MACs)", 0.7e6, [20.0], [20.0], "top1_err")]},
        None, {},
    )  # fmt: skip
    assert one_seed[10].key == "k" and one_seed[10].verdict == NOT_MEASURED
    assert "--seeds 2" in one_seed[10].reason


def test_the_mask_rcnn_claim_compares_the_cut_with_faster_rcnns():
    def claim(s_mask, tables_given=True):
        def mask(label, box, segm):
            return {
                **row(label, 1e6, box, None, "AP_bbox"),
                **row(label, 1e6, segm, None, "AP_mask"),
            }

        rows = [mask("base", [12.0], [8.0]), mask("ResiaNet S (MACs)", [11.9], s_mask)]
        tables = {"table1": table([10.4, 10.6, 10.5], [10.2, 10.9, 10.7], [8.0, 8.2, 8.1])}
        if tables_given:
            tables["mask"] = rows
        hints = {"mask": "run the demo with --mask"}
        return paper_claims(tables, None, {}, hints=hints)[11]

    agrees = claim([7.5])  # the cut: 0.5 AP mask, 0.0 AP on Faster R-CNN
    assert agrees.key == "l" and agrees.verdict == AGREES
    assert agrees.ours == (
        "Mask R-CNN AP bbox / mask: base 12.0 / 8.0; ResiaNet S (MACs) 11.9 / 7.5 (S (MACs) "
        "-0.5 AP mask); Faster R-CNN: S (MACs) +0.0 AP"
    )
    assert claim([8.2]).verdict == DISAGREES
    missing = claim([7.5], tables_given=False)
    assert missing.verdict == NOT_MEASURED and missing.reason.endswith("(run the demo with --mask)")
