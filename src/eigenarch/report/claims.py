"""The paper's findings (sections 4.2-4.7, Tables 1-2, Figures 2-5) beside one run's numbers.

:func:`paper_claims` gives one :class:`Claim` per finding (a)-(l), and (m), Liu et al.'s on
inherited weights: the statement and where it is, this run's figure, the rule that decides,
and one of four verdicts, always computed from the numbers: ``agrees``, ``disagrees``,
``inconclusive`` (the data cannot tell at this number of seeds; the reason says what would)
or ``not measured`` (the run has not made the rows; the reason says how to). Over seeds,
"higher" / "lower" claims use the two-sided Welch's t-test (:func:`welch_p`) with the sign
of the difference, "similar" / "reaches" claims an equivalence (non-inferiority) test: the
90 % Welch confidence interval of the difference inside the margin
(:func:`difference_interval`), i.e. two one-sided tests at 5 %. The rules are in
docs/report.md.
"""

from __future__ import annotations

import math
import re
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import norm, t, ttest_ind

from eigenarch.report.compare import Comparison, MapComparison, map_part, map_stage
from eigenarch.report.dynamics import RunDynamics

AGREES, DISAGREES, INCONCLUSIVE, NOT_MEASURED = (
    "agrees", "disagrees", "inconclusive", "not measured"
)  # fmt: skip
VERDICTS = (AGREES, DISAGREES, INCONCLUSIVE, NOT_MEASURED)
#: Significance level of the tests (the paper's); the equivalence tests use the 1 - 2 x ALPHA
#: (90 %) confidence interval.
ALPHA = 0.05
#: Power assumed when saying how many seeds would detect a difference.
POWER = 0.8
#: Equivalence margins: two APs (COCO %) / two top-1 errors (%) closer than this are similar.
AP_MARGIN = 1.0
ERROR_MARGIN = 1.0
#: The paper's AP losses that (j) and (l) test: the uniform width multiplier's (sec. 4.5) and
#: the searched widths' AP mask on Mask R-CNN (sec. 4.6: 33.0 -> 32.8).
UNIFORM_LOSS = 0.6
MASK_LOSS = 0.2
#: Two dimensionalities of one map are similar when they differ by at most this fraction
#: of its channels.
SIMILAR = 0.1
#: "Larger" summed dimensionalities: a ratio above 1 + this.
LARGER = 0.05
NOT_RUN = "not run by this demo"
#: The label a searched row's run started by ``resize`` from the fine-tuned I run adds, and
#: the one its run at a quarter of the schedule adds after it (``eigenarch demo --inherit``).
INHERITED = " inherited from I"
QUARTER = ", 1/4 schedule"
ONE_SEED = "one seed gives no spread to test (run the demo with --seeds 2 or more)"
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
    values in either. Values are rounded to 9 decimals first (float noise is no variance);
    two constant samples give 1.0 if equal, else 0.0."""
    if len(a) < 2 or len(b) < 2:
        return None
    a, b = [round(v, 9) for v in a], [round(v, 9) for v in b]
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    with warnings.catch_warnings():  # SciPy's note on a constant sample: its variance is 0
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        return float(ttest_ind(a, b, equal_var=False).pvalue)


def difference_interval(
    a: Sequence[float], b: Sequence[float], level: float = 1 - 2 * ALPHA
) -> tuple[float, float, float] | None:
    """``(mean(a) - mean(b), low, high)``: the difference and its Welch confidence interval
    at ``level`` (Welch-Satterthwaite degrees of freedom); ``None`` with fewer than two values
    in either. Values are rounded to 9 decimals first; no spread at all gives ``(d, d, d)``."""
    if len(a) < 2 or len(b) < 2:
        return None
    a, b = [round(v, 9) for v in a], [round(v, 9) for v in b]
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(t.ppf((1 + level) / 2, df)) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


@dataclass(frozen=True)
class Outcome:
    """One rule's outcome: verdict, the figures shown, what would decide it."""

    verdict: str
    shown: str
    reason: str = ""


def _spread(a: Sequence[float], b: Sequence[float]) -> float:
    return math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)


def seeds_to_detect(a: Sequence[float], b: Sequence[float], effect: float) -> int | None:
    """Seeds per row for a two-sided test at ALPHA to detect ``effect`` with POWER at the
    seeds' pooled spread (normal approximation); ``None`` without spread."""
    spread = _spread(a, b)
    if spread == 0:
        return None
    z = norm.ppf(1 - ALPHA / 2) + norm.ppf(POWER)
    return max(2, math.ceil(2 * (z * spread / effect) ** 2))


def differs(
    a: Sequence[float], b: Sequence[float], sign: int, effect: float, unit: str = "seeds"
) -> Outcome:
    """Whether ``a`` is higher (``sign`` +1) / lower (-1) than ``b`` by about ``effect`` (the
    difference the claim means): Welch p < ALPHA agrees if the difference has that sign and
    disagrees if not; otherwise a 90 % confidence interval that rules out a difference of
    ``effect`` in that direction disagrees, and anything else is inconclusive, saying how
    many values (``unit``) per side would detect ``effect``."""
    p, found = welch_p(a, b), difference_interval(a, b)
    if p is None or found is None:
        return Outcome(INCONCLUSIVE, "one seed", ONE_SEED)
    diff, lo, hi = found
    shown = f"{_signed(diff, 2)}, p {p:.3f}"
    if p < ALPHA:
        return Outcome(AGREES if diff * sign > 0 else DISAGREES, shown)
    shown += f", 90% CI [{_signed(lo, 2)}, {_signed(hi, 2)}]"
    if (hi < effect) if sign > 0 else (lo > -effect):
        return Outcome(DISAGREES, shown)
    # here the values vary: without spread p is 0 or 1, and p = 1 (equal means) disagrees
    needed = seeds_to_detect(a, b, effect)
    why = (
        f"p {p:.3f} >= {ALPHA:g} at {len(a)} vs {len(b)} {unit}: about {needed} {unit} per "
        f"side would detect a difference of {effect:g} at this spread"
    )
    return Outcome(INCONCLUSIVE, shown, why)


def within(a: Sequence[float], b: Sequence[float], low: float, high: float) -> Outcome:
    """Whether ``mean(a) - mean(b)`` lies in ``(low, high)``: agrees when its 90 % confidence
    interval does (two one-sided tests at ALPHA), disagrees when the interval lies wholly
    outside, else inconclusive, saying about how many seeds would narrow it enough."""
    found = difference_interval(a, b)
    if found is None:
        return Outcome(INCONCLUSIVE, "one seed", ONE_SEED)
    diff, lo, hi = found
    shown = f"{_signed(diff, 2)}, 90% CI [{_signed(lo, 2)}, {_signed(hi, 2)}]"
    if low < lo and hi < high:
        return Outcome(AGREES, shown)
    if hi <= low or lo >= high:
        return Outcome(DISAGREES, shown)
    room = min(diff - low, high - diff)
    if room <= 0:
        more = "the difference itself is at the margin: more seeds would tell which side"
    else:
        seeds = min(len(a), len(b))
        more = (
            f"about {math.ceil(seeds * ((hi - lo) / 2 / room) ** 2)} seeds per side would "
            "bring it inside at this spread"
        )
    return Outcome(INCONCLUSIVE, shown, f"the 90% CI is not inside the margin: {more}")


def similar(a: Sequence[float], b: Sequence[float], margin: float) -> Outcome:
    """Equivalence: the difference within ``±margin``."""
    return within(a, b, -margin, margin)


def not_lower(a: Sequence[float], b: Sequence[float], margin: float) -> Outcome:
    """Non-inferiority: ``a`` not lower than ``b`` by ``margin`` or more."""
    return within(a, b, -margin, math.inf)


def fact(holds: bool) -> Outcome:
    """A rule on exact figures (costs, means): no test."""
    return Outcome(AGREES if holds else DISAGREES, "")


def combined(tests: Sequence[Outcome]) -> tuple[str, str]:
    """A claim of several parts: disagrees if one part does, agrees if all do, else
    inconclusive; the reasons of the undecided parts."""
    verdicts = {x.verdict for x in tests}
    if DISAGREES in verdicts:
        return DISAGREES, ""
    if verdicts == {AGREES}:
        return AGREES, ""
    return INCONCLUSIVE, "; ".join(dict.fromkeys(x.reason for x in tests if x.reason))


@dataclass(frozen=True)
class Claim:
    """One finding: the paper's statement and source, this run's figure, rule and verdict."""

    key: str
    paper: str
    source: str
    ours: str
    rule: str
    verdict: str
    reason: str = ""  # why not measured, or what would decide an inconclusive one

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


def decay_rises(run: RunDynamics) -> tuple[list[float], list[float]] | None:
    """Each map's relative rise ``after / before - 1`` (``before`` at least 1) across the
    checkpoint interval holding the first learning-rate decay, and across every placebo
    interval: past the early phase (``criteria.early`` x the run), holding no decay and not
    starting within ``criteria.window`` x the run after one. ``None`` without a checkpoint on
    each side of the first decay."""
    its, first = run.iterations, min(run.milestones)
    before = [k for k, it in enumerate(its) if it <= first]
    if not before or before[-1] + 1 >= len(its):
        return None
    window, early = run.criteria.window * run.length, run.criteria.early * run.length

    def placebo(k: int) -> bool:
        near = any(its[k] - window < m <= its[k + 1] for m in run.milestones)
        return its[k] >= early and not near

    def rises(k: int) -> list[float]:
        return [m.dims[k + 1] / max(m.dims[k], 1) - 1 for m in run.maps]

    away = [r for k in range(len(its) - 1) if placebo(k) for r in rises(k)]
    return rises(before[-1]), away


def _rebound_claim(dynamics: Mapping[str, RunDynamics]) -> Claim:
    paper = "some maps' dimensionalities rebound right after the first learning-rate decay"
    source = "sec. 4.2, Figure 4"
    rule = (
        f"run I: maps' relative rises across the first decay higher than across checkpoint "
        f"intervals away from any decay (a placebo), Welch p < {ALPHA:g}"
    )
    run = dynamics.get("I")
    if run is None or not run.milestones:
        reason = "no dynamics of run I" if run is None else "run I has no learning-rate decay"
        return Claim("f", paper, source, NOT_RUN, rule, NOT_MEASURED, reason)
    first = min(run.milestones)
    found = decay_rises(run)
    if found is None or not found[1]:
        why = "checkpoints on both sides of the first decay" if found is None else (
            "checkpoint intervals away from any decay (a placebo): checkpoint more often"
        )  # fmt: skip
        return Claim("f", paper, source, "no such checkpoints", rule, NOT_MEASURED, f"needs {why}")
    at_decay, away = found

    def count(r: RunDynamics) -> int:
        return sum(
            1 for m in r.maps for e in m.events if e.kind == "rebounding" and e.milestone == first
        )

    test = differs(at_decay, away, +1, run.criteria.rise, "maps' rises")
    flagged = "; ".join(f"{name}: {count(r)} of {len(r.maps)}" for name, r in dynamics.items())
    ours = (
        f"decay at {first}: mean rise {statistics.fmean(at_decay):+.3f} over {len(at_decay)} "
        f"maps vs {statistics.fmean(away):+.3f} over {len(away)} placebo rises ({test.shown}); "
        f"maps flagged rebounding: {flagged}"
    )
    return Claim("f", paper, source, ours, rule, test.verdict, test.reason)


def mean_std(row: Mapping[str, Any], key: str) -> str:
    """A row's mean over seeds, ± its std where there are several; n/a without one."""
    if row.get(key) is None:
        return "n/a"
    std = row.get(f"{key}_std")
    return f"{row[key]:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def _signed(change: float, digits: int = 1) -> str:
    """``+0.3``, ``-1.2``; a change that rounds to zero is ``+0.0``."""
    return f"{round(change, digits) + 0.0:+.{digits}f}"


def _ap(row: Mapping[str, Any]) -> str:
    return f"{row['backbone']} AP {mean_std(row, 'AP')}"


Rows = Sequence[Mapping[str, Any]]


def _pick(table: Rows | None, *labels: str, keys: Sequence[str] = ()) -> list | None:
    """The rows of ``labels``, or None when one is missing or lacks a value of ``keys``."""
    rows = {r["backbone"]: r for r in table or ()}
    found = [rows.get(label) for label in labels]
    if any(r is None or any(r.get(k) is None for k in keys) for r in found):
        return None
    return found


def _missing(key: str, paper: str, source: str, rule: str, needs: str, hint: str | None) -> Claim:
    """A claim whose rows this run has not made; ``hint``: how to make them."""
    reason = f"needs {needs}" + (f" ({hint})" if hint else ", which this run has not made")
    return Claim(key, paper, source, NOT_RUN, rule, NOT_MEASURED, reason)


def _no_rows(key: str, paper: str, source: str, rule: str) -> Claim:
    return Claim(key, paper, source, NOT_RUN, rule, NOT_MEASURED, "no such rows")


def _macs_claim(table: Rows, family: str) -> Claim:
    paper = f"{family}s at the base's MACs reach the base's AP with fewer parameters"
    source = "sec. 4.5, Table 1"
    rule = (
        f"each (MACs) row: fewer params than the base, and AP not lower by {AP_MARGIN:g} or "
        "more (90% Welch CI of row - base above -margin)"
    )
    base = _pick(table, "base")
    at_macs = [r for r in table if r["backbone"].startswith(f"{family} ")
               and r["backbone"].endswith("(MACs)")]  # fmt: skip
    if base is None or not at_macs:
        return _no_rows("g", paper, source, rule)
    (base,) = base
    tests = [fact(all(r["params"] < base["params"] for r in at_macs))]
    tests += [not_lower(r["AP_values"], base["AP_values"], AP_MARGIN) for r in at_macs]
    ours = "; ".join(
        f"{_ap(r)} (vs base {x.shown}), {r['params'] / 1e6:.2f} M params"
        for r, x in zip(at_macs, tests[1:], strict=True)
    )
    ours += f"; base AP {mean_std(base, 'AP')}, {base['params'] / 1e6:.2f} M"
    verdict, reason = combined(tests)
    return Claim("g", paper, source, ours, rule, verdict, reason)


def _fewest_claim(table: Rows, family: str) -> Claim:
    paper = f"{family} S (MACs) has the fewest parameters"
    source = "sec. 4.5, Table 1"
    rule = f"S (MACs) params below every other {family}'s and the base's"
    found = _pick(table, "base", f"{family} S (MACs)")
    if found is None:
        return _no_rows("h", paper, source, rule)
    base, s_macs = found
    searched = [r for r in table if r["backbone"].startswith(f"{family} ")
                and INHERITED not in r["backbone"]]  # fmt: skip
    others = [r for r in [base, *searched] if r is not s_macs]
    ours = ", ".join(f"{r['backbone']} {r['params'] / 1e6:.2f} M" for r in [s_macs, *others])
    fewest = all(s_macs["params"] < r["params"] for r in others)
    return Claim("h", paper, source, ours, rule, AGREES if fewest else DISAGREES)


def _schedule_claim(short: Rows | None, long: Rows, family: str, hint: str | None) -> Claim:
    i, s = f"{family} I (MACs)", f"{family} S (MACs)"
    paper = f"{i} converges faster: higher AP than {s} at the shorter (1x) schedule, similar at 2x"
    source = "sec. 4.5, Table 1 (COCO 1x and 2x columns)"
    rule = (
        f"1x (half of Table 1's iterations): I (MACs) AP above S (MACs) at Welch p < "
        f"{ALPHA:g}; 2x (Table 1): I - S within ±{AP_MARGIN:g} AP (90% Welch CI)"
    )
    if not short:
        needs = "I (MACs) and S (MACs) at half of Table 1's iterations (the paper's 1x)"
        return _missing("i", paper, source, rule, needs, hint)
    pairs = [_pick(t, i, s, keys=("AP",)) for t in (short, long)]
    if None in pairs:
        return _no_rows("i", paper, source, rule)
    (i1, s1), (i2, s2) = pairs
    faster = differs(i1["AP_values"], s1["AP_values"], +1, AP_MARGIN)
    close = similar(i2["AP_values"], s2["AP_values"], AP_MARGIN)
    ours = (
        f"1x: I (MACs) AP {mean_std(i1, 'AP')} vs S (MACs) {mean_std(s1, 'AP')} (I - S "
        f"{faster.shown}); 2x: {mean_std(i2, 'AP')} vs {mean_std(s2, 'AP')} (I - S {close.shown})"
    )
    verdict, reason = combined([faster, close])
    return Claim("i", paper, source, ours, rule, verdict, reason)


def _uniform_claim(table: Rows) -> Claim:
    paper = "a uniform width multiplier with the same parameter cut loses AP (~0.6 for -27%)"
    source = "sec. 4.5 (note on width multipliers)"
    rule = f"uniform row's AP below the base's at Welch p < {ALPHA:g}"
    base = _pick(table, "base")
    uniform = [r for r in table if r["backbone"].startswith("uniform")]
    if base is None or not uniform:
        return _no_rows("j", paper, source, rule)
    row, (base,) = uniform[0], base
    test = differs(row["AP_values"], base["AP_values"], -1, UNIFORM_LOSS)
    ours = (
        f"{row['backbone']} AP {mean_std(row, 'AP')}, {row['params'] / 1e6:.2f} M params; base "
        f"AP {mean_std(base, 'AP')} (uniform - base {test.shown})"
    )
    return Claim("j", paper, source, ours, rule, test.verdict, test.reason)


def _table2_claim(table: Rows | None, family: str, hint: str | None) -> Claim:
    paper = (
        f"transferred to classification, {family} S (MACs)'s widths give higher error than "
        "the base and I (MACs)'s similar error with fewer parameters"
    )
    source = "sec. 4.7, Table 2"
    rule = (
        f"top-1 error: S (MACs) above the base's at Welch p < {ALPHA:g}; I (MACs) within "
        f"±{ERROR_MARGIN:g} of the base's (90% Welch CI) with fewer params"
    )
    if not table:
        needs = f"the base and every {family} trained as classifiers (Table 2)"
        return _missing("k", paper, source, rule, needs, hint)
    found = _pick(table, "base", f"{family} S (MACs)", f"{family} I (MACs)", keys=("top1_err",))
    if found is None:
        return _no_rows("k", paper, source, rule)
    base, s, i = found
    worse = differs(s["top1_err_values"], base["top1_err_values"], +1, ERROR_MARGIN)
    close = similar(i["top1_err_values"], base["top1_err_values"], ERROR_MARGIN)
    ours = "top-1 / top-5 error (%): " + "; ".join(
        f"{r['backbone']} {mean_std(r, 'top1_err')} / {mean_std(r, 'top5_err')}"
        + (f" (top-1 vs base {x.shown})" if x else "")
        + f", {r['params'] / 1e6:.2f} M params"
        for r, x in ((base, None), (s, worse), (i, close))
    )
    verdict, reason = combined([worse, close, fact(i["params"] < base["params"])])
    return Claim("k", paper, source, ours, rule, verdict, reason)


def _mask_claim(mask: Rows | None, table: Rows, family: str, hint: str | None) -> Claim:
    paper = (
        "on Mask R-CNN the parameter cut costs slightly more AP: S (MACs) 36.5 / 32.8 vs the "
        "base's 36.6 / 33.0 AP bbox / mask (on Faster R-CNN 35.4 vs 35.5 AP)"
    )
    source = "sec. 4.6 (vs Table 1)"
    rule = (
        f"S (MACs)'s AP mask below the base's at Welch p < {ALPHA:g}, and by more than its "
        "Faster R-CNN AP (Table 1) is below the base's (means over seeds)"
    )
    if not mask:
        needs = f"the base and every {family} trained as Mask R-CNN"
        return _missing("l", paper, source, rule, needs, hint)
    s = f"{family} S (MACs)"
    masks = _pick(mask, "base", s, keys=("AP_bbox", "AP_mask"))
    boxes = _pick(table, "base", s, keys=("AP",))
    if masks is None or boxes is None:
        return _no_rows("l", paper, source, rule)
    mask_change = masks[1]["AP_mask"] - masks[0]["AP_mask"]
    box_change = boxes[1]["AP"] - boxes[0]["AP"]
    lower = differs(masks[1]["AP_mask_values"], masks[0]["AP_mask_values"], -1, MASK_LOSS)
    ours = (
        "Mask R-CNN AP bbox / mask: "
        + "; ".join(
            f"{r['backbone']} {mean_std(r, 'AP_bbox')} / {mean_std(r, 'AP_mask')}" for r in masks
        )  # fmt: skip
        + f" (S (MACs) AP mask {lower.shown}); Faster R-CNN: S (MACs) {_signed(box_change)} AP"
    )
    verdict, reason = combined([lower, fact(mask_change < box_change)])
    return Claim("l", paper, source, ours, rule, verdict, reason)


def _inherit_claim(table: Rows, family: str, hint: str | None) -> Claim:
    paper = (
        "for structured pruning, training the smaller network from scratch matches fine-tuning "
        "the weights it inherits, at the same schedule"
    )
    source = "Liu et al., ICLR 2019 (Rethinking the Value of Network Pruning)"
    rule = (
        f"each searched row: inherited - scratch AP within ±{AP_MARGIN:g} at the same schedule "
        "(90% Welch CI)"
    )
    rows = {r["backbone"]: r for r in table}
    scratch_rows = [r for r in table if r["backbone"].startswith(f"{family} ")]
    pairs = [(r, rows[r["backbone"] + INHERITED]) for r in scratch_rows
             if r["backbone"] + INHERITED in rows]  # fmt: skip
    if not pairs:
        needs = f"every {family} started by resize from the fine-tuned I run"
        return _missing("m", paper, source, rule, needs, hint)
    tests = [similar(inherited["AP_values"], scratch["AP_values"], AP_MARGIN)
             for scratch, inherited in pairs]  # fmt: skip
    ours = "; ".join(
        f"{scratch['backbone']}: inherited AP {mean_std(inherited, 'AP')} vs scratch "
        f"{mean_std(scratch, 'AP')} (inherited - scratch {x.shown})"
        for (scratch, inherited), x in zip(pairs, tests, strict=True)
    )
    verdict, reason = combined(tests)
    return Claim("m", paper, source, ours, rule, verdict, reason)


#: Claims (a)-(c) on one map each: key, statement, source, map, rule, test of the map.
MAP_CLAIMS: tuple[tuple[str, str, str, str, str, Callable[[MapComparison], bool]], ...] = (
    ("a", "lower layers of I and S converge to similar eigenspectra", "sec. 4.3, Figure 5 left",
     "layer1.0.conv1:in", f"|I - S| <= {SIMILAR:g} x channels",
     lambda m: abs(m.diff) <= SIMILAR * m.channels),
    ("b", "higher layers of I and S converge to dissimilar eigenspectra",
     "sec. 4.3, Figure 5 middle", "layer4.0.conv1:in", f"|I - S| > {SIMILAR:g} x channels",
     lambda m: abs(m.diff) > SIMILAR * m.channels),
    ("c", "maps close to the classifier output of I use under half of their dimensions",
     "sec. 4.3, Figure 5 right", "layer4.1.conv1:in", "I's dims < 0.5 x channels",
     lambda m: 2 * m.a < m.channels),
)  # fmt: skip


def paper_claims(
    tables: Mapping[str, Rows],
    comparison: Comparison | None,
    dynamics: Mapping[str, RunDynamics],
    family: str = "ResiaNet",
    hints: Mapping[str, str] | None = None,
) -> list[Claim]:
    """Claims (a)-(m) from the demo's ``tables`` (name -> rows of ``backbone``, ``params``
    and per value ``KEY``, ``KEY_std``, ``KEY_values``, ``KEY_p``: Welch p against the row
    ``base``): ``table1`` (AP..., the paper's 2x), ``table1_1x`` (I and S (MACs) at half
    its iterations, the paper's 1x), ``table2`` (``top1_err``,
    ``top5_err``), ``mask`` (``AP_bbox``, ``AP_mask``), whose rows ``<searched>`` +
    :data:`INHERITED` (``--inherit``) claim (m) reads; the I-vs-S comparison (names ``I``,
    ``S``) and the dynamics of runs ``I`` and ``S``. ``family`` names the searched rows;
    ``hints``: per table not given, how to make it (said in the claim's reason)."""
    table, hints = tables.get("table1", ()), hints or {}
    return [
        *(
            _map_claim(key, paper, source, comparison, suffix, rule, holds)
            for key, paper, source, suffix, rule, holds in MAP_CLAIMS
        ),  # fmt: skip
        _stage_claim(comparison),
        _dropping_claim(dynamics),
        _rebound_claim(dynamics),
        _macs_claim(table, family),
        _fewest_claim(table, family),
        _schedule_claim(tables.get("table1_1x"), table, family, hints.get("table1_1x")),
        _uniform_claim(table),
        _table2_claim(tables.get("table2"), family, hints.get("table2")),
        _mask_claim(tables.get("mask"), table, family, hints.get("mask")),
        _inherit_claim(table, family, hints.get("inherit")),
    ]
