"""``build_model``: builder names with ``--weights``, the user's factories, ``--min-size`` on
every torchvision detector family."""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision

from eigenarch.errors import EigenarchError
from eigenarch.models.detector import build_detector
from eigenarch.spectrum.stream import build_model, weights_state
from eigenarch.train.checkpoint import DETECTOR_FORMAT

SMALL_DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _same_weights(a: torch.nn.Module, b: dict) -> bool:
    own = a.state_dict()
    return own.keys() == b.keys() and all(torch.equal(own[k], b[k]) for k in own)


@pytest.fixture(scope="module")
def detector_state():
    """A small torchvision detector's state dict, trained (say) on 5 classes."""
    torch.manual_seed(3)
    model = torchvision.models.get_model(
        SMALL_DETECTOR, weights=None, weights_backbone=None, num_classes=5
    )
    return model.state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,  # a plain state dict
        lambda s: {"model": s, "optimizer": {"state": {}}, "epoch": 3, "args": {}},  # references
        lambda s: {"model": {f"module.{k}": v for k, v in s.items()}, "epoch": 3},  # DDP
        lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()}},  # Lightning-style
    ],
    ids=["plain", "references", "ddp", "lightning"],
)
def test_builder_weights_in_every_form_with_classes_from_the_box_predictor(
    tmp_path, detector_state, wrap
):
    path = tmp_path / "weights.pth"
    torch.save(wrap(detector_state), path)
    model, detector = build_model(SMALL_DETECTOR, 9, None, path)  # the data set has 9 classes
    assert detector and model.roi_heads.box_predictor.cls_score.out_features == 5
    assert _same_weights(model, detector_state)


def test_norms_saved_frozen_load_frozen_and_compute_the_same(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    with torch.no_grad():  # running statistics as a trained network has them
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    # as torchvision's builders save a backbone trained from pre-trained weights: the stem's
    # and layer1's norms frozen (no num_batches_tracked), the others BatchNorm
    state = {
        k: v
        for k, v in model.state_dict().items()
        if not (k.endswith("num_batches_tracked") and k.startswith(("bn1", "layer1.")))
    }
    torch.save({"model": state, "epoch": 0}, tmp_path / "w.pth")
    loaded, _ = build_model("resnet18", 9, None, tmp_path / "w.pth")
    kinds = {n: type(m).__name__ for n, m in loaded.named_modules() if "bn" in n}
    assert kinds["bn1"] == kinds["layer1.1.bn2"] == "FrozenBatchNorm2d"
    assert kinds["layer2.0.bn1"] == "BatchNorm2d" and _same_weights(loaded, state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), model(x), atol=1e-5)


@pytest.mark.parametrize(
    "name", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"]
)
def test_classes_from_the_classification_head_of_other_families(tmp_path, name):
    torch.manual_seed(0)
    state = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, num_classes=5
    ).state_dict()
    torch.save(state, tmp_path / "w.pth")
    model, detector = build_model(name, 9, None, tmp_path / "w.pth")
    assert detector and _same_weights(model, state)


def test_builder_weights_that_do_not_fit_are_one_line(tmp_path, detector_state):
    path = tmp_path / "w.pth"
    ten = torchvision.models.resnet18(num_classes=10).state_dict()
    torch.save(ten, path)
    with pytest.raises(EigenarchError, match=r"fc\.weight has shape \(10, 512\), expected "
                       r"\(1000, 512\)"):  # fmt: skip
        build_model("resnet18", 9, None, path)
    state = torchvision.models.resnet18().state_dict()
    torch.save({**state, "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(EigenarchError, match="extra.weight is not in the resnet18"):
        build_model("resnet18", 9, None, path)
    box = {**detector_state, "roi_heads.box_predictor.bbox_pred.bias": torch.zeros(7)}
    torch.save(box, path)  # class counts that disagree: no guess, the first misfit named
    with pytest.raises(EigenarchError, match=r"cls_score.weight has shape \(5, 1024\), expected "
                       r"\(9, 1024\) \(and 3 more\)"):  # fmt: skip
        build_model(SMALL_DETECTOR, 9, None, path)
    del state["layer1.0.conv1.weight"]
    torch.save({"model": state}, path)
    with pytest.raises(EigenarchError, match="layer1.0.conv1.weight is missing from the file"):
        build_model("resnet18", 9, None, path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"garbage", "not a readable state dict or checkpoint"),
        ({"epoch": 3, "optimizer": {}}, "expected a state dict"),
        ({}, "expected a state dict"),
        ({"model": {"w": 3}}, "expected a state dict"),
    ],
)
def test_unusable_weights_files(tmp_path, content, message):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(EigenarchError, match=message):
        weights_state(path)


def test_weights_with_a_checkpoint_model_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"model": {}, "config": {"arch": "resnet18"}}, path)
    with pytest.raises(EigenarchError, match="is a checkpoint"):
        build_model(str(path), 9, None, path)


FACTORY = """
import dataclasses

import torch
from eigenarch.models.detector import build_detector

CONFIG = dict(backbone=",".join(["16"] * 9), num_classes=4, gn_groups=8, fpn_channels=16,
              head_channels=16, representation=32, min_size=96, max_size=96)


def detector():
    return build_detector(**CONFIG)


@dataclasses.dataclass
class Settings:  # a dataclass needs its module in sys.modules
    width: int = 4


def classifier():
    width = Settings().width
    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU())


def not_a_model():
    return 3
"""


def test_factory_from_a_file_with_our_own_checkpoint_as_weights(tmp_path):
    (tmp_path / "my_models.py").write_text(FACTORY)
    spec = f"{tmp_path / 'my_models.py'}:detector"
    config = dict(backbone=",".join(["16"] * 9), num_classes=4, gn_groups=8, fpn_channels=16,
                  head_channels=16, representation=32, min_size=96, max_size=96)  # fmt: skip
    torch.manual_seed(1)
    state = build_detector(**config).state_dict()
    path = tmp_path / "iter_0000010.pt"
    torch.save({"format": DETECTOR_FORMAT, "config": config, "model": state}, path)
    model, detector = build_model(spec, 9, 64, path)
    assert detector and model.transform.min_size == (64,)
    assert _same_weights(model, state)
    classifier, detector = build_model(f"{tmp_path / 'my_models.py'}:classifier", 9, None)
    assert not detector and isinstance(classifier, torch.nn.Sequential)


def test_factory_from_a_package_module(tmp_path, monkeypatch):
    package = tmp_path / "factory_pkg_16"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    model, detector = build_model("factory_pkg_16.nets:detector", 9, None)
    assert detector and model.roi_heads.box_predictor.cls_score.out_features == 4
    with pytest.raises(EigenarchError, match="no module named 'factory_pkg_16.gone'"):
        build_model("factory_pkg_16.gone:detector", 9, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{dir}/absent.py:detector", "absent.py not found"),
        ("{dir}/my_models.py:missing", "has no function 'missing'"),
        ("{dir}/my_models.py:not_a_model", r"not_a_model\(\) returned a int, expected"),
        ("{dir}/my_models.py:", "expected path/to/file.py:factory"),
        ("no_such_module_16:make", "no module named 'no_such_module_16'"),
    ],
)
def test_factory_errors_are_one_line(tmp_path, spec, message):
    (tmp_path / "my_models.py").write_text(FACTORY)
    with pytest.raises(EigenarchError, match=message):
        build_model(spec.format(dir=tmp_path), 9, None)


@pytest.mark.parametrize(
    "name",
    [
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "maskrcnn_resnet50_fpn",
        "keypointrcnn_resnet50_fpn",
        "retinanet_resnet50_fpn",
        "fcos_resnet50_fpn",
    ],
)
def test_min_size_on_every_resizing_detector_family(name):
    model, detector = build_model(name, 3, 64)
    assert detector
    images, _ = model.eval().transform([torch.rand(3, 128, 96)])
    assert images.image_sizes == [(85, 64)]  # shorter side 96 -> 64


@pytest.mark.parametrize(
    ("name", "side"), [("ssd300_vgg16", "300x300"), ("ssdlite320_mobilenet_v3_large", "320x320")]
)
def test_min_size_is_refused_for_fixed_size_detectors(name, side):
    assert build_model(name, 3, None)[1]  # a detector without --min-size
    with pytest.raises(EigenarchError, match=f"resizes every image to a fixed {side}"):
        build_model(name, 3, 64)
