"""``eigenarch dynamics``, ``eigenarch compare`` and ``eigenarch report``."""

from __future__ import annotations

import json
import shlex
from enum import Enum
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from eigenarch.distributed import is_main
from eigenarch.errors import EigenarchError
from eigenarch.options import parse_sides, parse_threshold
from eigenarch.progress import console
from eigenarch.report.compare import Comparison, compare_spectra, final_spectra, plot_stages
from eigenarch.report.dynamics import Criteria, RunDynamics, compute_dynamics
from eigenarch.report.html import write_report
from eigenarch.report.plots import compare_figure, save_figure
from eigenarch.spectrum import Spectra


class Side(str, Enum):
    in_ = "in"
    out = "out"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def dynamics_table(result: RunDynamics, flagged: bool) -> Table:
    """Per map: width, dimensionality at every checkpoint, dropping and rebounding."""
    iters = " ".join(map(str, result.iterations))
    decays = ", ".join(map(str, result.milestones)) or "none"
    table = Table(
        "map",
        "channels",
        "dims over iterations",
        "dropping",
        "rebounding",
        title=f"intrinsic dimensionality (T = {result.threshold:g}) at iterations "
        f"{iters}; lr decays at {decays}",
    )
    table.columns[0].overflow = "fold"
    for m in result.maps:
        if flagged and not m.events:
            continue
        cells = []
        for kind in ("dropping", "rebounding"):
            found = [e for e in m.events if e.kind == kind]
            cells.append("; ".join(f"@{e.iteration}: {e.before}->{e.after}" for e in found))
        table.add_row(m.name, str(m.channels), " ".join(map(str, m.dims)), *cells)
    return table


def dynamics(
    run: Path = typer.Option(..., help="Run folder of `eigenarch train` (with checkpoints/)."),
    data: Path = typer.Option(
        None, help="COCO-layout data folder.", show_default="the run's training data"
    ),
    split: str = typer.Option("train", help="Split to sample images from."),
    images: int = typer.Option(
        1000,
        help="Images sampled at random (all if fewer; the paper "
        "uses 5000); the same images for every checkpoint.",
    ),
    seed: int = typer.Option(0, help="Seed of the image sample."),
    layers: list[str] = typer.Option(
        None,
        help="fnmatch pattern over module paths or map "
        "names (repeatable), e.g. 'backbone.body.layer4.*'.",
    ),
    sides: str = typer.Option("in,out", help="Maps to collect: in, out or in,out."),
    max_channels: int = typer.Option(4096, help="Skip maps wider than this (0: no limit)."),
    batch_size: int = typer.Option(2, help="Images per forward pass (per process)."),
    workers: int = typer.Option(2, help="Data loading worker processes."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda if available)."),
    threshold: str = typer.Option("1e-3", help="Eigenvalue threshold T; 1e-3.5 means 10^-3.5."),
    drop: float = typer.Option(
        0.3, help="Dropping: the count falls by more than this fraction of its first value..."
    ),
    early: float = typer.Option(0.25, help="... within this fraction of the run's iterations."),
    rise: float = typer.Option(
        0.1,
        help="Rebounding: the count rises by more than this "
        "fraction after a learning-rate decay...",
    ),
    window: float = typer.Option(0.1, help="... within this fraction of the run's iterations."),
    flagged: bool = typer.Option(False, help="Show only maps that drop or rebound."),
    as_json: bool = typer.Option(False, "--json", help="Print the dynamics as JSON on stdout."),
) -> None:
    """Intrinsic dimensionality of every map over a run's checkpoints; dropping, rebounding.

    Spectra are stored under RUN/spectra/ and reused when already computed for the same
    checkpoint and settings (a new --threshold needs no data pass); RUN/dynamics.json gets
    the result. Runs under `torchrun --nproc_per_node=N -m eigenarch dynamics ...` too.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EigenarchError(f"--device {device}: CUDA is not available on this machine")
    result = compute_dynamics(
        run,
        data,
        split,
        images,
        seed,
        layers or None,
        parse_sides(sides),
        max_channels,
        batch_size,
        workers,
        device,
        parse_threshold(threshold),
        Criteria(drop, early, rise, window),
    )
    if not is_main():
        return
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        Console().print(dynamics_table(result, flagged))
    events = sum(len(m.events) for m in result.maps)
    console.print(
        f"{len(result.maps)} maps, {len(result.iterations)} checkpoints, {events} "
        f"event(s); wrote {run / 'dynamics.json'}",
        highlight=False,
    )


def comparison_tables(comparison: Comparison, top: int) -> list[Table]:
    """Sums per part and per stage, and the ``top`` maps that differ most."""
    a, b = comparison.names
    tables = []
    for by_stage, what in ((False, "part"), (True, "stage")):
        table = Table(
            "part",
            "stage",
            "maps",
            "channels",
            f"dims {a}",
            f"dims {b}",
            "difference",
            "ratio",
            title=f"summed intrinsic dimensionality per {what}",
        )
        for g in comparison.groups(by_stage):
            table.add_row(
                g.part,
                g.stage or "",
                str(g.maps),
                str(g.channels),
                str(g.a),
                str(g.b),
                f"{g.diff:+d}",
                _ratio(g.ratio),
            )
        tables.append(table)
    table = Table(
        "map",
        "channels",
        a,
        b,
        "difference",
        "ratio",
        title=f"maps that differ most (|{a} - {b}| / channels), T = {comparison.threshold:g}",
    )
    table.columns[0].overflow = "fold"
    for m in comparison.most_different(top):
        table.add_row(m.name, str(m.channels), str(m.a), str(m.b), f"{m.diff:+d}", _ratio(m.ratio))
    tables.append(table)
    return tables


def compare(
    a: Path = typer.Argument(
        ...,
        help="Spectra file, or a run folder (its last checkpoint's "
        "spectra, from `eigenarch dynamics`).",
    ),
    b: Path = typer.Argument(..., help="The same for the second model."),
    names: str = typer.Option(
        None, help="Labels of A and B: --names I,S or --names I S.", show_default="the file names"
    ),
    threshold: str = typer.Option("1e-3", help="Eigenvalue threshold T; 1e-3.5 means 10^-3.5."),
    top: int = typer.Option(10, help="How many of the most different maps to list."),
    plot: Path = typer.Option(
        None,
        help="Write PLOT.png and PLOT.svg: both models' "
        "dimensionality per layer of --stages (paper Figure 5).",
    ),
    stages: str = typer.Option(
        None,
        help="Comma-separated stages for --plot, e.g. layer1,layer4.",
        show_default="every backbone stage",
    ),
    side: Side = typer.Option(
        Side.in_, help="Maps in the plot: read (in) or produced (out) by each layer."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON on stdout."),
) -> None:
    """Intrinsic dimensionality of two models of one architecture (e.g. I vs S) per map and stage.

    A and B are spectra files or run folders (their last checkpoint's spectra), e.g. a
    detector fine-tuned from pre-trained weights (I) and one trained from scratch (S).
    """
    if top < 1:
        raise EigenarchError(f"--top {top}: expected >= 1")
    labels = names.split(",") if names else [p.stem if p.is_file() else p.name for p in (a, b)]
    if len(labels) != 2 or not all(labels):
        raise EigenarchError(f"--names {names}: expected two labels, --names A,B or --names A B")
    if labels[0] == labels[1]:
        labels = [f"{labels[0]} (A)", f"{labels[1]} (B)"]
    comparison = compare_spectra(
        Spectra.load(final_spectra(a)),
        Spectra.load(final_spectra(b)),
        parse_threshold(threshold),
        labels,
    )
    if plot is not None:
        chosen = plot_stages(
            [m.name for m in comparison.maps], stages.split(",") if stages else None
        )
        if not chosen:
            raise EigenarchError("--plot: these spectra have no backbone maps to plot")
        written = save_figure(compare_figure(comparison, chosen, side.value), plot)
        console.print(f"wrote {', '.join(map(str, written))}", highlight=False)
    if as_json:
        print(json.dumps(comparison.to_dict(top), indent=2))
        return
    out = Console()
    for table in comparison_tables(comparison, top):
        out.print(table)


def report(
    ctx: typer.Context,
    runs: list[Path] = typer.Argument(
        ...,
        help="Run folders, each analysed with "
        "`eigenarch dynamics`; the first is compared with the "
        "others.",
    ),
    out: Path = typer.Option(..., help="Folder for report.html, report.json and plots/."),
    names: str = typer.Option(
        None,
        help="Labels, one per run: --names I,S or --names I S.",
        show_default="the folder names",
    ),
    maps: list[str] = typer.Option(
        None,
        help="fnmatch pattern of maps to plot over iterations (repeatable).",
        show_default="those that drop or rebound most",
    ),
    max_maps: int = typer.Option(
        6, help="Maps in the dimensionality plot (the first 3 get an eigenspectrum plot)."
    ),
    checkpoints: int = typer.Option(6, help="Checkpoints in the eigenspectrum plot."),
    stages: str = typer.Option(
        None,
        help="Comma-separated backbone stages of the comparison plot, e.g. layer1,layer4.",
        show_default="every stage",
    ),
    metrics: str = typer.Option(
        "macs,params", help="Search budgets: the base backbone's macs and/or params."
    ),
    multiple: int = typer.Option(32, help="Searched widths are multiples of this."),
    side: Side = typer.Option(Side.in_, help="Maps the search and comparison plot use."),
    widths: list[Path] = typer.Option(
        None, help="Width spec JSON (e.g. from `eigenarch search`) to show too (repeatable)."
    ),
    top: int = typer.Option(10, help="Most different maps listed per comparison."),
) -> None:
    """One self-contained HTML page over training runs: plots, tables, commands, searched widths.

    Each run must have been analysed with `eigenarch dynamics`. Writes OUT/report.html (plots
    embedded; opens in a browser without a server), OUT/report.json and OUT/plots/ (PNG, SVG).
    """
    chosen = metrics.split(",")
    if not chosen or any(m not in ("macs", "params") for m in chosen):
        raise EigenarchError(f"--metrics {metrics}: expected macs, params or macs,params")
    path = write_report(
        runs,
        out,
        names.split(",") if names else None,
        maps or None,
        max_maps,
        checkpoints,
        stages.split(",") if stages else None,
        chosen,
        multiple,
        side.value,
        widths or (),
        top,
        command_line(ctx),
    )
    console.print(f"wrote {path} (open it in a browser) and {out / 'report.json'}", highlight=False)


def command_line(ctx: typer.Context) -> str:
    """The command as typed, from the context's values (options left at default omitted)."""
    parts = ["eigenarch", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            parts += [str(v) for v in (value or [])]
        elif value not in (None, param.default, []) and param.opts:
            value = getattr(value, "value", value)
            for v in value if isinstance(value, list | tuple) else [value]:
                parts += [param.opts[0], str(v)]
    return shlex.join(parts)


def joined_names(args: list[str], valued: set[str], count: int | None) -> list[str]:
    """``--names I S`` rewritten as ``--names I,S`` in a command's arguments: the tokens after
    ``--names`` up to the next option, at most ``count`` of them; ``None`` takes one label per
    remaining positional argument (a run of ``report``), so ``--names I S run1 run2`` works
    too. ``valued`` are the options that take a value (so theirs are not positional)."""
    if "--names" not in args:
        return args
    i = args.index("--names")
    end = i + 1
    while end < len(args) and not args[end].startswith("-"):
        end += 1
    following = args[i + 1 : end]
    if not following or "," in following[0]:
        return args
    if count is None:
        positional, rest = 0, iter(args[:i] + args[end:])
        for token in rest:
            if token == "--":
                positional += len(list(rest))
            elif not token.startswith("-") or token == "-":
                positional += 1
            elif token in valued:
                next(rest, None)
        count = max(1, (positional + len(following)) // 2)
    return [*args[: i + 1], ",".join(following[:count]), *following[count:], *args[end:]]


class _NamesCommand(TyperCommand):
    """A command whose ``--names`` takes ``A,B`` or ``A B`` alike (:func:`joined_names`)."""

    count: int | None = None

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        valued = {
            opt
            for param in self.params
            if param.param_type_name == "option" and not getattr(param, "is_flag", False)
            for opt in param.opts
        }
        return super().parse_args(ctx, joined_names(list(args), valued, self.count))


class _TwoNamesCommand(_NamesCommand):
    count = 2


def register(app: typer.Typer) -> None:
    """Add ``dynamics``, ``compare`` and ``report`` to the main CLI."""
    app.command("dynamics")(dynamics)
    app.command("compare", cls=_TwoNamesCommand)(compare)
    app.command("report", cls=_NamesCommand)(report)
