"""The ``eigenarch`` command line: a thin layer over the library's functions.

Each command group adds its commands with a ``register(app)`` function in its own module
of this package; this file only assembles them and turns user errors into one-line messages.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import NoReturn

import typer
from rich.markup import escape
from typer.exceptions import TyperException

from eigenarch.cli import data as data_cli
from eigenarch.cli import demo as demo_cli
from eigenarch.cli import evaluation as evaluation_cli
from eigenarch.cli import export as export_cli
from eigenarch.cli import nas as nas_cli
from eigenarch.cli import report as report_cli
from eigenarch.cli import spectrum as spectrum_cli
from eigenarch.cli import train as train_cli
from eigenarch.cli import widths as widths_cli
from eigenarch.cli.options import App, comma_list
from eigenarch.data.coco import OUTSIDE_ENV
from eigenarch.distributed import (
    DEFAULT_TIMEOUT,
    TIMEOUT_ENV,
    lost_rank_as_error,
    shutdown_distributed,
)
from eigenarch.distributed import collective_timeout as timeout_of_distributed
from eigenarch.errors import EigenarchError, Terminated
from eigenarch.io import UNWRITABLE
from eigenarch.limits import DEFAULTS, ENV, parse_limits
from eigenarch.progress import console

#: The exit status after Ctrl-C / SIGINT (128 + SIGINT), as typer and shells use it.
INTERRUPTED = 130
#: The exit status after SIGTERM (128 + SIGTERM).
TERMINATED = 143

app = App(
    name="eigenarch",
    help="Eigenspectrum analysis, Intrinsic Architecture Search and DetNAS for detectors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_LIMIT_HELP = (
    "Raise bounds on numbers read from files, for a real extreme (comma-separated): "
    + ", ".join(f"{name}={value}" for name, value in DEFAULTS.items())
    + " by default."
)


@app.callback()
def _options(
    limit: str | None = typer.Option(
        None,
        "--limit",
        metavar="NAME=N,...",
        help=_LIMIT_HELP,
    ),
    collective_timeout: float | None = typer.Option(
        None,
        "--collective-timeout",
        metavar="SECONDS",
        help=f"Under torchrun: how long a rank waits for the others in a collective before "
        f"it ends in one line (a rank killed or stopped) [default: {DEFAULT_TIMEOUT}].",
    ),
    allow_outside_data: bool = typer.Option(
        False,
        "--allow-outside-data",
        help="Read image files outside a data set's image folder (absolute file_name "
        "values, '..', symbolic links leading out); refused by default.",
    ),
) -> None:
    """Eigenspectrum analysis, Intrinsic Architecture Search and DetNAS for detectors."""
    if collective_timeout is not None:  # in the environment, for every rank, as --limit
        os.environ[TIMEOUT_ENV] = str(collective_timeout)
        timeout_of_distributed()  # a bad value: one line now
    if allow_outside_data:  # in the environment, as --limit
        os.environ[OUTSIDE_ENV] = "1"
    if limit:  # in the environment, so that torchrun's ranks and the demo's workers see it
        raised = {
            **parse_limits(os.environ.get(ENV, "").split(","), ENV),
            **parse_limits(comma_list(limit) or []),
        }
        os.environ[ENV] = ",".join(f"{name}={value}" for name, value in raised.items())


data_cli.register(app)
nas_cli.register(app)
report_cli.register(app)
spectrum_cli.register(app)
demo_cli.register(app)
evaluation_cli.register(app)
export_cli.register(app)
train_cli.register(app)
widths_cli.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a user error (ours or a bad command line) prints ``error: <message>`` on
    one line and exits 2; Ctrl-C prints ``interrupted`` and exits 130, SIGTERM
    ``terminated`` (under torchrun with the rank and where to resume) and exits 143, each
    after the command has unwound (temporary files removed, locks released, workers shut
    down); a clean finish leaves the ``torch.distributed`` group, if any."""
    with _signals_raise():
        try:
            with lost_rank_as_error():
                code = typer.main.get_command(app).main(
                    args=argv, prog_name="eigenarch", standalone_mode=False
                )
        except Terminated as exc:  # its text, if any, says which rank and where to resume
            line = f"terminated: {exc}" if exc.args else "terminated"
            console.print(escape(line), highlight=False)
            sys.exit(TERMINATED)
        except EigenarchError as exc:
            _fail(str(exc))
        except OSError as exc:  # one the library did not name: a read-only folder on the way
            if exc.errno not in UNWRITABLE or exc.filename is None:
                raise
            _fail(f"{exc.filename}: {exc.strerror or exc}")
        except TyperException as exc:  # a missing or unknown option, a bad value
            if not exc.format_message():  # no arguments at all: the help was shown
                sys.exit(exc.exit_code)
            context = getattr(exc, "ctx", None)
            path = context.command_path if context is not None else "eigenarch"
            _fail(f"{path}: {exc.format_message()} (see {path} --help)")
        except typer.Abort:  # end of input at a prompt (Ctrl-C returns INTERRUPTED as ``code``)
            console.print("aborted", highlight=False)
            sys.exit(1)
    if code == INTERRUPTED:  # typer's answer to Ctrl-C / SIGINT (a KeyboardInterrupt)
        console.print("interrupted", highlight=False)
    if isinstance(code, int) and code != 0:  # typer's Exit(code)
        sys.exit(code)
    shutdown_distributed()  # a clean finish: under torchrun, every rank gets here
    sys.exit(0)


@contextmanager
def _signals_raise() -> Iterator[None]:
    """While the block runs, SIGINT raises ``KeyboardInterrupt`` and SIGTERM
    :class:`Terminated` in this process's main thread; the previous handlers are back
    afterwards. Forked workers (DataLoader's, the data generator's) inherit the handlers at
    the fork and ignore the signals there: only this process acts on them, and shuts the
    workers down as it unwinds (a worker that raised would print its own traceback).
    Meanwhile :func:`_quiet_lost_receiver` is ``sys.excepthook``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def raise_in_owner(signum: int, frame: object) -> None:
        if os.getpid() == owner:
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated

    previous = {s: signal.signal(s, raise_in_owner) for s in (signal.SIGINT, signal.SIGTERM)}
    hook, sys.excepthook = sys.excepthook, partial(_quiet_lost_receiver, sys.excepthook)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.excepthook = hook


def _quiet_lost_receiver(
    fallback: Callable, kind: type[BaseException], error: BaseException, trace
) -> None:
    """``sys.excepthook`` that drops one harmless error: a loader worker's thread that passes
    a tensor's file descriptor to the main process (``multiprocessing``'s resource sharer,
    which reports through ``sys.excepthook``) finding the connection reset because the main
    process is unwinding (SIGTERM, Ctrl-C): a traceback after our one line. All else goes to
    ``fallback``, the hook that was there."""
    lost = issubclass(kind, (ConnectionResetError, BrokenPipeError, EOFError))
    sharer = os.path.join("multiprocessing", "resource_sharer.py")
    if lost and any(f.filename.endswith(sharer) for f in traceback.extract_tb(trace)):
        return
    fallback(kind, error, trace)


def _fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # "[x, y]" kept
    sys.exit(2)
