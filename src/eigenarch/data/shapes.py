"""The embedded data sets: synthetic shapes for detection (COCO format) and classification.

Every image is drawn from its own random generator seeded by ``(seed, split, index)``, so
the same seed gives byte-identical files however many worker processes draw them. Objects
are polygons; the later ones occlude the earlier ones, and each annotation's polygons are
the *visible* part of its object, so masks, boxes and areas match the drawn pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box

from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_path, atomic_write_json

#: The detection classes, in category-id order (ids start at 1).
SHAPE_CLASSES = ("circle", "triangle", "square", "hexagon", "star", "cross", "heart", "crescent")
#: Colour families of the classification set: name -> hue in degrees.
COLOUR_FAMILIES = {"red": 0.0, "green": 120.0, "blue": 235.0}

_SPLIT_IDS = {"train": 1, "val": 2}
_JPEG_QUALITY = 92
_MIN_VISIBLE = 0.5  # an occluded object keeps at least this share of its area
_PLACEMENT_TRIES = 25


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> list[tuple[float, float]]:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return [(radius * math.cos(a), radius * math.sin(a)) for a in angles]


def _star() -> list[tuple[float, float]]:
    outer = _regular(5, 1.0, -math.pi / 2)
    inner = _regular(5, 0.42, -math.pi / 2 + math.pi / 5)
    return [p for pair in zip(outer, inner, strict=True) for p in pair]


def _cross(arm: float = 0.34) -> list[tuple[float, float]]:
    a, b = arm, 1.0
    return [
        (-a, -b),
        (a, -b),
        (a, -a),
        (b, -a),
        (b, a),
        (a, a),
        (a, b),
        (-a, b),
        (-a, a),
        (-b, a),
        (-b, -a),
        (-a, -a),
    ]


def _heart() -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    scale = 1.0 / 17.0
    return list(zip((x * scale).tolist(), ((y + 2.5) * scale).tolist(), strict=True))


def _crescent() -> list[tuple[float, float]]:
    outer = Polygon(_regular(48))
    inner = affinity.translate(Polygon(_regular(48, 0.8)), 0.45, 0.0)
    return list(outer.difference(inner).exterior.coords)[:-1]


_OUTLINES: dict[str, Polygon] = {
    "circle": Polygon(_regular(48)),
    "triangle": Polygon(_regular(3, 1.0, -math.pi / 2)),
    "square": Polygon(_regular(4, 1.0, math.pi / 4)),
    "hexagon": Polygon(_regular(6)),
    "star": Polygon(_star()),
    "cross": Polygon(_cross()),
    "heart": Polygon(_heart()),
    "crescent": Polygon(_crescent()),
}


@dataclass(frozen=True)
class ShapesConfig:
    """Sizes of the detection set; object diameters are log-uniform in the given fractions."""

    train: int = 2000
    val: int = 500
    size: int = 256
    seed: int = 0
    min_objects: int = 1
    max_objects: int = 8
    min_scale: float = 0.05
    max_scale: float = 0.6

    def __post_init__(self) -> None:
        if self.size < 32:
            raise EigenarchError(f"--size {self.size}: expected at least 32 pixels")
        if self.train < 0 or self.val < 0:
            raise EigenarchError(f"--train/--val ({self.train}, {self.val}): expected counts >= 0")


@dataclass(frozen=True)
class ShapesClsConfig:
    """Sizes of the classification set (24 classes: shape x colour family)."""

    train_per_class: int = 200
    val_per_class: int = 40
    size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 16:
            raise EigenarchError(f"--size {self.size}: expected at least 16 pixels")
        if self.train_per_class < 0 or self.val_per_class < 0:
            raise EigenarchError(
                f"--train-per-class/--val-per-class ({self.train_per_class}, "
                f"{self.val_per_class}): expected counts >= 0"
            )


@dataclass
class _Object:
    category: int  # index into SHAPE_CLASSES
    full: Polygon
    visible: Polygon | MultiPolygon
    colour: np.ndarray


# ---------------------------------------------------------------------------------------------
# Drawing


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (h in degrees, s and v in [0, 1]) as float RGB in [0, 255]."""
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return (np.array(rgb) + (v - c)) * 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted textured background (gradient, blobs, stripes or checks), float32 HxWx3."""
    axis = np.arange(size, dtype=np.float32) / size
    yy, xx = axis[:, None], axis[None, :]
    c0 = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.35), rng.uniform(0.25, 0.8))
    c1 = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.35), rng.uniform(0.25, 0.8))
    kind = rng.integers(4)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == 0:  # linear gradient
        t = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    elif kind == 1:  # smooth blobs from an upsampled random grid
        grid = rng.integers(3, 12)
        small = (rng.random((grid, grid)) * 255).astype(np.uint8)
        t = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), np.float32) / 255
    elif kind == 2:  # stripes
        t = 0.5 + 0.5 * np.sin(2 * math.pi * ramp * rng.uniform(3, 14))
    else:  # checks
        cells = rng.integers(3, 10)
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32)
    t = np.broadcast_to(t, (size, size))
    return (c0 + (c1 - c0) * t[..., None]).astype(np.float32)


def _fill(rng: np.random.Generator, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """An object's pixels under ``mask``: its colour with shading and sometimes stripes."""
    ys, xs = np.nonzero(mask)
    yy, xx = ys.astype(np.float32) / mask.shape[0], xs.astype(np.float32) / mask.shape[1]
    angle = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + rng.uniform(0.0, 0.3) * (xx * math.cos(angle) + yy * math.sin(angle) - 0.5)
    if rng.random() < 0.3:
        period = rng.uniform(4, 16) / mask.shape[0]
        shade = shade * (0.85 + 0.15 * np.sign(np.sin(2 * math.pi * (xx + yy) / period)))
    return colour.astype(np.float32) * shade[:, None]


def _polygons(geometry: Polygon | MultiPolygon) -> list[Polygon]:
    if geometry.is_empty:
        return []
    return list(geometry.geoms) if isinstance(geometry, MultiPolygon) else [geometry]


def _segmentation(geometry: Polygon | MultiPolygon) -> list[list[float]]:
    """COCO polygons (flat x,y lists) of the exteriors of a hole-free geometry."""
    return [
        [round(v, 2) for xy in list(p.exterior.coords)[:-1] for v in xy]
        for p in _polygons(geometry)
    ]


def _rasterize(segmentation: list[list[float]], size: int) -> dict:
    return mask_utils.merge(mask_utils.frPyObjects(segmentation, size, size))


def _clean(geometry, min_area: float = 2.0) -> Polygon | MultiPolygon:
    """Drop slivers smaller than ``min_area`` px^2 left by a difference."""
    parts = [p for p in _polygons(geometry) if isinstance(p, Polygon) and p.area >= min_area]
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _place(rng: np.random.Generator, category: int, size: int, diameter: float) -> Polygon:
    outline = _OUTLINES[SHAPE_CLASSES[category]]
    aspect = math.exp(rng.uniform(-0.3, 0.3))
    shape = affinity.scale(outline, diameter / 2 * aspect, diameter / 2 / aspect, origin=(0, 0))
    shape = affinity.rotate(shape, rng.uniform(0, 360), origin=(0, 0))
    minx, miny, maxx, maxy = shape.bounds
    cx = rng.uniform(-minx, size - maxx) if maxx - minx < size else size / 2
    cy = rng.uniform(-miny, size - maxy) if maxy - miny < size else size / 2
    return affinity.translate(shape, cx, cy).intersection(box(0, 0, size, size))


def _occlusion_ok(objects: list[_Object], new: Polygon) -> list[Polygon | MultiPolygon] | None:
    """The visible parts of ``objects`` once ``new`` lies on top, or None if that hides too much.

    Each object keeps at least half its area and never gets a hole (COCO polygons cannot
    describe holes).
    """
    updated = []
    for obj in objects:
        visible = _clean(obj.visible.difference(new))
        parts = _polygons(visible)
        if visible.area < _MIN_VISIBLE * obj.full.area or any(p.interiors for p in parts):
            return None
        updated.append(visible)
    return updated


def _layout(rng: np.random.Generator, cfg: ShapesConfig) -> list[_Object]:
    """Choose 1..max objects and place them so each stays at least half visible."""
    objects: list[_Object] = []
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    lo, hi = math.log(cfg.min_scale * cfg.size), math.log(cfg.max_scale * cfg.size)
    for _ in range(count):
        category = int(rng.integers(len(SHAPE_CLASSES)))
        colour = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
        for _ in range(_PLACEMENT_TRIES):
            shape = _place(rng, category, cfg.size, math.exp(rng.uniform(lo, hi)))
            visible = _occlusion_ok(objects, shape)
            if visible is not None and shape.area >= 4.0:
                for obj, vis in zip(objects, visible, strict=True):
                    obj.visible = vis
                objects.append(_Object(category, shape, shape, colour))
                break
    return objects


def _paint(
    rng: np.random.Generator, size: int, objects: list[_Object]
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw ``objects`` in order on a background.

    Returns the uint8 image, the label map (index of the object painted at each pixel, -1
    for background) and each object's RLE mask of its visible polygons.
    """
    image = _background(rng, size)
    labels = np.full((size, size), -1, np.int16)
    rles = []
    for index, obj in enumerate(objects):
        rle = _rasterize(_segmentation(obj.visible), size)
        mask = mask_utils.decode(rle).astype(bool)
        image[mask] = _fill(rng, mask, obj.colour)
        labels[mask] = index
        rles.append(rle)
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(2.0, 10.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels, rles


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS.get(split, 0), index]))


def render_detection_image(
    cfg: ShapesConfig, split: str, index: int
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw one detection image: ``(image uint8 HxWx3, label map, annotations)``.

    Annotations have ``category_id``, ``segmentation``, ``bbox`` (COCO xywh, from the mask),
    ``area`` (mask pixels) and ``iscrowd``; the label map holds, per pixel, the index of the
    annotation drawn there (-1 for background), which tests compare with the masks.
    """
    rng = _image_rng(cfg.seed, split, index)
    objects = _layout(rng, cfg)
    image, labels, rles = _paint(rng, cfg.size, objects)
    annotations = []
    for obj, rle in zip(objects, rles, strict=True):
        annotations.append(
            {
                "category_id": obj.category + 1,
                "segmentation": _segmentation(obj.visible),
                "area": int(mask_utils.area(rle)),
                "bbox": [int(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return image, labels, annotations


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=_JPEG_QUALITY)


def _detection_job(args: tuple[ShapesConfig, str, int, str]) -> list[dict]:
    cfg, split, index, path = args
    image, _, annotations = render_detection_image(cfg, split, index)
    _save_jpeg(image, Path(path))
    return annotations


def _map_jobs(function, jobs: list, workers: int) -> Iterator:
    """Run ``function`` over ``jobs`` in order, in ``workers`` processes when more than one."""
    if workers <= 1:
        yield from map(function, jobs)
        return
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        yield from pool.map(function, jobs, chunksize=16)
    finally:  # on Ctrl-C or an error, drop the jobs not started rather than run them all
        pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
    """Worker processes for data generation: the CPUs this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def generate_shapes(
    out: str | os.PathLike[str],
    cfg: ShapesConfig = ShapesConfig(),
    workers: int | None = None,
    on_image=None,
) -> dict[str, Path]:
    """Write the shapes detection set in COCO layout; returns the annotation file per split.

    Layout: ``out/annotations/instances_{train,val}.json`` and ``out/{train,val}/NNNNNN.jpg``.
    ``on_image`` (if given) is called once per image written, e.g. to advance a progress bar.
    """
    root = Path(out)
    workers = default_workers() if workers is None else workers
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(SHAPE_CLASSES)
    ]
    written = {}
    for split, count in (("train", cfg.train), ("val", cfg.val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        jobs = [(cfg, split, i, str(root / split / f"{i:06d}.jpg")) for i in range(count)]
        images, annotations = [], []
        for i, anns in enumerate(_map_jobs(_detection_job, jobs, workers)):
            images.append(
                {"id": i + 1, "file_name": f"{i:06d}.jpg", "width": cfg.size, "height": cfg.size}
            )
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **ann})
            if on_image is not None:
                on_image()
        dataset = {
            "info": {
                "description": "eigenarch synthetic shapes (detection)",
                "version": "1",
                "generator": {"seed": cfg.seed, "split": split, **_config_dict(cfg)},
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        written[split] = atomic_write_json(
            root / "annotations" / f"instances_{split}.json", dataset, indent=None
        )
    return written


def _config_dict(cfg: ShapesConfig | ShapesClsConfig) -> dict:
    return {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}


# ---------------------------------------------------------------------------------------------
# Classification set (stand-in for ImageNet pre-training)


def classification_classes() -> list[str]:
    """Class names of the classification set: every shape in every colour family."""
    return [f"{shape}_{colour}" for shape in SHAPE_CLASSES for colour in COLOUR_FAMILIES]


def render_classification_image(
    size: int, seed: int, split: str, index: int, class_index: int
) -> np.ndarray:
    """Draw one classification image: one object of the class, maybe small distractors."""
    rng = _image_rng(seed, split, index)
    shape_index, colour_index = divmod(class_index, len(COLOUR_FAMILIES))
    hue = list(COLOUR_FAMILIES.values())[colour_index] + rng.uniform(-18, 18)
    colour = _hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))
    shape = _place(rng, shape_index, size, rng.uniform(0.45, 0.9) * size)
    main = _Object(shape_index, shape, shape, colour)
    return _paint(rng, size, [main])[0]


def _classification_job(args: tuple[int, int, str, int, int, str]) -> None:
    size, seed, split, index, class_index, path = args
    _save_jpeg(render_classification_image(size, seed, split, index, class_index), Path(path))


def generate_shapes_cls(
    out: str | os.PathLike[str],
    cfg: ShapesClsConfig = ShapesClsConfig(),
    workers: int | None = None,
    on_image=None,
) -> list[str]:
    """Write the classification set as ImageFolder trees ``out/{train,val}/<class>/N.jpg``.

    Returns the class names (shape x colour family, 24 classes).
    """
    root = Path(out)
    classes = classification_classes()
    workers = default_workers() if workers is None else workers
    for split, per_class in (("train", cfg.train_per_class), ("val", cfg.val_per_class)):
        jobs = []
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                path = root / split / name / f"{k:05d}.jpg"
                jobs.append((cfg.size, cfg.seed, split, c * per_class + k, c, str(path)))
        for _ in _map_jobs(_classification_job, jobs, workers):
            if on_image is not None:
                on_image()
    atomic_write_json(root / "classes.json", {"classes": classes, **_config_dict(cfg)})
    return classes


__all__ = [
    "SHAPE_CLASSES",
    "ShapesClsConfig",
    "ShapesConfig",
    "classification_classes",
    "generate_shapes",
    "generate_shapes_cls",
    "render_classification_image",
    "render_detection_image",
]
