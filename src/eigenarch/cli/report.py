"""``eigenarch dynamics``, ``eigenarch compare`` and ``eigenarch report``."""

from __future__ import annotations

import json
import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from eigenarch.cli.options import (
    AsJson,
    Device,
    Include,
    MaxChannels,
    Sides,
    SketchRank,
    TensorBoard,
    Threshold,
    Workers,
    comma_list,
    trusting,
)
from eigenarch.distributed import init_distributed, is_main
from eigenarch.errors import EigenarchError
from eigenarch.options import parse_device, parse_ints, parse_sides, parse_threshold
from eigenarch.progress import console
from eigenarch.report.compare import Comparison
from eigenarch.report.dynamics import Criteria, RunDynamics, compute_dynamics
from eigenarch.report.html import write_report
from eigenarch.report.pairs import compare_files
from eigenarch.train.rundir import RunDir


class Side(str, Enum):
    in_ = "in"
    out = "out"


#: The options of the three commands, each declared once (``--names``, ``--stages`` are
#: shared; those of every command are in :mod:`eigenarch.cli.options`).
Names = Annotated[
    str,
    typer.Option(
        metavar="NAME,...",
        help="Labels, one per input, comma-separated: --names I,S.",
        show_default="the file or folder names",
    ),
]
Stages = Annotated[
    str,
    typer.Option(
        metavar="STAGE,...",
        help="Comma-separated backbone stages of the comparison plot, e.g. layer1,layer4.",
        show_default="every backbone stage",
    ),
]
RunFolder = Annotated[
    Path, typer.Option(help="Run folder of `eigenarch train` (with checkpoints/).")
]
Checkpoints = Annotated[
    str,
    typer.Option(
        help="Instead of --run: a glob of another training's checkpoints, e.g. "
        "'run/model_*.pth' of torchvision's reference scripts or 'EXP/checkpoint-*.pth.tar' "
        "of timm's train.py (quoted), ordered by their 'epoch'; their positions are epochs "
        "trained.",
    ),
]
Model = Annotated[
    str,
    typer.Option(
        help="With --checkpoints: the torchvision builder they are of (e.g. "
        "fasterrcnn_resnet50_fpn), timm:NAME, or file.py:factory / package.module:factory "
        "(calls your function: runs your code).",
    ),
]
Out = Annotated[
    Path,
    typer.Option(
        help="With --checkpoints: folder for spectra/ and dynamics.json.",
        show_default="the checkpoints' folder",
    ),
]
LrSteps = Annotated[
    str,
    typer.Option(
        metavar="N,...",
        help="With --checkpoints: epochs after which the learning rate decays, e.g. 16,22.",
        show_default="the checkpoints' args.lr_steps",
    ),
]
Epochs = Annotated[
    int,
    typer.Option(
        help="With --checkpoints: the run's length in epochs.",
        show_default="the checkpoints' args.epochs",
    ),
]
MinSize = Annotated[
    int,
    typer.Option(
        help="With --checkpoints: the shorter side a detector resizes images to.",
        show_default="the model's own",
    ),
]
Data = Annotated[
    Path,
    typer.Option(
        help="COCO-layout data folder.",
        show_default="the run's training data; --checkpoints: their args.data_path",
    ),
]
Split = Annotated[str, typer.Option(help="Split to sample images from.")]
Images = Annotated[
    int,
    typer.Option(
        help="Images sampled at random (all if fewer; the paper uses 5000); the same images "
        "for every checkpoint."
    ),
]
Seed = Annotated[int, typer.Option(help="Seed of the image sample.")]
BatchSize = Annotated[int, typer.Option(help="Images per forward pass (per process).")]
Drop = Annotated[
    float,
    typer.Option(help="Dropping: the count falls by more than this fraction of its first value..."),
]
Early = Annotated[float, typer.Option(help="... within this fraction of the run's length.")]
Rise = Annotated[
    float,
    typer.Option(
        help="Rebounding: the count rises by more than this fraction after a learning-rate decay..."
    ),
]
Window = Annotated[float, typer.Option(help="... within this fraction of the run's length.")]
Flagged = Annotated[bool, typer.Option(help="Show only maps that drop or rebound.")]
SpectraInput = Annotated[
    Path,
    typer.Argument(
        help="Spectra file, or a run folder (its last checkpoint's spectra, from "
        "`eigenarch dynamics`)."
    ),
]
Top = Annotated[int, typer.Option(help="How many of the most different maps to list.")]
Plot = Annotated[
    Path,
    typer.Option(
        help="Write PLOT.png and PLOT.svg: both models' dimensionality per layer of --stages "
        "(paper Figure 5)."
    ),
]
PlotSide = Annotated[
    Side, typer.Option(help="Maps in the plot: read (in) or produced (out) by each layer.")
]
Runs = Annotated[
    list[Path],
    typer.Argument(
        help="Run folders, each analysed with `eigenarch dynamics`; the first is compared "
        "with the others."
    ),
]
ReportOut = Annotated[Path, typer.Option(help="Folder for report.html, report.json and plots/.")]
Maps = Annotated[
    str | None,
    typer.Option(
        metavar="PATTERN,...",
        help="fnmatch patterns of maps to plot over iterations, comma-separated.",
        show_default="those that drop or rebound most",
    ),
]
MaxMaps = Annotated[
    int,
    typer.Option(help="Maps in the dimensionality plot (the first 3 get an eigenspectrum plot)."),
]
PlotCheckpoints = Annotated[int, typer.Option(help="Checkpoints in the eigenspectrum plot.")]
Metrics = Annotated[
    str,
    typer.Option(metavar="METRIC,...", help="Search budgets: the base backbone's macs, params."),
]
Multiple = Annotated[int, typer.Option(help="Searched widths are multiples of this.")]
SearchSide = Annotated[Side, typer.Option(help="Maps the search and comparison plot use.")]
Widths = Annotated[
    str | None,
    typer.Option(
        metavar="FILE,...",
        help="Width spec JSON files (e.g. from `eigenarch search`) to show too, comma-separated.",
    ),
]
ReportTop = Annotated[int, typer.Option(help="Most different maps listed per comparison.")]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def dynamics_table(result: RunDynamics, flagged: bool) -> Table:
    """Per map: width, dimensionality at every checkpoint, dropping and rebounding."""
    iters = " ".join(map(str, result.iterations))
    decays = ", ".join(map(str, result.milestones)) or "none"
    table = Table(
        "map",
        "channels",
        f"dims over {result.unit}s",
        "dropping",
        "rebounding",
        title=f"intrinsic dimensionality (T = {result.threshold:g}) at {result.unit}s "
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
    run: RunFolder = None,
    checkpoints: Checkpoints = None,
    model: Model = None,
    out: Out = None,
    lr_steps: LrSteps = None,
    epochs: Epochs = None,
    min_size: MinSize = None,
    data: Data = None,
    split: Split = "train",
    images: Images = 1000,
    seed: Seed = 0,
    include: Include = None,
    sides: Sides = "in,out",
    max_channels: MaxChannels = 4096,
    sketch_rank: SketchRank = 0,
    batch_size: BatchSize = 2,
    workers: Workers = 2,
    device: Device = None,
    threshold: Threshold = "1e-3",
    drop: Drop = 0.3,
    early: Early = 0.25,
    rise: Rise = 0.1,
    window: Window = 0.1,
    flagged: Flagged = False,
    as_json: AsJson = False,
    wait: bool = typer.Option(
        False, "--wait", help="Wait for a run still training to end (else: marked partial)."
    ),
    tensorboard: TensorBoard = True,
) -> None:
    """Intrinsic dimensionality of every map over a run's checkpoints; dropping, rebounding.

    The run is one of `eigenarch train` (--run) or another's training (--checkpoints with
    --model), such as the model_{epoch}.pth of torchvision's reference scripts or timm's
    train.py checkpoint-{epoch}.pth.tar. Spectra are
    stored under the run's folder (spectra/) and reused when already computed for the same
    checkpoint and settings (a new --threshold needs no data pass); dynamics.json gets the
    result, and its dynamics/ folder TensorBoard events. Runs under
    `torchrun --nproc_per_node=N -m eigenarch dynamics ...` too.
    """
    device = parse_device(device)
    init_distributed(device)
    result = compute_dynamics(
        run, data, split, images, seed, comma_list(include), parse_sides(sides), max_channels,
        batch_size, workers, device, parse_threshold(threshold),
        Criteria(drop, early, rise, window), checkpoints=checkpoints, model=model, out=out,
        lr_steps=None if lr_steps is None else parse_ints(lr_steps, "--lr-steps"),
        epochs=epochs, min_size=min_size, wait=wait, tensorboard=tensorboard,
        sketch_rank=sketch_rank,
    )  # fmt: skip
    if not is_main():
        return
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        Console().print(dynamics_table(result, flagged))
    events = sum(len(m.events) for m in result.maps)
    console.print(
        f"{len(result.maps)} maps, {len(result.iterations)} checkpoints, {events} event(s); "
        f"wrote {RunDir(result.run).dynamics_file}",
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
    a: SpectraInput,
    b: Annotated[Path, typer.Argument(help="The same for the second model.")],
    names: Names = None,
    threshold: Threshold = "1e-3",
    top: Top = 10,
    plot: Plot = None,
    stages: Stages = None,
    side: PlotSide = Side.in_,
    as_json: AsJson = False,
) -> None:
    """Intrinsic dimensionality of two models of one architecture (e.g. I vs S) per map and stage.

    A and B are spectra files or run folders (their last checkpoint's spectra), e.g. a
    detector fine-tuned from pre-trained weights (I) and one trained from scratch (S).
    """
    if top < 1:
        raise EigenarchError(f"--top {top}: expected >= 1")
    labels, chosen = comma_list(names), comma_list(stages)
    comparison, written = compare_files(
        a, b, labels, parse_threshold(threshold), plot, chosen, side.value
    )
    if written:
        console.print(f"wrote {', '.join(map(str, written))}", highlight=False)
    if as_json:
        print(json.dumps(comparison.to_dict(top), indent=2))
        return
    for table in comparison_tables(comparison, top):
        Console().print(table)


def report(
    ctx: typer.Context,
    runs: Runs,
    out: ReportOut,
    names: Names = None,
    maps: Maps = None,
    max_maps: MaxMaps = 6,
    checkpoints: PlotCheckpoints = 6,
    stages: Stages = None,
    metrics: Metrics = "macs,params",
    multiple: Multiple = 32,
    side: SearchSide = Side.in_,
    widths: Widths = None,
    top: ReportTop = 10,
) -> None:
    """One self-contained HTML page over training runs: plots, tables, commands, searched widths.

    Each run must have been analysed with `eigenarch dynamics`. Writes OUT/report.html (plots
    embedded; opens in a browser without a server), OUT/report.json and OUT/plots/ (PNG, SVG).
    """
    chosen = metrics.split(",")
    if not chosen or any(m not in ("macs", "params") for m in chosen):
        raise EigenarchError(f"--metrics {metrics}: expected macs, params or macs,params")
    spec_files = [Path(w) for w in comma_list(widths) or ()]
    path = write_report(
        runs, out, comma_list(names), comma_list(maps), max_maps, checkpoints,
        comma_list(stages), chosen, multiple, side.value, spec_files, top, command_line(ctx),
    )  # fmt: skip
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


def register(app: typer.Typer) -> None:
    """Add ``dynamics``, ``compare`` and ``report`` to the main CLI."""
    app.command("dynamics")(trusting(dynamics))
    app.command("compare")(compare)
    app.command("report")(trusting(report))
