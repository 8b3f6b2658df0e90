"""The claims' verdicts follow their rules on constructed numbers, at each rule's edge; the
tests behind them (Welch's test, its confidence interval) are SciPy's."""

from __future__ import annotations

import json
import math
import statistics
import warnings
from pathlib import Path

import pytest
from scipy.stats import norm, ttest_ind

import eigenarch.report.claims as claims_module
from eigenarch.report.claims import (
    AGREES,
    DISAGREES,
    DROPPING_MAPS,
    INCONCLUSIVE,
    NOT_MEASURED,
    ONE_SEED,
    Claim,
    Outcome,
    claim_line,
    combined,
    decay_rises,
    difference_interval,
    differs,
    fact,
    mean_std,
    not_lower,
    paper_claims,
    paper_name,
    seeds_to_detect,
    similar,
    welch_p,
    within,
)
from eigenarch.report.compare import Comparison, MapComparison
from eigenarch.report.dynamics import Criteria, Event, MapDynamics, RunDynamics

BODY = "backbone.body."
#: Claims on rows the demo makes only with an option: two schedules, Table 2, Mask R-CNN,
#: the rows inherited from I.
UNMEASURED = dict.fromkeys("iklm", NOT_MEASURED)
#: Checkpoints of the constructed runs (length 100, decays at 60 and 90, default criteria:
#: early phase up to 25, window 10): intervals 30-40 and 40-50 are the placebo, 50-70 holds
#: the first decay, 0-10 and 10-30 are early, 70-100 holds the second decay.
ITERATIONS = [0, 10, 30, 40, 50, 70, 100]


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


def series(drop: bool, rebound: int) -> list[int]:
    """Dims at ITERATIONS: 40, then 20 at 10 if ``drop``; small placebo wiggles; +``rebound``
    across the first decay (50 -> 70)."""
    early = 20 if drop else 40
    return [40, early, early, early + 1, early, early + rebound, early + rebound]


def dynamics(drops: int, rebound: bool) -> dict[str, RunDynamics]:
    """Run I: the four stage-5 maps of DROPPING_MAPS, ``drops`` of them dropping; each rises
    across the first decay (by 8-11 of 20-40 dims) if ``rebound``, else wiggles by 1."""
    maps = []
    for k, name in enumerate(DROPPING_MAPS):
        dims = series(k < drops, 8 + k if rebound else (-1) ** k)
        events = [Event("dropping", 10, 40, 20, 0)] if k < drops else []
        if rebound and k == 0:
            events.append(Event("rebounding", 70, dims[4], dims[5], 50, milestone=60))
        maps.append(MapDynamics(BODY + name, 64, dims, events))
    run = RunDynamics("I", ITERATIONS, [60, 90], 100, 1e-3, Criteria(), maps, [])
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
    std = statistics.stdev(ap) if len(ap) > 1 else None
    return {"backbone": label, "params": params, key: sum(ap) / len(ap), f"{key}_std": std,
            f"{key}_values": ap, f"{key}_p": p}  # fmt: skip


BASE = [10.0, 10.5, 11.0]


def table(s_ap: list[float], i_ap: list[float], uniform_ap: list[float]) -> list[dict]:
    return [
        row("base", 2e6, BASE, None),
        row("ResiaNet S (MACs)", 0.6e6, s_ap, BASE),
        row("ResiaNet I (MACs)", 0.7e6, i_ap, BASE),
        row("ResiaNet I (params)", 2e6, BASE, BASE),
        row("uniform x0.50", 0.6e6, uniform_ap, BASE),
    ]


def verdicts(claims) -> dict[str, str]:
    return {c.key: c.verdict for c in claims}


def claim(key: str, *args, **kwargs):
    (found,) = [c for c in paper_claims(*args, **kwargs) if c.key == key]
    return found


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


def test_difference_interval_is_scipys_welch_interval():
    a, b = [31.2, 30.8, 31.9, 30.5, 31.1], [30.1, 29.7, 30.9, 30.3]
    diff, lo, hi = difference_interval(a, b)
    expected = ttest_ind(a, b, equal_var=False).confidence_interval(0.90)
    assert diff == pytest.approx(statistics.fmean(a) - statistics.fmean(b), rel=1e-12)
    assert (lo, hi) == (pytest.approx(expected.low, rel=1e-12), pytest.approx(expected.high))
    assert difference_interval([1.0], b) is None
    assert difference_interval([2.0, 2.0], [1.0, 1.0]) == (1.0, 1.0, 1.0)  # no spread


def test_equivalence_needs_the_whole_interval_strictly_inside_the_margin():
    a, b = [10.4, 10.6, 10.5], BASE
    _, lo, hi = difference_interval(a, b)
    edge = max(-lo, hi)  # the interval's farther end: a margin exactly there is not enough
    assert similar(a, b, edge * (1 + 1e-9)).verdict == AGREES
    at_edge = similar(a, b, edge)
    assert at_edge.verdict == INCONCLUSIVE
    assert at_edge.reason.startswith("the 90% CI is not inside the margin: about ")
    far = [7.0, 7.2, 7.1]  # 90% CI of the difference about [-4.2, -2.6]
    _, far_lo, far_hi = difference_interval(far, b)
    assert similar(far, b, -far_hi).verdict == DISAGREES  # wholly outside, touching
    assert similar(far, b, -far_hi * (1 + 1e-9)).verdict == INCONCLUSIVE
    assert not_lower(far, b, 1.0).verdict == DISAGREES
    assert not_lower([20.0, 21.0, 19.0], b, 1.0).verdict == AGREES  # far higher: not lower
    assert similar([20.0, 21.0, 19.0], b, 1.0).verdict == DISAGREES  # ... but not similar
    assert similar([1.0], b, 1.0).reason == ONE_SEED


def test_seeds_needed_follow_the_normal_approximation():
    a, b = [10.0, 11.0, 12.0], [10.0, 10.5, 11.0]
    spread = math.sqrt((1.0 + 0.25) / 2)
    z = norm.ppf(0.975) + norm.ppf(0.8)
    assert seeds_to_detect(a, b, 0.6) == math.ceil(2 * (z * spread / 0.6) ** 2) == 28
    assert seeds_to_detect([1.0, 1.0], [2.0, 2.0], 0.6) is None


def test_higher_or_lower_needs_a_significant_difference_of_that_sign():
    a, b = [31.2, 30.8, 31.9, 30.5, 31.1], [30.1, 29.7, 30.9, 30.3]  # Welch p 0.0437
    assert differs(a, b, +1, 1.0).verdict == AGREES
    assert differs(a, b, -1, 1.0).verdict == DISAGREES  # significant, the other way
    close = [30.6, 30.2, 31.4, 29.9, 30.5]  # p > 0.05; 90% CI about [-0.3, +0.9]
    assert welch_p(close, b) > 0.05
    assert differs(close, b, +1, 1.0).verdict == DISAGREES  # rules out a rise of 1.0
    undecided = differs(close, b, +1, 0.5)
    assert undecided.verdict == INCONCLUSIVE
    assert undecided.reason == (
        f"p {welch_p(close, b):.3f} >= 0.05 at 5 vs 4 seeds: about "
        f"{seeds_to_detect(close, b, 0.5)} seeds per side would detect a difference of 0.5 "
        "at this spread"
    )
    assert differs([1.0], b, +1, 1.0).reason == ONE_SEED


def test_claims_agree_with_numbers_like_the_papers():
    claims = paper_claims(
        {"table1": table([10.4, 10.6, 10.5], [10.2, 10.9, 10.7], [8.0, 8.2, 8.1])},
        comparison((30, 32), (60, 50), (60, 20), 40),
        dynamics(drops=2, rebound=True),
    )
    assert [c.key for c in claims] == list("abcdefghijklm")
    assert verdicts(claims) == {**dict.fromkeys("abcdefghj", AGREES), **UNMEASURED}
    a = claims[0]
    assert (
        "before conv2_1.1 = layer1.0.conv1:in" in a.paper and a.ours == "I 30, S 32 of 64 channels"
    )
    assert "conv5_2.1 = layer4.1.conv1:in" in claims[2].paper
    assert claims[4].ours.startswith("2 of 4 drop in I (")  # (e): exactly half
    assert claims[5].ours.startswith(
        "decay at 60: mean rise +0.344 over 4 maps vs +0.001 over 8 placebo rises (+0.34, p 0.004)"
    )
    assert claims[6].ours.startswith(
        "ResiaNet S (MACs) AP 10.5 ± 0.1 (vs base +0.00, 90% CI [-0.82, +0.82]), 0.60 M params"
    )
    assert claims[9].ours.endswith("(uniform - base -2.40, p 0.012)")
    for c in claims:  # every row filled
        assert all(v for k, v in c.to_dict().items() if k != "reason")
        assert claim_line(c.to_dict()).startswith(f"({c.key}) {c.source}: ")


def test_claims_disagree_with_numbers_unlike_the_papers():
    claims = paper_claims(
        {"table1": table([7.0, 7.2, 7.1], [10.2, 10.9, 10.7], [12.0, 12.2, 12.1])},
        comparison((30, 50), (50, 50), (52, 50), 70),
        dynamics(drops=1, rebound=False),
    )
    assert verdicts(claims) == {**dict.fromkeys("abcdefgj", DISAGREES), "h": AGREES, **UNMEASURED}
    more_params = [
        {**r, "params": 3e6} if r["backbone"] == "ResiaNet S (MACs)" else r
        for r in table([10.4, 10.6, 10.5], [10.2, 10.9, 10.7], [8.0, 8.2, 8.1])
    ]
    claims = paper_claims({"table1": more_params}, None, {})
    assert verdicts(claims)["g"] == verdicts(claims)["h"] == DISAGREES  # S has more params


def test_noisy_seeds_are_inconclusive_and_say_what_would_decide():
    noisy = [8.0, 10.5, 13.0]  # the same mean as the base, three times its spread
    claims = {c.key: c for c in paper_claims({"table1": table(noisy, noisy, noisy)}, None, {})}
    assert claims["g"].verdict == INCONCLUSIVE  # the interval reaches below -1 AP
    assert "seeds per side would bring it inside" in claims["g"].reason
    assert claims["j"].verdict == INCONCLUSIVE  # neither a loss nor ruling one out
    assert "seeds per side would detect a difference of 0.6" in claims["j"].reason


def test_stage_claim_needs_a_ratio_above_one_point_o_five():
    def ratio_claim(i_dims: int):
        found = comparison((30, 32), (i_dims, 50), (60, 20), 40)  # two maps: 2 x i vs 100
        return claim("d", {}, found, {})

    assert ratio_claim(52).verdict == DISAGREES  # 104 / 100: larger, but within the margin
    assert ratio_claim(52).ours == "I 104, S 100 over 2 maps (I/S 1.04)"
    five = comparison((30, 32), (60, 50), (60, 20), 40)
    five.maps[1:3] = [MapComparison(BODY + "layer2.0.conv1:in", 100, 55, 50),
                      MapComparison(BODY + "layer3.0.conv1:in", 100, 50, 50)]  # fmt: skip
    assert claim("d", {}, five, {}).verdict == DISAGREES  # 105 / 100: exactly 1.05
    five.maps[2] = MapComparison(BODY + "layer3.0.conv1:in", 100, 51, 50)
    assert claim("d", {}, five, {}).verdict == AGREES  # 106 / 100


@pytest.mark.parametrize("drops, verdict", [(1, DISAGREES), (2, AGREES), (3, AGREES)])
def test_dropping_claim_needs_at_least_half_of_an_even_list(drops, verdict):
    found = claim("e", {}, None, dynamics(drops=drops, rebound=False))
    assert found.verdict == verdict and found.ours.startswith(f"{drops} of 4 drop in I")


def test_rebound_placebo_intervals_skip_the_early_phase_and_the_decays():
    run = dynamics(drops=0, rebound=True)["I"]
    at_decay, away = decay_rises(run)
    # 50 -> 70 holds the decay at 60; placebo: 30 -> 40 and 40 -> 50, not 0-30 nor 70-100
    assert at_decay == pytest.approx([8 / 40, 9 / 40, 10 / 40, 11 / 40])
    assert away == pytest.approx([1 / 40] * 4 + [-1 / 41] * 4)
    maps = [MapDynamics(m.name, m.channels, [40, *m.dims[4:6]], []) for m in run.maps]
    no_placebo = RunDynamics("I", [0, 50, 70], [60], 100, 1e-3, Criteria(), maps, [])
    found = claim("f", {}, None, {"I": no_placebo})
    assert found.verdict == NOT_MEASURED and "away from any decay" in found.reason
    assert found.reason == (
        "needs checkpoint intervals away from any decay (a placebo): checkpoint more often"
    )


def test_claims_not_measured_or_one_seed_say_why():
    one_seed = [
        row("base", 2e6, [10.0], None),
        row("ResiaNet S (MACs)", 0.6e6, [11.0], [10.0]),
        row("uniform x0.50", 0.6e6, [9.0], [10.0]),
    ]
    hints = {"table1_1x": "run the demo with --short-schedule", "table2": "with --table2"}
    claims = {c.key: c for c in paper_claims({"table1": one_seed}, None, {}, hints=hints)}
    for key in "abcdefiklm":
        assert claims[key].verdict == NOT_MEASURED and claims[key].reason, key
    for key in "gj":
        assert claims[key].verdict == INCONCLUSIVE and claims[key].reason == ONE_SEED, key
    assert "--seeds 2" in ONE_SEED
    assert claims["k"].ours == "not run by this demo" and "Table 2" in claims["k"].reason
    assert "(with --table2)" in claims["k"].reason
    assert "Mask R-CNN" in claims["l"].reason and "has not made" in claims["l"].reason
    assert claims["i"].shown_verdict == (
        "not measured: needs I (MACs) and S (MACs) at half of Table 1's iterations (the "
        "paper's 1x) (run the demo with --short-schedule)"
    )
    assert claims["h"].verdict == AGREES  # a cost claim needs no test
    assert claims["a"].shown_verdict == "not measured: no I-vs-S comparison"


def test_the_shorter_schedule_claim_needs_a_significant_lead_then_similar_aps():
    def tables(i_1x, s_1x, i_2x, s_2x) -> dict:
        return {
            name: [row("base", 2e6, [9.0, 9.5], None), row("ResiaNet S (MACs)", 0.6e6, s, None),
                   row("ResiaNet I (MACs)", 0.7e6, i, None)]
            for name, i, s in (("table1_1x", i_1x, s_1x), ("table1", i_2x, s_2x))
        }  # fmt: skip

    s_1x, s_2x = [10.0, 10.1, 10.2], [13.9, 14.0, 14.1]
    agrees = claim("i", tables([12.0, 12.2, 12.1], s_1x, [14.0, 14.1, 14.2], s_2x), None, {})
    assert agrees.verdict == AGREES and "(I - S +2.00, p 0.000)" in agrees.ours
    assert "2x: 14.1 ± 0.1 vs 14.0 ± 0.1 (I - S +0.10, 90% CI [-0.07, +0.27])" in agrees.ours
    grows = claim("i", tables([12.0, 12.2, 12.1], s_1x, [16.0, 16.1, 16.2], s_2x), None, {})
    assert grows.verdict == DISAGREES  # 2x: a 2 AP lead is not similar
    behind = claim("i", tables([8.0, 8.2, 8.1], s_1x, [14.0, 14.1, 14.2], s_2x), None, {})
    assert behind.verdict == DISAGREES  # 1x: significantly lower
    noisy_2x = claim("i", tables([12.0, 12.2, 12.1], s_1x, [13.0, 15.1, 14.2], s_2x), None, {})
    assert noisy_2x.verdict == INCONCLUSIVE and "90% CI is not inside" in noisy_2x.reason
    one_seed = claim("i", tables([12.0], [10.0], [14.1], [14.0]), None, {})
    assert one_seed.verdict == INCONCLUSIVE and one_seed.reason == ONE_SEED


def test_the_classification_transfer_claim_follows_table2():
    def transfer(s_err, i_err, i_params=0.7e6):
        def t2(label, params, err, base):
            top1 = row(label, params, err, base, "top1_err")
            return {**top1, **row(label, params, [e / 4 for e in err], None, "top5_err")}

        base = [20.0, 20.5, 21.0]
        rows = [t2("base", 2e6, base, None), t2("ResiaNet S (MACs)", 0.6e6, s_err, base),
                t2("ResiaNet I (MACs)", i_params, i_err, base)]  # fmt: skip
        return claim("k", {"table2": rows}, None, {})

    agrees = transfer([25.0, 25.5, 26.0], [20.4, 20.6, 20.5])
    assert agrees.verdict == AGREES
    assert agrees.ours.startswith("top-1 / top-5 error (%): base 20.5 ± 0.5 / 5.1 ± 0.1, 2.00 M")
    assert "; ResiaNet S (MACs) 25.5 ± 0.5 / 6.4 ± 0.1 (top-1 vs base +5.00, p 0.00" in agrees.ours
    assert transfer([19.0, 19.5, 19.2], [20.4, 20.6, 20.5]).verdict == DISAGREES  # S better
    assert transfer([25.0, 25.5, 26.0], [30.0, 30.5, 31.0]).verdict == DISAGREES  # I worse
    assert transfer([25.0, 25.5, 26.0], [20.4, 20.6, 20.5], 3e6).verdict == DISAGREES  # bigger
    noisy = transfer([25.0, 25.5, 26.0], [18.0, 22.0, 20.5])  # I's interval wider than ±1
    assert noisy.verdict == INCONCLUSIVE and "90% CI is not inside" in noisy.reason


def test_the_mask_rcnn_claim_compares_the_cut_with_faster_rcnns():
    def mask_claim(s_mask, tables_given=True):
        def mask(label, box, segm):
            return {
                **row(label, 1e6, box, None, "AP_bbox"),
                **row(label, 1e6, segm, None, "AP_mask"),
            }

        rows = [
            mask("base", [12.0, 12.1], [8.0, 8.1]),
            mask("ResiaNet S (MACs)", [11.9, 12.0], s_mask),
        ]
        tables = {"table1": table([10.4, 10.6, 10.5], [10.2, 10.9, 10.7], [8.0, 8.2, 8.1])}
        if tables_given:
            tables["mask"] = rows
        return claim("l", tables, None, {}, hints={"mask": "run the demo with --mask"})

    agrees = mask_claim([7.5, 7.6])  # the cut: 0.5 AP mask; 0.0 AP on Faster R-CNN
    assert agrees.verdict == AGREES
    assert agrees.ours == (
        "Mask R-CNN AP bbox / mask: base 12.1 ± 0.1 / 8.1 ± 0.1; ResiaNet S (MACs) 11.9 ± 0.1 / "
        "7.5 ± 0.1 (S (MACs) AP mask -0.50, p 0.019); Faster R-CNN: S (MACs) +0.0 AP"
    )
    assert mask_claim([8.2, 8.3]).verdict == DISAGREES  # higher
    assert mask_claim([8.0, 8.1]).verdict == DISAGREES  # equal: rules out a 0.2 loss
    missing = mask_claim([7.5, 7.6], tables_given=False)
    assert missing.verdict == NOT_MEASURED and missing.reason.endswith("(run the demo with --mask)")


def test_interval_rules_at_each_end_and_what_they_say():
    a, b = [10.6, 10.8, 10.7], BASE  # difference +0.2: the interval is not symmetric about 0
    diff, lo, hi = difference_interval(a, b)
    shown = f"+0.20, 90% CI [{lo:+.2f}, {hi:+.2f}]"
    assert not_lower(a, b, -lo).verdict == INCONCLUSIVE  # lower end exactly at -margin
    assert not_lower(a, b, -lo * (1 + 1e-9)) == Outcome(AGREES, shown)
    assert within(a, b, -10.0, hi).verdict == INCONCLUSIVE  # upper end exactly at the top
    assert within(a, b, -10.0, lo) == Outcome(DISAGREES, shown)  # touching from above
    assert within(a, b, hi, 10.0) == Outcome(DISAGREES, shown)  # touching from below
    half, room = (hi - lo) / 2, min(diff + 0.5, 0.6 - diff)  # margins -0.5 and +0.6
    assert within(a, b, -0.5, 0.6) == Outcome(
        INCONCLUSIVE, shown,
        f"the 90% CI is not inside the margin: about {math.ceil(3 * (half / room) ** 2)} seeds "
        "per side would bring it inside at this spread",
    )  # fmt: skip
    at_margin = within(a, b, -10.0, diff)  # the difference itself at the margin
    assert at_margin.reason.endswith("at the margin: more seeds would tell which side")
    assert similar([1.0], b, 1.0) == Outcome(INCONCLUSIVE, "one seed", ONE_SEED)
    assert differs([1.0], b, +1, 1.0) == Outcome(INCONCLUSIVE, "one seed", ONE_SEED)


def test_parts_combine_and_exact_figures_need_no_test():
    assert fact(True) == Outcome(AGREES, "") and fact(False) == Outcome(DISAGREES, "")
    undecided = [Outcome(INCONCLUSIVE, "", "x"), Outcome(INCONCLUSIVE, "", "y")]
    assert combined([fact(True), *undecided, undecided[0]]) == (INCONCLUSIVE, "x; y")
    assert combined([fact(False), *undecided]) == (DISAGREES, "")
    assert combined([fact(True), fact(True)]) == (AGREES, "")
    assert seeds_to_detect([10.0, 10.1], [10.0, 10.1], 5.0) == 2  # at least two


def test_decay_and_placebo_intervals_at_their_edges():
    # length 100, early 25, window 10, decay at 60 on a checkpoint: the decay's interval is
    # 60 -> 65; placebo: 25 -> 30 (starts at the early end), 70 -> 75 (starts at decay +
    # window), 75 -> 80 (the last); not 30 -> 60 (ends on the decay), 65 -> 70 (too near)
    dims = [10, 1, 3, 5, 8, 9, 12, 18]
    maps = [MapDynamics(BODY + "m:out", 64, dims, [])]
    its = [0, 25, 30, 60, 65, 70, 75, 80]
    at_decay, away = decay_rises(RunDynamics("I", its, [60], 100, 1e-3, Criteria(), maps, []))
    assert at_decay == pytest.approx([8 / 5 - 1])
    assert away == pytest.approx([3 / 1 - 1, 12 / 9 - 1, 18 / 12 - 1])  # from 1: 3 / max(1, 1)
    for its in ([0, 50], [0, 60]):  # no checkpoint after the decay
        run = RunDynamics("I", its, [60], 100, 1e-3, Criteria(), [], [])
        assert decay_rises(run) is None


def test_stage_claim_not_measured_says_why():
    paper = "I's intrinsic widths in stages 3-4 (conv3_x, conv4_x = layer2, layer3) larger than S's"
    rule = "summed dims of layer2+layer3 backbone maps: I/S > 1.05"
    expected = Claim("d", paper, "sec. 4.3-4.4, Figure 2 (b) vs (f)", "not run by this demo",
                     rule, NOT_MEASURED, "no I-vs-S comparison")  # fmt: skip
    assert claim("d", {}, None, {}) == expected
    zero = comparison((30, 32), (60, 0), (60, 20), 40)  # S's layer2 / layer3 dims all 0
    found = claim("d", {}, zero, {})
    assert (found.ours, found.verdict) == ("no stage 3-4 maps", NOT_MEASURED)
    assert (found.paper, found.rule) == (paper, rule)
    assert found.reason == "no layer2 / layer3 maps with dimensions in S"
    assert found.source == "sec. 4.3-4.4, Figure 2 (b) vs (f)"


DROPPING_PAPER = (
    "stage-5 maps drop early in fine-tuning of I (after conv5_1_3 = layer4.0.conv3:out, after "
    "conv5_2_3 = layer4.1.conv3:out, after conv5_3_3 = layer4.2.conv3:out, after the "
    "projection shortcut in conv5_1 = layer4.0.downsample.0:out)"
)
DROPPING_RULE = "at least half of these maps of run I have a dropping event"


@pytest.mark.parametrize(
    "runs, ours, verdict, reason",
    [
        ({}, "not run by this demo", NOT_MEASURED, "no dynamics of run I"),
        ({"I": RunDynamics("I", [0], [], 1, 1e-3, Criteria(), [], [])}, "no such maps",
         NOT_MEASURED, "run I has none of these maps"),
        (dynamics(drops=1, rebound=False), "1 of 4 drop in I (layer4.0.conv3:out 40->20)",
         DISAGREES, ""),
        (dynamics(drops=0, rebound=False), "0 of 4 drop in I", DISAGREES, ""),
    ],
)  # fmt: skip
def test_dropping_claim_in_full(runs, ours, verdict, reason):
    expected = Claim("e", DROPPING_PAPER, "sec. 4.2, Figure 3", ours, DROPPING_RULE, verdict,
                     reason)  # fmt: skip
    assert claim("e", {}, None, runs) == expected


def test_stage_claim_in_full():
    found = claim("d", {}, comparison((30, 32), (60, 50), (60, 20), 40), {})
    assert found == Claim(
        "d",
        "I's intrinsic widths in stages 3-4 (conv3_x, conv4_x = layer2, layer3) larger than S's",
        "sec. 4.3-4.4, Figure 2 (b) vs (f)",
        "I 120, S 100 over 2 maps (I/S 1.20)",
        "summed dims of layer2+layer3 backbone maps: I/S > 1.05",
        AGREES,
    )


def test_a_lower_claim_is_ruled_out_by_an_interval_above_minus_its_size():
    b = [30.1, 29.7, 30.9, 30.3]
    close = [30.6, 30.2, 31.4, 29.9, 30.5]  # higher by +0.27, p 0.47
    p, (_, lo, hi) = welch_p(close, b), difference_interval(close, b)
    shown = f"+0.27, p {p:.3f}, 90% CI [{lo:+.2f}, {hi:+.2f}]"
    assert differs(close, b, -1, 1.0) == Outcome(DISAGREES, shown)  # lo > -1: no 1.0 loss
    assert differs(close, b, -1, -lo).verdict == INCONCLUSIVE  # lo exactly at -size
    assert differs([1.0, 1.0], [1.0, 1.0], +1, 1.0).verdict == DISAGREES  # equal, no spread


def with_inherited(s_ap: list[float], quarter_ap: list[float]) -> list[dict]:
    """Table 1 with S (MACs)'s twins inherited from I (same params), the same schedule's AP
    ``s_ap`` and the quarter schedule's ``quarter_ap``."""
    rows = table([10.4, 10.6, 10.5], [10.2, 10.9, 10.7], [8.0, 8.2, 8.1])
    rows[2:2] = [
        row("ResiaNet S (MACs) inherited from I", 0.6e6, s_ap, BASE),
        row("ResiaNet S (MACs) inherited from I, 1/4 schedule", 0.6e6, quarter_ap, BASE),
    ]
    return rows


@pytest.mark.parametrize(
    "inherited, verdict",
    [
        ([11.2, 11.4, 11.3], AGREES),  # +0.8, 90% CI [+0.63, +0.97]: inside ±1
        ([11.3, 11.5, 11.4], INCONCLUSIVE),  # +0.9, CI [+0.73, +1.07] reaches past +1
        ([11.6, 11.8, 11.7], DISAGREES),  # +1.2, CI [+1.03, +1.37] wholly above +1
        ([8.0, 10.5, 13.0], INCONCLUSIVE),  # the same mean, Welch p 1: not yet similar
    ],
)
def test_scratch_matches_inherited_is_an_equivalence_at_the_same_schedule(inherited, verdict):
    found = claim("m", {"table1": with_inherited(inherited, [0.0, 0.1, 0.2])}, None, {})
    assert found.verdict == verdict, found
    assert found.ours.startswith("ResiaNet S (MACs): inherited AP ")  # not the 1/4 row
    assert "Liu et al., ICLR 2019" in found.source and "±1" in found.rule


def test_inherited_rows_are_not_searched_rows_of_the_other_claims():
    claims = paper_claims({"table1": with_inherited([11.2, 11.4, 11.3], [9.0, 9.1, 9.2])},
                          None, {})  # fmt: skip
    assert verdicts(claims)["h"] == AGREES  # its twins have S (MACs)'s params, not fewer
    assert verdicts(claims)["g"] == AGREES  # the (MACs) rows only
    hint = {"inherit": "run the demo with --inherit"}
    found = claim("m", {"table1": table([10.5], [10.5], [10.5])}, None, {}, hints=hint)
    assert found.shown_verdict == (
        "not measured: needs every ResiaNet started by resize from the fine-tuned I run "
        "(run the demo with --inherit)"
    )


# ------------------------------------------------------------ every claim's text, pinned


def _rows(labels_params_ap: list[tuple[str, float, list[float] | None]]) -> list[dict]:
    """Table 1 rows; ``None`` AP: a row without evaluation (its value keys are None)."""
    rows = []
    for label, params, ap in labels_params_ap:
        found = row(label, params, ap or [0.0], None)
        rows.append(found if ap else {**found, "AP": None, "AP_std": None, "AP_values": []})
    return rows


def _table2(s_err: list[float], i_err: list[float] | None, i_params: float) -> list[dict]:
    def t2(label, params, err):
        found = {**row(label, params, err or [0.0], None, "top1_err"),
                 **row(label, params, [e / 4 for e in err or [0.0]], None, "top5_err")}  # fmt: skip
        return found if err else {**found, "top1_err": None}

    return [t2("base", 2_005_001, [20.0, 20.5, 21.0]), t2("ResiaNet S (MACs)", 0.6e6, s_err),
            t2("ResiaNet I (MACs)", i_params, i_err)]  # fmt: skip


def _mask(s_mask: list[float] | None) -> list[dict]:
    def mask(label, box, segm):
        found = {**row(label, 1e6, box, None, "AP_bbox"),
                 **row(label, 1e6, segm or [0.0], None, "AP_mask")}  # fmt: skip
        return found if segm else {**found, "AP_mask": None}

    return [mask("base", [12.0, 12.1], [8.0, 8.1]), mask("ResiaNet S (MACs)", [11.9, 12.0], s_mask)]


def _noisy_rebound() -> dict[str, RunDynamics]:
    """Run I whose maps' rises across the first decay (+0.5, -0.3, +0.4, -0.2) neither
    stand out from the placebo nor rule out a rise of 0.1."""
    maps = [MapDynamics(BODY + name, 64, [40, 40, 40, 41, 40, 40 + x, 40 + x], [])
            for name, x in zip(DROPPING_MAPS, (20, -12, 16, -8), strict=True)]  # fmt: skip
    return {"I": RunDynamics("I", ITERATIONS, [60, 90], 100, 1e-3, Criteria(), maps, [])}


def pinned_scenarios() -> dict[str, tuple]:
    """``paper_claims`` arguments whose claims tests/report/claims/<name>.json pins."""
    measured = with_inherited([11.2, 11.4, 11.3], [9.0, 9.1, 9.2])
    # params at a rounding edge: 4.005001 M is shown 4.01 (a wrong unit, 1000001, shows 4.00)
    measured[0]["params"] = 4_005_001
    measured[1] = row("ResiaNet S (MACs)", 3_005_001, [10.2, 10.4, 10.3], BASE)  # 0.2 below
    measured[-1]["params"] = 3_005_001  # uniform x0.50
    measured[4]["params"], measured[5]["params"] = 3.5e6, 4_005_001  # I (MACs), I (params)
    measured.append(row("ResiaNet I (MACs) inherited from I", 0.7e6, [10.5, 10.6, 10.7], BASE))
    rebounds = dynamics(drops=2, rebound=True)
    # flagged: rebounds at the first decay (60), not the one at the second (90)
    rebounds["I"].maps[1].events.append(Event("rebounding", 100, 49, 60, 70, milestone=90))
    rebounds["I"].maps[2].events.append(Event("rebounding", 70, 40, 50, 50, milestone=60))
    short = [row("ResiaNet S (MACs)", 0.6e6, [10.0, 10.1, 10.2], None),
             row("ResiaNet I (MACs)", 0.7e6, [12.0, 12.2, 12.1], None)]  # fmt: skip
    full = {"table1": measured, "table1_1x": short, "table2": _table2(
        [25.0, 25.5, 26.0], [20.4, 20.6, 20.5], 0.7e6), "mask": _mask([7.5, 7.6])}  # fmt: skip
    noisy = [8.0, 10.5, 13.0]
    undecided = table(noisy, noisy, noisy)
    undecided[2]["params"] = undecided[0]["params"]  # I (MACs) as many params as the base
    undecided[3]["params"] = undecided[1]["params"]  # I (params) as few as S (MACs)
    no_base = _rows([("ResiaNet S (MACs)", 0.6e6, BASE), ("ResiaNet I (MACs)", 0.7e6, BASE),
                     ("uniform x0.50", 0.6e6, BASE)])  # fmt: skip
    unevaluated = _rows([("base", 2e6, BASE), ("ResiaNet S (MACs)", 0.6e6, None),
                         ("ResiaNet I (MACs)", 0.7e6, BASE)])  # fmt: skip
    no_decay = {"I": RunDynamics("I", ITERATIONS, [], 100, 1e-3, Criteria(), [], [])}
    before_decay = {"I": RunDynamics("I", [0, 30, 50], [60], 100, 1e-3, Criteria(), [], [])}
    half_maps = comparison((30, 32), (60, 50), (60, 20), 40)
    del half_maps.maps[3:]  # no layer4 maps: (b), (c) have no map here
    return {
        "measured": (full, comparison((30, 32), (60, 50), (60, 20), 40), rebounds),
        "nothing": ({}, None, {}),
        "undecided": (
            {
                "table1": undecided,
                "table1_1x": undecided,
                "mask": _mask([6.0, 9.0]),
                "table2": _table2([20.0, 22.5, 19.0], [20.4, 20.6, 20.5], 2_005_001),
            },  # fmt: skip
            half_maps,
            _noisy_rebound(),
        ),
        "rows missing": (
            {
                "table1": no_base,
                "table1_1x": unevaluated,
                "table2": _table2([25.0, 25.5, 26.0], None, 0.7e6),
                "mask": _mask([7.5, 7.6]),
            },  # fmt: skip
            None,
            no_decay,
        ),
        "values missing": ({"table1": unevaluated, "mask": _mask([7.5, 7.6])}, None, before_decay),
        "mask values missing": ({"table1": table(BASE, BASE, BASE), "mask": _mask(None)}, None, {}),
    }


@pytest.mark.parametrize("name", list(pinned_scenarios()))
def test_every_claims_text_is_pinned(name):
    """Statement, source, figures, rule, verdict and reason of every claim, as checked by
    hand once (tests/report/claims/); a change of wording rewrites the file, said why."""
    found = [c.to_dict() for c in paper_claims(*pinned_scenarios()[name])]
    path = Path(__file__).parent / "claims" / f"{name.replace(' ', '_')}.json"
    assert found == json.loads(path.read_text())


def test_values_are_compared_to_nine_decimals():
    # 4e-10 apart: float noise, no variance and no difference, on either side
    noise = [30.0000000004, 30.0]
    assert welch_p(noise, [30.0, 30.0]) == welch_p([30.0, 30.0], noise) == 1.0
    assert difference_interval(noise, [30.0, 30.0]) == (0.0, 0.0, 0.0)
    assert difference_interval([30.0, 30.0], noise) == (0.0, 0.0, 0.0)


def test_a_difference_that_rounds_to_zero_is_shown_plus_zero():
    assert similar([10.0, 10.5, 10.998], BASE, 1.0).shown.startswith("+0.00, ")  # -0.0007


def test_the_ruled_out_direction_follows_the_sign_and_its_end_is_strict():
    b = [30.1, 29.7, 30.9, 30.3]
    close = [30.6, 30.2, 31.4, 29.9, 30.5]  # +0.27, 90% CI [-0.40, +0.94]
    _, _, hi = difference_interval(close, b)
    assert differs(close, b, -1, 0.5).verdict == DISAGREES  # lo > -0.5: no 0.5 loss ...
    assert differs(close, b, +1, 0.5).verdict == INCONCLUSIVE  # ... but a 0.5 rise may be
    at_hi = differs(close, b, +1, hi)  # the upper end exactly at the rise: not ruled out
    assert at_hi.verdict == INCONCLUSIVE
    assert at_hi.shown == f"+0.27, p {welch_p(close, b):.3f}, 90% CI [-0.40, +0.94]"


def test_seeds_to_bring_the_interval_inside_grow_with_the_square_of_its_overreach():
    a, b = [10.6, 10.8, 10.7], BASE  # +0.20, 90% CI [-0.62, +1.02]: half-width 0.82
    _, lo, hi = difference_interval(a, b)
    room = 0.4 - 0.2  # the margin's upper end is 0.2 above the difference
    expected = math.ceil(3 * ((hi - lo) / 2 / room) ** 2)
    assert expected == 51
    assert within(a, b, -1.0, 0.4).reason.endswith(f"about {expected} seeds per side would "
                                                   "bring it inside at this spread")  # fmt: skip


def test_mean_std_shows_the_spread_only_where_there_is_one():
    assert mean_std({"AP": None}, "AP") == mean_std({}, "AP") == "n/a"
    assert mean_std({"AP": 10.04, "AP_std": None}, "AP") == "10.0"
    assert mean_std({"AP": 10.04, "AP_std": 0.26}, "AP") == "10.0 ± 0.3"


def test_no_checkpoint_after_the_decay_among_several_before_it():
    run = RunDynamics("I", [0, 30, 50], [60], 100, 1e-3, Criteria(), [], [])
    assert decay_rises(run) is None


@pytest.mark.parametrize("drops, verdict", [(1, DISAGREES), (2, AGREES)])
def test_dropping_claim_at_least_half_of_an_odd_list(drops, verdict):
    runs = dynamics(drops=drops, rebound=False)
    del runs["I"].maps[3]  # three of the four maps: 1 of 3 is under half, 2 of 3 over
    found = claim("e", {}, None, runs)
    assert found.verdict == verdict and found.ours.startswith(f"{drops} of 3 drop in I")


def test_a_p_value_of_exactly_alpha_is_not_significant(monkeypatch):
    # no float data gives p = 0.05 exactly: the test's p is set there
    monkeypatch.setattr(claims_module, "welch_p", lambda a, b: 0.05)
    b = [30.1, 29.7, 30.9, 30.3]
    at_alpha = differs([31.2, 30.8, 31.9, 30.5, 31.1], b, +1, 1.0)  # +0.85, CI [+0.20, +1.50]
    assert at_alpha.verdict == INCONCLUSIVE and at_alpha.reason.startswith("p 0.050 >= 0.05 ")
