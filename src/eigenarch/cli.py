"""The ``eigenarch`` command line: a thin layer over the library's functions.

Each area of the package adds its commands with a ``register(app)`` function in its own
``cli`` module; this file only assembles them and turns user errors into one-line messages.
"""

from __future__ import annotations

import sys

import typer

from eigenarch import demo as demo_cli
from eigenarch.data import cli as data_cli
from eigenarch.distributed import shutdown_distributed
from eigenarch.errors import EigenarchError
from eigenarch.evaluation import cli as evaluation_cli
from eigenarch.nas import cli as nas_cli
from eigenarch.progress import console
from eigenarch.report import cli as report_cli
from eigenarch.spectrum import cli as spectrum_cli
from eigenarch.train import cli as train_cli
from eigenarch.widths import cli as widths_cli

app = typer.Typer(
    name="eigenarch",
    help="Eigenspectrum analysis, Intrinsic Architecture Search and DetNAS for detectors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

data_cli.register(app)
nas_cli.register(app)
report_cli.register(app)
spectrum_cli.register(app)
demo_cli.register(app)
evaluation_cli.register(app)
train_cli.register(app)
widths_cli.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a user error prints ``error: <message>`` on one line and exits 2."""
    try:
        app(args=argv, prog_name="eigenarch")
    except EigenarchError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except SystemExit as exc:
        if exc.code in (None, 0):  # a clean finish (under torchrun: on every rank)
            shutdown_distributed()
        raise
