"""``eigenarch report``: one self-contained HTML page over one or more training runs.

Per run: the settings and commands, the dropping / rebounding events, the dimensionality
over iterations (Figure 4), eigenspectra at several checkpoints (Figure 3), the dimensionality
per part and stage at the first and last checkpoint, the widths found by Intrinsic
Architecture Search from the final spectra with their MACs / params, and width diagrams
(Figure 2). With two or more runs: the first against each other one (Figure 5, tables).
Plots are embedded as base64 PNG (SVG and PNG files are written beside the page), so the
page opens in a browser from anywhere without a server; ``report.json`` holds the numbers.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np

from eigenarch.errors import EigenarchError
from eigenarch.evaluation.coco import COCO_METRICS
from eigenarch.io import atomic_write_json, atomic_write_text, read_json_object
from eigenarch.models.backbone import Backbone, backbone_from_dict
from eigenarch.options import command_line
from eigenarch.progress import console
from eigenarch.report.claims import mean_std
from eigenarch.report.compare import Comparison, MapComparison, compare_spectra, plot_stages
from eigenarch.report.dynamics import RunDynamics, load_dynamics, run_config
from eigenarch.report.plots import (
    compare_figure,
    diagram_layers,
    dims_figure,
    eigenspectra_figure,
    save_figure,
    widths_figure,
)
from eigenarch.spectrum import Spectra
from eigenarch.train.loop import train_command
from eigenarch.train.rundir import RunDir
from eigenarch.widths.inflation import INFLATION, inflated_widths

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 12px; }
.note { color: #a04000; }
"""


@dataclass
class Page:
    """The page being built: body parts, plot and table ids, files and JSON summary."""

    out: Path
    body: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def add(self, text: str) -> None:
        self.body.append(text)

    def heading(self, level: int, text: str, anchor: str | None = None) -> None:
        ident = f' id="{_esc(anchor)}"' if anchor else ""
        self.add(f"<h{level}{ident}>{_esc(text)}</h{level}>")

    def note(self, text: str) -> None:
        console.print(f"note: {text}", highlight=False)
        self.add(f'<p class="note">{_esc(text)}</p>')

    def code(self, text: str) -> None:
        self.add(f"<pre>{_esc(text)}</pre>")

    def table(
        self, ident: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str
    ) -> None:
        head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{_esc(_cell(v))}</td>" for v in row) + "</tr>" for row in rows
        )
        self.tables.append(ident)
        self.add(
            f'<table id="{_esc(ident)}"><caption>{_esc(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )

    def figure(self, ident: str, fig, caption: str) -> None:
        png, svg = save_figure(fig, self.out / "plots" / ident)
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.figures.append(ident)
        self.add(
            f'<figure id="{_esc(ident)}"><img alt="{_esc(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_esc(caption)} '
            f'(<a href="plots/{_esc(svg.name)}">SVG</a>)</figcaption></figure>'
        )

    def html(self, title: str) -> str:
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(self.body)
            + "</body></html>\n"
        )


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ident(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def pick_maps(dyn: RunDynamics, patterns: Sequence[str] | None, count: int) -> list[str]:
    """Maps to plot: those matching ``patterns`` (fnmatch over names or module paths), or
    the maps with the largest events, then the largest range relative to their width."""
    if patterns:
        found = [
            m.name
            for m in dyn.maps
            if any(
                fnmatchcase(m.name, p) or fnmatchcase(m.name.rpartition(":")[0], p)
                for p in patterns
            )
        ]
        if not found:
            raise EigenarchError(
                f"--maps {' '.join(patterns)}: no map of {dyn.run} matches (e.g. "
                f"{', '.join(m.name for m in dyn.maps[:3])})"
            )
        return found[:count]

    def score(m) -> tuple[float, float]:
        change = max((abs(min(e.change, 10.0)) for e in m.events), default=0.0)
        return -change, -(max(m.dims) - min(m.dims)) / max(m.channels, 1)

    return [m.name for m in sorted(dyn.maps, key=score)[:count]]


@dataclass
class _Run:
    path: Path
    label: str
    config: dict[str, Any]
    dyn: RunDynamics
    final: Spectra


def _load_run(path: Path, label: str) -> _Run:
    dyn = load_dynamics(path)
    final = Spectra.load(dyn.spectra_path(dyn.iterations[-1]))
    return _Run(path, label, run_config(path), dyn, final)


def _events_section(page: Page, run: _Run) -> None:
    """A run's dropping / rebounding events: the schedule, the criteria and one row each."""
    dyn = run.dyn
    rows = [
        (
            m.name,
            m.channels,
            e.kind,
            e.iteration,
            e.since,
            e.before,
            e.after,
            "inf" if e.before == 0 else f"{100 * e.change:+.1f}%",
            e.milestone,
        )
        for m in dyn.maps
        for e in m.events
    ]
    page.heading(3, "Dropping and rebounding")
    page.add(
        f"<p>{len(dyn.iterations)} checkpoints ({', '.join(map(str, dyn.iterations))}); "
        f"learning-rate decays at {', '.join(map(str, dyn.milestones)) or 'none'}; "
        f"criteria {_esc(json.dumps(vars(dyn.criteria)))}; threshold {dyn.threshold:g}. "
        f"{sum(1 for r in rows if r[2] == 'dropping')} dropping and "
        f"{sum(1 for r in rows if r[2] == 'rebounding')} rebounding map(s).</p>"
    )
    page.table(
        f"{_ident(run.label)}-events",
        ["map", "channels", "event", dyn.unit, "since", "before", "after", "change", "lr decay"],
        rows,
        f"{run.label}: events of the intrinsic dimensionality",
    )


def _spectra_figure(page: Page, run: _Run, chosen: Sequence[str], checkpoints: int) -> None:
    """Eigenspectra of the first chosen maps at ``checkpoints`` evenly spaced checkpoints."""
    dyn = run.dyn
    last = len(dyn.iterations) - 1
    picks = sorted({round(x) for x in np.linspace(0, last, min(checkpoints, last + 1))})
    curves: dict[str, list] = {n: [] for n in chosen[:3]}
    first = Spectra.load(dyn.spectra_path(dyn.iterations[0]))
    for i in picks:
        iteration = dyn.iterations[i]
        loaded = {0: first, last: run.final}
        spectra = loaded[i] if i in loaded else Spectra.load(dyn.spectra_path(iteration))
        for name in curves:
            curves[name].append((iteration, spectra.eigenvalues(name).numpy()))
    page.figure(
        f"{_ident(run.label)}-spectra",
        eigenspectra_figure(curves, dyn.threshold, dyn.unit),
        f"{run.label}: normalised eigenspectra of {', '.join(curves)} at {len(picks)} "
        "checkpoints, threshold dashed (cf. paper Figure 3)",
    )


def _dynamics_section(page: Page, run: _Run, chosen: Sequence[str], checkpoints: int) -> None:
    dyn, key = run.dyn, _ident(run.label)
    _events_section(page, run)
    events = {m.name: m.events for m in dyn.maps}
    page.figure(
        f"{key}-dims",
        dims_figure(
            dyn.iterations,
            {n: dyn.map(n).dims for n in chosen},
            dyn.milestones,
            events,
            dyn.threshold,
            dyn.unit,
        ),
        f"{run.label}: intrinsic dimensionality over {dyn.unit}s of {', '.join(chosen)}; "
        "learning-rate decays dashed, droppings and reboundings marked (cf. paper "
        "Figure 4)",
    )
    _spectra_figure(page, run, chosen, checkpoints)
    short = "iter" if dyn.unit == "iteration" else dyn.unit
    names = (f"{short} {dyn.iterations[0]}", f"{short} {dyn.iterations[-1]}")
    maps = [MapComparison(m.name, m.channels, m.dims[0], m.dims[-1]) for m in dyn.maps]
    change = Comparison(names, dyn.threshold, maps)
    _group_tables(page, change, f"{key}-stages", f"{run.label}: first vs last checkpoint")
    summary = {k: v for k, v in dyn.to_dict().items() if k != "maps"}
    summary["events"] = [{"map": m.name, **asdict(e)} for m in dyn.maps for e in m.events]
    summary["plotted"] = list(chosen)
    page.summary["runs"][run.label]["dynamics"] = summary


def _group_tables(page: Page, comparison: Comparison, ident: str, title: str) -> None:
    a, b = comparison.names
    for by_stage, what in ((False, "part"), (True, "stage")):
        rows = [
            (g.part, g.stage or "", g.maps, g.channels, g.a, g.b, g.diff, g.ratio)
            for g in comparison.groups(by_stage)
        ]
        page.table(
            f"{ident}-{what}",
            ["part", "stage", "maps", "channels", f"dims {a}", f"dims {b}", "difference", "ratio"],
            rows,
            f"{title}: summed intrinsic dimensionality per {what}",
        )


def _width_columns(specs: Sequence[Backbone]) -> list[str]:
    """The backbones' width names as columns where they all have the same (a ResiaNet's
    nine); else their widths in one column."""
    names = {tuple(s.width_names() or ()) for s in specs}
    return list(names.pop()) if len(names) == 1 and () not in names else ["widths"]


def _widths_row(
    label: str,
    spec: Backbone,
    widths: Sequence[int],
    columns: Sequence[str],
    omega: float | None = None,
) -> list[Any]:
    cost = spec.cost()
    shown = list(widths) if len(columns) > 1 else [",".join(map(str, widths))]
    return [
        label,
        *shown,
        f"{cost.macs / 1e9:.3f}",
        f"{cost.params / 1e6:.3f}",
        "" if omega is None else f"{omega:.4f}",
    ]


_INFLATED = f"past {INFLATION:g} x ideal width"


def _intrinsic_layers(intrinsic: dict[str, float], base: list) -> list[tuple[str, float, int]]:
    """The intrinsic widths of the base diagram's layers, in its order (0 where unmeasured)."""
    return [(name, intrinsic.get(name, 0.0), kernel) for name, _, kernel in base]


def _search_command(
    spectra: Path, model: str, spec: Backbone, threshold: float,
    target: str, side: str, multiple: int, out: str,
) -> str:  # fmt: skip
    options = {"spectra": spectra, "threshold": f"{threshold:g}", "target": target, "side": side,
               "multiple": multiple, "model": model, "norm": spec.norm,
               "gn_groups": spec.gn_groups, "out": out}  # fmt: skip
    return command_line(["eigenarch", "search"], options)


def _search_base(page: Page, run: _Run) -> tuple[Backbone, str] | None:
    """The backbone a run trained, to search from, and the ``--model`` the search command
    names (a width-spec file of the run's backbone); ``None`` (with a note) when unknown."""
    if not run.dyn.backbone:
        page.note(f"{run.label}: the backbone's widths are unknown; no search")
        return None
    base = backbone_from_dict(run.dyn.backbone, f"{run.label} backbone")
    # The run's own widths: the search command analyses the model the maps came from.
    return base, str(base.save(page.out / f"{_ident(run.label)}-base.json"))


def _widths_section(
    page: Page, run: _Run, metrics: Sequence[str], multiple: int, side: str
) -> None:
    dyn, key = run.dyn, _ident(run.label)
    page.heading(3, "Intrinsic Architecture Search")
    found_base = _search_base(page, run)
    if found_base is None:
        return
    base, model = found_base
    base_cost = base.cost()
    columns = _width_columns([base])
    dims = run.final.intrinsic_dims(dyn.threshold)
    rows = [[*_widths_row("base", base, base.searched_widths(), columns), ""]]
    layers = diagram_layers(base_cost)
    diagrams = [("base", layers)]
    found, commands = {}, []
    try:
        for metric in metrics:
            budget = base_cost.metric(metric)
            result, spec = base.search(dims, budget, metric, multiple, side)
            if not found:
                diagrams.append(("intrinsic", _intrinsic_layers(result.intrinsic, layers)))
            found[metric] = result.to_dict()
            inflated = [str(i) for i in inflated_widths(result)]
            found[metric]["inflated"] = inflated
            rows.append([*_widths_row(f"searched ({metric} of base)", spec, result.widths,
                                      columns, result.omega), ", ".join(inflated)])  # fmt: skip
            diagrams.append((f"searched ({metric})", diagram_layers(spec.cost())))
            found[metric]["command"] = _search_command(
                dyn.spectra_path(dyn.iterations[-1]), model, base, dyn.threshold,
                f"{metric}={budget}", side, multiple, f"{key}-{metric}.json",
            )  # fmt: skip
            commands.append(found[metric]["command"])
    except EigenarchError as exc:
        page.note(f"{run.label}: search not possible from its final spectra: {exc}")
    page.code(
        "\n".join(commands)
        or f"search: threshold {dyn.threshold:g}, side {side}, multiple {multiple}, "
        f"target = the base backbone's {' / '.join(metrics)}"
    )
    what = "stem, bottleneck/output per stage" if len(columns) > 1 else "one per searched width"
    page.table(
        f"{key}-widths",
        ["architecture", *columns, "MACs (G)", "params (M)", "omega", _INFLATED],
        rows,
        f"{run.label}: widths ({what}) and cost at 224x224 (conv + fc weights); the last "
        f"column names the widths the greedy fill grew past {INFLATION:g} x R(omega x "
        "adjusted)",
    )
    page.figure(
        f"{key}-width-diagram",
        widths_figure(diagrams),
        f"{run.label}: width diagrams, bar width proportional to output channels "
        "(cf. paper Figure 2)",
    )
    page.summary["runs"][run.label]["search"] = found


@dataclass
class _Spec:
    path: Path
    fields: dict[str, Any]
    spec: Backbone


def _read_spec(path: Path) -> _Spec:
    """A width spec file (search fields kept for display; read for its cost, which needs no
    norm: GroupNorm's divisibility is not checked, as ``count`` does not)."""
    fields = read_json_object(path, "width spec")
    costed = {**fields, "norm": "bn"} if fields.get("norm", "gn") == "gn" else fields
    spec = backbone_from_dict(costed, f"width spec {path}")
    spec.cost()  # widths that fit the backbone, checked before anything is written
    return _Spec(path, fields, spec)


def _spec_section(page: Page, specs: Sequence[_Spec]) -> None:
    page.heading(2, "Width specs", "width-specs")
    rows, diagrams = [], []
    columns = _width_columns([s.spec for s in specs])
    for item in specs:
        widths = item.spec.searched_widths()
        rows.append(_widths_row(item.path.name, item.spec, widths, columns,
                                item.fields.get("omega")))  # fmt: skip
        layers = diagram_layers(item.spec.cost())
        intrinsic = item.fields.get("intrinsic")
        if isinstance(intrinsic, dict):
            diagrams.append((f"{item.path.stem}: intrinsic", _intrinsic_layers(intrinsic, layers)))
        diagrams.append((item.path.stem, layers))
        page.code(f"{item.path}: " + json.dumps(item.fields.get("source", {})))
    page.table(
        "width-specs-table",
        ["spec", *columns, "MACs (G)", "params (M)", "omega"],
        rows,
        "width specs given with --widths",
    )
    page.figure(
        "width-specs-diagram",
        widths_figure(diagrams),
        "width diagrams of the given specs (cf. paper Figure 2)",
    )
    page.summary["width_specs"] = [str(item.path) for item in specs]


def _comparison_section(
    page: Page,
    a: _Run,
    b: _Run,
    comparison: Comparison | str,
    stages: Sequence[str],
    side: str,
    top: int,
) -> None:
    """``comparison`` is the result, or why there is none (e.g. two architectures)."""
    ident = _ident(f"{a.label}-vs-{b.label}")
    page.heading(2, f"{a.label} vs {b.label}", ident)
    if isinstance(comparison, str):
        page.note(comparison)
        return
    if a.dyn.threshold != b.dyn.threshold:
        page.note(
            f"thresholds differ ({a.dyn.threshold:g} vs {b.dyn.threshold:g}); "
            f"using {a.dyn.threshold:g}"
        )
    _group_tables(page, comparison, ident, f"{a.label} vs {b.label}")
    rows = [(m.name, m.channels, m.a, m.b, m.diff, m.ratio) for m in comparison.most_different(top)]
    page.table(
        f"{ident}-top",
        ["map", "channels", a.label, b.label, "difference", "ratio"],
        rows,
        f"the {len(rows)} maps that differ most (|difference| / channels)",
    )
    if stages:
        page.figure(
            f"{ident}-stages",
            compare_figure(comparison, stages, side),
            f"{a.label} vs {b.label}: intrinsic dimensionality per layer ({side} maps) "
            "of the chosen stages (cf. paper Figure 5)",
        )
    page.summary["comparisons"].append(comparison.to_dict(top))


def _compare(a: _Run, b: _Run) -> Comparison | str:
    try:
        return compare_spectra(a.final, b.final, a.dyn.threshold, (a.label, b.label))
    except EigenarchError as exc:
        return str(exc)


@dataclass(frozen=True)
class ResultTable:
    """How the report shows one of the demo's tables: its heading, the columns shown as mean
    ± std over seeds and the columns whose Welch p-value against the base is shown (both
    (header, key) pairs), and its caption."""

    heading: str
    values: tuple[tuple[str, str], ...]
    p_values: tuple[tuple[str, str], ...]
    caption: str


_COCO = tuple((key, key) for key in COCO_METRICS)
_WELCH = "mean ± std over seeds; p: two-sided Welch's t-test against the base (none with one seed)"
#: ``write_report(tables=...)``: each table's name -> how it is shown, in this order.
RESULT_TABLES = {
    "table1": ResultTable(
        "Backbones compared (Table 1)",
        _COCO,
        (("p (AP vs base)", "AP"),),
        "Each backbone trained from scratch with the same schedule (the paper's 2x "
        f"column); COCO bbox metrics (%) on the val split, {_WELCH}",
    ),
    "table1_1x": ResultTable(
        "Table 1 at 1x: half the iterations",
        _COCO,
        (("p (AP vs base)", "AP"),),
        "I (MACs) and S (MACs) retrained at half of Table 1's iterations (the paper's 1x "
        f"column beside Table 1's 2x); COCO bbox metrics (%) on the val split, {_WELCH}",
    ),
    "table2": ResultTable(
        "Transferred to classification (Table 2)",
        (("top-1 err", "top1_err"), ("top-5 err", "top5_err")),
        (("p (top-1 vs base)", "top1_err"), ("p (top-5 vs base)", "top5_err")),
        "The base and the searched backbones (the demo: those claim (k) reads) with "
        "BatchNorm trained as classifiers (SGD, x0.1 steps at 1/3 and 2/3 of the run, as "
        "the paper's A.2); error (%) on the val "
        f"split of the classification set; params as in Table 1; {_WELCH}",
    ),
    "mask": ResultTable(
        "Mask R-CNN (section 4.6)",
        (("AP bbox", "AP_bbox"), ("AP mask", "AP_mask")),
        (("p (bbox vs base)", "AP_bbox"), ("p (mask vs base)", "AP_mask")),
        "The base and the searched backbones (the demo: those claim (l) reads) trained "
        "from scratch as Mask R-CNN with the "
        f"schedule of Table 1; COCO box and mask AP (%) on the val split, {_WELCH}",
    ),
}


def _p_value(row: dict[str, Any], key: str) -> str:
    p = row.get(f"{key}_p")
    return "" if p is None else f"{p:.3f}"


def _result_section(page: Page, name: str, rows: Sequence[dict[str, Any]]) -> None:
    """One of :data:`RESULT_TABLES`: backbone, widths, cost, seeds and its values."""
    shown = RESULT_TABLES[name]
    page.heading(2, shown.heading, name)
    page.table(
        f"{name}-table",
        ["backbone", "widths", "MACs (G)", "params (M)", "seeds",
         *(h for h, _ in shown.values), *(h for h, _ in shown.p_values)],
        [
            (r["backbone"], ",".join(map(str, r["widths"])), f"{r['macs'] / 1e9:.3f}",
             f"{r['params'] / 1e6:.2f}", r["seeds"],
             *(mean_std(r, k) for _, k in shown.values),
             *(_p_value(r, k) for _, k in shown.p_values))
            for r in rows
        ],
        shown.caption,
    )  # fmt: skip
    page.summary[name] = list(rows)


def _claims_section(page: Page, claims: Sequence[dict[str, Any]]) -> None:
    """The paper's findings beside this run's (``Claim.to_dict`` rows)."""
    page.heading(2, "The paper's claims against this run", "claims")
    page.table(
        "claims-table",
        ["claim", "the paper", "where", "this run", "rule", "verdict"],
        [
            (c["key"], c["paper"], c["source"], c["ours"], c["rule"], c["shown_verdict"])
            for c in claims
        ],
        "Each verdict is computed from this run's numbers with the rule shown; maps in the "
        "paper's naming = ours",
    )
    page.summary["claims"] = list(claims)


def _run_section(page: Page, run: _Run, chosen: Sequence[str], checkpoints: int) -> None:
    """A run's commands, settings, final COCO metrics and dynamics."""
    page.heading(2, f"Run {run.label}", _ident(f"run-{run.label}"))
    page.summary["runs"][run.label] = {"path": str(run.path), "config": run.config}
    # Another's run (torchvision references' checkpoints) was not trained by eigenarch train.
    made = [] if run.dyn.trained is not None else [train_command(run.config)]
    page.code("\n".join([*made, run.dyn.command]))
    settings = RunDir.CONFIG if run.dyn.trained is None else "the checkpoints' args"
    page.table(
        f"{_ident(run.label)}-settings",
        ["setting", "value"],
        [(k, json.dumps(v)) for k, v in run.config.items()],
        f"{run.label}: training settings ({settings})",
    )
    final = RunDir(run.path).read_metrics()
    if final is not None:
        page.summary["runs"][run.label]["metrics"] = final
        rows = [
            (t, k, "n/a" if _is_number(v) and v < 0 else v)  # pycocotools' -1: no such object
            for t, values in final.items()
            if isinstance(values, dict)
            for k, v in values.items()
        ]
        page.table(
            f"{_ident(run.label)}-metrics",
            ["type", "metric", "value"],
            rows,
            f"{run.label}: final COCO metrics",
        )
    _dynamics_section(page, run, chosen, checkpoints)


def _load_runs(runs: Sequence[str | os.PathLike[str]], names: Sequence[str] | None) -> list[_Run]:
    """Each run with its dynamics and final spectra, under its distinct name."""
    if not runs:
        raise EigenarchError("eigenarch report needs at least one RUN_DIR")
    paths = [Path(r) for r in runs]
    labels = list(names) if names else [p.name or str(p) for p in paths]
    if len(labels) != len(paths) or len({_ident(label) for label in labels}) != len(labels):
        raise EigenarchError(
            f"run names {','.join(labels)}: expected {len(paths)} distinct names, one per "
            "RUN_DIR (set them with --names A,B,...)"
        )
    return [_load_run(p, label) for p, label in zip(paths, labels, strict=True)]


def _demo_sections(
    page: Page,
    tables: Mapping[str, Sequence[dict[str, Any]]],
    findings: Sequence[str],
    claims: Sequence[dict[str, Any]],
) -> None:
    """What the demo opens the page with: findings, claims and its tables."""
    unknown = sorted(set(tables) - set(RESULT_TABLES))
    if unknown:
        raise EigenarchError(f"tables {', '.join(unknown)}: expected {', '.join(RESULT_TABLES)}")
    if findings:
        page.heading(2, "What was found", "findings")
        page.add("<ul>" + "".join(f"<li>{_esc(line)}</li>" for line in findings) + "</ul>")
        page.summary["findings"] = list(findings)
    if claims:
        _claims_section(page, claims)
    for name in RESULT_TABLES:
        if tables.get(name):
            _result_section(page, name, tables[name])


def write_report(
    runs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    maps: Sequence[str] | None = None,
    max_maps: int = 6,
    checkpoints: int = 6,
    stages: Sequence[str] | None = None,
    metrics: Sequence[str] = ("macs", "params"),
    multiple: int = 32,
    side: str = "in",
    width_specs: Sequence[str | os.PathLike[str]] = (),
    top: int = 10,
    command: str = "",
    tables: Mapping[str, Sequence[dict[str, Any]]] | None = None,
    findings: Sequence[str] = (),
    claims: Sequence[dict[str, Any]] = (),
) -> Path:
    """Write ``OUT/report.html`` (plus ``OUT/report.json`` and ``OUT/plots/``) over ``runs``,
    each analysed first with ``eigenarch dynamics``; returns the HTML path.

    ``findings`` (sentences), ``claims`` (:meth:`Claim.to_dict` rows) and ``tables`` (name
    of :data:`RESULT_TABLES` -> rows with backbone, widths, macs, params, seeds and its
    values, ``*_std`` and ``*_p``) open the page when given, as ``eigenarch demo`` does.
    """
    if max_maps < 1 or checkpoints < 1 or top < 1:
        raise EigenarchError("--max-maps, --checkpoints and --top: expected >= 1")
    # Everything a user can get wrong is checked before anything is written.
    loaded = _load_runs(runs, names)
    plotted = [pick_maps(run.dyn, maps, max_maps) for run in loaded]
    comparisons = [_compare(loaded[0], other) for other in loaded[1:]]
    plot_stages(loaded[0].final.names, stages)  # checked with one run too
    plot_lists = [
        plot_stages([m.name for m in c.maps], stages) if isinstance(c, Comparison) else []
        for c in comparisons
    ]
    specs = [_read_spec(Path(p)) for p in width_specs]
    page = Page(Path(out), summary={"command": command, "runs": {}, "comparisons": []})
    page.heading(1, "eigenarch report: " + ", ".join(run.label for run in loaded))
    page.add(
        "<p>Eigenspectrum dynamics, intrinsic dimensionalities and Intrinsic Architecture "
        "Search (Shinya, Simo-Serra, Suzuki, ICCV 2019 Workshops, sections 4.2-4.4).</p>"
    )
    _demo_sections(page, tables or {}, findings, claims)
    page.heading(2, "Commands", "commands")
    page.code(command or "eigenarch report")
    for run, chosen in zip(loaded, plotted, strict=True):
        _run_section(page, run, chosen, checkpoints)
        _widths_section(page, run, metrics, multiple, side)
    if specs:
        _spec_section(page, specs)
    for other, comparison, chosen in zip(loaded[1:], comparisons, plot_lists, strict=True):
        _comparison_section(page, loaded[0], other, comparison, chosen, side, top)
    page.summary["figures"], page.summary["tables"] = page.figures, page.tables
    target = atomic_write_text(Path(out) / "report.html", page.html("eigenarch report"))
    atomic_write_json(Path(out) / "report.json", page.summary)
    return target
