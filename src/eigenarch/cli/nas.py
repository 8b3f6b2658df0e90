"""``eigenarch detnas count | supernet | search | retrain | pretrain``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from eigenarch.cli import train as train_cli
from eigenarch.cli.options import App, AsJson, Device, taking_options_of
from eigenarch.cli.tables import metrics_table
from eigenarch.distributed import init_distributed, is_main
from eigenarch.errors import EigenarchError
from eigenarch.nas.evolution import STRATEGIES, SearchConfig
from eigenarch.nas.shufflenet import (
    CHOICES,
    SearchSpace,
    choice_costs,
    detnas_config,
    format_path,
    load_detnas_file,
    macs_range,
    make_space,
    path_cost,
    read_detnas_config,
)
from eigenarch.nas.supernet import (
    DetectionSearch,
    SupernetConfig,
    pretrain_supernet,
    search_supernet,
    train_supernet,
)
from eigenarch.options import parse_device, parse_ints, parse_number
from eigenarch.progress import console
from eigenarch.train.loop import TrainConfig, run_device, train_detector
from eigenarch.train.pretrain import PretrainConfig, load_resume

detnas = App(
    help="DetNAS: ShuffleNetV2 supernet trained on detection, evolutionary search, retraining.",
    no_args_is_help=True,
)

SPACE = typer.Option(1, help="Search space 1 (20 blocks, ~300M) or 2 (40 blocks, ~1.3G).")
STEM = typer.Option(None, help="Replace the space's stem width (e.g. narrow test nets).")
CHANNELS = typer.Option(
    None, metavar="N,...", help="Replace the four stage widths, e.g. 32,64,128,256."
)
DEPTHS = typer.Option(None, metavar="N,...", help="Replace the four stage depths, e.g. 1,1,2,1.")


def _space(space: int, stem: int | None, channels: str | None, depths: str | None):
    return make_space(
        space,
        stem,
        parse_ints(channels, "--channels") if channels else None,
        parse_ints(depths, "--depths") if depths else None,
    )


def parse_flops(text: str) -> float:
    """``"300e6"``, ``"300M"``, ``"1.3G"`` -> a number of MACs."""
    value = parse_number(text)
    if not 0 < value < math.inf:
        raise EigenarchError(f"--flops {text!r}: expected a positive number (K/M/G allowed)")
    return value


def resolve_path(text: str, space: SearchSpace) -> dict[str, Any]:
    """A DetNAS network description from a search folder, a path file, or ``0,1,2,...``."""
    candidate = Path(text)
    if candidate.is_dir():
        candidate = candidate / "best_path.json"
        if not candidate.is_file():
            raise EigenarchError(f"--path {text}: no best_path.json (is it a search folder?)")
    if candidate.is_file():
        config = load_detnas_file(candidate)
        if config is None or config.get("path") is None:
            raise EigenarchError(f"--path {candidate}: not a DetNAS path file (best_path.json)")
        return config
    if "," not in text:
        raise EigenarchError(
            f"--path {text!r}: not a search folder, a path file, or comma-separated choices"
        )
    return detnas_config(space, parse_ints(text, "--path"))


@detnas.command("count")
def count(
    path: str | None = typer.Option(
        None, metavar="N,...", help="Choices 0..3 per block, comma-separated."
    ),
    space: int = SPACE,
    stem: int | None = STEM,
    channels: str | None = CHANNELS,
    depths: str | None = DEPTHS,
    as_json: AsJson = False,
) -> None:
    """MACs and params (224 px classifier, SPEC section 4) of a path, or the space's range."""
    search_space = _space(space, stem, channels, depths)
    info: dict[str, Any] = {"space": search_space.to_dict(), "blocks": search_space.num_blocks}
    if path is not None:
        choices = resolve_path(path, search_space)
        search_space, chosen = read_detnas_config(choices)
        macs, params = path_cost(search_space, chosen)
        info.update(path=format_path(chosen), macs=macs, params=params)
    else:
        low, high = macs_range(search_space)
        info.update(min_macs=low, max_macs=high, fixed_macs=choice_costs(search_space)[0][0])
    if as_json:
        print(json.dumps(info))
        return
    table = Table("what", "value")
    table.add_row(
        "space",
        f"stem {search_space.stem}, stages {'/'.join(map(str, search_space.channels))} x "
        f"{'/'.join(map(str, search_space.depths))} blocks",
    )
    for key, value in list(info.items())[2:]:
        shown = f"{value / 1e6:.2f} M" if key.endswith(("macs", "params")) else str(value)
        table.add_row(key.replace("_", " "), shown)
    console.print(table)


@detnas.command("supernet")
@taking_options_of(train_cli.train, exclude=("backbone",))
def supernet(
    options: dict[str, Any],
    space: int = SPACE,
    stem: int | None = STEM,
    channels: str | None = CHANNELS,
    depths: str | None = DEPTHS,
    holdout: float = typer.Option(
        0.05, help="Training images held out for the search: a fraction (<1) or a count."
    ),
    sync_bn: bool = typer.Option(True, help="SyncBN under torchrun on GPUs."),
) -> None:
    """Train the supernet on detection, one uniformly sampled path per iteration.

    Takes the options of `eigenarch train` but --backbone (the space's options build it);
    --init may be a supernet pre-trained by `eigenarch detnas pretrain`.
    """
    fields, resume = train_cli.train_options(options)
    backbone = detnas_config(_space(space, stem, channels, depths), None)
    cfg = SupernetConfig(**{**fields, "backbone": backbone}, holdout=holdout, sync_bn=sync_bn)
    out = cfg.out
    init_distributed(run_device(out, resume, cfg.device))
    summary = train_supernet(cfg, resume=resume)
    if is_main():
        console.print(
            f"supernet trained for {summary['iterations']} iterations on "
            f"{summary['train_images']} images ({summary['holdout_images']} held out); "
            f"run written to {out}",
            highlight=False,
        )


@detnas.command("search")
def search(
    supernet: Path = typer.Option(..., help="A checkpoint of `eigenarch detnas supernet`."),
    out: Path = typer.Option(..., help="Search folder: generations, result, best path, plots."),
    flops: str = typer.Option("300M", help="MACs limit of a path at 224 px (300e6, 1.3G, ...)."),
    data: Path | None = typer.Option(None, help="COCO-layout folder (default: the supernet's)."),
    strategy: str = typer.Option("evolution", help=f"{' or '.join(STRATEGIES)}."),
    population: int = typer.Option(50, help="Candidates per generation."),
    topk: int = typer.Option(10, help="Parents: the best paths evaluated so far."),
    mutations: int = typer.Option(20, help="Children by mutation per generation."),
    crossovers: int = typer.Option(20, help="Children by crossover per generation."),
    mutation_prob: float = typer.Option(0.1, help="Probability of redrawing each choice."),
    generations: int = typer.Option(20, help="Generations (evaluations = population x this)."),
    bn_images: int = typer.Option(500, help="Training images for BatchNorm recalibration."),
    batch_size: int = typer.Option(2, help="Images per forward pass."),
    seed: int = typer.Option(0, help="Random seed: same seed, same search."),
    device: Device = None,
    resume: bool = typer.Option(False, help="Continue OUT's search with its saved settings."),
    as_json: AsJson = False,
) -> None:
    """Evolutionary (or random) search of a trained supernet under a FLOPs limit.

    Fitness is bbox AP on the supernet's held-out training images, after BatchNorm
    recalibration on a fixed subset of the other training images. Under torchrun each
    process evaluates its own candidates.
    """
    settings = DetectionSearch(
        supernet=str(supernet),
        out=str(out),
        search=SearchConfig(
            max_macs=parse_flops(flops),
            strategy=strategy,
            population=population,
            topk=topk,
            mutations=mutations,
            crossovers=crossovers,
            mutation_prob=mutation_prob,
            generations=generations,
            seed=seed,
        ),
        data=str(data) if data is not None else None,
        bn_images=bn_images,
        batch_size=batch_size,
        device=parse_device(device),
    )
    init_distributed(settings.device)
    result = search_supernet(settings, resume=resume)
    if is_main():
        _print_search(result, out, as_json)


def _print_search(result: dict[str, Any], out: Path, as_json: bool) -> None:
    """A search's generations as a table and its best path (or the result as JSON)."""
    if as_json:
        print(json.dumps(result))
        return
    table = Table("generation", "evaluated", "best AP", "mean AP", "best so far")
    for row in result["generations"]:
        table.add_row(
            str(row["generation"]),
            str(row["evaluated"]),
            f"{100 * row['best']:.2f}",
            f"{100 * row['mean']:.2f}",
            f"{100 * row['best_so_far']:.2f}",
        )
    console.print(table)
    best = result["best"]
    console.print(
        f"best path {result['best_path']}: {best['macs'] / 1e6:.1f} M MACs, "
        f"{result['best_params'] / 1e6:.2f} M params, bbox AP {100 * best['fitness']:.2f} "
        f"({result['evaluations']} evaluations); written to {out}",
        highlight=False,
    )
    console.print("choices: " + ", ".join(f"{k}={name}" for k, name in enumerate(CHOICES)))


@detnas.command("retrain")
@taking_options_of(train_cli.train, exclude=("backbone",))
def retrain(
    options: dict[str, Any],
    path: str | None = typer.Option(
        None, help="A search folder, its best_path.json, or choices 0..3 comma-separated."
    ),
    space: int = SPACE,
    stem: int | None = STEM,
    channels: str | None = CHANNELS,
    depths: str | None = DEPTHS,
) -> None:
    """Train a detector on the stand-alone network of a path, as `eigenarch train` does.

    Takes every option of `eigenarch train` but --backbone (--data, --out, --init, --iters,
    --resume, ...). For ImageNet-style pre-training first, run `eigenarch pretrain --backbone
    SEARCH/best_path.json` and pass its output as --init.
    """
    fields, resume = train_cli.train_options(options)
    if not resume:
        if path is None:
            raise EigenarchError("--path: required (a search folder, a path file or choices)")
        fields["backbone"] = resolve_path(path, _space(space, stem, channels, depths))
    init_distributed(run_device(fields["out"], resume, fields["device"]))
    metrics = train_detector(TrainConfig(**fields), resume=resume)
    if is_main():
        console.print(metrics_table(metrics))
        console.print(f"run written to {fields['out']}", highlight=False)


@detnas.command("pretrain")
@taking_options_of(train_cli.pretrain, exclude=("backbone",))
def pretrain(
    options: dict[str, Any],
    space: int = SPACE,
    stem: int | None = STEM,
    channels: str | None = CHANNELS,
    depths: str | None = DEPTHS,
) -> None:
    """ImageNet-style pre-training of the supernet on an ImageFolder, a sampled path per step.

    Takes the options of `eigenarch pretrain` but --backbone (--data, --out, --epochs,
    --batch-size, --size, --resume, ...); the output initialises `detnas supernet --init`.
    """
    options, resume = train_cli.pretrain_options(options)
    options["backbone"] = detnas_config(_space(space, stem, channels, depths), None)
    out = Path(options["out"])
    saved = load_resume(out) if resume else None  # OUT.resume, read once
    init_distributed(saved.config.device if saved else options["device"])
    summary = pretrain_supernet(PretrainConfig(**options), resume=saved or False)
    if is_main():
        console.print(
            f"val top-1 (last sampled path) {summary['val_accuracy']:.3f}; "
            f"weights written to {options['out']}",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add ``eigenarch detnas ...`` to the main app."""
    app.add_typer(detnas, name="detnas")
