"""``file.py:factory`` and ``package.module:factory``: the user's function, called."""

from __future__ import annotations

import sys

import pytest
from torch import nn

from eigenarch.errors import EigenarchError
from eigenarch.models.factory import call_factory, is_factory


def test_factory_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = "from torch import nn\n\n\ndef net():\n    return nn.Conv2d(3, 5, 1)\n"
    (tmp_path / "mine.py").write_text(code)
    package = tmp_path / "factory_test_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(code + "\n\ndef three():\n    return 3\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for spec in ("mine.py:net", f"{tmp_path / 'mine.py'}:net", "factory_test_pkg.nets:net"):
        assert is_factory(spec)
        model = call_factory(spec)
        assert isinstance(model, nn.Conv2d) and model.out_channels == 5
    assert not is_factory("resnet50") and not is_factory(str(tmp_path / "mine.py"))
    for spec, message in [
        ("mine.py:", "expected path/to/file.py:factory"),
        ("mine.py:not-a-name", "expected path/to/file.py:factory"),
        ("factory_test_pkg.nets:three", "three() returned a int, expected a torch.nn.Module"),
        ("factory_test_pkg.nets:absent", "has no function 'absent'"),
        ("factory_test_pkg.absent:net", "no module named 'factory_test_pkg.absent'"),
        ("gone.py:net", "gone.py not found"),
    ]:
        with pytest.raises(EigenarchError, match=message.replace("(", r"\(").replace(")", r"\)")):
            call_factory(spec)


def test_an_import_error_inside_the_users_module_is_theirs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("import not_installed_anywhere\n\n\ndef net():\n    pass\n")
    with pytest.raises(ModuleNotFoundError, match="not_installed_anywhere"):
        call_factory("broken:net")
