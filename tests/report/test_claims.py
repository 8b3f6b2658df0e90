"""The claims' verdicts follow their rules on constructed numbers; Welch's test is SciPy's."""

from __future__ import annotations

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
#: Rows the demo does not make: two schedules, Table 2, Mask R-CNN.
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


def row(label: str, params: float, ap: list[float], base: list[float] | None) -> dict:
    p = welch_p(ap, base) if base is not None else None
    return {"backbone": label, "params": params, "AP": sum(ap) / len(ap), "AP_std": None, "AP_p": p}


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


def test_claims_agree_with_numbers_like_the_papers():
    claims = paper_claims(
        table([10.4, 10.6, 10.5], [10.2, 10.9, 10.7], [8.0, 8.2, 8.1]),
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
        table([7.0, 7.2, 7.1], [10.2, 10.9, 10.7], [10.4, 10.6, 10.9]),
        comparison((30, 50), (50, 50), (52, 50), 70),
        dynamics(drops=1, rebound=False),
    )
    assert verdicts(claims) == {**dict.fromkeys("abcdefgj", DISAGREES), "h": AGREES, **UNMEASURED}
    claims = paper_claims(
        [
            {**r, "params": 3e6} if r["backbone"] == "ResiaNet S (MACs)" else r
            for r in table([10.4, 10.6, 10.5], [10.2, 10.9, 10.7], [8.0, 8.2, 8.1])
        ],
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
    claims = {c.key: c for c in paper_claims(one_seed, None, {})}
    for key in "abcdefgjikl":
        assert claims[key].verdict == NOT_MEASURED and claims[key].reason, key
    assert "one seed gives no Welch p-value" in claims["g"].reason
    assert "--seeds" in claims["j"].reason
    assert claims["k"].ours == "not run by this demo" and "Table 2" in claims["k"].reason
    assert "Mask R-CNN" in claims["l"].reason and "1x and 2x" in claims["i"].reason
    assert claims["h"].verdict == AGREES  # a cost claim needs no p-value
    assert claims["a"].shown_verdict == "not measured here: no I-vs-S comparison"
