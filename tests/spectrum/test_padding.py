"""Padded positions never enter the covariances, for every torchvision detector family.

A batch of two images of different shapes is padded to one size by the detector's
``GeneralizedRCNNTransform``. Every map over the image batch must equal the float64
reference over each image's valid region, found from the transform's output (the RoI
heads' maps are rows of proposals, checked in test_collector.py). The stem conv's maps
read nothing but the image and zeros around it, so there the batch must also equal each
image alone: any padded position counted changes them. SSD and SSDlite resize every image
to one fixed size: nothing is padded, and every map equals the images alone.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models import detection

from eigenarch.spectrum import SpectrumCollector
from eigenarch.spectrum.collector import GeneralizedRCNNTransform

from .conftest import Recorder, reference_covariances

RCNN_MAPS = ("backbone.*", "rpn.*")
SMALL = {"min_size": 64, "max_size": 128, "rpn_post_nms_top_n_test": 50,
         "box_detections_per_img": 5}  # fmt: skip
LARGE = {"min_size": 128, "max_size": 256}  # P6 / P7: strides up to 128
FAMILIES = {
    "faster_rcnn": (detection.fasterrcnn_resnet50_fpn, SMALL, RCNN_MAPS),
    "mask_rcnn": (detection.maskrcnn_resnet50_fpn, SMALL, RCNN_MAPS),
    "keypoint_rcnn": (detection.keypointrcnn_resnet50_fpn, SMALL, RCNN_MAPS),
    "retinanet": (detection.retinanet_resnet50_fpn, LARGE, None),
    "fcos": (detection.fcos_resnet50_fpn, LARGE, None),
    "ssd": (detection.ssd300_vgg16, {}, None),
    "ssdlite": (detection.ssdlite320_mobilenet_v3_large, {}, None),
}  # fmt: skip


def _model(family: str) -> tuple[torch.nn.Module, tuple[str, ...] | None]:
    builder, sizes, include = FAMILIES[family]
    torch.manual_seed(0)
    extra = {"num_keypoints": 5} if family == "keypoint_rcnn" else {}
    model = builder(weights=None, weights_backbone=None, num_classes=3, **sizes, **extra)
    return model.eval(), include


def _images(family: str) -> list[torch.Tensor]:
    """Two images whose long sides (25/16 of the short) do not divide the deeper strides:
    their valid regions end inside a feature-map cell (``ceil`` and ``floor`` differ)."""
    side = FAMILIES[family][1].get("min_size", 64)  # SSD / SSDlite: any (resized)
    long = side * 25 // 16
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, side, long, generator=g), torch.rand(3, long, side, generator=g)]


def _collect(model, include, batches, reference=False):
    with SpectrumCollector(model, include=include, max_channels=None) as collector:
        recorder = Recorder(model) if reference else None  # its hooks after the collector's
        with torch.no_grad():
            for batch in batches:
                model(batch)
    if recorder is None:
        return collector.spectra()
    recorder.close()
    spectra = collector.spectra()
    calls = [call for call in recorder.calls if call[0] in set(spectra.names)]
    return spectra, reference_covariances(calls)


def _assert_same(batched, alone, names) -> None:
    """Same covariances (relative 1e-4; absolute 1e-20: SSDlite's random extra layers hold
    maps of ~1e-45) and sample counts."""
    assert names
    for name in names:
        a, b = batched.covariance(name), alone.covariance(name)
        assert (a - b).norm() <= 1e-4 * b.norm() + 1e-20, name
        assert batched.samples(name) == alone.samples(name), name


def _stem(model) -> list[str]:
    path = next(p for p, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    return [f"{path}:in", f"{path}:out"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_padded_positions_never_enter(family):
    model, include = _model(family)
    images = _images(family)
    transform = next(m for m in model.modules() if isinstance(m, GeneralizedRCNNTransform))
    image_list, _ = transform(images)
    padded, sizes = tuple(image_list.tensors.shape[-2:]), [tuple(s) for s in image_list.image_sizes]
    fixed = family.startswith("ssd")  # a fixed-size resize: nothing is padded
    alone = _collect(model, include, [[i] for i in images])
    if fixed:
        assert sizes == [padded, padded]
        _assert_same(_collect(model, include, [images]), alone, alone.names)
        return
    assert all(s != padded for s in sizes)  # both images really are padded
    assert any(x % 32 for s in sizes for x in s)  # a region ends inside a stride-32 cell
    batched, reference = _collect(model, include, [images], reference=True)
    assert sorted(batched.names) == sorted(reference)
    for name, (expected, samples) in reference.items():
        got = batched.covariance(name).numpy()
        assert abs(got - expected).max() <= 1e-6 * abs(expected).max(), name
        assert batched.samples(name) == samples, name
    _assert_same(batched, alone, _stem(model))


def test_the_comparison_sees_padded_positions(monkeypatch):
    """Without the transform's image sizes the same batch differs from the images alone."""
    model, include = _model("retinanet")
    images = _images("retinanet")
    alone = _collect(model, _stem(model), [[i] for i in images])
    monkeypatch.setattr(SpectrumCollector, "_on_transform", lambda *args: None)
    with pytest.raises(AssertionError):
        _assert_same(_collect(model, _stem(model), [images]), alone, _stem(model))
