"""``eigenarch demo``: the paper's whole pipeline on the embedded shapes data, resumably.

Steps: data -> pre-training (the "I" start) -> detector training from that start (I) and
from scratch (S) -> eigenspectrum dynamics and the I-vs-S comparison -> Intrinsic
Architecture Search (ResiaNet -- or, with ``--backbone detnet59``, DetiaNet -- S (MACs),
I (MACs), I (params)) and the uniform-multiplier baseline -> retraining of every searched
backbone -> the report. Each step records its
outputs in ``state.json``; re-running skips finished steps and resumes an interrupted
training run from its last checkpoint (``--force`` redoes everything).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch
import typer

from eigenarch.data.shapes import (
    ShapesClsConfig,
    ShapesConfig,
    generate_shapes,
    generate_shapes_cls,
)
from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_write_json
from eigenarch.models.backbones import (
    backbone_graph,
    scaled_spec,
    search_spec,
    spec_cost,
    spec_widths,
)
from eigenarch.parallel import run_parallel
from eigenarch.progress import console
from eigenarch.report.claims import claim_line, paper_claims, welch_p
from eigenarch.report.compare import Comparison, compare_spectra, final_spectra
from eigenarch.report.dynamics import compute_dynamics, load_dynamics, spectra_file
from eigenarch.report.html import write_report
from eigenarch.spectrum import Spectra
from eigenarch.train.checkpoint import list_checkpoints
from eigenarch.train.loop import TrainConfig, train_detector
from eigenarch.train.pretrain import PretrainConfig, pretrain_classifier, resume_path
from eigenarch.widths.cost import DEFAULT_DEPTHS
from eigenarch.widths.spec import BackboneSpec, WidthSpec, load_width_spec, save_width_spec

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


def base_spec(backbone: str) -> WidthSpec | BackboneSpec:
    """The demo's base network: ``backbone`` (``resnet50`` or ``detnet59``) at a quarter of
    its widths, GroupNorm of 8 groups."""
    if backbone == "resnet50":
        return WidthSpec(BASE_WIDTHS, DEFAULT_DEPTHS, "gn", GN_GROUPS, {"demo": "base"})
    if backbone not in BACKBONES:
        raise EigenarchError(f"--backbone {backbone!r}: expected one of {', '.join(BACKBONES)}")
    graph, _ = backbone_graph(BackboneSpec(backbone, {}, "bn"))
    quarter = {g.name: g.width // 4 for g in graph.groups}
    return BackboneSpec(backbone, quarter, "gn", GN_GROUPS, {"demo": "base"})


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
    """Every size the demo uses: ``--quick`` picks the small set, ``--scale`` multiplies."""

    train_images: int = 1000
    val_images: int = 200
    image_size: int = 192
    cls_per_class: int = 60
    cls_size: int = 48
    pretrain_epochs: int = 30
    iters: int = 600
    batch_size: int = 2
    lr: float = 0.02
    checkpoint_every: int = 100
    spectrum_images: int = 48
    seeds: int = 1

    @classmethod
    def make(cls, quick: bool = False, scale: float = 1.0, seeds: int | None = None) -> DemoSizes:
        """``seeds``: of every retraining; by default ``int(scale)``, at least 1."""
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
            seeds=max(1, int(scale)) if seeds is None else seeds,
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
    def base(self) -> WidthSpec | BackboneSpec:
        return base_spec(self.backbone)

    @property
    def base_config(self) -> str | dict:
        """The base network as ``--backbone`` takes it."""
        base = self.base
        return _widths(base.widths) if isinstance(base, WidthSpec) else base.to_dict()

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


def _step_pretrain(demo: Demo) -> dict:
    sizes = demo.sizes
    out = demo.out / "pretrain.pt"
    cfg = PretrainConfig(
        data=str(demo.out / "shapes-cls"),
        out=str(out),
        backbone=demo.base_config,
        gn_groups=GN_GROUPS,
        epochs=sizes.pretrain_epochs,
        **PRETRAIN,
        size=sizes.cls_size,
        seed=demo.seed,
        workers=0,
        device=demo.device,
    )
    summary = pretrain_classifier(cfg, resume=resume_path(out).is_file())
    return {"checkpoint": str(out), "val_accuracy": summary["val_accuracy"]}


def _train_config(
    demo: Demo, name: str, backbone: str | dict, init: str = "scratch", seed: int = 0
) -> TrainConfig:
    sizes = demo.sizes
    return TrainConfig(
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


def _finished(cfg: TrainConfig) -> dict | None:
    path = Path(cfg.out) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _train_one(cfg: TrainConfig) -> dict:
    return train_detector(cfg, resume=bool(list_checkpoints(cfg.out)))


def train_runs(configs: dict[str, TrainConfig], jobs: int = 1) -> dict[str, dict]:
    """Train (or resume) every run not finished yet, ``jobs`` at once (see
    :func:`run_parallel`); returns each run's final COCO metrics by name."""
    results = {name: _finished(cfg) for name, cfg in configs.items()}
    pending = {name: cfg for name, cfg in configs.items() if results[name] is None}

    def progress(name: str) -> tuple[int, int]:
        log = Path(pending[name].out) / "metrics.jsonl"
        return (len(log.read_text().splitlines()) if log.is_file() else 0), pending[name].iters

    calls = {name: partial(_train_one, cfg) for name, cfg in pending.items()}
    results.update(run_parallel(calls, jobs, progress, "train"))
    return results


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
        found = list_checkpoints(runs[name])
        return sum(spectra_file(runs[name], it).is_file() for it, _ in found), len(found)

    calls = {
        name: partial(_events, run, demo.sizes.spectrum_images, demo.seed, demo.device)
        for name, run in runs.items()
    }
    events = run_parallel(calls, demo.jobs, progress, "spectra of")
    parts = {g.part: g.ratio for g in _comparison(demo).groups(by_stage=False)}
    return {"events": events, "part_ratio_I_over_S": parts}


def _dims(demo: Demo, name: str) -> dict[str, int]:
    return Spectra.load(final_spectra(demo.run(name))).intrinsic_dims(BACKBONES[demo.backbone][1])


def _step_search(demo: Demo) -> dict:
    base, (family, threshold, _) = demo.base, BACKBONES[demo.backbone]
    base_cost = spec_cost(base)
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
        result, spec = search_spec(base, _dims(demo, run), budget, metric, MULTIPLE, "in", source)
        path = demo.out / "search" / f"{_slug(label)}.json"
        save_width_spec(path, spec, result.to_dict())
        specs[label] = str(path)
    # The simple width multiplier with about the S (MACs) network's parameter reduction.
    target = json.loads(Path(specs[f"{family} S (MACs)"]).read_text())["params"]
    multiplier = min(
        (m / 100 for m in range(10, 201)),
        key=lambda m: abs(spec_cost(scaled_spec(base, m, MULTIPLE)).params - target),
    )
    label = f"uniform x{multiplier:.2f}"
    spec = scaled_spec(base, multiplier, MULTIPLE, {"demo": label})
    path = demo.out / "search" / "uniform.json"
    save_width_spec(path, spec, {"multiplier": multiplier})
    specs[label] = str(path)
    return {"specs": specs}


def _step_retrain(demo: Demo, specs: dict[str, str]) -> dict:
    configs, rows = {}, {"base": [], **{label: [] for label in specs}}
    for k in range(demo.sizes.seeds):
        seed = demo.seed + k
        suffix = "" if k == 0 else f"-seed{seed}"
        for label, backbone in [("base", demo.base_config), *specs.items()]:
            name = ("S" if label == "base" else _slug(label)) + suffix
            configs[name] = _train_config(demo, name, backbone, seed=seed)
            rows[label].append(name)
    metrics = train_runs(configs, demo.jobs)
    return {"metrics": {label: [metrics[name] for name in names] for label, names in rows.items()}}


def table1(
    specs: dict[str, str],
    metrics: dict[str, list[dict]],
    base: WidthSpec | BackboneSpec | None = None,
) -> list[dict]:
    """The paper's Table 1 in miniature: cost and AP (mean, std over seeds) per backbone
    (``base``: the demo's base network, default the ResNet one); ``AP_values`` are the
    seeds' APs and ``AP_p`` the two-sided Welch's t-test p-value against the base (``None``
    for the base and with one seed)."""
    rows = []
    for label, runs in metrics.items():
        if label == "base":
            spec = base or base_spec("resnet50")
        else:
            spec = load_width_spec(specs[label])
        cost = spec_cost(spec)
        row = {
            "backbone": label,
            "widths": spec_widths(spec),
            "macs": cost.macs,
            "params": cost.params,
            "seeds": len(runs),
        }
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            # COCOeval gives -1 where the val split has no object of that size.
            values = [100 * run["bbox"][key] for run in runs if run["bbox"][key] >= 0]
            row[key] = statistics.fmean(values) if values else None
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else None
            if key == "AP":
                row["AP_values"] = values
        rows.append(row)
    base_ap = next((r["AP_values"] for r in rows if r["backbone"] == "base"), [])
    for row in rows:
        row["AP_p"] = None if row["backbone"] == "base" else welch_p(row["AP_values"], base_ap)
    return rows


def findings(table: list[dict], analysis: dict, backbone: str = "resnet50") -> list[str]:
    """Plain-language statements made from the measured numbers."""
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
        f"{BACKBONES[backbone][2]}; numbers this small (short CPU schedules) are noisy, so read "
        "the rows above with their seeds."
    )
    ratios = analysis["part_ratio_I_over_S"]
    backbone = ratios.get("backbone")
    if backbone is not None:
        more = "more" if backbone > 1 else "fewer"
        lines.append(
            f"Pre-trained (I) backbone maps use {more} dimensions than scratch (S) ones "
            f"(I/S ratio {backbone:.2f} summed over the backbone). The paper finds lower "
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


def _step_report(demo: Demo, specs: dict[str, str], retrain: dict, analysis: dict) -> dict:
    table = table1(specs, retrain["metrics"], demo.base)
    text = findings(table, analysis, demo.backbone)
    dynamics = {name: load_dynamics(demo.run(name)) for name in ("I", "S")}
    claims = [
        c.to_dict()
        for c in paper_claims(table, _comparison(demo), dynamics, BACKBONES[demo.backbone][0])
    ]
    path = write_report(
        [demo.run("I"), demo.run("S")],
        demo.out / "report",
        names=["I", "S"],
        multiple=MULTIPLE,
        width_specs=list(specs.values()),
        command="eigenarch demo",
        table1=table,
        findings=text,
        claims=claims,
    )
    return {"report": str(path), "table1": table, "findings": text, "claims": claims}


def _widths(widths) -> str:
    return ",".join(str(w) for w in widths)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


#: (name, description, function(demo, state) -> outputs), in order.
STEPS: list[tuple[str, str, Callable[[Demo, dict], dict]]] = [
    ("data", "generate the shapes detection and classification sets", lambda d, s: _step_data(d)),
    (
        "pretrain",
        "pre-train the backbone on shapes-cls (the I start)",
        lambda d, s: _step_pretrain(d),
    ),
    (
        "train",
        "train the detector from pre-training (I) and from scratch (S)",
        lambda d, s: _step_train(d),
    ),
    (
        "analyse",
        "eigenspectrum dynamics of I and S, and the I-vs-S comparison",
        lambda d, s: _step_analyse(d),
    ),
    (
        "search",
        "Intrinsic Architecture Search and the uniform-multiplier baseline",
        lambda d, s: _step_search(d),
    ),
    (
        "retrain",
        "retrain every searched backbone from scratch and evaluate",
        lambda d, s: _step_retrain(d, s["search"]["specs"]),
    ),
    (
        "report",
        "write the report",
        lambda d, s: _step_report(d, s["search"]["specs"], s["retrain"], s["analyse"]),
    ),
]


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
) -> dict:
    """Run every step not yet finished in ``out``; returns the state (outputs per step).

    ``jobs``: trainings run at once (default: one per CPU thread torch uses, one on a GPU).
    ``backbone``: ``resnet50`` (ResiaNets, paper Table 1's ResNet rows) or ``detnet59``
    (DetiaNets, its DetNet rows). ``seeds``: trainings of every Table 1 row (seeds
    ``seed``, ``seed + 1``, ...; default ``int(scale)``, at least 1). An ``out`` holding a
    demo of other settings is refused unless ``force`` (which deletes that demo first).
    """
    out = Path(out)
    if jobs is None:
        jobs = torch.get_num_threads() if device == "cpu" else 1
    if jobs < 1:
        raise EigenarchError(f"--jobs {jobs}: expected a positive integer")
    base_spec(backbone)  # an unknown backbone fails before anything is written
    demo = Demo(out, DemoSizes.make(quick, scale, seeds), seed, device, jobs, backbone)
    settings = {
        "backbone": backbone,
        "quick": quick,
        "scale": scale,
        "seed": seed,
        "sizes": asdict(demo.sizes),
        "detector": DETECTOR,
        "pretrain": PRETRAIN,
    }
    settings = json.loads(json.dumps(settings))  # as state.json holds them
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
    for number, (name, description, step) in enumerate(STEPS, start=1):
        label = f"[{number}/{len(STEPS)}] {description}"
        if name in state["steps"]:
            console.print(f"{label}: done already, skipped", highlight=False)
            continue
        console.print(f"{label} ...", highlight=False)
        start = time.perf_counter()
        outputs = step(demo, {k: v["outputs"] for k, v in state["steps"].items()})
        seconds = round(time.perf_counter() - start, 1)
        state["steps"][name] = {"outputs": outputs, "seconds": seconds}
        atomic_write_json(state_file, state)
    return state


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for every output of the demo."),
    quick: bool = typer.Option(False, help="Smaller sizes: the same steps in about a minute."),
    scale: float = typer.Option(1.0, help="Multiply data sizes and iterations (e.g. 10 on a GPU)."),
    seed: int = typer.Option(0, help="Random seed (the Table 1 rows use seed..seed+N-1)."),
    seeds: int | None = typer.Option(
        None,
        help="N: seeds of every Table 1 training, reported as mean ± std with a Welch's "
        "t-test p-value against the base (default: int(scale), at least 1).",
    ),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    force: bool = typer.Option(
        False,
        help="Delete the folder's earlier demo and start over (also needed when its "
        "settings differ).",
    ),
    jobs: int | None = typer.Option(
        None, help="Trainings run at once (default: one per CPU core, one on a GPU)."
    ),
    backbone: str = typer.Option(
        "resnet50",
        help="resnet50: Table 1's ResNet rows (ResiaNets); detnet59: its DetNet rows "
        "(DetiaNets, searched at threshold 10^-3.5).",
    ),
) -> None:
    """Run the paper's pipeline end to end on the embedded shapes data set (resumable)."""
    state = run_demo(out, quick, scale, seed, force, device, jobs, backbone, seeds)
    total = sum(step["seconds"] for step in state["steps"].values())
    report = state["steps"]["report"]["outputs"]
    for line in report["findings"]:
        console.print(f"- {line}", highlight=False)
    if "claims" not in report:  # a report step finished before the claims table existed
        console.print("No claims table in this older demo; --force redoes it.", highlight=False)
    else:
        console.print("The paper's claims against this run:", highlight=False)
    for claim in report.get("claims", []):
        console.print(f"- {claim_line(claim)}", highlight=False, markup=False)
    console.print(
        f"demo finished ({total:.0f} s of step time). Report: {report['report']} — open it in "
        f"a browser, e.g. `xdg-open {report['report']}`",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``eigenarch demo`` to the main app."""
    app.command("demo")(demo)
