"""Options several commands share, each defined once, and the one rule for lists.

A list is one comma-separated value (``--include 'rpn.*,roi_heads.*'``), its metavar ends
in ``,...`` (``PATTERN,...``); :class:`OnceCommand` refuses a list option given twice in
one line (other options keep click's rule: the last one counts). The same concept has the
same name, meaning and help in every command: ``--device``, ``--workers``, ``--sides``,
``--include`` (map selection), ``--trust-factory``, ``--no-tensorboard``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import TyperException

from eigenarch.models.factory import trusted_factories

Command = TypeVar("Command", bound=Callable[..., Any])


def comma_list(value: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]`` (``None`` stays ``None``): a list option's value."""
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


#: How a list option's metavar ends (``PATTERN,...``).
LIST = ",..."


def _repeated(params: list[Any], args: list[str]) -> str | None:
    """The first list option of ``params`` that ``args`` give more than once, if any."""
    names = {
        opt: p.name
        for p in params
        if p.param_type_name == "option" and (p.metavar or "").endswith(LIST)
        for opt in p.opts
    }
    seen: set[str | None] = set()
    for token in args:
        if token == "--":
            break
        opt = token.split("=", 1)[0]
        if opt in names:
            if names[opt] in seen:
                return opt
            seen.add(names[opt])
    return None


class RepeatedOption(TyperException):
    """An option given more than once (a usage error of the command ``ctx``)."""

    exit_code = 2

    def __init__(self, message: str, ctx: Any) -> None:
        super().__init__(message)
        self.ctx = ctx


def _refuse_repeats(command: Any, ctx: Any, args: list[str]) -> None:
    opt = _repeated(command.params, args)
    if opt is not None:
        raise RepeatedOption(
            f"{opt} given more than once: a list is one comma-separated value (e.g. {opt} a,b)",
            ctx,
        )


class OnceCommand(TyperCommand):
    """A command whose list options may each be given once (as one comma-separated value)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        _refuse_repeats(self, ctx, args)
        return super().parse_args(ctx, args)


class OnceGroup(TyperGroup):
    """A command group whose own list options may each be given once."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        _refuse_repeats(self, ctx, args)
        return super().parse_args(ctx, args)


class App(typer.Typer):
    """A Typer app whose commands are :class:`OnceCommand` and groups :class:`OnceGroup`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=OnceGroup, **kwargs)

    def command(self, name: str | None = None, *, cls: type | None = None, **kwargs: Any):
        return super().command(name, cls=cls or OnceCommand, **kwargs)


Device = Annotated[
    str | None,
    typer.Option(
        help="cpu, cuda or cuda:N (under torchrun, cuda is cuda:LOCAL_RANK).",
        show_default="cuda if available, else cpu",
    ),
]
Workers = Annotated[
    int, typer.Option(min=0, help="Worker processes (0: work in the main process).")
]
#: :data:`Workers` where the default is one per available CPU (``None``).
CpuWorkers = Annotated[
    int | None,
    typer.Option(
        min=0, help="Worker processes (0: work in the main process).", show_default="one per CPU"
    ),
]
Sides = Annotated[
    str,
    typer.Option(
        metavar="SIDE" + LIST,
        help="Maps to collect: in (read by each layer), out (its output) or in,out.",
    ),
]
Include = Annotated[
    str | None,
    typer.Option(
        metavar="PATTERN" + LIST,
        help="Maps to collect: fnmatch patterns over module paths or map names, "
        "comma-separated, e.g. 'backbone.body.layer4.*,rpn.*'.",
        show_default="every map",
    ),
]
MaxChannels = Annotated[
    int,
    typer.Option(
        help="Skip maps wider than this unless --include names them exactly (0: no limit)."
    ),
]
SketchRank = Annotated[
    int,
    typer.Option(
        min=0,
        help="Sketch maps wider than --max-channels at this rank (Frequent Directions: "
        "lower-bound eigenvalues, intrinsic dim a lower bound at most the rank) instead of "
        "skipping them (0: skip).",
    ),
]
Threshold = Annotated[str, typer.Option(help="Eigenvalue threshold T; 1e-3.5 means 10^-3.5.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
TrustFactory = Annotated[
    str | None,
    typer.Option(
        "--trust-factory",
        metavar="FACTORY" + LIST,
        help="Let a checkpoint, config.json or width spec name these factories "
        "(file.py:factory, package.module:factory; comma-separated): their code runs.",
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


def trusting(command: Command) -> Command:
    """``command`` with a ``--trust-factory`` option: within it, data files may name those
    factories (:func:`eigenarch.models.factory.trusted_factories`); without it, a factory
    named in a data file is refused, so reading a file never runs its code."""

    @functools.wraps(command)
    def run(*args: Any, trust_factory: str | None = None, **kwargs: Any) -> Any:
        with trusted_factories(comma_list(trust_factory) or ()):
            return command(*args, **kwargs)

    return _with_parameters(run, command, {"trust_factory": (TrustFactory, None)})


def _with_parameters(
    run: Callable, command: Callable, extra: dict[str, tuple[Any, Any]], drop: tuple[str, ...] = ()
) -> Any:
    """``run`` with ``command``'s signature (less ``drop``) plus keyword-only ``extra``
    parameters (name -> (annotation, default)), as typer reads it."""
    signature = inspect.signature(command, eval_str=True)
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, (kind, default) in extra.items()
    ]
    kept = [p for p in signature.parameters.values() if p.name not in {*extra, *drop}]
    run.__signature__ = signature.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
    return run


def taking_options_of(source: Callable, *, exclude: tuple[str, ...] = ()) -> Callable:
    """A decorator: the command also takes every option of the command ``source`` but
    ``exclude`` (the same names, types, defaults and help), passed to it as one dict
    ``options``; e.g. ``detnas supernet`` takes ``eigenarch train``'s."""
    shared = {
        name: (p.annotation, p.default)
        for name, p in inspect.signature(source, eval_str=True).parameters.items()
        if name not in exclude
    }

    def wrap(command: Command) -> Command:
        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            options = {name: kwargs.pop(name) for name in shared}
            return command(options=options, **kwargs)

        return _with_parameters(run, command, shared, drop=("options",))

    return wrap
