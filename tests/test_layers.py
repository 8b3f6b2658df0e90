"""The package reads as layers: no library module imports a command-line module."""

from __future__ import annotations

import ast
from pathlib import Path

import eigenarch

ROOT = Path(eigenarch.__file__).parent


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names (``from . import cli`` too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(("eigenarch", *path.relative_to(root).parent.parts))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_no_library_module_imports_a_cli_module():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.relative_to(ROOT).parts[0] in ("cli", "__main__.py"):
            continue
        cli = sorted(m for m in _imports(path) if m.startswith("eigenarch.cli"))
        if cli:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(cli)}")
    assert offenders == []


def test_the_check_finds_cli_imports_of_every_form(tmp_path):
    fake = tmp_path / "report" / "html.py"
    fake.parent.mkdir()
    fake.write_text("from eigenarch.train import cli as c\nfrom ..widths.cli import x\n"
                    "import eigenarch.spectrum.cli\nfrom . import cli\n")  # fmt: skip
    found = {m for m in _imports(fake, tmp_path) if m.endswith(".cli")}
    assert found == {"eigenarch.train.cli", "eigenarch.widths.cli", "eigenarch.spectrum.cli",
                     "eigenarch.report.cli"}  # fmt: skip


def _calls(path: Path, name: str) -> list[int]:
    """The lines where ``path`` calls a function called ``name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == name
    ]


def test_only_commands_join_the_process_group(tmp_path):
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(ROOT.rglob("*.py"))
        if path.relative_to(ROOT).parts[0] != "cli"
        for line in _calls(path, "init_distributed")
    ]
    assert offenders == []
    library = tmp_path / "loop.py"
    library.write_text("import eigenarch.distributed as d\nd.init_distributed('cpu')\n")
    assert _calls(library, "init_distributed") == [2]  # the check can fail


def test_the_layers_contract_holds_and_can_fail(tmp_path):
    """``lint-imports`` (run by ``make test``) keeps pyproject.toml's layers; on a package
    whose lower layer imports a higher one, the same kind of contract is broken."""
    import subprocess
    import sys

    lint = Path(sys.executable).with_name("lint-imports")
    project = ROOT.parent.parent
    kept = subprocess.run([lint, "--no-cache"], cwd=project, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stdout[-2000:]
    package = tmp_path / "toy"
    for name, text in {"__init__": "", "top": "", "low": "import toy.top\n"}.items():
        package.mkdir(exist_ok=True)
        (package / f"{name}.py").write_text(text)
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = toy\n\n[importlinter:contract:1]\nname = layers\n"
        "type = layers\ncontainers = toy\nlayers =\n    top\n    low\n"
    )
    broken = subprocess.run([lint, "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": ""})  # fmt: skip
    assert broken.returncode == 1 and "toy.low -> toy.top" in broken.stdout, broken.stdout
