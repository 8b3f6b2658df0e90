"""``eigenarch demo``: the pipeline on the embedded data set, as resumable steps.

Each step writes its outputs under the demo folder and records itself in ``state.json``;
re-running skips finished steps (``--force`` redoes them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer

from eigenarch.data.shapes import (
    ShapesClsConfig,
    ShapesConfig,
    generate_shapes,
    generate_shapes_cls,
)
from eigenarch.io import atomic_write_json
from eigenarch.progress import console


@dataclass(frozen=True)
class DemoSizes:
    """Every size the demo uses; ``quick`` shrinks them, ``scale`` multiplies them."""

    train_images: int
    val_images: int
    image_size: int
    cls_per_class: int
    cls_size: int

    @classmethod
    def make(cls, quick: bool = False, scale: float = 1.0) -> DemoSizes:
        base = cls(200, 50, 128, 20, 32) if quick else cls(1000, 200, 256, 120, 64)
        return cls(
            train_images=round(base.train_images * scale),
            val_images=round(base.val_images * scale),
            image_size=base.image_size,
            cls_per_class=round(base.cls_per_class * scale),
            cls_size=base.cls_size,
        )


def _step_data(out: Path, sizes: DemoSizes, seed: int) -> dict:
    cfg = ShapesConfig(sizes.train_images, sizes.val_images, sizes.image_size, seed)
    files = generate_shapes(out / "shapes", cfg)
    cls_cfg = ShapesClsConfig(
        sizes.cls_per_class, max(1, sizes.cls_per_class // 5), sizes.cls_size, seed
    )
    classes = generate_shapes_cls(out / "shapes-cls", cls_cfg)
    return {
        "detection": {split: str(path) for split, path in files.items()},
        "classification": str(out / "shapes-cls"),
        "classes": len(classes),
    }


#: The demo's steps, in order: (name, description, function(out, sizes, seed) -> outputs).
STEPS: list[tuple[str, str, Callable[[Path, DemoSizes, int], dict]]] = [
    ("data", "generate the shapes detection and classification sets", _step_data),
]


def run_demo(
    out: str | Path = "runs/demo",
    quick: bool = False,
    scale: float = 1.0,
    seed: int = 0,
    force: bool = False,
) -> dict:
    """Run every step not yet finished in ``out``; returns the state (outputs per step)."""
    out = Path(out)
    state_file = out / "state.json"
    sizes = DemoSizes.make(quick, scale)
    settings = {"quick": quick, "scale": scale, "seed": seed}
    state = json.loads(state_file.read_text()) if state_file.is_file() and not force else {}
    if state.get("settings") != settings:
        state = {"settings": settings, "steps": {}}
    for number, (name, description, step) in enumerate(STEPS, start=1):
        label = f"[{number}/{len(STEPS)}] {description}"
        if name in state["steps"]:
            console.print(f"{label}: done already, skipped", highlight=False)
            continue
        console.print(f"{label} ...", highlight=False)
        start = time.perf_counter()
        outputs = step(out, sizes, seed)
        seconds = round(time.perf_counter() - start, 1)
        state["steps"][name] = {"outputs": outputs, "seconds": seconds}
        atomic_write_json(state_file, state)
    return state


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for every output of the demo."),
    quick: bool = typer.Option(False, help="Smaller sizes: same steps, a few minutes."),
    scale: float = typer.Option(1.0, help="Multiply data sizes (e.g. 10 on a GPU machine)."),
    seed: int = typer.Option(0, help="Random seed."),
    force: bool = typer.Option(False, help="Redo finished steps."),
) -> None:
    """Run the pipeline end to end on the embedded shapes data set (resumable)."""
    state = run_demo(out, quick, scale, seed, force)
    total = sum(step["seconds"] for step in state["steps"].values())
    console.print(f"demo finished in {total:.0f} s of step time; outputs in {out}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``eigenarch demo`` to the main app."""
    app.command("demo")(demo)
