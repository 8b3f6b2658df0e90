"""The paper's findings (sections 4.2-4.7, Tables 1-2, Figures 2-5) beside one run's numbers.

:func:`paper_claims` gives one :class:`Claim` per finding (a)-(l): the paper's statement and
where it is, this run's figure, the rule that decides, and the verdict -- ``agrees``,
``disagrees`` or ``not measured here`` with the reason -- always computed from the numbers.
AP claims use a two-sided Welch's t-test over seeds (:func:`welch_p`), as the paper does.
"""

from __future__ import annotations

import re
import statistics
import warnings
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
ONE_SEED = "one seed gives no Welch p-value (run the demo with --seeds 2 or more)"
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


def mean_std(row: Mapping[str, Any], key: str) -> str:
    """A row's mean over seeds, ± its std where there are several; n/a without one."""
    if row.get(key) is None:
        return "n/a"
    std = row.get(f"{key}_std")
    return f"{row[key]:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def _signed(change: float) -> str:
    """``+0.3``, ``-1.2``; a change that rounds to zero is ``+0.0``."""
    return f"{round(change, 1) + 0.0:+.1f}"


def _ap(row: Mapping[str, Any]) -> str:
    p = row.get("AP_p")
    return f"{row['backbone']} AP {mean_std(row, 'AP')}" + (
        f" (p {p:.3f})" if p is not None else ""
    )


def _no_p(rows: Sequence[Mapping[str, Any]], key: str = "AP") -> str | None:
    """Why these rows' ``key`` cannot be tested against the base, or None."""
    return ONE_SEED if any(r.get(f"{key}_p") is None for r in rows) else None


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
    rule = f"each (MACs) row: fewer params than the base and AP not lower at p < {ALPHA} (Welch)"
    base = _pick(table, "base")
    at_macs = [r for r in table if r["backbone"].startswith(f"{family} ")
               and r["backbone"].endswith("(MACs)")]  # fmt: skip
    if base is None or not at_macs:
        return _no_rows("g", paper, source, rule)
    (base,) = base
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
    return Claim("g", paper, source, ours, rule, verdict, reason or "")


def _fewest_claim(table: Rows, family: str) -> Claim:
    paper = f"{family} S (MACs) has the fewest parameters"
    source = "sec. 4.5, Table 1"
    rule = f"S (MACs) params below every other {family}'s and the base's"
    found = _pick(table, "base", f"{family} S (MACs)")
    if found is None:
        return _no_rows("h", paper, source, rule)
    base, s_macs = found
    searched = [r for r in table if r["backbone"].startswith(f"{family} ")]
    others = [r for r in [base, *searched] if r is not s_macs]
    ours = ", ".join(f"{r['backbone']} {r['params'] / 1e6:.2f} M" for r in [s_macs, *others])
    fewest = all(s_macs["params"] < r["params"] for r in others)
    return Claim("h", paper, source, ours, rule, AGREES if fewest else DISAGREES)


def _schedule_claim(short: Rows, long: Rows | None, family: str, hint: str | None) -> Claim:
    i, s = f"{family} I (MACs)", f"{family} S (MACs)"
    paper = f"{i} converges faster: higher AP than {s} at the shorter (1x) schedule, similar at 2x"
    source = "sec. 4.5, Table 1 (COCO 1x and 2x columns)"
    rule = (
        f"1x: I (MACs) AP above S (MACs) at p < {ALPHA} (Welch, I vs S); 2x (twice the "
        "iterations): the gap I - S smaller than at 1x"
    )
    if not long:
        needs = "every Table 1 row at 2x the iterations (the paper's 2x beside its 1x)"
        return _missing("i", paper, source, rule, needs, hint)
    pairs = [_pick(t, i, s, keys=("AP",)) for t in (short, long)]
    if None in pairs:
        return _no_rows("i", paper, source, rule)
    (i1, s1), (i2, s2) = pairs
    gaps = [a["AP"] - b["AP"] for a, b in pairs]
    p = welch_p(i1["AP_values"], s1["AP_values"])
    ours = (
        f"1x: I (MACs) AP {mean_std(i1, 'AP')} vs S (MACs) {mean_std(s1, 'AP')} (I - S "
        f"{_signed(gaps[0])}" + (f", p {p:.3f}" if p is not None else "") + f"); 2x: "
        f"{mean_std(i2, 'AP')} vs {mean_std(s2, 'AP')} (I - S {_signed(gaps[1])})"
    )
    if gaps[0] <= 0 or gaps[1] >= gaps[0]:
        return Claim("i", paper, source, ours, rule, DISAGREES)
    if p is None:
        return Claim("i", paper, source, ours, rule, NOT_MEASURED, ONE_SEED)
    return Claim("i", paper, source, ours, rule, AGREES if p < ALPHA else DISAGREES)


def _uniform_claim(table: Rows) -> Claim:
    paper = "a uniform width multiplier with the same parameter cut loses AP (~0.6 for -27%)"
    source = "sec. 4.5 (note on width multipliers)"
    rule = f"uniform row's AP below the base's at p < {ALPHA} (Welch)"
    base = _pick(table, "base")
    uniform = [r for r in table if r["backbone"].startswith("uniform")]
    if base is None or not uniform:
        return _no_rows("j", paper, source, rule)
    row = uniform[0]
    ours = f"{_ap(row)}, {row['params'] / 1e6:.2f} M params; base AP {base[0]['AP']:.1f}"
    reason = _no_p([row])
    loses = not reason and row["AP"] < base[0]["AP"] and row["AP_p"] < ALPHA
    verdict = NOT_MEASURED if reason else AGREES if loses else DISAGREES
    return Claim("j", paper, source, ours, rule, verdict, reason or "")


def _table2_claim(table: Rows | None, family: str, hint: str | None) -> Claim:
    paper = (
        f"transferred to classification, {family} S (MACs)'s widths give higher error than "
        "the base and I (MACs)'s similar error with fewer parameters"
    )
    source = "sec. 4.7, Table 2"
    rule = (
        f"top-1 error: S (MACs) above the base's at p < {ALPHA}, I (MACs) not different at "
        f"p < {ALPHA} (Welch) and fewer params than the base"
    )
    if not table:
        needs = f"the base and every {family} trained as classifiers (Table 2)"
        return _missing("k", paper, source, rule, needs, hint)
    found = _pick(table, "base", f"{family} S (MACs)", f"{family} I (MACs)", keys=("top1_err",))
    if found is None:
        return _no_rows("k", paper, source, rule)
    base, s, i = found
    ours = "top-1 / top-5 error (%): " + "; ".join(
        f"{r['backbone']} {mean_std(r, 'top1_err')} / {mean_std(r, 'top5_err')}"
        + (f" (p {r['top1_err_p']:.3f})" if r.get("top1_err_p") is not None else "")
        + f", {r['params'] / 1e6:.2f} M params"
        for r in found
    )
    if s["top1_err"] <= base["top1_err"] or i["params"] >= base["params"]:
        return Claim("k", paper, source, ours, rule, DISAGREES)
    reason = _no_p([s, i], "top1_err")
    if reason:
        return Claim("k", paper, source, ours, rule, NOT_MEASURED, reason)
    holds = s["top1_err_p"] < ALPHA and i["top1_err_p"] >= ALPHA
    return Claim("k", paper, source, ours, rule, AGREES if holds else DISAGREES)


def _mask_claim(mask: Rows | None, table: Rows, family: str, hint: str | None) -> Claim:
    paper = (
        "on Mask R-CNN the parameter cut costs slightly more AP: S (MACs) 36.5 / 32.8 vs the "
        "base's 36.6 / 33.0 AP bbox / mask (on Faster R-CNN 35.4 vs 35.5 AP)"
    )
    source = "sec. 4.6 (vs Table 1)"
    rule = (
        "S (MACs)'s AP mask below the base's, by more than its Faster R-CNN AP (Table 1) is "
        "below the base's (means over seeds)"
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
    ours = (
        "Mask R-CNN AP bbox / mask: "
        + "; ".join(
            f"{r['backbone']} {mean_std(r, 'AP_bbox')} / {mean_std(r, 'AP_mask')}" for r in masks
        )  # fmt: skip
        + f" (S (MACs) {_signed(mask_change)} AP mask); Faster R-CNN: S (MACs) "
        f"{_signed(box_change)} AP"
    )
    holds = mask_change < 0 and mask_change < box_change
    return Claim("l", paper, source, ours, rule, AGREES if holds else DISAGREES)


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
    """Claims (a)-(l) from the demo's ``tables`` (name -> rows of ``backbone``, ``params``
    and per value ``KEY``, ``KEY_std``, ``KEY_values``, ``KEY_p``: Welch p against the row
    ``base``): ``table1`` (AP...), ``table1_2x`` (the same at 2x), ``table2`` (``top1_err``,
    ``top5_err``), ``mask`` (``AP_bbox``, ``AP_mask``); the I-vs-S comparison (names ``I``,
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
        _schedule_claim(table, tables.get("table1_2x"), family, hints.get("table1_2x")),
        _uniform_claim(table),
        _table2_claim(tables.get("table2"), family, hints.get("table2")),
        _mask_claim(tables.get("mask"), table, family, hints.get("mask")),
    ]
