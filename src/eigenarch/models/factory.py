"""A model built by a function the user wrote: ``path/to/file.py:factory`` or
``package.module:factory``, the ``--model`` form of ``spectrum``, ``dynamics``, ``count``
and ``search`` (and a width spec's ``builder``). Calling it runs the user's code, so a
factory runs only when the user names it: on the command line or in the Python API. One
named inside a data file (a checkpoint's config, a run's ``config.json``, a width spec) is
refused unless the user trusts that name (``--trust-factory``, :func:`trusted_factories`,
as ``torch.serialization.safe_globals`` allows named globals in a checkpoint)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from torch import nn

from eigenarch.errors import EigenarchError

#: Builder names that look like ``source:function`` but name a library's model (no user code).
BUILDER_PREFIXES = ("timm:",)


def is_factory(spec: str) -> bool:
    """Whether ``spec`` names a factory (``source:function``), not a builder or a file."""
    return ":" in spec and not spec.startswith(BUILDER_PREFIXES) and not Path(spec).is_file()


_TRUSTED: ContextVar[frozenset[str]] = ContextVar("trusted_factories", default=frozenset())


@contextmanager
def trusted_factories(names: Iterable[str]) -> Iterator[None]:
    """Within the block, data files may name the factories ``names`` (``--trust-factory``)."""
    token = _TRUSTED.set(_TRUSTED.get() | frozenset(names))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def check_trusted(spec: str, what: str) -> None:
    """Refuse the factory ``spec`` read from the data file ``what`` unless it is trusted."""
    if spec not in _TRUSTED.get():
        raise EigenarchError(
            f"{what}: names the factory {spec!r}, which would run code from a data file; "
            f"refused (pass --trust-factory {spec} if you wrote it and trust it)"
        )


def call_factory(spec: str) -> nn.Module:
    """``factory()`` of ``path/to/file.py:factory`` or ``package.module:factory`` (the user's
    code runs; its own errors are its own tracebacks)."""
    source, _, name = spec.rpartition(":")
    if not source or not name.isidentifier():
        raise EigenarchError(f"--model {spec!r}: expected path/to/file.py:factory or "
                             "package.module:factory")  # fmt: skip
    module = _load_file(spec, source) if source.endswith(".py") else _import(spec, source)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise EigenarchError(f"--model {spec!r}: {source} has no function {name!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise EigenarchError(f"--model {spec!r}: {name}() returned a {type(model).__name__}, "
                             "expected a torch.nn.Module")  # fmt: skip
    return model


def _load_file(spec: str, source: str):
    if not Path(source).is_file():
        raise EigenarchError(f"--model {spec!r}: {source} not found")
    name_in_modules = f"_eigenarch_model_{Path(source).stem}"  # never shadows a real one
    found = importlib.util.spec_from_file_location(name_in_modules, source)
    module = importlib.util.module_from_spec(found)
    sys.modules[name_in_modules] = module  # dataclasses and pickle look modules up there
    found.loader.exec_module(module)
    return module


def _import(spec: str, source: str):
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # package.module of the current folder
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as exc:
        if exc.name is None or not source.startswith(exc.name):
            raise  # the user's module imports something missing: their traceback
        raise EigenarchError(f"--model {spec!r}: no module named {exc.name!r}") from None
