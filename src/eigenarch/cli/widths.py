"""``eigenarch count`` and ``eigenarch search``: backbone costs, Intrinsic Architecture Search."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Column, Table

from eigenarch.errors import EigenarchError
from eigenarch.models.backbones import PAPER_COSTS, spec_cost
from eigenarch.models.detector import backbone_spec
from eigenarch.options import parse_ints, parse_threshold
from eigenarch.report.search import search_to_file
from eigenarch.widths.cost import (
    DEFAULT_DEPTHS,
    RESNET50_WIDTHS,
    ModelCost,
    resnet_cost,
    uniform_widths,
)
from eigenarch.widths.inflation import inflated_widths, inflation_note
from eigenarch.widths.search import WidthSearchResult
from eigenarch.widths.spec import WidthSpec, load_width_spec


class Side(str, Enum):
    in_ = "in"
    out = "out"
    both = "both"


class Norm(str, Enum):
    gn = "gn"
    bn = "bn"
    frozen_bn = "frozen_bn"


def _stage_label(stage: str, widths: tuple[int, ...]) -> str:
    if not widths:
        return ""
    if stage == "stem":
        return str(widths[0])
    if stage == "fc":
        return ""
    s = int(stage[-1])
    return f"{widths[2 * s - 1]}/{widths[2 * s]}"


def cost_table(cost: ModelCost, title: str | None = None) -> Table:
    """Per-stage widths (a ResNet's bottleneck/output, else the stage's output width),
    blocks, MACs and params, with totals."""
    table = Table("stage", "widths", "blocks", "MACs (G)", "params (M)", "% params", title=title)
    last = {cost.stage_of(layer.name): str(layer.out_channels) for layer in cost.layers}
    for stage, (macs, params) in cost.stages().items():
        resnet = bool(cost.depths) and stage.startswith("layer")
        blocks = str(cost.depths[int(stage[-1]) - 1]) if resnet else ""
        table.add_row(
            stage,
            _stage_label(stage, cost.widths) if cost.widths else last[stage],
            blocks,
            f"{macs / 1e9:.3f}",
            f"{params / 1e6:.3f}",
            f"{100 * params / cost.params:.1f}",
        )
    table.add_row(
        "total",
        "",
        str(sum(cost.depths)) if cost.depths else "",
        f"{cost.macs / 1e9:.3f}",
        f"{cost.params / 1e6:.3f}",
        "100.0",
        style="bold",
    )
    return table


def comparison_table(found: ModelCost, base: ModelCost) -> Table:
    """Per-stage widths, MACs and params of a search result beside its base model."""
    table = Table(
        "stage",
        "widths",
        "MACs (G)",
        "params (M)",
        "params",
        title="base ResNet -> searched ResiaNet",
    )
    rows = [
        (stage, base.widths, found.widths, *b, *f)
        for (stage, b), f in zip(base.stages().items(), found.stages().values(), strict=True)
    ]
    rows.append(("total", (), (), base.macs, base.params, found.macs, found.params))
    for stage, bw, fw, bm, bp, fm, fp in rows:
        old, new = (_stage_label(stage, bw), _stage_label(stage, fw)) if bw else ("", "")
        widths = f"{old} -> {new}" if old else ""
        table.add_row(
            stage,
            widths,
            f"{bm / 1e9:.3f} -> {fm / 1e9:.3f}",
            f"{bp / 1e6:.3f} -> {fp / 1e6:.3f}",
            f"{100 * (fp / bp - 1):+.1f}%",
            style="bold" if stage == "total" else None,
        )
    return table


def tie_table(result: WidthSearchResult) -> Table:
    """Every searched width: its groups, base width, adjusted and searched width."""
    table = Table(
        Column("width", overflow="fold"), "base", "adjusted", "searched",
        title="base -> searched widths",
    )  # fmt: skip
    for name, (low, high), adjusted, width in zip(
        result.ties, result.base_ranges, result.adjusted, result.widths, strict=True
    ):
        base = str(low) if low == high else f"{low}-{high}"
        kept = " (kept: no map)" if name in result.fixed else ""
        table.add_row(name, base, f"{adjusted:.1f}", f"{width}{kept}")
    table.add_row(
        "total",
        f"{result.base_macs / 1e9:.3f} G / {result.base_params / 1e6:.3f} M",
        "",
        f"{result.macs / 1e9:.3f} G / {result.params / 1e6:.3f} M",
        style="bold",
    )
    return table


def count(
    model: str = typer.Option(
        None, help="A backbone builder name: resnet18, mobilenet_v3_large, detnet59, ..."
    ),
    backbone: str = typer.Option(
        None, help="What `eigenarch train --backbone` takes: a name, nine widths or a spec file."
    ),
    widths: str = typer.Option(
        None, help="Nine widths stem,b2,o2,b3,o3,b4,o4,b5,o5.", show_default="ResNet-50's"
    ),
    depths: str = typer.Option(None, help="Blocks per stage.", show_default="3,4,6,3"),
    spec: Path = typer.Option(None, help="Width spec JSON (e.g. from `eigenarch search`)."),
    multiplier: float = typer.Option(
        None, help="Uniform width multiplier applied to the widths, each rounded to --multiple."
    ),
    multiple: int = typer.Option(32, help="Rounding multiple for --multiplier."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
) -> None:
    """Analytic MACs and params (conv + fc weights, 224x224 input, 1000 classes) of a backbone."""
    chosen = [o for o, v in (("--model", model), ("--backbone", backbone), ("--spec", spec))
              if v is not None]  # fmt: skip
    if len(chosen) > 1:
        raise EigenarchError(f"give one of {', '.join(chosen)}")
    if model is not None or backbone is not None:
        if widths is not None or depths is not None or multiplier is not None:
            raise EigenarchError(
                f"{chosen[0]} gives the widths; drop --widths/--depths/--multiplier"
            )
        text = model if model is not None else backbone
        cost = spec_cost(backbone_spec(text, "bn", own_norm=True))
        if as_json:
            typer.echo(json.dumps(_cost_json(cost, None)))
        else:
            Console().print(cost_table(cost, text))
            if text in PAPER_COSTS:
                Console().print(PAPER_COSTS[text], highlight=False)
        return
    if spec is not None:
        if widths is not None or depths is not None:
            raise EigenarchError("--spec gives widths and depths; drop --widths/--depths")
        loaded = load_width_spec(spec)
        base, blocks = loaded.widths, loaded.depths
    else:
        base = parse_ints(widths, "--widths") if widths is not None else RESNET50_WIDTHS
        blocks = parse_ints(depths, "--depths") if depths is not None else DEFAULT_DEPTHS
    if multiplier is not None:
        base = uniform_widths(multiplier, base, multiple)
    cost = resnet_cost(base, blocks)
    if as_json:
        typer.echo(json.dumps(_cost_json(cost, multiplier)))
        return
    title = None if multiplier is None else f"widths x{multiplier:g}, rounded to {multiple}"
    Console().print(cost_table(cost, title))


def _cost_json(cost: ModelCost, multiplier: float | None) -> dict:
    return {
        "widths": list(cost.widths),
        "depths": list(cost.depths),
        "macs": cost.macs,
        "params": cost.params,
        "multiplier": multiplier,
        "stages": {k: {"macs": m, "params": p} for k, (m, p) in cost.stages().items()},
        "layers": [layer._asdict() for layer in cost.layers],
    }


def search(
    out: Path = typer.Option(..., help="Width spec JSON to write."),
    target: str = typer.Option(
        ...,
        help="Budget: macs=base or params=base (the analysed model's cost), macs=resnet50, "
        "params=resnet50, macs=<number> or params=<number> (K/M/G suffix allowed).",
    ),
    model: str = typer.Option(
        None,
        help="The analysed backbone: a builder name (resnet18, mobilenet_v3_large, "
        "regnet_y_400mf, detnet59, ...), file.py:factory / package.module:factory (calls your "
        "function: runs your code) or a width-spec file.",
        show_default="a bottleneck ResNet of --depths",
    ),
    spectra: Path = typer.Option(None, help="Saved spectra (eigenarch.spectrum.Spectra)."),
    dims: Path = typer.Option(None, help="JSON object {map name: intrinsic dimensionality}."),
    threshold: str = typer.Option(
        None,
        help="Eigenvalue threshold T for --spectra; 1e-3.5 means 10^-3.5.",
        show_default="1e-3",
    ),
    multiple: int = typer.Option(32, help="Widths are multiples of this."),
    side: Side = typer.Option(
        Side.in_,
        help="Maps read by the next layer (in), produced by "
        "a layer (out), or the larger of the two (both).",
    ),
    depths: str = typer.Option(
        "3,4,6,3", help="Blocks per stage of the analysed ResNet (without --model)."
    ),
    norm: Norm = typer.Option(
        None,
        help="Normalisation recorded in the width spec (GroupNorm widths are multiples of "
        "--gn-groups).",
        show_default="gn (ConvNeXt, a factory: their own)",
    ),
    gn_groups: int = typer.Option(32, help="GroupNorm groups recorded in the width spec."),
) -> None:
    """Intrinsic Architecture Search: shrink, adjust and expand a backbone's widths to a budget."""
    cut = None if threshold is None else parse_threshold(threshold)
    found = search_to_file(
        out, target, model, spectra, dims, cut, multiple, side.value,
        parse_ints(depths, "--depths"), None if norm is None else norm.value, gn_groups,
    )  # fmt: skip
    stdout = Console()
    if isinstance(found.spec, WidthSpec):
        stdout.print(comparison_table(found.found, found.base))
    else:
        stdout.print(tie_table(found.result))
    stdout.print(
        f"omega {found.result.omega:.6f}, target {found.metric} {found.result.target:,}; "
        f"parameter reduction {100 * (1 - found.found.params / found.base.params):.1f}%, MACs "
        f"reduction {100 * (1 - found.found.macs / found.base.macs):.1f}%; wrote {out}",
        highlight=False,
    )
    if note := inflation_note(inflated_widths(found.result)):
        Console(stderr=True).print(note, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``count`` and ``search`` to the main CLI."""
    app.command("count")(count)
    app.command("search")(search)
