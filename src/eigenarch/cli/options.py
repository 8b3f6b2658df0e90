"""Options several commands share, defined once: ``--trust-factory``, ``--no-tensorboard``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from eigenarch.models.factory import trusted_factories

TrustFactory = Annotated[
    list[str] | None,
    typer.Option(
        "--trust-factory",
        metavar="FACTORY",
        help="Let a checkpoint, config.json or width spec name this factory "
        "(file.py:factory, package.module:factory): its code runs. Repeat for several.",
        show_default=False,
    ),
]
TensorBoard = Annotated[
    bool,
    typer.Option(
        "--tensorboard/--no-tensorboard",
        help="Write TensorBoard event files with the output (tensorboard --logdir FOLDER).",
    ),
]
Command = TypeVar("Command", bound=Callable[..., Any])


def trusting(command: Command) -> Command:
    """``command`` with a ``--trust-factory`` option: within it, data files may name those
    factories (:func:`eigenarch.models.factory.trusted_factories`); without it, a factory
    named in a data file is refused, so reading a file never runs its code."""

    @functools.wraps(command)
    def run(*args: Any, trust_factory: list[str] | None = None, **kwargs: Any) -> Any:
        with trusted_factories(trust_factory or ()):
            return command(*args, **kwargs)

    signature = inspect.signature(command, eval_str=True)  # typer reads it as it is
    option = inspect.Parameter(
        "trust_factory", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=TrustFactory
    )
    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), option])
    return run  # type: ignore[return-value]
