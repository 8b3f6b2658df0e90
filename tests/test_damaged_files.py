"""Truncated, damaged or edited files given to the CLI: one line of ours each, exit 2.

Spectra (tensor file and sidecar), checkpoints, width specs and dims files; every damage a
disk, a copy or a hand edit makes: cut to half, one byte flipped, emptied, a number edited, a
field deleted.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from eigenarch.models import (
    ResiaNetBackbone,
)
from eigenarch.spectrum import Spectra
from eigenarch.widths import RESNET50_WIDTHS


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    return bytes(damaged)


def _empty(data: bytes) -> bytes:
    return b""


DAMAGE = {"half": _half, "flip": _flip, "empty": _empty}


def _json_edit(change):
    def edit(data: bytes) -> bytes:
        obj = json.loads(data)
        change(obj)
        return json.dumps(obj).encode()

    return edit


@pytest.fixture
def files(tmp_path, tiny_run):
    """One file of each kind, and the command line that reads it."""
    covariances = {"a:in": torch.eye(3, dtype=torch.float64), "a:out": torch.eye(2).double()}
    spectra = Spectra(covariances, {"a:in": 4, "a:out": 4}, {"model": "toy"}).save(
        tmp_path / "s.safetensors"
    )
    checkpoint = shutil.copy(tiny_run / "checkpoints" / "iter_0000001.pt", tmp_path / "c.pt")
    spec = ResiaNetBackbone(RESNET50_WIDTHS).save(tmp_path / "w.json")
    dims = tmp_path / "dims.json"
    dims.write_text(json.dumps({"backbone.body.conv1:out": 20, "backbone.body.fc:in": 9}))
    return {
        "spectra": (spectra, ["spectrum", "show", spectra]),
        "sidecar": (tmp_path / "s.safetensors.json", ["spectrum", "show", spectra]),
        "checkpoint": (checkpoint, ["evaluate", "--checkpoint", checkpoint, "--out",
                                    tmp_path / "m"]),
        "width spec": (spec, ["count", "--spec", spec]),
        "dims": (dims, ["search", "--dims", dims, "--target", "macs=resnet50", "--out",
                        tmp_path / "out.json"]),
    }  # fmt: skip


def _edit_checkpoint(path):
    payload = torch.load(path, weights_only=True)
    payload["iteration"] = "one"
    torch.save(payload, path)


#: (file kind, damage, what the one line says)
CASES = [
    ("spectra", "half", "s.safetensors: damaged spectra file"),
    ("spectra", "flip", "s.safetensors: damaged spectra file (Error while deserializing header"),
    ("spectra", "empty", "not a spectra file"),
    ("sidecar", "half", "s.safetensors.json: not valid JSON"),
    ("sidecar", "flip", "s.safetensors.json: not valid JSON"),
    ("sidecar", _json_edit(lambda o: o["maps"][0].update(samples=40)),
     "field 'maps[0].samples' is 40, but s.safetensors holds 4"),
    ("sidecar", _json_edit(lambda o: o["meta"].update(model="resnet50")), "field 'meta.model'"),
    ("sidecar", _json_edit(lambda o: o.pop("maps")), "field 'maps' is missing"),
    ("checkpoint", "half", "c.pt: not a readable checkpoint (truncated or damaged"),
    ("checkpoint", "flip", "c.pt: not a readable checkpoint (damaged torch.save file"),
    ("checkpoint", "empty", "c.pt: not a readable checkpoint (empty file)"),
    ("checkpoint", "edit", "c.pt: has a malformed 'iteration'"),
    ("width spec", "half", "w.json: invalid JSON"),
    ("width spec", "flip", "w.json: not UTF-8 text"),
    ("width spec", "empty", "w.json: invalid JSON at line 1 column 1"),
    ("width spec", _json_edit(lambda o: o["widths"].__setitem__(0, 65)), "stem=65 is not a mul"),
    ("width spec", _json_edit(lambda o: o.pop("widths")), "missing field 'widths'"),
    ("dims", "half", "dims.json: invalid JSON"),
    ("dims", "flip", "dims.json: not UTF-8 text"),
    ("dims", "empty", "dims.json: invalid JSON at line 1 column 1"),
    ("dims", _json_edit(lambda o: o.update({"backbone.body.conv1:out": -3})), "conv1:out"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "damage", "message"), CASES)
def test_a_damaged_file_is_one_line_of_ours(files, run_cli, kind, damage, message):
    path, command = files[kind]
    if damage == "edit":
        _edit_checkpoint(path)
    else:
        change = DAMAGE[damage] if isinstance(damage, str) else damage
        path.write_bytes(change(path.read_bytes()))
    result = run_cli(*command)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
