"""``eigenarch demo``: the paper's whole pipeline on the embedded shapes data, resumably.

Steps: data -> pre-training (the "I" start) -> detector training from that start (I) and
from scratch (S) -> eigenspectrum dynamics and the I-vs-S comparison -> Intrinsic
Architecture Search (ResiaNet -- or, with ``--backbone detnet59``, DetiaNet -- S (MACs),
I (MACs), I (params)) and the uniform-multiplier baseline -> retraining of every searched
backbone (Table 1, the paper's 2x column) -> the rows each remaining claim reads: the (MACs)
rows at half the iterations (the paper's 1x), Table 2 (BatchNorm classifiers) and Mask
R-CNN (each on by default, skipped with its ``--no-`` option) -> with ``--inherit``, the
searched backbones started from the fine-tuned I run (``resize``, SPEC section 6c) -> the
report. Each step records its outputs in
``state.json``; re-running skips finished steps and resumes an interrupted training run
from its last checkpoint (``--force`` redoes everything).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from eigenarch.data.shapes import (
    ShapesClsConfig,
    ShapesConfig,
    generate_shapes,
    generate_shapes_cls,
)
from eigenarch.errors import EigenarchError
from eigenarch.evaluation.coco import COCO_METRICS
from eigenarch.io import atomic_write_json
from eigenarch.models.backbone import Backbone, load_backbone
from eigenarch.models.builders import TIMM, BuilderBackbone
from eigenarch.models.resianet import ResiaNetBackbone
from eigenarch.parallel import run_parallel
from eigenarch.progress import console
from eigenarch.report.claims import INHERITED, QUARTER, mean_std, paper_claims, welch_p
from eigenarch.report.compare import Comparison, compare_spectra, final_spectra
from eigenarch.report.dynamics import compute_dynamics, load_dynamics
from eigenarch.report.html import write_report
from eigenarch.report.inherited import resize_checkpoint
from eigenarch.spectrum import Spectra
from eigenarch.train.checkpoint import CLASSIFIER_FORMAT, load_checkpoint
from eigenarch.train.loop import TrainConfig, train_detector
from eigenarch.train.pretrain import PretrainConfig, pretrain_classifier, resume_path
from eigenarch.train.rundir import RunDir
from eigenarch.widths.cost import DEFAULT_DEPTHS

#: The ResNet base network: ResNet-50's depths at a quarter of its widths.
BASE_WIDTHS = (16, 16, 64, 32, 128, 64, 256, 128, 512)
GN_GROUPS = 8
MULTIPLE = 8  # searched widths are multiples of the GroupNorm groups
#: ``--backbone``: the searched networks' name (the paper's), the eigenvalue threshold of
#: the search (paper Table 1: 10^-3 for ResNet-50, 10^-3.5 for DetNet) and what the paper
#: found for them (sections 4.4 and 4.5).
BACKBONES = {
    "resnet50": (
        "ResiaNet",
        1e-3,
        "The paper reports ResiaNets matching or beating ResNet-50 at equal MACs with fewer "
        "parameters, and beating a uniform width multiplier of equal size",
    ),
    "detnet59": (
        "DetiaNet",
        10**-3.5,
        "The paper reports DetiaNet I2-59 (MACs) reaching DetNet-59's AP (36.2) with about 5% "
        "fewer parameters (17.4+ M vs 18.3+ M)",
    ),
}


def backbone_family(backbone: str) -> tuple[str, float, str]:
    """:data:`BACKBONES`' entry of ``backbone``; a timm model's (``timm:NAME``) searched
    networks are ``IA-NAME``, at ResNet-50's threshold (the paper reports none)."""
    if backbone.startswith(TIMM):
        _, threshold, paper = BACKBONES["resnet50"]
        found = paper.removeprefix("The paper reports")
        return (
            f"IA-{backbone[len(TIMM) :]}",
            threshold,
            f"The paper reports no timm backbone; for ResNet-50 it reports{found}",
        )
    return BACKBONES[backbone]


def base_spec(backbone: str) -> Backbone:
    """The demo's base network: ``backbone`` (``resnet50``, ``detnet59`` or ``timm:NAME``)
    at a quarter of its widths, GroupNorm of 8 groups (a timm model: its own normalisation,
    each width a quarter rounded to a multiple of 8, as the searched ones)."""
    if backbone == "resnet50":
        return ResiaNetBackbone(BASE_WIDTHS, DEFAULT_DEPTHS, "gn", GN_GROUPS, {"demo": "base"})
    if backbone.startswith(TIMM):
        own = BuilderBackbone(backbone, {}, None, GN_GROUPS)
        return own.scaled(0.25, MULTIPLE, {"demo": "base"})
    if backbone not in BACKBONES:
        raise EigenarchError(f"--backbone {backbone!r}: expected one of "
                             f"{', '.join(BACKBONES)} or timm:NAME")  # fmt: skip
    graph, _ = BuilderBackbone(backbone, {}, "bn").graph()
    quarter = {g.name: g.width // 4 for g in graph.groups}
    return BuilderBackbone(backbone, quarter, "gn", GN_GROUPS, {"demo": "base"})


DETECTOR = dict(
    gn_groups=GN_GROUPS,
    fpn_channels=64,
    head_channels=32,
    representation=256,
    anchor_sizes=(16, 32, 64, 128, 256),
    roi_batch=64,
    rpn_batch=128,
    proposals=(1000, 1000),
)
PRETRAIN = dict(batch_size=32, lr=0.1)


@dataclass(frozen=True)
class DemoSizes:
    """Every size the demo uses: ``--quick`` picks the small set, ``--scale`` multiplies.

    The defaults fit every claim (a)-(l), two seeds each, in about 20 minutes on a 2-core
    CPU (README): 250 iterations per detector, 100 val images, 40 classification images
    per class."""

    train_images: int = 1000
    val_images: int = 100
    image_size: int = 192
    cls_per_class: int = 40
    cls_size: int = 48
    pretrain_epochs: int = 15
    iters: int = 250
    batch_size: int = 2
    lr: float = 0.02
    checkpoint_every: int = 50
    spectrum_images: int = 32
    seeds: int = 2

    @classmethod
    def make(cls, quick: bool = False, scale: float = 1.0, seeds: int | None = None) -> DemoSizes:
        """``seeds``: of every retraining; by default ``int(scale)``, at least the size
        set's (2; 1 with ``quick``)."""
        if scale <= 0:
            raise EigenarchError(f"--scale {scale}: expected a positive number")
        if seeds is not None and seeds < 1:
            raise EigenarchError(f"--seeds {seeds}: expected a positive integer")
        base = (
            cls(
                train_images=100,
                val_images=20,
                image_size=128,
                cls_per_class=12,
                cls_size=32,
                pretrain_epochs=2,
                iters=24,
                batch_size=2,
                checkpoint_every=12,
                spectrum_images=8,
                seeds=1,
            )
            if quick
            else cls()
        )
        grow = (
            "train_images",
            "val_images",
            "cls_per_class",
            "iters",
            "checkpoint_every",
            "spectrum_images",
        )
        return replace(
            base,
            **{k: max(1, round(getattr(base, k) * scale)) for k in grow},
            seeds=max(base.seeds, int(scale)) if seeds is None else seeds,
        )


@dataclass(frozen=True)
class Demo:
    """Where the demo writes, how big it is, and on which device it runs."""

    out: Path
    sizes: DemoSizes
    seed: int = 0
    device: str = "cpu"
    jobs: int = 1  # trainings run at once
    backbone: str = "resnet50"

    @property
    def base(self) -> Backbone:
        return base_spec(self.backbone)

    @property
    def base_config(self) -> dict:
        """The base network's JSON form, as a run's ``backbone`` takes it."""
        return self.base.to_dict()

    @property
    def data(self) -> Path:
        return self.out / "shapes"

    def run(self, name: str) -> Path:
        return self.out / "runs" / name


def _step_data(demo: Demo) -> dict:
    sizes = demo.sizes
    cfg = ShapesConfig(sizes.train_images, sizes.val_images, sizes.image_size, demo.seed)
    generate_shapes(demo.data, cfg)
    cls_cfg = ShapesClsConfig(
        sizes.cls_per_class, max(2, sizes.cls_per_class // 5), sizes.cls_size, demo.seed
    )
    classes = generate_shapes_cls(demo.out / "shapes-cls", cls_cfg)
    return {
        "detection": str(demo.data),
        "classification": str(demo.out / "shapes-cls"),
        "classes": len(classes),
    }


def _pretrain_config(
    demo: Demo, out: Path, backbone: str | dict, seed: int, **overrides: Any
) -> PretrainConfig:
    """A classifier pre-training on the demo's shapes-cls set (``overrides``: e.g. norm)."""
    settings = dict(
        data=str(demo.out / "shapes-cls"),
        out=str(out),
        backbone=backbone,
        gn_groups=GN_GROUPS,
        epochs=demo.sizes.pretrain_epochs,
        **PRETRAIN,
        size=demo.sizes.cls_size,
        seed=seed,
        workers=0,
        device=demo.device,
    )
    return PretrainConfig(**{**settings, **overrides})


def _step_pretrain(demo: Demo) -> dict:
    out = demo.out / "pretrain.pt"
    cfg = _pretrain_config(demo, out, demo.base_config, demo.seed)
    summary = pretrain_runs({"I start": cfg})["I start"]
    return {"checkpoint": str(out), "val_accuracy": summary["val_accuracy"]}


def _train_config(
    demo: Demo,
    name: str,
    backbone: str | dict,
    init: str = "scratch",
    seed: int = 0,
    **overrides: Any,
) -> TrainConfig:
    """A detector training on the demo's shapes set (``overrides``: e.g. kind, iters)."""
    sizes = demo.sizes
    settings = dict(
        data=str(demo.data),
        out=str(demo.run(name)),
        backbone=backbone,
        init=init,
        iters=sizes.iters,
        batch_size=sizes.batch_size,
        lr=sizes.lr,
        checkpoint_every=sizes.checkpoint_every,
        seed=seed,
        min_size=sizes.image_size,
        max_size=sizes.image_size,
        workers=0,
        device=demo.device,
        **DETECTOR,
    )
    return TrainConfig(**{**settings, **overrides})


def _run_pending(
    configs: Mapping[str, Any],
    jobs: int,
    finished: Callable[[Any], dict | None],
    call: Callable[[Any], dict],
    progress: Callable[[Any], tuple[int, int]],
    verb: str,
) -> dict[str, dict]:
    """``call(config)`` for every config not ``finished`` yet, ``jobs`` at once (see
    :func:`run_parallel`); every config's result by name."""
    results = {name: finished(cfg) for name, cfg in configs.items()}
    pending = {name: cfg for name, cfg in configs.items() if results[name] is None}
    calls = {name: partial(call, cfg) for name, cfg in pending.items()}
    results.update(run_parallel(calls, jobs, lambda name: progress(pending[name]), verb))
    return results


def _trained(cfg: TrainConfig) -> dict | None:
    return RunDir(cfg.out).read_metrics()


def _train_one(cfg: TrainConfig) -> dict:
    return train_detector(cfg, resume=bool(RunDir(cfg.out).checkpoints()))


def _train_progress(cfg: TrainConfig) -> tuple[int, int]:
    return RunDir(cfg.out).logged_iterations(), cfg.iters


def train_runs(configs: dict[str, TrainConfig], jobs: int = 1) -> dict[str, dict]:
    """Train (or resume) every run not finished yet, ``jobs`` at once; returns each run's
    final COCO metrics by name."""
    return _run_pending(configs, jobs, _trained, _train_one, _train_progress, "train")


#: What the demo keeps of a classifier's summary: top-1 and top-5 accuracy on val.
ACCURACIES = ("val_accuracy", "val_top5")


def _pretrained(cfg: PretrainConfig) -> dict | None:
    if not Path(cfg.out).is_file():
        return None
    final = load_checkpoint(cfg.out, expect=CLASSIFIER_FORMAT)
    return {key: final[key] for key in ACCURACIES}


def _pretrain_one(cfg: PretrainConfig) -> dict:
    summary = pretrain_classifier(cfg, resume=resume_path(cfg.out).is_file())
    return {key: summary[key] for key in ACCURACIES}


def pretrain_runs(configs: dict[str, PretrainConfig], jobs: int = 1) -> dict[str, dict]:
    """Pre-train (or resume) every classifier not finished yet, ``jobs`` at once; returns
    each one's ``val_accuracy`` (top-1) and ``val_top5`` by name."""

    def progress(cfg: PretrainConfig) -> tuple[int, int]:
        return int(Path(cfg.out).is_file()), 1

    return _run_pending(configs, jobs, _pretrained, _pretrain_one, progress, "pre-train")


def _step_train(demo: Demo) -> dict:
    base = demo.base_config
    configs = {
        "I": _train_config(demo, "I", base, init=str(demo.out / "pretrain.pt"), seed=demo.seed),
        "S": _train_config(demo, "S", base, seed=demo.seed),
    }
    return train_runs(configs, demo.jobs)


def _events(run_dir: Path, images: int, seed: int, device: str) -> dict[str, int]:
    """Compute (or reuse) a run's dynamics; the number of maps with each event."""
    # Maps wider than 1024 channels (the box head's flattened RoI input) are skipped.
    dynamics = compute_dynamics(run_dir, images=images, seed=seed, device=device, max_channels=1024)
    return {
        kind: sum(1 for m in dynamics.maps if m.event(kind) is not None)
        for kind in ("dropping", "rebounding")
    }


def _comparison(demo: Demo) -> Comparison:
    """The final spectra of runs I and S side by side."""
    final = [Spectra.load(final_spectra(demo.run(name))) for name in ("I", "S")]
    return compare_spectra(*final, names=("I", "S"))


def _step_analyse(demo: Demo) -> dict:
    runs = {name: demo.run(name) for name in ("I", "S")}

    def progress(name: str) -> tuple[int, int]:
        run = RunDir(runs[name])
        found = run.checkpoints()
        return sum(run.spectra(it).is_file() for it, _ in found), len(found)

    calls = {
        name: partial(_events, run, demo.sizes.spectrum_images, demo.seed, demo.device)
        for name, run in runs.items()
    }
    events = run_parallel(calls, demo.jobs, progress, "spectra of")
    parts = {g.part: g.ratio for g in _comparison(demo).groups(by_stage=False)}
    return {"events": events, "part_ratio_I_over_S": parts}


def _dims(demo: Demo, name: str) -> dict[str, int]:
    return Spectra.load(final_spectra(demo.run(name))).intrinsic_dims(
        backbone_family(demo.backbone)[1]
    )


def _step_search(demo: Demo) -> dict:
    base, (family, threshold, _) = demo.base, backbone_family(demo.backbone)
    base_cost = base.cost()
    wanted = {
        f"{family} S (MACs)": ("S", "macs"),
        f"{family} I (MACs)": ("I", "macs"),
        f"{family} I (params)": ("I", "params"),
    }
    specs = {}
    for label, (run, metric) in wanted.items():
        budget = base_cost.metric(metric)
        source = {
            "demo": label,
            "spectra": str(final_spectra(demo.run(run))),
            "threshold": threshold,
            "target": f"{metric}={budget} (the base network's)",
        }
        result, spec = base.search(_dims(demo, run), budget, metric, MULTIPLE, "in", source)
        path = demo.out / "search" / f"{_slug(label)}.json"
        spec.save(path, result.to_dict())
        specs[label] = str(path)
    # The simple width multiplier with about the S (MACs) network's parameter reduction.
    target = json.loads(Path(specs[f"{family} S (MACs)"]).read_text())["params"]
    multiplier = min(
        (m / 100 for m in range(10, 201)),
        key=lambda m: abs(base.scaled(m, MULTIPLE).cost().params - target),
    )
    label = f"uniform x{multiplier:.2f}"
    spec = base.scaled(multiplier, MULTIPLE, {"demo": label})
    path = demo.out / "search" / "uniform.json"
    spec.save(path, {"multiplier": multiplier})
    specs[label] = str(path)
    return {"specs": specs}


def _searched(demo: Demo, specs: Mapping[str, str]) -> dict[str, str]:
    """The searched rows (ResiaNets / DetiaNets) of ``specs``, without the uniform one."""
    family = backbone_family(demo.backbone)[0]
    return {label: path for label, path in specs.items() if label.startswith(f"{family} ")}


def _row_names(demo: Demo, labels: Sequence[str], prefix: str = "") -> dict[str, list[str]]:
    """Each row's run name per seed: ``prefix`` + ``S`` for the base (trained from scratch;
    unprefixed, the run of step train) or the row's slug, ``-seedN`` after the first seed."""
    names: dict[str, list[str]] = {label: [] for label in labels}
    for k in range(demo.sizes.seeds):
        suffix = "" if k == 0 else f"-seed{demo.seed + k}"
        for label in labels:
            names[label].append(prefix + ("S" if label == "base" else _slug(label)) + suffix)
    return names


def _per_row(
    demo: Demo,
    backbones: Mapping[str, str | dict],
    config: Callable[[str, str | dict, int], Any],
    run_all: Callable[[dict[str, Any], int], dict[str, dict]],
    prefix: str = "",
) -> dict[str, list[dict]]:
    """``config(name, backbone, seed)`` of every row and seed, run by ``run_all``; each
    row's results, one per seed."""
    rows = _row_names(demo, list(backbones), prefix)
    configs = {
        name: config(name, backbones[label], demo.seed + k)
        for label, names in rows.items()
        for k, name in enumerate(names)
    }
    results = run_all(configs, demo.jobs)
    return {label: [results[name] for name in names] for label, names in rows.items()}


def _claim_rows(demo: Demo, specs: Mapping[str, str], labels: Sequence[str]) -> dict:
    """What one claim compares: the rows ``labels`` (``base``, or ``S (MACs)``, ``I (MACs)``
    after the family's name) by the tables' labels, the base network's JSON form for
    ``base`` and each searched row's spec file of ``specs``."""
    family = backbone_family(demo.backbone)[0]
    names = [label if label == "base" else f"{family} {label}" for label in labels]
    return {name: demo.base_config if name == "base" else specs[name] for name in names}


def _step_detection(
    demo: Demo, backbones: Mapping[str, str | dict], prefix: str = "", **overrides: Any
) -> dict:
    """Train every row of ``backbones`` (label -> backbone) from scratch, every seed
    (``overrides`` of :class:`TrainConfig`: Mask R-CNN, a shorter schedule); COCO
    metrics per row."""

    def config(name: str, backbone: str | dict, seed: int) -> TrainConfig:
        return _train_config(demo, name, backbone, seed=seed, **overrides)

    return {"metrics": _per_row(demo, backbones, config, train_runs, prefix)}


def _step_retrain(demo: Demo, specs: Mapping[str, str]) -> dict:
    """The base and every searched row, Table 1 (the paper's 2x column)."""
    return _step_detection(demo, {"base": demo.base_config, **specs})


def _step_short(demo: Demo, specs: Mapping[str, str]) -> dict:
    """The rows claim (i) compares, I (MACs) and S (MACs), at half of Table 1's
    iterations: the paper's 1x column beside Table 1's 2x."""
    sizes, rows = demo.sizes, _claim_rows(demo, specs, ("S (MACs)", "I (MACs)"))
    return _step_detection(
        demo,
        rows,
        "1x-",
        iters=max(1, sizes.iters // 2),
        checkpoint_every=max(1, sizes.checkpoint_every // 2),
    )


def _step_mask(demo: Demo, specs: Mapping[str, str]) -> dict:
    """The rows claim (l) compares, the base and S (MACs), as Mask R-CNN (section 4.6)."""
    rows = _claim_rows(demo, specs, ("base", "S (MACs)"))
    return _step_detection(demo, rows, "mask-", kind="mask_rcnn")


def _step_inherit(demo: Demo, specs: Mapping[str, str]) -> dict:
    """Every searched row started by ``resize`` (SPEC section 6c) from the fine-tuned I run's
    last checkpoint and its spectra, then trained with the same schedule and with a quarter
    of it, every seed; COCO metrics per row (labels + :data:`INHERITED` (+ :data:`QUARTER`))."""
    sizes, run = demo.sizes, demo.run("I")
    source, spectra = RunDir(run).checkpoints()[-1][1], final_spectra(run)
    starts = {}
    for label, spec in _searched(demo, specs).items():
        out = demo.out / "inherit" / f"{_slug(label)}.pt"
        if not out.is_file():  # written atomically: a file there is a finished resize
            resize_checkpoint(spec, source, spectra, out, seed=demo.seed)
        starts[spec] = str(out)
    quarter = {"iters": max(1, sizes.iters // 4),
               "checkpoint_every": max(1, sizes.checkpoint_every // 4)}  # fmt: skip
    metrics = {}
    for suffix, overrides in ((INHERITED, {}), (INHERITED + QUARTER, quarter)):

        def config(name: str, backbone: str | dict, seed: int, overrides=overrides) -> TrainConfig:
            return _train_config(demo, name, backbone, starts[backbone], seed, **overrides)

        rows = {label + suffix: spec for label, spec in _searched(demo, specs).items()}
        metrics.update(_per_row(demo, rows, config, train_runs, "inherit-"))
    iterations = {"schedule": sizes.iters, "quarter": quarter["iters"], "I": sizes.iters}
    return {"metrics": metrics, "starts": starts, "iterations": iterations}


def _bn(spec: Backbone) -> dict:
    """``spec`` with BatchNorm; one with its builder's own normalisation (timm's) keeps it."""
    return (spec if spec.norm is None else replace(spec, norm="bn")).to_dict()


def _step_table2(demo: Demo, specs: Mapping[str, str]) -> dict:
    """The rows claim (k) compares, the base, S (MACs) and I (MACs), with BatchNorm as
    classifiers on shapes-cls (paper A.2: SGD, lr 0.1 per 256 images, x0.1 steps), every
    seed; top-1 / top-5."""

    def config(name: str, backbone: str | dict, seed: int) -> PretrainConfig:
        out = demo.out / "table2" / f"{name}.pt"
        return _pretrain_config(demo, out, backbone, seed, norm="bn", schedule="step")

    rows = _claim_rows(demo, specs, ("base", "S (MACs)", "I (MACs)"))
    backbones = {k: _bn(demo.base if k == "base" else load_backbone(v)) for k, v in rows.items()}
    return {"results": _per_row(demo, backbones, config, pretrain_runs)}


def _coco(iou: str, key: str, run: Mapping[str, Any]) -> float | None:
    """A COCO metric in %; ``None`` where COCOeval gives -1 (no val object of that size)."""
    value = run[iou][key]
    return 100 * value if value >= 0 else None


def _error(key: str, run: Mapping[str, Any]) -> float:
    return 100 * (1 - run[key])


#: Each table's columns: key -> its value in one run's results (COCO metrics, or a
#: classifier's ``val_accuracy`` / ``val_top5``).
TABLE1_COLUMNS = {key: partial(_coco, "bbox", key) for key in COCO_METRICS}
MASK_COLUMNS = {"AP_bbox": partial(_coco, "bbox", "AP"), "AP_mask": partial(_coco, "segm", "AP")}
TABLE2_COLUMNS = {
    "top1_err": partial(_error, "val_accuracy"),
    "top5_err": partial(_error, "val_top5"),
}
#: The report's tables: name -> (the step that makes its rows, that step's output, columns).
TABLES = {
    "table1": ("retrain", "metrics", TABLE1_COLUMNS),
    "table1_1x": ("short", "metrics", TABLE1_COLUMNS),
    "table2": ("table2", "results", TABLE2_COLUMNS),
    "mask": ("mask", "metrics", MASK_COLUMNS),
}


def _stats(row: dict[str, Any], key: str, values: list[float]) -> None:
    row[key] = statistics.fmean(values) if values else None
    row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    row[f"{key}_values"] = values


def results_table(
    specs: Mapping[str, str],
    results: Mapping[str, list[dict]],
    columns: Mapping[str, Callable[[dict], float | None]],
    base: Backbone | None = None,
) -> list[dict]:
    """One row per backbone of ``results`` (label -> one result per seed; ``base``: the
    demo's base network, default the ResNet one): widths, MACs, params, and for each column
    ``KEY`` the mean over seeds, ``KEY_std``, the seeds' ``KEY_values`` and ``KEY_p``, the
    two-sided Welch's t-test p-value against the base (``None`` for it and with one seed)."""
    rows = []
    for label, runs in results.items():
        spec = (base or base_spec("resnet50")) if label == "base" else load_backbone(specs[label])
        cost = spec.cost()
        row = {"backbone": label, "widths": spec.searched_widths(), "macs": cost.macs,
               "params": cost.params, "seeds": len(runs)}  # fmt: skip
        for key, value in columns.items():
            _stats(row, key, [v for v in map(value, runs) if v is not None])
        rows.append(row)
    base_row = next((r for r in rows if r["backbone"] == "base"), {})
    for row, key in ((r, k) for r in rows for k in columns):
        others = base_row.get(f"{key}_values", [])
        row[f"{key}_p"] = None if row is base_row else welch_p(row[f"{key}_values"], others)
    return rows


#: The summary line of each further table: its title and the columns it shows.
TABLE_LINES = {
    "table1_1x": ("At half the iterations, the paper's 1x (AP)", ("AP",)),
    "table2": ("Table 2, as BatchNorm classifiers (top-1 / top-5 error %)", TABLE2_COLUMNS),
    "mask": ("As Mask R-CNN (AP bbox / AP mask)", MASK_COLUMNS),
}


def _table_line(name: str, rows: Sequence[Mapping[str, Any]]) -> str:
    title, keys = TABLE_LINES[name]
    cells = "; ".join(
        f"{r['backbone']} {' / '.join(mean_std(r, k) for k in keys)} ({r['params'] / 1e6:.2f} M)"
        for r in rows
    )
    return f"{title}: {cells}."


def _table1_lines(table: Sequence[Mapping[str, Any]], backbone: str) -> list[str]:
    base = next(r for r in table if r["backbone"] == "base")
    lines = []
    for row in table:
        if row["backbone"] == "base":
            continue
        change = row["AP"] - base["AP"]
        verdict = "matches or beats" if change >= 0 else "falls short of"
        lines.append(
            f"{row['backbone']}: {row['params'] / 1e6:.2f} M params "
            f"({round(100 * (row['params'] / base['params'] - 1)):+d}% vs base), "
            f"{row['macs'] / 1e6:.0f} M MACs; AP {row['AP']:.1f} vs base {base['AP']:.1f} "
            f"({change:+.1f}): it {verdict} the base here."
        )
    lines.append(
        f"{backbone_family(backbone)[2]}; numbers this small (short CPU schedules) are noisy, "
        "so read the rows above with their seeds."
    )
    return lines


def _inherit_lines(table: Sequence[Mapping[str, Any]], iterations: Mapping[str, int]) -> list[str]:
    """Which start won for each searched row with inherited twins, and at what cost."""
    rows = {r["backbone"]: r for r in table}
    lines = []
    for label, scratch in rows.items():
        same, quarter = rows.get(label + INHERITED), rows.get(label + INHERITED + QUARTER)
        if same is None or quarter is None:
            continue
        change = same["AP"] - scratch["AP"]
        winner = "the inherited start" if change > 0 else "training from scratch"
        reach = "reaches" if quarter["AP"] >= scratch["AP"] else "does not reach"
        lines.append(
            f"{label}: inherited from I, AP {mean_std(same, 'AP')} after {iterations['schedule']} "
            f"iterations vs {mean_std(scratch, 'AP')} from scratch after as many: {winner} won "
            f"here ({change:+.1f} AP, means over seeds; claim (m) tests it). With 1/4 of the "
            f"schedule ({iterations['quarter']} iterations) the inherited start {reach} scratch's "
            f"AP ({mean_std(quarter, 'AP')}). Either inherited row also used the I run's "
            f"{iterations['I']} iterations (and its pre-training) before its own."
        )
    return lines


def findings(
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    analysis: dict,
    backbone: str = "resnet50",
    inherit: Mapping[str, Any] | None = None,
) -> list[str]:
    """Plain-language statements made from the measured numbers (``tables``: name -> rows,
    as :data:`TABLES`; ``inherit``: the output of the ``--inherit`` step, if run)."""
    lines = _table1_lines(tables["table1"], backbone)
    if inherit is not None:
        lines += _inherit_lines(tables["table1"], inherit["iterations"])
    lines += [_table_line(name, tables[name]) for name in TABLE_LINES if name in tables]
    ratio = analysis["part_ratio_I_over_S"].get("backbone")
    if ratio is not None:
        more = "more" if ratio > 1 else "fewer"
        lines.append(
            f"Pre-trained (I) backbone maps use {more} dimensions than scratch (S) ones "
            f"(I/S ratio {ratio:.2f} summed over the backbone). The paper finds lower "
            "layers of I and S similar (Figure 5 left), I's stage 3-4 widths larger (Figure 2 "
            "(b) vs (f)) and I's maps near the classifier output using under half of their "
            "dimensions (Figure 5 right); the claims below compare map by map."
        )
    for run, counts in analysis["events"].items():
        lines.append(
            f"Run {run}: {counts['dropping']} map(s) dropping early, "
            f"{counts['rebounding']} rebounding after a learning-rate decay."
        )
    return lines


def _tables(demo: Demo, outputs: Mapping[str, dict]) -> dict[str, list[dict]]:
    """Every table whose step has finished, by name; Table 1 with the rows inherited from I
    (``--inherit``) after each scratch row."""
    specs = dict(outputs["search"]["specs"])
    found = {
        name: results_table(specs, outputs[step][key], columns, demo.base)
        for name, (step, key, columns) in TABLES.items()
        if step in outputs and name != "table1"
    }
    if "retrain" in outputs:
        inherited = outputs.get("inherit", {}).get("metrics", {})
        rows = {}
        for label, runs in outputs["retrain"]["metrics"].items():
            rows[label] = runs
            for suffix in (INHERITED, INHERITED + QUARTER):
                if label + suffix in inherited:
                    rows[label + suffix] = inherited[label + suffix]
                    specs[label + suffix] = specs[label]
        found = {"table1": results_table(specs, rows, TABLE1_COLUMNS, demo.base), **found}
    return found


def _step_report(demo: Demo, outputs: Mapping[str, dict]) -> dict:
    tables = _tables(demo, outputs)
    text = findings(tables, outputs["analyse"], demo.backbone, outputs.get("inherit"))
    dynamics = {name: load_dynamics(demo.run(name)) for name in ("I", "S")}
    options = {step.name: step.option for step in STEPS if step.option}
    hints = {
        name: f"run the demo with {options[step]}"
        for name, (step, _, _) in TABLES.items()
        if step in options and name not in tables
    }
    if "inherit" not in outputs:
        hints["inherit"] = f"run the demo with {options['inherit']}"
    family = backbone_family(demo.backbone)[0]
    claims = [c.to_dict() for c in paper_claims(tables, _comparison(demo), dynamics, family, hints)]
    path = write_report(
        [demo.run("I"), demo.run("S")],
        demo.out / "report",
        names=["I", "S"],
        multiple=MULTIPLE,
        width_specs=list(outputs["search"]["specs"].values()),
        command="eigenarch demo",
        tables=tables,
        findings=text,
        claims=claims,
    )
    return {"report": str(path), **tables, "findings": text, "claims": claims}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


@dataclass(frozen=True)
class Step:
    """One step: ``run(demo, outputs of the finished steps)`` -> its outputs. ``needs``: the
    steps whose outputs it reads (it is redone when which of them have finished changes);
    ``option``: the ``eigenarch demo`` option that adds it (``None``: always run);
    ``by_default``: an optional step run unless left out (``--no-`` + the option)."""

    name: str
    description: str
    run: Callable[[Demo, dict], dict]
    needs: tuple[str, ...] = ()
    option: str | None = None
    by_default: bool = False


STEPS: list[Step] = [
    Step("data", "generate the shapes detection and classification sets",
         lambda d, s: _step_data(d)),
    Step("pretrain", "pre-train the backbone on shapes-cls (the I start)",
         lambda d, s: _step_pretrain(d)),
    Step("train", "train the detector from pre-training (I) and from scratch (S)",
         lambda d, s: _step_train(d)),
    Step("analyse", "eigenspectrum dynamics of I and S, and the I-vs-S comparison",
         lambda d, s: _step_analyse(d)),
    Step("search", "Intrinsic Architecture Search and the uniform-multiplier baseline",
         lambda d, s: _step_search(d)),
    Step("retrain", "retrain every searched backbone from scratch and evaluate (Table 1)",
         lambda d, s: _step_retrain(d, s["search"]["specs"]), ("search",)),
    Step("short", "retrain I (MACs) and S (MACs) at half the iterations (the paper's 1x)",
         lambda d, s: _step_short(d, s["search"]["specs"]), ("search",), "--short-schedule",
         True),
    Step("table2", "train the base, S (MACs) and I (MACs) as BatchNorm classifiers "
         "(Table 2)", lambda d, s: _step_table2(d, s["search"]["specs"]), ("search",),
         "--table2", True),
    Step("mask", "train the base and S (MACs) as Mask R-CNN (section 4.6)",
         lambda d, s: _step_mask(d, s["search"]["specs"]), ("search",), "--mask", True),
    Step("inherit", "start every searched backbone from the fine-tuned I run (resize) and "
         "train it with the same schedule and 1/4 of it",
         lambda d, s: _step_inherit(d, s["search"]["specs"]), ("search", "analyse"),
         "--inherit"),
    Step("report", "write the report", _step_report,
         ("search", "analyse", "inherit", *(step for step, _, _ in TABLES.values()))),
]  # fmt: skip


def _settings(demo: Demo, quick: bool, scale: float) -> dict:
    """What makes two demos the same (the extras only add steps), as state.json holds it."""
    settings = {
        "backbone": demo.backbone,
        "quick": quick,
        "scale": scale,
        "seed": demo.seed,
        "sizes": asdict(demo.sizes),
        "detector": DETECTOR,
        "pretrain": PRETRAIN,
    }
    return json.loads(json.dumps(settings))


def _load_state(out: Path, settings: dict, force: bool) -> dict:
    """The state of the demo in ``out``; a new one when there is none or ``force``."""
    state_file = out / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if state and state.get("settings") != settings and not force:
        raise EigenarchError(
            f"{out} holds a demo with other settings ({state_file}); use another --out, or "
            "--force to delete it and start over"
        )
    if force or state.get("settings") != settings:
        if out.is_dir() and state_file.is_file():
            shutil.rmtree(out)  # only a folder the demo made itself, and only when asked
        state = {"settings": settings, "steps": {}}
    return state


def _run_steps(demo: Demo, state: dict, extras: Collection[str]) -> None:
    """Run every step not finished (or whose inputs changed), saving the state after each."""
    done = state["steps"]
    for number, step in enumerate(STEPS, start=1):
        label = f"[{number}/{len(STEPS)}] {step.description}"
        inputs = [name for name in step.needs if name in done]
        if step.name in done and done[step.name].get("inputs", []) == inputs:
            console.print(f"{label}: done already, skipped", highlight=False)
            continue
        if step.option and step.name not in extras and step.name not in done:
            console.print(f"{label}: not run (add {step.option})", highlight=False)
            continue
        console.print(f"{label} ...", highlight=False)
        start = time.perf_counter()
        outputs = step.run(demo, {k: v["outputs"] for k, v in done.items()})
        seconds = round(time.perf_counter() - start, 1)
        done[step.name] = {"outputs": outputs, "seconds": seconds, "inputs": inputs}
        atomic_write_json(demo.out / "state.json", state)


def run_demo(
    out: str | Path = "runs/demo",
    quick: bool = False,
    scale: float = 1.0,
    seed: int = 0,
    force: bool = False,
    device: str = "cpu",
    jobs: int | None = None,
    backbone: str = "resnet50",
    seeds: int | None = None,
    extras: Collection[str] | None = None,
) -> dict:
    """Run every step not yet finished in ``out``; returns the state (outputs per step).

    ``jobs``: trainings run at once (default: one per CPU thread torch uses, one on a GPU).
    ``backbone``: ``resnet50`` (ResiaNets, paper Table 1's ResNet rows), ``detnet59``
    (DetiaNets, its DetNet rows) or ``timm:NAME`` (IA-NAME rows, :func:`base_spec`).
    ``seeds``: trainings of every row (seeds ``seed``, ``seed + 1``, ...; default
    ``int(scale)``, at least 2, 1 with ``quick``). ``extras``:
    the optional steps to run (default: those :attr:`Step.by_default`, ``short`` (the
    paper's 1x), ``table2`` and ``mask``; ``inherit`` is the fourth); those an earlier run
    made stay in the report. An ``out`` holding a demo of other settings is refused
    unless ``force`` (which deletes that demo first).
    """
    out = Path(out)
    if jobs is None:
        jobs = torch.get_num_threads() if device == "cpu" else 1
    if jobs < 1:
        raise EigenarchError(f"--jobs {jobs}: expected a positive integer")
    optional = [step.name for step in STEPS if step.option]
    if extras is None:
        extras = [step.name for step in STEPS if step.by_default]
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise EigenarchError(f"extras {', '.join(unknown)}: expected some of {', '.join(optional)}")
    base_spec(backbone)  # an unknown backbone fails before anything is written
    demo = Demo(out, DemoSizes.make(quick, scale, seeds), seed, device, jobs, backbone)
    state = _load_state(out, _settings(demo, quick, scale), force)
    _run_steps(demo, state, extras)
    return state
