"""``eigenarch count``, ``search`` and ``resize``: backbone costs, Intrinsic Architecture
Search, resizing a trained model with its weights."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from eigenarch.cli.options import AsJson, Threshold, trusting
from eigenarch.cli.tables import comparison_table, cost_table, tie_table
from eigenarch.errors import EigenarchError
from eigenarch.models.backbone import BackboneOptions, load_backbone, parse_backbone
from eigenarch.models.builders import PAPER_COSTS
from eigenarch.models.detector import TORCHVISION_KINDS
from eigenarch.models.resianet import ResiaNetBackbone
from eigenarch.options import parse_ints, parse_threshold
from eigenarch.report.inherited import resize_checkpoint
from eigenarch.report.width_search import search_to_file
from eigenarch.widths.cost import DEFAULT_DEPTHS, RESNET50_WIDTHS, ModelCost
from eigenarch.widths.inflation import inflated_widths, inflation_note


class Side(str, Enum):
    in_ = "in"
    out = "out"
    both = "both"


class Norm(str, Enum):
    gn = "gn"
    bn = "bn"
    frozen_bn = "frozen_bn"


def count(
    model: str = typer.Option(
        None, help="A backbone builder name: resnet18, mobilenet_v3_large, detnet59, ..."
    ),
    backbone: str = typer.Option(
        None, help="What `eigenarch train --backbone` takes: a name, nine widths or a spec file."
    ),
    widths: str = typer.Option(
        None,
        metavar="N,...",
        help="Nine widths stem,b2,o2,b3,o3,b4,o4,b5,o5.",
        show_default="ResNet-50's",
    ),
    depths: str = typer.Option(
        None, metavar="N,...", help="Blocks per stage.", show_default="3,4,6,3"
    ),
    spec: Path = typer.Option(None, help="Width spec JSON (e.g. from `eigenarch search`)."),
    multiplier: float = typer.Option(
        None, help="Uniform width multiplier applied to the widths, each rounded to --multiple."
    ),
    multiple: int = typer.Option(32, help="Rounding multiple for --multiplier."),
    as_json: AsJson = False,
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
        cost = parse_backbone(text, BackboneOptions("bn", own_norm=True)).cost()
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
        counted = load_backbone(spec)
    else:
        base = parse_ints(widths, "--widths") if widths is not None else RESNET50_WIDTHS
        blocks = parse_ints(depths, "--depths") if depths is not None else DEFAULT_DEPTHS
        counted = ResiaNetBackbone(tuple(base), tuple(blocks), "bn")  # a cost needs no norm
    if multiplier is not None:
        counted = counted.scaled(multiplier, multiple)
    cost = counted.cost()
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
    threshold: Threshold = None,
    multiple: int = typer.Option(32, help="Widths are multiples of this."),
    side: Side = typer.Option(
        Side.in_,
        help="Maps read by the next layer (in), produced by "
        "a layer (out), or the larger of the two (both).",
    ),
    depths: str = typer.Option(
        "3,4,6,3",
        metavar="N,...",
        help="Blocks per stage of the analysed ResNet (without --model).",
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
    if found.spec.width_names():
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


def resize(
    spec: Path = typer.Argument(
        ..., help="Width spec JSON of the backbone to resize to (e.g. from `eigenarch search`)."
    ),
    source: Path = typer.Option(
        ...,
        "--from",
        help="The trained checkpoint: a detector of `eigenarch train` (or a classifier of "
        "`eigenarch pretrain`); with --model, a checkpoint of torchvision's reference scripts "
        "(model_N.pth) or a state dict of that builder's detector.",
    ),
    spectra: Path = typer.Option(
        ...,
        help="Spectra of that same model (`eigenarch spectrum --model CHECKPOINT`; with "
        "--model: `--model NAME --weights CHECKPOINT`).",
    ),
    model: str = typer.Option(
        None,
        help="The detector --from is of: a torchvision builder ("
        + ", ".join(TORCHVISION_KINDS)
        + ") or file.py:factory / package.module:factory returning a FasterRCNN on a "
        "BackboneWithFPN (calls your function: runs your code).",
        show_default="--from is a checkpoint of ours",
    ),
    out: Path = typer.Option(..., help="The resized checkpoint to write (for `train --init`)."),
    force: bool = typer.Option(False, help="Overwrite --out if it exists."),
    seed: int = typer.Option(0, help="Seed of the fresh weights of channels that grow."),
) -> None:
    """Resize a trained model to a width spec, keeping what it learned (SPEC section 6c)."""
    done = resize_checkpoint(spec, source, spectra, out, force, seed, model)
    old, new = done.source.searched_widths(), done.target.searched_widths()
    kind = "" if model is None else f" --kind {model}"
    console = Console()
    console.print(
        f"resized the {done.kind} of {source}: widths {','.join(map(str, old))} -> "
        f"{','.join(map(str, new))}; wrote {out} (eigenarch train{kind} --backbone {spec} "
        f"--init {out}, with the source run's other options)",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``count``, ``search`` and ``resize`` to the main CLI."""
    app.command("count")(trusting(count))
    app.command("search")(trusting(search))
    app.command("resize")(trusting(resize))
