"""``python -m eigenarch`` (and ``torchrun -m eigenarch``) runs the CLI; so does the
``eigenarch`` command (:func:`run`)."""

import os
import signal
import sys

#: What a signal during start-up prints, and the exit status (128 + the signal).
_STARTUP_SIGNALS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}


def _end_at_startup(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM while Python imports torch (seconds, before any command has
    written anything): one line and the usual exit status, not an import traceback."""
    message, code = _STARTUP_SIGNALS[signum]
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(code)


def _environment() -> None:
    """Before torch and matplotlib are imported: an ``OMP_NUM_THREADS`` that is not a
    positive integer (libgomp would print ``Invalid value`` and carry on) is dropped with one
    note saying so; where ``HOME`` is not writable and ``MPLCONFIGDIR`` is not set,
    matplotlib's cache goes to a temporary folder without its two-line warning."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads is not None and not (threads.strip().isdigit() and int(threads) > 0):
        del os.environ["OMP_NUM_THREADS"]
        sys.stderr.write(f"note: OMP_NUM_THREADS={threads!r} ignored (expected a positive "
                         "integer); torch uses its default thread count\n")  # fmt: skip
    if "MPLCONFIGDIR" not in os.environ:
        config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
            os.path.expanduser("~"), ".config"
        )
        place = config
        while not os.path.exists(place) and os.path.dirname(place) != place:
            place = os.path.dirname(place)
        if not (os.path.isdir(place) and os.access(place, os.W_OK)):
            import atexit
            import tempfile

            folder = tempfile.TemporaryDirectory(prefix="eigenarch-matplotlib-")
            atexit.register(folder.cleanup)
            os.environ["MPLCONFIGDIR"] = folder.name


def run() -> None:
    """Import the CLI (handling Ctrl-C and SIGTERM meanwhile), then run it; its exit status
    stands, whatever signal comes while Python shuts down."""
    for signum in _STARTUP_SIGNALS:
        signal.signal(signum, _end_at_startup)
    _environment()
    from eigenarch.cli.app import main

    signal.signal(signal.SIGINT, signal.default_int_handler)  # the command's own handling
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        main()
    finally:  # the command has ended: a signal while Python shuts down changes nothing
        for signum in _STARTUP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    run()
