"""User-facing errors: one line naming the file, field or value and what was expected."""

from __future__ import annotations

import re

#: How torch's ``ExceptionWrapper.reraise`` words an exception raised in a DataLoader worker
#: (or pin-memory thread): it rebuilds the exception from this text, the worker's traceback.
_RERAISED = re.compile(r"Caught (\w+) in (DataLoader worker process \d+|pin memory thread[^.]*)\.")


class EigenarchError(Exception):
    """An error caused by user input; the CLI prints its message on one line and exits 2.

    Raised in a DataLoader worker (a corrupt image, say), it reaches the main process rebuilt
    by torch with the worker's whole traceback as its message; the original one line is kept
    as the message and the traceback in :attr:`worker_traceback`, so every command that reads
    data through workers reports it as it would without them.
    """

    def __init__(self, *args: object) -> None:
        self.worker_traceback: str | None = None
        if len(args) == 1 and isinstance(args[0], str) and _RERAISED.match(args[0]):
            self.worker_traceback = args[0]
            args = (_original_message(args[0], type(self)),)
        super().__init__(*args)


def _original_message(reraised: str, cls: type) -> str:
    """The message of the exception whose traceback ``reraised`` holds (its last line reads
    ``module.Class: message``)."""
    name = f"{cls.__module__}.{cls.__qualname__}: "
    start = reraised.rfind("\n" + name)
    return reraised[start + 1 + len(name) :].strip() if start >= 0 else reraised


class Terminated(BaseException):
    """SIGTERM, raised in the main thread of the ``eigenarch`` command (see
    :func:`eigenarch.cli.main`): it unwinds the command as Ctrl-C does (temporary files
    removed, locks released, loader workers shut down), then the CLI prints one line and
    exits 143. Not an ``Exception``, so that no ``except Exception`` swallows it."""
