"""Backbone initialisation from state dicts, our checkpoints and Detectron pickles."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from eigenarch.errors import EigenarchError
from eigenarch.models.resianet import resianet
from eigenarch.models.weights import load_backbone_weights, read_backbone_weights

WIDTHS = (32, 32, 64, 32, 64, 64, 128, 64, 128)
DEPTHS = (1, 2, 1, 1)


def _pair():
    torch.manual_seed(0)
    source = resianet(WIDTHS, DEPTHS, gn_groups=8, num_classes=5)
    torch.manual_seed(1)
    target = resianet(WIDTHS, DEPTHS, gn_groups=8, num_classes=7)
    return source, target


def _assert_body_equal(a, b):
    for key, value in a.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, b.state_dict()[key]), key


def test_torchvision_state_dict_with_prefixes(tmp_path):
    source, target = _pair()
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    info = load_backbone_weights(target, path)
    _assert_body_equal(source, target)
    assert info["format"] == "state_dict" and info["missing"] == [] and info["unexpected"] == []


def test_our_classifier_and_detector_checkpoints(tmp_path):
    source, target = _pair()
    classifier = tmp_path / "cls.pt"
    torch.save({"format": "eigenarch.classifier", "model": source.state_dict()}, classifier)
    assert load_backbone_weights(target, classifier)["format"] == "eigenarch.classifier"
    _assert_body_equal(source, target)
    detector = tmp_path / "det.pt"
    body = {f"backbone.body.{k}": v * 2 for k, v in source.state_dict().items()}
    payload = {"format": "eigenarch.detector", "model": {**body, "rpn.w": torch.ones(1)}}
    torch.save(payload, detector)
    state, _ = read_backbone_weights(detector)
    assert "rpn.w" not in state and torch.equal(state["conv1.weight"], 2 * source.conv1.weight)


def _detectron_blobs(model):
    """The model's weights under Detectron names (BGR stem), as an R-50-GN.pkl holds them."""
    names = {"conv1.weight": "conv1_w", "bn1.weight": "conv1_gn_s", "bn1.bias": "conv1_gn_b"}
    for key in model.state_dict():
        parts = key.split(".")
        if not parts[0].startswith("layer"):
            continue
        stage, block = int(parts[0][5:]) + 1, parts[1]
        norm = "gn_s" if parts[-1] == "weight" else "gn_b"
        if parts[2] == "downsample":
            branch, kind = "1", "w" if parts[3] == "0" else norm
        else:
            branch = {"1": "2a", "2": "2b", "3": "2c"}[parts[2][-1]]
            kind = "w" if parts[2].startswith("conv") else norm
        names[key] = f"res{stage}_{block}_branch{branch}_{kind}"
    blobs = {names[k]: v.numpy().copy() for k, v in model.state_dict().items() if k in names}
    blobs["conv1_w"] = blobs["conv1_w"][:, ::-1].copy()
    blobs["conv1_w_momentum"] = np.zeros(3)
    return blobs


def test_detectron_pickle_is_converted_by_name(tmp_path):
    source, target = _pair()
    path = tmp_path / "R-50-GN.pkl"
    path.write_bytes(pickle.dumps({"blobs": _detectron_blobs(source)}, protocol=2))
    info = load_backbone_weights(target, path)
    _assert_body_equal(source, target)
    assert info["format"] == "detectron" and info["unexpected"] == ["conv1_w_momentum"]
    assert info["missing"] == [] and info["image_std"][0] == pytest.approx(1 / 255)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/eigenarch-pwned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": _Exploit()}}))
    with pytest.raises(EigenarchError, match="refusing to load posix.system|refusing to load os"):
        read_backbone_weights(path)
    assert not os.path.exists("/tmp/eigenarch-pwned")


def test_mismatched_or_foreign_weights_are_named(tmp_path):
    _, target = _pair()
    wide = resianet(tuple(2 * w for w in WIDTHS), DEPTHS, gn_groups=8)
    path = tmp_path / "wide.pth"
    torch.save(wide.state_dict(), path)
    with pytest.raises(EigenarchError, match=r"shapes do not match.*conv1.weight \(64, 3, 7, 7\)"):
        load_backbone_weights(target, path)
    torch.save({"something.else": torch.zeros(2)}, path)
    with pytest.raises(EigenarchError, match="no parameter name matches"):
        load_backbone_weights(target, path)
    path.write_bytes(b"garbage")
    with pytest.raises(EigenarchError, match="not a readable torch weights file") as raised:
        load_backbone_weights(target, path)
    assert "weights_only" not in str(raised.value) and "\n" not in str(raised.value)
    path.write_text('{"a json": "file"}')
    with pytest.raises(EigenarchError, match=r"^--init .*wide.pth: not a readable torch weights"):
        load_backbone_weights(target, path)


def test_batchnorm_weights_into_a_groupnorm_backbone_are_refused(tmp_path):
    _, target = _pair()  # GroupNorm
    bn = resianet(WIDTHS, DEPTHS, norm="bn")
    path = tmp_path / "bn.pth"
    torch.save(bn.state_dict(), path)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(EigenarchError, match=r"bn1.running_mean is a BatchNorm statistic but "
                       r"the backbone's bn1 is GroupNorm"):  # fmt: skip
        load_backbone_weights(target, path)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())
    bn_target = resianet(WIDTHS, DEPTHS, norm="bn")
    assert load_backbone_weights(bn_target, path)["missing"] == []  # BN into BN loads


def test_init_loads_a_resized_detector_whole_and_any_other_checkpoint_body_only(tmp_path):
    from eigenarch.models import build_detector
    from eigenarch.models.weights import load_init_weights

    def tiny(seed: int):
        torch.manual_seed(seed)
        return build_detector("faster_rcnn", "16,16,32,16,32,32,64,32,64", num_classes=3,
                              min_size=64, max_size=64, gn_groups=8, fpn_channels=32,
                              head_channels=32, representation=64)  # fmt: skip

    trained, state = tiny(0), tiny(0).state_dict()
    for name, extra in (("run.pt", {}), ("resized.pt", {"inherited": {"from": "run.pt"}})):
        torch.save({"format": "eigenarch.detector", "model": state, **extra}, tmp_path / name)
    fresh = tiny(1)
    info = load_init_weights(fresh, tmp_path / "run.pt")  # a run's checkpoint: the body only
    assert info["format"] == "eigenarch.detector"
    assert torch.equal(fresh.backbone.body.conv1.weight, trained.backbone.body.conv1.weight)
    assert not torch.equal(fresh.rpn.head.cls_logits.weight, trained.rpn.head.cls_logits.weight)
    info = load_init_weights(fresh, tmp_path / "resized.pt")  # resize's: every weight
    assert info["format"] == "eigenarch.inherited" and info["loaded"] == len(state)
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())
    other = build_detector("faster_rcnn", "16,16,32,16,32,32,64,32,64", num_classes=5,
                           min_size=64, max_size=64, gn_groups=8, fpn_channels=32,
                           head_channels=32, representation=64)  # fmt: skip
    with pytest.raises(EigenarchError, match=r"resized.pt: the resized detector does not fit "
                       r"this run's detector: roi_heads.box_predictor.cls_score.weight is "
                       r"\(3, 64\) in the file, \(5, 64\) in the model"):  # fmt: skip
        load_init_weights(other, tmp_path / "resized.pt")
