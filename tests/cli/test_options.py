"""One option per concept across commands: names, help, defaults, the list rule (issue 20.2)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import typer

from eigenarch.cli.app import app
from eigenarch.cli.options import comma_list
from eigenarch.train.loop import TrainConfig
from eigenarch.train.pretrain import PretrainConfig


def _commands(command: Any, path: str = "eigenarch"):
    """Every command of the CLI as (path, click command), groups included."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, f"{path} {name}")


COMMANDS = dict(_commands(typer.main.get_command(app)))


def _option(command: Any, name: str) -> Any:
    return next(
        (p for p in command.params if p.param_type_name == "option" and p.name == name), None
    )


@pytest.mark.parametrize("name", ["device", "workers", "sides", "include", "threshold", "as_json"])
def test_a_shared_option_reads_the_same_in_every_command(name):
    found = {path: _option(c, name) for path, c in COMMANDS.items() if _option(c, name)}
    assert len(found) >= 2, f"--{name} is in fewer than two commands: {sorted(found)}"
    helps = {path: o.help for path, o in found.items()}
    assert len(set(helps.values())) == 1, helps  # one help text: one meaning
    assert len({tuple(o.opts) for o in found.values()}) == 1


def test_device_defaults_to_the_same_everywhere():
    found = {path: _option(c, "device") for path, c in COMMANDS.items() if _option(c, "device")}
    assert {"eigenarch train", "eigenarch spectrum", "eigenarch demo", "eigenarch evaluate",
            "eigenarch detnas search"} <= set(found)  # fmt: skip
    assert {o.default for o in found.values()} == {None}  # cuda if available, else cpu


def test_no_command_takes_a_repeatable_option():
    repeatable = [
        f"{path} {opt.opts[0]}"
        for path, command in COMMANDS.items()
        for opt in command.params
        if opt.param_type_name == "option" and opt.multiple
    ]
    assert repeatable == []  # lists are one comma-separated value


def test_a_repeated_list_option_is_refused_in_one_line(run_cli, tmp_path):
    r = run_cli("spectrum", "--model", "resnet18", "--data", tmp_path, "--include", "fc",
                "--include", "layer4.*")  # fmt: skip
    assert r.code == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--include given more than once" in lines[0]
    assert "comma-separated" in lines[0]
    # an option and its --x=value form are one option, before the command too
    r = run_cli("--limit=depth=300", "--limit", "groups=9", "count")
    assert r.code == 2 and "--limit given more than once" in r.stderr
    r = run_cli("evaluate", "--detections", "d.json", "--iou-type", "bbox", "--iou-type", "segm")
    assert r.code == 2 and "--iou-type given more than once" in r.stderr


def test_a_repeated_single_value_option_keeps_the_last(run_cli):
    base = run_cli("count", "--json")
    r = run_cli("count", "--multiplier", "0.5", "--multiplier", "1", "--json")
    assert r.code == 0, r.stderr  # not refused: the last --multiplier counts
    assert json.loads(r.stdout) == {**json.loads(base.stdout), "multiplier": 1.0}


def test_every_comma_separated_option_is_a_list_option():
    helps = {
        f"{path} {o.opts[0]}": (o.help or "", o.metavar or "")
        for path, command in COMMANDS.items()
        for o in command.params
        if o.param_type_name == "option"
    }
    comma = {k for k, (help_, _) in helps.items() if "comma-separated" in help_.lower()}
    lists = {k for k, (_, metavar) in helps.items() if metavar.endswith(",...")}
    assert len(lists) >= 15
    several_forms = {k for k in comma if k.endswith(("--backbone", "--path"))}  # a file or a list
    assert comma - lists <= several_forms


def test_values_after_the_end_of_options_are_not_options(run_cli):
    # "--" ends the options: a value equal to an option name after it is not counted
    r = run_cli("spectrum", "show", "--threshold", "1e-3", "--", "--threshold")
    assert "given more than once" not in r.stderr


def test_comma_list():
    assert comma_list("a,b") == ["a", "b"]
    assert comma_list(" a , b ,") == ["a", "b"]
    assert comma_list("backbone.*") == ["backbone.*"]
    assert comma_list(None) is None


def _defaults(command: Any) -> dict:
    return {p.name: p.default for p in command.params if p.param_type_name == "option"}


@pytest.mark.parametrize(
    ("path", "config", "required"),
    [
        ("eigenarch train", TrainConfig(data="", out=""), {"data", "out", "device"}),
        ("eigenarch detnas retrain", TrainConfig(data="", out=""), {"data", "out", "device"}),
        ("eigenarch pretrain", PretrainConfig(data=None, out=""), {"data", "out", "device"}),
    ],
)
def test_option_defaults_are_the_dataclass_defaults(path, config, required):
    defaults = _defaults(COMMANDS[path])
    fields = {f.name for f in dataclasses.fields(config)}
    shared = fields & set(defaults) - required
    assert len(shared) >= 10
    for name in shared:
        value = getattr(config, name)
        expected = ",".join(map(str, value)) if isinstance(value, tuple | list) else value
        assert defaults[name] == expected, f"{path} --{name}: {defaults[name]!r} != {expected!r}"


def test_detnas_commands_take_trains_options_but_backbone():
    train = _defaults(COMMANDS["eigenarch train"])
    for path in ("eigenarch detnas supernet", "eigenarch detnas retrain"):
        own = _defaults(COMMANDS[path])
        assert "backbone" not in own
        assert {k: v for k, v in own.items() if k in train} == {
            k: v for k, v in train.items() if k not in ("backbone", "trust_factory")
        }
    pretrain = _defaults(COMMANDS["eigenarch pretrain"])
    own = _defaults(COMMANDS["eigenarch detnas pretrain"])
    assert set(pretrain) - set(own) == {"backbone", "trust_factory"}
