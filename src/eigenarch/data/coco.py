"""COCO-format detection data for torchvision detectors, with strict input checks.

Works for real COCO (``annotations/instances_train2017.json`` + ``train2017/``), for the
shapes set (``annotations/instances_train.json`` + ``train/``) and for any file pair given
explicitly. Every problem with the input is an :class:`EigenarchError` naming the file and
the field or value at fault.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torchvision.transforms.functional import pil_to_tensor

from eigenarch.errors import EigenarchError
from eigenarch.limits import check_limit
from eigenarch.progress import console

_REQUIRED = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}

#: Set to ``1`` (by ``eigenarch --allow-outside-data``), image files may lie outside the
#: image folder (absolute ``file_name`` values, ``..``, symbolic links leading out).
OUTSIDE_ENV = "EIGENARCH_ALLOW_OUTSIDE_DATA"

#: ImageNet statistics, as torchvision's classification weights normalise their inputs.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def find_split(root: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """The ``(annotation file, image folder)`` of ``split`` under a COCO-layout ``root``.

    Tries ``annotations/instances_{split}.json`` with ``{split}/`` (the shapes set), then the
    COCO 2017 names ``annotations/instances_{split}2017.json`` with ``{split}2017/``.
    """
    root = Path(root)
    if not root.is_dir():
        raise EigenarchError(f"{root}: data folder not found")
    for suffix in ("", "2017"):
        annotations = root / "annotations" / f"instances_{split}{suffix}.json"
        if annotations.is_file():
            return annotations, root / f"{split}{suffix}"
    raise EigenarchError(
        f"{root}: no annotations for split {split!r} "
        f"(expected annotations/instances_{split}.json or annotations/instances_{split}2017.json)"
    )


def load_coco_json(path: str | os.PathLike[str]) -> COCO:
    """Read and check a COCO annotation file; returns an indexed ``pycocotools`` COCO object.

    Checks the top-level lists, the required keys of every entry, unique ids, and that every
    annotation names a known image and category.
    """
    path = Path(path)
    if not path.is_file():
        raise EigenarchError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EigenarchError(f"{path}: invalid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise EigenarchError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    if not isinstance(data, dict):
        raise EigenarchError(f"{path}: expected a JSON object with images/annotations/categories")
    for section, keys in _REQUIRED.items():
        entries = data.get(section)
        if not isinstance(entries, list):
            raise EigenarchError(f"{path}: missing key {section!r} (expected a list)")
        for index, entry in enumerate(entries):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise EigenarchError(f"{path}: {section}[{index}] lacks key {missing[0]!r}")
        counts = Counter(entry["id"] for entry in entries)
        if len(counts) != len(entries):  # the first repeated, in one pass (not n^2 counts)
            duplicate = next(i for i, n in counts.items() if n > 1)
            raise EigenarchError(f"{path}: {section} id {duplicate} appears more than once")
    image_ids = {image["id"] for image in data["images"]}
    category_ids = {category["id"] for category in data["categories"]}
    for ann in data["annotations"]:
        if ann["category_id"] not in category_ids:
            raise EigenarchError(
                f"{path}: annotation {ann['id']} has unknown category_id {ann['category_id']} "
                f"(known: {sorted(category_ids)[:10]})"
            )
        if ann["image_id"] not in image_ids:
            raise EigenarchError(
                f"{path}: annotation {ann['id']} has unknown image_id {ann['image_id']}"
            )
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_finite, bbox))):
            raise EigenarchError(
                f"{path}: annotation {ann['id']} bbox {bbox!r} (expected [x, y, width, height], "
                "finite numbers)"
            )
    _check_sizes(path, data)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_sizes(path: Path, data: dict[str, Any]) -> None:
    """Bound what sizes allocations later (:mod:`eigenarch.limits`): each image's declared
    width and height (masks are drawn at that size), and its number of annotations (the
    box matching of training is boxes x anchors)."""
    for image in data["images"]:
        for side in ("width", "height"):
            if _is_number(image[side]):
                check_limit("image_side", image[side], f"{path}: image {image['id']} {side}")
    counts = Counter(ann["image_id"] for ann in data["annotations"])
    if counts:
        image_id, most = counts.most_common(1)[0]
        check_limit("boxes_per_image", most, f"{path}: image {image_id}: annotations")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """The image file ``path`` decoded as RGB; an unreadable, corrupt or truncated file is a
    one-line error naming it (also from a DataLoader worker, see :class:`EigenarchError`)."""
    try:
        with Image.open(path) as image:  # the header only, so far: bound it before decoding
            for side, pixels in zip(("width", "height"), image.size, strict=True):
                check_limit("image_side", pixels, f"{path}: {side}")
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise EigenarchError(f"{path}: unreadable image ({exc})") from None


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection data set for torchvision detectors.

    ``dataset[i]`` is ``(image, target)``: a float32 image tensor ``(3, H, W)`` in [0, 1] and a
    target dict with ``boxes`` (float32 ``(N, 4)`` xyxy), ``labels`` (int64, contiguous ids
    ``1..K`` in category-id order, 0 is background), ``image_id``, ``area``, ``iscrowd``
    and, when ``masks=True``, ``masks`` (uint8 ``(N, H, W)``). Crowd regions and boxes of
    non-positive size are left out of the targets (the latter counted in ``dropped_boxes``
    and reported once); the evaluator still sees the original annotation file.

    Args:
        annotation_file: the COCO JSON file.
        image_dir: the folder the images' ``file_name`` values are relative to.
        masks: also return instance masks (for Mask R-CNN).
        transforms: optional callable ``(image, target) -> (image, target)``.
        image_ids: restrict to these image ids (in this order), e.g. a held-out split.
        verbose: print the dropped-box report.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike[str],
        image_dir: str | os.PathLike[str],
        masks: bool = False,
        transforms: Callable | None = None,
        image_ids: list[int] | None = None,
        verbose: bool = True,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.coco = load_coco_json(self.annotation_file)
        self.masks = masks
        self.transforms = transforms
        self.category_ids = sorted(self.coco.getCatIds())
        self.category_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_of_category = {c: i + 1 for i, c in enumerate(self.category_ids)}
        if image_ids is None:
            image_ids = sorted(self.coco.getImgIds())
        unknown = [i for i in image_ids if i not in self.coco.imgs]
        if unknown:
            raise EigenarchError(f"{self.annotation_file}: unknown image ids {unknown[:5]}")
        self.image_ids = list(image_ids)
        self._check_image_files()
        self._count_boxes(verbose)

    def _count_boxes(self, verbose: bool) -> None:
        """Count (and report once) the boxes left out of the targets or clipped to their
        image, as the image sizes of the annotation file give them; count the crowd
        annotations (never targets) and the images without any annotation."""
        degenerate = outside = clipped = crowd = empty = 0
        for i in self.image_ids:
            info = self.coco.imgs[i]
            size = (info["width"], info["height"])
            empty += not self.coco.imgToAnns[i]
            for ann in self.coco.imgToAnns[i]:
                if ann.get("iscrowd", 0):
                    crowd += 1
                    continue
                if not _valid_box(ann["bbox"]):
                    degenerate += 1
                elif all(_is_number(v) for v in size):
                    box = _clip_box(ann["bbox"], *size)
                    outside += box is None
                    clipped += box is not None and box != _xyxy(ann["bbox"])
        self.dropped_boxes = degenerate + outside
        self.clipped_boxes = clipped
        self.crowd_annotations = crowd
        self.images_without_annotations = empty
        if not verbose:
            return
        for count, what in (
            (degenerate, "dropped {} annotation(s) with non-positive box width or height"),
            (outside, "dropped {} annotation(s) whose box lies wholly outside its image"),
            (clipped, "clipped {} box(es) reaching outside their image to it"),
        ):
            if count:
                console.print(f"{self.annotation_file}: {what.format(count)}", highlight=False)

    @classmethod
    def from_root(
        cls, root: str | os.PathLike[str], split: str = "train", **kwargs: Any
    ) -> CocoDetection:
        """The split ``split`` of a COCO-layout folder (see :func:`find_split`)."""
        annotation_file, image_dir = find_split(root, split)
        return cls(annotation_file, image_dir, **kwargs)

    @property
    def num_classes(self) -> int:
        """Number of classes including background, as torchvision detectors count them."""
        return len(self.category_ids) + 1

    def _check_image_files(self) -> None:
        if not self.image_dir.is_dir():
            raise EigenarchError(f"{self.image_dir}: image folder not found")
        if os.environ.get(OUTSIDE_ENV) != "1":
            for i in self.image_ids:
                self._check_inside(self.coco.imgs[i])
        missing = [
            self.coco.imgs[i]["file_name"]
            for i in self.image_ids
            if not (self.image_dir / self.coco.imgs[i]["file_name"]).is_file()
        ]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise EigenarchError(
                f"{self.image_dir}: {len(missing)} image file(s) listed in "
                f"{self.annotation_file.name} are missing: {shown}"
            )

    def _check_inside(self, info: dict[str, Any]) -> None:
        """A one-line error unless image ``info``'s ``file_name`` names a file inside the
        image folder: not absolute, no ``..``, no symbolic link leading out or looping."""
        name = info["file_name"]
        where = f"{self.annotation_file}: image {info['id']} file_name {name!r}"
        allow = f"(eigenarch --allow-outside-data reads it: {OUTSIDE_ENV}=1)"
        if not isinstance(name, str) or not name:
            raise EigenarchError(f"{where}: expected a path relative to {self.image_dir}")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise EigenarchError(f"{where}: outside the image folder {self.image_dir} {allow}")
        try:
            real = (self.image_dir / name).resolve()
        except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError for a loop
            raise EigenarchError(f"{where}: a symbolic link loop") from None
        if not real.is_relative_to(self.image_dir.resolve()):
            raise EigenarchError(f"{where}: a symbolic link out of the image folder "
                                 f"{self.image_dir}, to {real} {allow}")  # fmt: skip

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, index: int) -> torch.Tensor:
        """The image at ``index`` as a float32 ``(3, H, W)`` tensor in [0, 1]."""
        path = self.image_dir / self.coco.imgs[self.image_ids[index]]["file_name"]
        return pil_to_tensor(open_image(path)).float().div_(255.0)

    def load_target(self, index: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """The target dict of the image at ``index`` (see the class docstring)."""
        image_id = self.image_ids[index]
        anns, kept = [], []
        for a in self.coco.imgToAnns[image_id]:
            if a.get("iscrowd", 0) or not _valid_box(a["bbox"]):
                continue
            box = _clip_box(a["bbox"], width, height)
            if box is not None:
                anns.append(a)
                kept.append(box)
        boxes = torch.tensor(kept, dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes,
            "labels": torch.tensor(
                [self.label_of_category[a["category_id"]] for a in anns], dtype=torch.int64
            ),
            "image_id": image_id,
            "area": torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32),
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
        }
        if self.masks:
            masks = [self._mask(a, height, width) for a in anns]
            target["masks"] = (
                torch.from_numpy(np.stack(masks))
                if masks
                else torch.zeros((0, height, width), dtype=torch.uint8)
            )
        return target

    def _mask(self, ann: dict, height: int, width: int) -> np.ndarray:
        if "segmentation" not in ann:
            raise EigenarchError(
                f"{self.annotation_file}: annotation {ann['id']} lacks key 'segmentation' "
                "(needed for masks)"
            )
        info = self.coco.imgs[ann["image_id"]]
        if (info.get("height"), info.get("width")) != (height, width):  # before any mask is drawn
            raise EigenarchError(
                f"{self.annotation_file}: image {info['file_name']} is {width}x{height} on "
                f"disk but {info.get('width')}x{info.get('height')} in the annotations"
            )
        segmentation = ann["segmentation"]
        if isinstance(segmentation, dict) and segmentation.get("size") != [height, width]:
            raise EigenarchError(
                f"{self.annotation_file}: annotation {ann['id']} RLE size "
                f"{segmentation.get('size')!r} (expected its image's [{height}, {width}])"
            )
        return self.coco.annToMask(ann)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = self.load_image(index)
        target = self.load_target(index, image.shape[1], image.shape[2])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _valid_box(bbox: list[float]) -> bool:
    return bbox[2] > 0 and bbox[3] > 0


def _xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def _clip_box(bbox: list[float], width: float, height: float) -> list[float] | None:
    """A COCO ``[x, y, w, h]`` box as ``xyxy`` clipped to a ``width`` x ``height`` image, or
    None if nothing of it is left (as detectron2 and torchvision's references do)."""
    x1, y1, x2, y2 = _xyxy(bbox)
    x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
    y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
    return [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list, list]:
    """Collate for detection: lists of images and targets (torchvision detectors take lists)."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Flip an image and its target (boxes, masks) left-right (training augmentation)."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target
