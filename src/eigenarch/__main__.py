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


def run() -> None:
    """Import the CLI (handling Ctrl-C and SIGTERM meanwhile), then run it; its exit status
    stands, whatever signal comes while Python shuts down."""
    for signum in _STARTUP_SIGNALS:
        signal.signal(signum, _end_at_startup)
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
