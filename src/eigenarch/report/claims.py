"""The paper's findings (sections 4.2-4.7, Tables 1-2, Figures 2-5) beside one run's numbers.

:func:`paper_claims` gives one :class:`Claim` per finding (a)-(l): the paper's statement and
where it is, this run's figure, the rule that decides, and the verdict -- ``agrees``,
``disagrees`` or ``not measured here`` with the reason -- always computed from the numbers.
AP claims use a two-sided Welch's t-test over seeds (:func:`welch_p`), as the paper does.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import ttest_ind

from eigenarch.report.compare import Comparison, MapComparison, map_part, map_stage
from eigenarch.report.dynamics import RunDynamics

AGREES, DISAGREES, NOT_MEASURED = "agrees", "disagrees", "not measured here"
#: Significance level of the AP tests (the paper's).
ALPHA = 0.05
#: Two dimensionalities of one map are similar when they differ by at most this fraction
#: of its channels.
SIMILAR = 0.1
#: "Larger" summed dimensionalities: a ratio above 1 + this.
LARGER = 0.05
NOT_RUN = "not run by this demo"
_CONV = re.compile(r"layer(\d+)\.(\d+)\.(conv(\d+)|downsample\.0)")


def paper_name(name: str) -> str:
    """A ResNet map in the paper's naming: ``layer4.0.conv1:in`` -> ``before conv5_1.1``,
    ``layer4.0.conv3:out`` -> ``after conv5_1_3``, ``layer4.0.downsample.0:out`` -> ``after
    the projection shortcut in conv5_1``; other names as given."""
    found = _CONV.search(name)
    if not found:
        return name
    stage, block = int(found.group(1)) + 1, int(found.group(2)) + 1
    if found.group(4) is None:
        return f"after the projection shortcut in conv{stage}_{block}"
    if name.endswith(":in"):
        return f"before conv{stage}_{block}.{found.group(4)}"
    return f"after conv{stage}_{block}_{found.group(4)}"


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch's t-test p-value of ``a`` vs ``b``; ``None`` with fewer than two
    values in either. Two constant samples give 1.0 if equal, else 0.0."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)


@dataclass(frozen=True)
class Claim:
    """One finding: the paper's statement and source, this run's figure, rule and verdict."""

    key: str
    paper: str
    source: str
    ours: str
    rule: str
    verdict: str
    reason: str = ""  # why not measured

    @property
    def shown_verdict(self) -> str:
        return f"{self.verdict}: {self.reason}" if self.reason else self.verdict

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shown_verdict": self.shown_verdict}


def claim_line(claim: Mapping[str, Any]) -> str:
    """A claim (as :meth:`Claim.to_dict`) in one line."""
    return (
        f"({claim['key']}) {claim['source']}: {claim['paper']} -- here: {claim['ours']} -- "
        f"{claim['shown_verdict']} (rule: {claim['rule']})"
    )


def _find(comparison: Comparison | None, suffix: str) -> MapComparison | None:
    if comparison is None:
        return None
    return next((m for m in comparison.maps if m.name.endswith(suffix)), None)


def _map_claim(
    key: str,
    paper: str,
    source: str,
    comparison: Comparison | None,
    suffix: str,
    rule: str,
    holds: Callable[[MapComparison], bool],
) -> Claim:
    """A claim on one map of the I/S comparison; ``holds(map)`` decides it."""
    found = _find(comparison, suffix)
    where = f"{paper_name(suffix)} = {suffix}"
    if found is None:
        reason = "no I-vs-S comparison" if comparison is None else f"no map {suffix} here"
        return Claim(
            key,
            f"{paper} ({where})",
            source,
            NOT_RUN if comparison is None else "no such map",
            rule,
            NOT_MEASURED,
            reason,
        )
    a, b = comparison.names
    ours = f"{a} {found.a}, {b} {found.b} of {found.channels} channels"
    return Claim(
        key, f"{paper} ({where})", source, ours, rule, AGREES if holds(found) else DISAGREES
    )


def _stage_claim(comparison: Comparison | None) -> Claim:
    paper = "I's intrinsic widths in stages 3-4 (conv3_x, conv4_x = layer2, layer3) larger than S's"
    source = "sec. 4.3-4.4, Figure 2 (b) vs (f)"
    rule = f"summed dims of layer2+layer3 backbone maps: I/S > {1 + LARGER:g}"
    if comparison is None:
        return Claim("d", paper, source, NOT_RUN, rule, NOT_MEASURED, "no I-vs-S comparison")
    maps = [
        m
        for m in comparison.maps
        if map_part(m.name) == "backbone" and map_stage(m.name) in ("layer2", "layer3")
    ]
    a, b = sum(m.a for m in maps), sum(m.b for m in maps)
    if not maps or not b:
        return Claim(
            "d",
            paper,
            source,
            "no stage 3-4 maps",
            rule,
            NOT_MEASURED,
            "no layer2 / layer3 maps with dimensions in S",
        )
    ratio = a / b
    ours = f"I {a}, S {b} over {len(maps)} maps (I/S {ratio:.2f})"
    return Claim("d", paper, source, ours, rule, AGREES if ratio > 1 + LARGER else DISAGREES)


#: The paper's maps that drop early in fine-tuning (section 4.2, Figure 3): stride-32 maps
#: after conv5_1_3, conv5_2_3, conv5_3_3 and the projection shortcut in conv5_1.
DROPPING_MAPS = (
    "layer4.0.conv3:out",
    "layer4.1.conv3:out",
    "layer4.2.conv3:out",
    "layer4.0.downsample.0:out",
)


def _dropping_claim(dynamics: Mapping[str, RunDynamics]) -> Claim:
    paper = (
        "stage-5 maps drop early in fine-tuning of I ("
        + ", ".join(f"{paper_name(n)} = {n}" for n in DROPPING_MAPS)
        + ")"
    )
    source = "sec. 4.2, Figure 3"
    rule = "at least half of these maps of run I have a dropping event"
    run = dynamics.get("I")
    if run is None:
        return Claim("e", paper, source, NOT_RUN, rule, NOT_MEASURED, "no dynamics of run I")
    found = {n: next((m for m in run.maps if m.name.endswith(n)), None) for n in DROPPING_MAPS}
    present = {n: m for n, m in found.items() if m is not None}
    if not present:
        return Claim(
            "e", paper, source, "no such maps", rule, NOT_MEASURED, "run I has none of these maps"
        )
    events = {n: m.event("dropping") for n, m in present.items()}
    dropped = [f"{n} {e.before}->{e.after}" for n, e in events.items() if e is not None]
    ours = f"{len(dropped)} of {len(present)} drop in I" + (
        f" ({', '.join(dropped)})" if dropped else ""
    )
    verdict = AGREES if 2 * len(dropped) >= len(present) else DISAGREES
    return Claim("e", paper, source, ours, rule, verdict)


def _rebound_claim(dynamics: Mapping[str, RunDynamics]) -> Claim:
    paper = "some maps' dimensionalities rebound right after the first learning-rate decay"
    source = "sec. 4.2, Figure 4"
    rule = "at least one map of run I rebounds at the first decay (dynamics' criterion)"
    run = dynamics.get("I")
    if run is None or not run.milestones:
        reason = "no dynamics of run I" if run is None else "run I has no learning-rate decay"
        return Claim("f", paper, source, NOT_RUN, rule, NOT_MEASURED, reason)
    first = min(run.milestones)

    def count(r: RunDynamics) -> int:
        return sum(
            1 for m in r.maps for e in m.events if e.kind == "rebounding" and e.milestone == first
        )

    ours = "; ".join(f"{name}: {count(r)} of {len(r.maps)} maps" for name, r in dynamics.items())
    return Claim(
        "f", paper, source, f"decay at {first}; {ours}", rule, AGREES if count(run) else DISAGREES
    )


def _ap(row: Mapping[str, Any]) -> str:
    std = row.get("AP_std")
    p = row.get("AP_p")
    return (
        f"{row['backbone']} AP {row['AP']:.1f}"
        + (f" ± {std:.1f}" if std is not None else "")
        + (f" (p {p:.3f})" if p is not None else "")
    )


def _no_p(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Why these rows' AP cannot be tested against the base, or None."""
    if any(r.get("AP_p") is None for r in rows):
        return "one seed gives no Welch p-value (run the demo with --seeds 2 or more)"
    return None


def _table1_claims(table: Sequence[Mapping[str, Any]], family: str) -> list[Claim]:
    rows = {r["backbone"]: r for r in table}
    base = rows.get("base")
    searched = [r for name, r in rows.items() if name.startswith(f"{family} ")]
    at_macs = [r for r in searched if r["backbone"].endswith("(MACs)")]
    uniform = [r for name, r in rows.items() if name.startswith("uniform")]
    claims = []

    paper = f"{family}s at the base's MACs reach the base's AP with fewer parameters"
    source = "sec. 4.5, Table 1"
    rule = f"each (MACs) row: fewer params than the base and AP not lower at p < {ALPHA} (Welch)"
    if base is None or not at_macs:
        claims.append(Claim("g", paper, source, NOT_RUN, rule, NOT_MEASURED, "no such rows"))
    else:
        ours = "; ".join(f"{_ap(r)}, {r['params'] / 1e6:.2f} M params" for r in at_macs)
        ours += f"; base AP {base['AP']:.1f}, {base['params'] / 1e6:.2f} M"
        fewer = all(r["params"] < base["params"] for r in at_macs)
        lower = [
            r
            for r in at_macs
            if r.get("AP_p") is not None and r["AP"] < base["AP"] and r["AP_p"] < ALPHA
        ]
        reason = None if not fewer or lower else _no_p(at_macs)
        verdict = NOT_MEASURED if reason else AGREES if fewer and not lower else DISAGREES
        claims.append(Claim("g", paper, source, ours, rule, verdict, reason or ""))

    paper = f"{family} S (MACs) has the fewest parameters"
    rule = f"S (MACs) params below every other {family}'s and the base's"
    s_macs = rows.get(f"{family} S (MACs)")
    if base is None or s_macs is None:
        claims.append(Claim("h", paper, source, NOT_RUN, rule, NOT_MEASURED, "no such rows"))
    else:
        others = [r for r in [base, *searched] if r is not s_macs]
        ours = ", ".join(f"{r['backbone']} {r['params'] / 1e6:.2f} M" for r in [s_macs, *others])
        fewest = all(s_macs["params"] < r["params"] for r in others)
        claims.append(Claim("h", paper, source, ours, rule, AGREES if fewest else DISAGREES))

    claims.append(
        _not_run(
            "i",
            f"{family} I (MACs) converges faster: higher AP than S (MACs) at the shorter (1x) "
            "schedule, similar at 2x",
            "sec. 4.5, Table 1 (COCO 1x column)",
            f"I (MACs) AP above S (MACs) at 1x at p < {ALPHA}, not at 2x",
            "every Table 1 row at a shorter and a longer schedule (the paper's 1x and 2x)",
        )
    )

    paper = "a uniform width multiplier with the same parameter cut loses AP (~0.6 for -27%)"
    source = "sec. 4.5 (note on width multipliers)"
    rule = f"uniform row's AP below the base's at p < {ALPHA} (Welch)"
    if base is None or not uniform:
        claims.append(Claim("j", paper, source, NOT_RUN, rule, NOT_MEASURED, "no such rows"))
    else:
        row = uniform[0]
        ours = f"{_ap(row)}, {row['params'] / 1e6:.2f} M params; base AP {base['AP']:.1f}"
        reason = _no_p([row])
        loses = not reason and row["AP"] < base["AP"] and row["AP_p"] < ALPHA
        verdict = NOT_MEASURED if reason else AGREES if loses else DISAGREES
        claims.append(Claim("j", paper, source, ours, rule, verdict, reason or ""))
    return claims


def _not_run(key: str, paper: str, source: str, rule: str, rows: str) -> Claim:
    reason = f"needs {rows}, which no demo option adds yet"
    return Claim(key, paper, source, NOT_RUN, rule, NOT_MEASURED, reason)


def paper_claims(
    table: Sequence[Mapping[str, Any]],
    comparison: Comparison | None,
    dynamics: Mapping[str, RunDynamics],
    family: str = "ResiaNet",
) -> list[Claim]:
    """Claims (a)-(l) from Table 1 rows (``backbone``, ``params``, ``AP``, ``AP_std``,
    ``AP_p``: Welch p against the row ``base``), the I-vs-S comparison (names ``I``, ``S``)
    and the dynamics of runs ``I`` and ``S``; ``family`` names the searched rows."""
    ratio = f"|I - S| <= {SIMILAR:g} x channels"
    return [
        _map_claim(
            "a",
            "lower layers of I and S converge to similar eigenspectra",
            "sec. 4.3, Figure 5 left",
            comparison,
            "layer1.0.conv1:in",
            ratio,
            lambda m: abs(m.diff) <= SIMILAR * m.channels,
        ),
        _map_claim(
            "b",
            "higher layers of I and S converge to dissimilar eigenspectra",
            "sec. 4.3, Figure 5 middle",
            comparison,
            "layer4.0.conv1:in",
            f"|I - S| > {SIMILAR:g} x channels",
            lambda m: abs(m.diff) > SIMILAR * m.channels,
        ),
        _map_claim(
            "c",
            "maps close to the classifier output of I use under half of their dimensions",
            "sec. 4.3, Figure 5 right",
            comparison,
            "layer4.1.conv1:in",
            "I's dims < 0.5 x channels",
            lambda m: 2 * m.a < m.channels,
        ),
        _stage_claim(comparison),
        _dropping_claim(dynamics),
        _rebound_claim(dynamics),
        *_table1_claims(table, family),
        _not_run(
            "k",
            f"transferred to classification, {family} S (MACs)'s widths give higher "
            "error than the base and I's similar error with fewer parameters",
            "sec. 4.7, Table 2",
            f"top-1 error vs the base at p < {ALPHA} (Welch)",
            "classification rows of every searched backbone (Table 2)",
        ),
        _not_run(
            "l",
            "on Mask R-CNN the parameter cut costs slightly more AP (S (MACs) "
            "36.5 / 32.8 vs 36.6 / 33.0 AP bbox / mask)",
            "sec. 4.6",
            f"AP bbox and mask vs the base at p < {ALPHA} (Welch)",
            "Mask R-CNN rows",
        ),
    ]
