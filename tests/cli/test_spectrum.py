"""``eigenarch spectrum`` and ``eigenarch spectrum show``, run as a user would."""

from __future__ import annotations

import errno
import json
import os
import re

import pytest
import torch
import torchvision

from eigenarch.data.shapes import ShapesConfig, generate_shapes
from eigenarch.io import output_lock
from eigenarch.models.detector import build_detector
from eigenarch.spectrum import Spectra
from eigenarch.train.checkpoint import DETECTOR_FORMAT

from ..conftest import REFUSED


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, ShapesConfig(train=5, val=2, size=64, seed=0), workers=1)
    return root


def collect(run_cli, shapes, out, *extra):
    return run_cli("spectrum", "--data", shapes, "--images", "3", "--workers", "0",
                   "--out", out, *extra)  # fmt: skip


def test_classifier_collect_then_show(run_cli, shapes, tmp_path):
    out = tmp_path / "r18.safetensors"
    r = collect(run_cli, shapes, out, "--model", "resnet18", "--include", "layer4.*", "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    spectra = Spectra.load(out)
    assert [row["name"] for row in summary["maps"]] == spectra.names
    assert spectra.names[0] == "layer4.0.conv1:in" and len(spectra.names) == 10
    assert all(spectra.samples(n) == 3 for n in spectra.names)
    assert spectra.meta["model"] == "resnet18" and spectra.meta["images"] == 3
    assert "eigenvalues" in r.stderr and "10/10" in r.stderr  # the step after the last batch
    for row in summary["maps"]:
        assert row["intrinsic_dim"] == spectra.intrinsic_dim(row["name"], 1e-3)
        assert row["share"] == row["intrinsic_dim"] / row["channels"]

    r = run_cli("spectrum", "show", out, "--threshold", "1e-3.5", "--json")
    assert r.code == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["threshold"] == pytest.approx(10**-3.5)
    for row in shown["maps"]:
        assert row["intrinsic_dim"] == spectra.intrinsic_dim(row["name"], 10**-3.5)

    r = run_cli("spectrum", "show", out)
    assert r.code == 0 and "layer4.1.conv2:out" in r.stdout and "dim @ 0.001" in r.stdout


def test_same_seed_same_file(run_cli, shapes, tmp_path):
    args = ("--model", "resnet18", "--include", "layer4.1.*", "--seed", "3")
    for name in ("a", "b"):
        assert collect(run_cli, shapes, tmp_path / name, *args).code == 0
    a, b = Spectra.load(tmp_path / "a"), Spectra.load(tmp_path / "b")
    assert all(torch.equal(a.covariance(n), b.covariance(n)) for n in a.names)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()  # metadata order too
    sidecars = [(tmp_path / f"{name}.json").read_text() for name in "ab"]
    assert sidecars[0] == sidecars[1].replace(str(tmp_path / "b"), str(tmp_path / "a"))


def test_an_earlier_spectra_file_is_kept_unless_force(run_cli, shapes, tmp_path):
    out, args = tmp_path / "r18.safetensors", ("--model", "resnet18", "--include", "fc:*")
    assert collect(run_cli, shapes, out, *args).code == 0
    earlier = out.read_bytes(), out.with_name("r18.safetensors.json").read_bytes()
    r = collect(run_cli, shapes, out, *args, "--seed", "1")
    assert r.code == 2 and r.stderr.strip().splitlines() == [
        f"error: {out}: exists (an earlier run's spectra); pass --force to overwrite it"
    ]
    assert (out.read_bytes(), out.with_name("r18.safetensors.json").read_bytes()) == earlier
    assert collect(run_cli, shapes, out, *args, "--seed", "1", "--force").code == 0
    assert Spectra.load(out).meta["seed"] == 1


def test_detector_with_random_weights(run_cli, shapes, tmp_path):
    out = tmp_path / "frcnn.safetensors"
    r = collect(run_cli, shapes, out, "--model", "fasterrcnn_resnet50_fpn", "--min-size", "64",
                "--include", "rpn.*,roi_heads.box_head.*")  # fmt: skip
    assert r.code == 0, r.stderr
    spectra = Spectra.load(out)
    assert spectra.samples("rpn.head.conv.0.0:in") == 5 * 3  # 5 FPN levels, 3 images
    assert spectra.channels("rpn.head.cls_logits:out") == 3
    assert "roi_heads.box_head.fc6:out" in spectra.names
    assert "skipping 1 map(s) wider than 4096" in r.stderr and "fc6:in" in r.stderr
    assert "rpn.head.conv.0.0:in" in r.stdout  # the table


def test_wide_maps_sketched_then_shown_as_lower_bounds(run_cli, shapes, tmp_path):
    out = tmp_path / "sketch.safetensors"
    r = collect(run_cli, shapes, out, "--model", "fasterrcnn_resnet50_fpn", "--min-size", "64",
                "--include", "roi_heads.box_head.*", "--sketch-rank", "8", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    assert "sketching 1 map(s) wider than 4096 channels at rank 8" in r.stderr
    assert "fc6:in" in r.stderr and "skipping" not in r.stderr
    spectra = Spectra.load(out)
    assert spectra.sketch_rank("roi_heads.box_head.fc6:in") == 8
    assert spectra.channels("roi_heads.box_head.fc6:in") == 12544
    assert spectra.sketch_rank("roi_heads.box_head.fc6:out") == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)["maps"]}
    assert rows["roi_heads.box_head.fc6:in"]["sketch_rank"] == 8
    assert 1 <= rows["roi_heads.box_head.fc6:in"]["intrinsic_dim"] <= 8
    dim = rows["roi_heads.box_head.fc6:in"]["intrinsic_dim"]
    r = run_cli("spectrum", "show", out)
    assert r.code == 0 and f">= {dim} (sketch 8)" in r.stdout
    r = collect(run_cli, shapes, tmp_path / "no", "--model", "resnet18", "--sketch-rank", "-1")
    assert r.code == 2 and "--sketch-rank" in r.stderr


def test_checkpoint_file(run_cli, shapes, tmp_path):
    torch.manual_seed(5)
    model = torchvision.models.resnet18()
    good = tmp_path / "good.pt"
    torch.save({"model": model.state_dict(), "config": {"arch": "resnet18"}}, good)
    r = collect(run_cli, shapes, tmp_path / "c", "--model", good, "--include", "fc")
    assert r.code == 0, r.stderr
    assert Spectra.load(tmp_path / "c").names == ["fc:in", "fc:out"]

    ten = tmp_path / "ten.pt"  # a classifier not trained on ImageNet's 1000 classes
    weights = torchvision.models.resnet18(num_classes=10).state_dict()
    torch.save({"model": weights, "config": {"arch": "resnet18", "num_classes": 10}}, ten)
    r = collect(run_cli, shapes, tmp_path / "ten", "--model", ten, "--include", "fc")
    assert r.code == 0, r.stderr
    assert Spectra.load(tmp_path / "ten").channels("fc:out") == 10

    bad = tmp_path / "bad.pt"
    torch.save({"model": weights, "config": {"arch": "resnet18", "num_classes": "ten"}}, bad)
    r = collect(run_cli, shapes, tmp_path / "d", "--model", bad)
    assert r.code == 2 and "config num_classes 'ten'" in r.stderr
    torch.save({"model": model.state_dict()}, bad)
    r = collect(run_cli, shapes, tmp_path / "d", "--model", bad)
    assert r.code == 2 and "'config'" in r.stderr
    torch.save({"model": model.state_dict(), "config": {"depth": 18}}, bad)
    r = collect(run_cli, shapes, tmp_path / "d", "--model", bad)
    assert r.code == 2 and "naming a torchvision builder in 'arch'" in r.stderr
    torch.save({"model": {"fc.weight": torch.zeros(1)}, "config": {"arch": "resnet18"}}, bad)
    r = collect(run_cli, shapes, tmp_path / "d", "--model", bad)
    assert r.code == 2 and "weights do not fit the resnet18" in r.stderr
    bad.write_bytes(b"not a checkpoint")
    r = collect(run_cli, shapes, tmp_path / "d", "--model", bad)
    assert r.code == 2 and "not a readable torch checkpoint" in r.stderr
    assert not (tmp_path / "d").exists()


def test_nan_weights_name_the_maps_with_non_finite_covariance(run_cli, shapes, tmp_path):
    weights = torchvision.models.resnet18().state_dict()
    weights["layer3.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save({"model": weights, "config": {"arch": "resnet18"}}, path)
    r = collect(run_cli, shapes, tmp_path / "n", "--model", path)
    assert r.code == 2 and r.stderr.strip().splitlines()[-1].startswith("error: non-finite"), (
        r.stderr
    )
    assert "in 19 map(s): layer3.0.conv1:out, layer3.0.conv2:in" in r.stderr
    assert "Traceback" not in r.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]


def test_detector_checkpoint_of_eigenarch_train(run_cli, shapes, tmp_path):
    config = dict(backbone=",".join(["32"] * 9), num_classes=9, gn_groups=8, fpn_channels=16,
                  head_channels=16, representation=32, min_size=96, max_size=96)  # fmt: skip
    torch.manual_seed(0)
    detector = build_detector(**config)
    path = tmp_path / "iter_0000010.pt"
    torch.save({"format": DETECTOR_FORMAT, "config": config, "model": detector.state_dict()}, path)
    r = collect(run_cli, shapes, tmp_path / "s", "--model", path, "--include", "rpn.*",
                "--min-size", "64", "--json")  # fmt: skip
    assert r.code == 0, r.stderr
    spectra = Spectra.load(tmp_path / "s")
    assert spectra.channels("rpn.head.conv.0.0:in") == 16
    assert spectra.samples("rpn.head.conv.0.0:in") == 5 * 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "nonsense"), "--model 'nonsense': not a file"),
        (("--model", "resnet18", "--threshold", "abc"), "--threshold 'abc'"),
        (("--model", "resnet18", "--sides", "up"), "--sides 'up': expected in, out or in,out"),
        (("--model", "resnet18", "--include", "nothing.*"), "no Conv2d"),
        (("--model", "resnet18", "--split", "test"), "no annotations for split 'test'"),
        (("--images", "2"), "needs --model and --data"),
        (("--model", "fasterrcnn_resnet50_fpn", "--min-size", "-5"), "--min-size -5: expected"),
        (("--model", "resnet18", "--min-size", "64"), "detectors only, not the classifier"),
        (("--model", "ssdlite320_mobilenet_v3_large", "--min-size", "256"), "fixed 320x320"),
        (("--model", "resnet18", "--weights", "absent.pth"), "state dict or checkpoint not found"),
        (("--model", "absent.py:make"), "absent.py not found"),
        (("--model", "resnet18", "--workers", "-1"), "Invalid value for '--workers'"),
    ],
)
def test_user_errors(run_cli, shapes, tmp_path, args, message):
    r = collect(run_cli, shapes, tmp_path / "x", *args)
    assert r.code == 2 and r.stderr.startswith("error:") and message in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


def test_show_refuses_bad_files(run_cli, tmp_path):
    r = run_cli("spectrum", "show", tmp_path)
    assert r.code == 2 and "is a folder; expected a spectra file" in r.stderr
    r = run_cli("spectrum", "show", tmp_path / "none.safetensors")
    assert r.code == 2 and "not found" in r.stderr
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    weights = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, weights)
    for path in (junk, weights):
        r = run_cli("spectrum", "show", path)
        assert r.code == 2 and f"{path}: not a spectra file (expected the safetensors" in r.stderr
        assert "sidecar" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_help(run_cli):
    r = run_cli("spectrum", "--help")
    assert r.code == 0 and "--model" in r.stdout and "show" in r.stdout
    assert run_cli("spectrum", "show", "--help").code == 0


def test_output_folder_or_empty_split_fails_before_the_data_pass(run_cli, shapes, tmp_path):
    r = collect(run_cli, shapes, tmp_path, "--model", "resnet18")  # --out is a folder
    assert r.code == 2 and r.stderr.startswith("error:") and "is a folder" in r.stderr
    empty = tmp_path / "empty"
    generate_shapes(empty, ShapesConfig(train=0, val=1, size=64, seed=0), workers=1)
    r = collect(run_cli, empty, tmp_path / "e", "--model", "resnet18")
    assert r.code == 2 and "train: no images" in r.stderr
    assert not (tmp_path / "e").exists()


def test_a_read_only_output_fails_before_the_data_pass(run_cli, shapes, tmp_path, read_only,
                                                        monkeypatch):  # fmt: skip
    def data_pass(*args, **kwargs):
        raise AssertionError("the data pass ran")

    monkeypatch.setattr("eigenarch.spectrum.stream.stream_spectra", data_pass)
    (tmp_path / "ro").mkdir()
    out = read_only(tmp_path / "ro")
    r = collect(run_cli, shapes, out / "sub" / "s.safetensors", "--model", "resnet18")
    lines = r.stderr.strip().splitlines()
    assert r.code == 2 and len(lines) == 1, r.stderr
    assert re.fullmatch(f"error: {out / 'sub' / 's.safetensors'}: cannot write {REFUSED}", lines[0])


def test_a_full_disk_at_the_end_keeps_the_previous_spectra(run_cli, shapes, tmp_path,
                                                           monkeypatch):  # fmt: skip
    out = tmp_path / "s.safetensors"
    args = ("--model", "resnet18", "--include", "fc")
    assert collect(run_cli, shapes, out, *args).code == 0
    before = out.read_bytes(), (tmp_path / "s.safetensors.json").read_bytes()

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pathlib.Path.write_bytes", full)
    r = collect(run_cli, shapes, out, *args, "--seed", "1", "--force")
    last = r.stderr.strip().splitlines()[-1]
    assert (
        r.code == 2
        and last
        == f"error: {out}: cannot write (No space left on device); the previous file is intact"
    )
    assert (out.read_bytes(), (tmp_path / "s.safetensors.json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors", "s.safetensors.json"]


def test_swin_t_attention_layers_are_in_the_spectra(run_cli, shapes, tmp_path):
    # torchvision's Swin calls F.linear with attn.qkv / attn.proj's weights, never the layers.
    out = tmp_path / "swin.safetensors"
    r = collect(run_cli, shapes, out, "--model", "swin_t", "--include", "features.1.0.attn.*")
    assert r.code == 0, r.stderr
    assert Spectra.load(out).names == [
        f"features.1.0.attn.{layer}:{side}" for layer in ("qkv", "proj") for side in ("in", "out")
    ]
    assert "not collected" not in r.stderr and "saw no sample" not in r.stderr


def test_an_out_in_use_by_another_process_is_refused(run_cli, shapes, tmp_path):
    out = tmp_path / "s.safetensors"
    with output_lock(out, folder=False):  # what a second ``spectrum --out`` finds meanwhile
        r = collect(run_cli, shapes, out, "--model", "resnet18", "--include", "fc")
    lines = r.stderr.strip().splitlines()
    assert r.code == 2 and len(lines) == 1, r.stderr
    assert lines[0] == f"error: --out {out}: in use by another process (pid {os.getpid()}); " \
                       "wait for it to end"  # fmt: skip
    assert not out.exists()
