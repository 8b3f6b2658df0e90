"""Parsers of the option types several commands share: thresholds, K/M/G numbers, integer
lists, budgets and map sides. Each gives a one-line error naming the option."""

from __future__ import annotations

import math
import re
import shlex
from typing import Any

import torch

from eigenarch.errors import EigenarchError

METRICS = ("macs", "params")
_SUFFIX = {"K": 1e3, "M": 1e6, "G": 1e9}
#: A power of ten with a fractional exponent, such as 1e-3.5.
_POWER = re.compile(r"\s*(\d*\.?\d+)?[eE]([+-]?\d*\.?\d+)\s*")

#: The two sides of a conv / linear layer whose maps are analysed: its input and its output.
MAP_SIDES = ("in", "out")


def parse_threshold(text: str, option: str = "--threshold") -> float:
    """``"1e-3"`` -> 0.001; ``"1e-3.5"`` (a fractional exponent) -> ``10 ** -3.5``."""
    try:
        value = float(text)
    except ValueError:
        match = _POWER.fullmatch(text)
        value = float(match[1] or 1) * 10 ** float(match[2]) if match else float("nan")
    if not 0 < value < 1:
        raise EigenarchError(
            f"{option} {text!r}: expected a number between 0 and 1 such as 1e-3 or 1e-3.5"
        )
    return value


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """``"3,4,6,3"`` -> ``(3, 4, 6, 3)``; a one-line error names the option otherwise."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise EigenarchError(f"{option} {text!r}: expected comma-separated integers") from None


def parse_number(text: str) -> float:
    """``"300e6"``, ``"300M"``, ``"1.3G"``, ``"20K"`` -> the number; NaN if it is none."""
    scale = _SUFFIX.get(text[-1:].upper(), 1.0)
    try:
        return float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        return math.nan


def parse_target(text: str) -> tuple[str, float | str]:
    """``"macs=base"``, ``"macs=resnet50"``, ``"params=20M"``, ``"macs=4.1e9"`` ->
    ``(metric, number or name)``."""
    metric, sep, value = text.partition("=")
    if not sep or metric not in METRICS or not value:
        raise EigenarchError(
            f"--target {text!r}: expected macs=<value> or params=<value>, the value a number "
            "(K/M/G suffix allowed), base (the analysed model's cost) or resnet50"
        )
    if value.lower().startswith("resnet") or value.lower() == "base":
        return metric, value.lower()
    number = parse_number(value)
    if not 1 <= number < math.inf:
        raise EigenarchError(f"--target {text!r}: {value!r} is not a positive number or resnet50")
    return metric, number


def parse_sides(text: str) -> tuple[str, ...]:
    """``"in,out"`` -> ``("in", "out")``: the maps ``--sides`` selects."""
    sides = tuple(part.strip() for part in text.split(","))
    if not sides or any(side not in MAP_SIDES for side in sides):
        raise EigenarchError(f"--sides {text!r}: expected in, out or in,out")
    return sides


def parse_device(text: str | None) -> str:
    """``--device``: ``cpu`` or ``cuda[:N]``; by default ``cuda`` where there is one."""
    device = text or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EigenarchError(f"--device {device}: CUDA is not available on this machine")
    return device


def command_line(
    words: list[str],
    options: dict[str, Any],
    on_by_default: tuple[str, ...] = (),
) -> str:
    """``eigenarch VERB --name value ...`` of ``options`` (``name_x`` -> ``--name-x``;
    ``None`` and ``False`` left out, ``True`` a bare flag, a list comma-joined; flags
    ``on_by_default``: ``True`` left out, ``False`` as ``--no-name``), quoted for a POSIX
    shell."""
    parts = list(words)
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key in on_by_default:
            parts += [] if value else ["--no-" + flag[2:]]
        elif value is None or value is False:
            continue
        elif value is True:
            parts.append(flag)
        elif isinstance(value, list | tuple):
            parts += [flag, ",".join(map(str, value))]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)
