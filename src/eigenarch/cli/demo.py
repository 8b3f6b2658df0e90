"""``eigenarch demo``: the paper's pipeline end to end on the embedded shapes data set."""

from __future__ import annotations

from pathlib import Path

import typer

from eigenarch.cli.options import Device
from eigenarch.demo import run_demo
from eigenarch.io import check_writable
from eigenarch.options import parse_device
from eigenarch.progress import console
from eigenarch.report.claims import claim_line


def _print_summary(state: dict) -> None:
    total = sum(step["seconds"] for step in state["steps"].values())
    report = state["steps"]["report"]["outputs"]
    for line in report["findings"]:
        console.print(f"- {line}", highlight=False)
    console.print("The paper's claims against this run:", highlight=False)
    for claim in report["claims"]:
        console.print(f"- {claim_line(claim)}", highlight=False, markup=False)
    console.print(
        f"demo finished ({total:.0f} s of step time). Report: {report['report']} — open it in "
        f"a browser, e.g. `xdg-open {report['report']}`",
        highlight=False,
    )


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for every output of the demo."),
    quick: bool = typer.Option(
        False, help="Smaller sizes and one seed: the same steps in about two minutes."
    ),
    scale: float = typer.Option(1.0, help="Multiply data sizes and iterations (e.g. 10 on a GPU)."),
    seed: int = typer.Option(0, help="Random seed (the Table 1 rows use seed..seed+N-1)."),
    seeds: int | None = typer.Option(
        None,
        help="N: seeds of every training of a table row, reported as mean ± std with a "
        "Welch's t-test p-value against the base (default: int(scale), at least 2; 1 with "
        "--quick).",
    ),
    short_schedule: bool = typer.Option(
        True,
        "--short-schedule/--no-short-schedule",
        help="Table 1 at 1x: I (MACs) and S (MACs) retrained at half of Table 1's iterations "
        "(the paper's 1x column beside Table 1's 2x), for claim (i).",
    ),
    table2: bool = typer.Option(
        True,
        "--table2/--no-table2",
        help="Table 2: the base, S (MACs) and I (MACs) with BatchNorm trained as classifiers "
        "on shapes-cls (top-1 / top-5 error), for claim (k).",
    ),
    mask: bool = typer.Option(
        True,
        "--mask/--no-mask",
        help="Mask R-CNN rows: the base and S (MACs) trained as Mask R-CNN (AP bbox / AP "
        "mask), for claim (l).",
    ),
    inherit: bool = typer.Option(
        False,
        "--inherit",
        help="Add the rows inherited from I: every searched backbone started by `resize` from "
        "the fine-tuned I run and trained with the same schedule and with 1/4 of it, beside "
        "the scratch rows of Table 1, for claim (m).",
    ),
    device: Device = None,
    force: bool = typer.Option(
        False,
        help="Delete the folder's earlier demo and start over (also needed when its "
        "settings differ).",
    ),
    jobs: int | None = typer.Option(
        None, help="Trainings run at once (default: one per CPU core, one on a GPU)."
    ),
    backbone: str = typer.Option(
        "resnet50",
        help="resnet50: Table 1's ResNet rows (ResiaNets); detnet59: its DetNet rows "
        "(DetiaNets, searched at threshold 10^-3.5); timm:NAME: a timm CNN at a quarter of "
        "its widths, its own normalisation (IA-NAME rows).",
    ),
) -> None:
    """Run the paper's pipeline end to end on the embedded shapes data set (resumable).

    The rows claims (i), (k) and (l) read are made by default (--no-short-schedule,
    --no-table2, --no-mask leave them out); --inherit adds the rows of claim (m). Each adds
    to an earlier demo in OUT too, reusing it.
    """
    check_writable(out, folder=True)  # a read-only or full place fails now, in one line
    chosen = [("short", short_schedule), ("table2", table2), ("mask", mask), ("inherit", inherit)]
    extras = [name for name, wanted in chosen if wanted]
    _print_summary(
        run_demo(
            out, quick, scale, seed, force, parse_device(device), jobs, backbone, seeds, extras
        )
    )


def register(app: typer.Typer) -> None:
    """Add ``eigenarch demo`` to the main app."""
    app.command("demo")(demo)
