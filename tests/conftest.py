"""Shared test fixtures."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """Run ``eigenarch ARGS...`` in-process; returns exit code, stdout and stderr."""
    from eigenarch.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A tiny shapes detection set (12 train / 6 val images at 128 px), made once per session."""
    from eigenarch.data.shapes import ShapesConfig, generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, ShapesConfig(train=12, val=6, size=128, seed=0), workers=1)
    return root
