"""``eigenarch resize``: a trained detector on a width spec's widths with its weights (SPEC
section 6c), the checkpoint ``train --init`` takes, and what it refuses."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torchvision

from eigenarch.models.resianet import ResiaNetBackbone
from eigenarch.report.inherited import resize_checkpoint
from eigenarch.spectrum.collector import SpectrumCollector
from eigenarch.spectrum.spectra import Spectra
from eigenarch.train.checkpoint import (
    CLASSIFIER_FORMAT,
    detector_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from eigenarch.train.rundir import RunDir
from eigenarch.widths.cost import DEFAULT_DEPTHS, RESNET50_WIDTHS

from ..conftest import TINY_SETTINGS, TINY_WIDTHS
from ..train.conftest import TINY_ARGS

HALF = [8, 8, 16, 8, 16, 16, 32, 16, 32]


def spec_file(path, widths) -> str:
    path.write_text(json.dumps({"widths": list(widths), "norm": "gn", "gn_groups": 8}))
    return str(path)


@pytest.fixture(scope="module")
def analysed(shapes_root, tmp_path_factory):
    """The tiny run's last checkpoint and its spectra (every map, and with wide maps
    skipped by ``--max-channels 16``), collected by ``eigenarch spectrum``."""
    from eigenarch.cli.app import main
    from eigenarch.train.loop import TrainConfig, train_detector

    root = tmp_path_factory.mktemp("analysed")
    settings = {**TINY_SETTINGS, "iters": 1, "checkpoint_every": 1}
    train_detector(TrainConfig(data=str(shapes_root), out=str(root / "run"), **settings))
    checkpoint = RunDir(root / "run").checkpoints()[-1][1]
    for name, extra in (("all", []), ("narrow", ["--max-channels", "16"])):
        with pytest.raises(SystemExit) as done:
            main(["spectrum", "--data", str(shapes_root), "--images", "4", "--workers", "0",
                  "--model", str(checkpoint), "--out", str(root / f"{name}.safetensors"),
                  "--json", *extra])  # fmt: skip
        assert done.value.code == 0
    return checkpoint, root / "all.safetensors", root / "narrow.safetensors"


def detections(path, images):
    model, _ = detector_from_checkpoint(path)
    with torch.no_grad():
        return model.eval()(images)


def test_same_widths_give_the_same_detector_exactly_and_out_is_not_overwritten(
    run_cli, analysed, tmp_path
):
    checkpoint, spectra, _ = analysed
    same = spec_file(tmp_path / "same.json", map(int, TINY_WIDTHS.split(",")))
    out = tmp_path / "same.pt"
    r = run_cli("resize", same, "--from", checkpoint, "--spectra", spectra, "--out", out)
    assert r.code == 0, r.stdout + r.stderr
    assert f"widths {TINY_WIDTHS} -> {TINY_WIDTHS}" in r.stdout.replace("\n", "")
    written, source = load_checkpoint(out), load_checkpoint(checkpoint)
    assert written["inherited"]["from"] == str(checkpoint) and written["iteration"] == 0
    assert all(torch.equal(written["model"][k], v) for k, v in source["model"].items())
    images = [torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(i)) for i in (0, 1)]
    ours, theirs = detections(out, images), detections(checkpoint, images)
    for a, b in zip(ours, theirs, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    r = run_cli("resize", same, "--from", checkpoint, "--spectra", spectra, "--out", out)
    assert r.code == 2 and f"--out {out}: already exists; give --force" in r.stderr
    r = run_cli("resize", same, "--from", checkpoint, "--spectra", spectra, "--out", out,
                "--force")  # fmt: skip
    assert r.code == 0, r.stderr


def test_a_resized_detector_trains_from_its_inherited_weights(run_cli, analysed, tmp_path):
    checkpoint, spectra, _ = analysed
    half = spec_file(tmp_path / "half.json", HALF)
    out = tmp_path / "half.pt"
    r = run_cli("resize", half, "--from", checkpoint, "--spectra", spectra, "--out", out)
    assert r.code == 0, r.stdout + r.stderr
    written = load_checkpoint(out)
    assert written["config"]["backbone"]["widths"] == HALF
    args = list(TINY_ARGS)
    args[args.index("--backbone") + 1] = half
    run = tmp_path / "run"
    r = run_cli("train", "--data", load_checkpoint(checkpoint)["train"]["data"], "--out", run,
                "--iters", "2", "--batch-size", "2", "--init", out, *args)  # fmt: skip
    assert r.code == 0, r.stdout + r.stderr
    start = load_checkpoint(RunDir(run).checkpoints()[0][1])["model"]  # iteration 0
    assert set(start) == set(written["model"])
    assert all(torch.equal(start[k], v) for k, v in written["model"].items())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert json.loads((run / "init.json").read_text())["format"] == "eigenarch.inherited"
    wider = list(TINY_ARGS)  # the source's widths: the file does not fit, one line
    r = run_cli("train", "--data", load_checkpoint(checkpoint)["train"]["data"], "--out",
                tmp_path / "other", "--iters", "1", "--init", out, *wider)  # fmt: skip
    assert r.code == 2 and "the resized detector does not fit this run's detector" in r.stderr


def test_spectra_of_another_model_and_skipped_maps_are_refused_in_one_line(
    run_cli, analysed, tmp_path
):
    checkpoint, _, narrow = analysed
    half = spec_file(tmp_path / "half.json", HALF)
    out = tmp_path / "w.pt"
    r = run_cli("resize", half, "--from", checkpoint, "--spectra", narrow, "--out", out)
    assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    message = r.stderr
    assert "channel group 'body.layer1.0.conv3' has no covariance" in message
    assert "collect backbone.body.layer1.1.conv1:in (eigenarch spectrum --include" in message
    assert "--max-channels of at least 32" in message
    other = Spectra({"backbone.body.conv1:out": torch.eye(24)}, {"backbone.body.conv1:out": 9})
    other.save(tmp_path / "other.safetensors")
    r = run_cli("resize", half, "--from", checkpoint, "--spectra",
                tmp_path / "other.safetensors", "--out", out)  # fmt: skip
    assert r.code == 2
    assert (
        "spectra map 'backbone.body.conv1:out' has 24 channels, but body.conv1 of "
        "BackboneWithFPN has 16 (spectra of another model?)"
    ) in r.stderr
    assert not out.exists()


def test_a_classifier_checkpoint_is_resized_and_keeps_its_format(tmp_path):
    torch.manual_seed(0)
    source = ResiaNetBackbone(tuple(map(int, TINY_WIDTHS.split(","))), (1, 1, 1, 1), "gn", 8)
    model = source.build(5).eval()
    x = torch.randn(8, 3, 64, 64)
    with SpectrumCollector(model) as collector, torch.no_grad():
        model(x)
    collector.spectra().save(tmp_path / "s.safetensors")
    config = {"backbone": source.to_dict(), "num_classes": 5, "classes": list("abcde")}
    save_checkpoint(tmp_path / "c.pt", {"format": CLASSIFIER_FORMAT, "config": config,
                                        "model": model.state_dict()})  # fmt: skip
    target = ResiaNetBackbone(tuple(HALF), (1, 1, 1, 1), "gn", 8)
    target.save(tmp_path / "half.json")
    done = resize_checkpoint(tmp_path / "half.json", tmp_path / "c.pt", tmp_path / "s.safetensors",
                             tmp_path / "w.pt")  # fmt: skip
    written = load_checkpoint(done.out, CLASSIFIER_FORMAT)
    assert done.kind == "classifier" and written["config"]["classes"] == list("abcde")
    resized = target.build(5)
    resized.load_state_dict(written["model"])
    assert resized.fc.weight.shape == (5, 32)


# --- another code base's detector: torchvision's R-CNN of its reference scripts -----------

TORCHVISION = "fasterrcnn_resnet50_fpn"
#: ResNet-50's widths with layer1's bottleneck (b2) halved: only layer1's maps are read.
NARROW = (64, 32, 256, 128, 512, 256, 1024, 512, 2048)
SMALL = ["--min-size", "64", "--max-size", "64"]


@pytest.fixture(scope="module")
def reference(shapes_root, tmp_path_factory):
    """``model_0.pth`` of a torchvision Faster R-CNN for the shapes set's 8 classes, saved
    exactly as torchvision's reference scripts save it, and the spectra of its layer1
    (``eigenarch spectrum --model NAME --weights model_0.pth``)."""
    from eigenarch.cli.app import main

    from ..report.test_runs import reference_args, write_reference_run

    root = tmp_path_factory.mktemp("reference")
    torch.manual_seed(0)
    detector = torchvision.models.get_model(TORCHVISION, weights=None, weights_backbone=None,
                                            num_classes=9)  # fmt: skip
    with torch.no_grad():  # running statistics as a trained detector has them
        for module in detector.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    run = write_reference_run(root / "run", detector, reference_args(shapes_root), False, (0,))
    spectra = root / "layer1.safetensors"
    with pytest.raises(SystemExit) as done:
        main(["spectrum", "--data", str(shapes_root), "--images", "4", "--workers", "0",
              "--model", TORCHVISION, "--weights", str(run / "model_0.pth"), "--min-size", "64",
              "--include", "backbone.body.layer1.*", "--out", str(spectra), "--json"])  # fmt: skip
    assert done.value.code == 0
    return run / "model_0.pth", spectra, detector


def resnet50_spec(path, widths=RESNET50_WIDTHS, depths=DEFAULT_DEPTHS, norm="bn") -> str:
    ResiaNetBackbone(tuple(widths), tuple(depths), norm).save(path)
    return str(path)


def test_a_reference_checkpoint_at_its_own_widths_is_the_same_detector_exactly(
    run_cli, reference, shapes_root, tmp_path
):
    checkpoint, spectra, detector = reference
    same, out = resnet50_spec(tmp_path / "same.json"), tmp_path / "same.pt"
    r = run_cli("resize", same, "--from", checkpoint, "--model", TORCHVISION, "--spectra",
                spectra, "--out", out)  # fmt: skip
    assert r.code == 0, r.stdout + r.stderr
    assert f"eigenarch train --kind {TORCHVISION} --backbone {same}" in r.stdout.replace("\n", "")
    written = load_checkpoint(out)
    assert written["config"]["kind"] == TORCHVISION and written["config"]["num_classes"] == 9
    assert written["inherited"]["model"] == TORCHVISION and written["inherited"]["epoch"] == 0
    assert written["train"]["data"] == str(shapes_root)  # the checkpoint's args.data_path
    source = detector.state_dict()
    assert set(written["model"]) == set(source)
    assert all(torch.equal(written["model"][k], v) for k, v in source.items())
    ours, _ = detector_from_checkpoint(out)
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in (0, 1)]
    for model in (ours, detector):
        model.transform.min_size, model.transform.max_size = (64,), 64
    with torch.no_grad():
        found, expected = ours.eval()(images), detector.eval()(images)
    for a, b in zip(found, expected, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_narrower_reference_detector_fine_tunes_from_its_inherited_weights(
    run_cli, reference, shapes_root, tmp_path
):
    checkpoint, spectra, detector = reference
    narrow, out = resnet50_spec(tmp_path / "narrow.json", NARROW), tmp_path / "narrow.pt"
    r = run_cli("resize", narrow, "--from", checkpoint, "--model", TORCHVISION, "--spectra",
                spectra, "--out", out)  # fmt: skip
    assert r.code == 0, r.stdout + r.stderr
    written = load_checkpoint(out)["model"]
    assert written["backbone.body.layer1.0.conv1.weight"].shape == (32, 64, 1, 1)
    assert written["backbone.body.layer1.0.conv2.weight"].shape == (32, 32, 3, 3)
    source = detector.state_dict()  # every other group keeps its width: its weights as they were
    for key in ("backbone.body.layer2.0.conv1.weight", "backbone.fpn.inner_blocks.0.0.weight",
                "rpn.head.conv.0.0.weight", "roi_heads.box_head.fc6.weight"):  # fmt: skip
        assert torch.equal(written[key], source[key]), key
    run = tmp_path / "run"
    r = run_cli("train", "--data", shapes_root, "--out", run, "--kind", TORCHVISION,
                "--backbone", narrow, "--init", out, "--iters", "1", "--batch-size", "2",
                "--workers", "0", "--no-tensorboard", *SMALL)  # fmt: skip
    assert r.code == 0, r.stdout + r.stderr
    start = load_checkpoint(RunDir(run).checkpoints()[0][1])["model"]  # iteration 0
    assert set(start) == set(written)
    assert all(torch.equal(start[k], v) for k, v in written.items())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == 1 and all(torch.isfinite(torch.tensor(losses)))
    assert json.loads((run / "init.json").read_text())["format"] == "eigenarch.inherited"


def test_what_resize_cannot_take_from_another_code_base_is_refused_in_one_line(
    run_cli, reference, tmp_path
):
    checkpoint, spectra, detector = reference
    same, out = resnet50_spec(tmp_path / "same.json"), tmp_path / "w.pt"

    def refused(spec, source, *extra) -> str:
        r = run_cli("resize", spec, "--from", source, "--spectra", spectra, "--out", out, *extra)
        assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
        assert not out.exists()
        return r.stderr.strip()

    theirs = ("--model", TORCHVISION)
    # another code base's checkpoint without --model: not one of ours
    assert "not an eigenarch.detector or eigenarch.classifier checkpoint" in refused(
        same, checkpoint
    )
    # neither format: a list is no state dict nor a checkpoint holding one
    torch.save([1, 2], tmp_path / "list.pth")
    assert "expected a state dict (names to tensors) or a checkpoint dict" in refused(
        same, tmp_path / "list.pth", *theirs
    )
    # a bare state dict that does not fit the builder: the first key and both shapes
    state = detector.state_dict()
    state["backbone.body.layer1.0.conv1.weight"] = torch.zeros(32, 64, 1, 1)
    torch.save(state, tmp_path / "state.pth")
    message = refused(same, tmp_path / "state.pth", *theirs)
    assert f"weights do not fit the {TORCHVISION}: backbone.body.layer1.0.conv1.weight has " \
           "shape (32, 64, 1, 1), expected (64, 64, 1, 1)" in message  # fmt: skip
    # a builder eigenarch train cannot rebuild on new widths
    assert "--model retinanet_resnet50_fpn: resize takes the detector of a torchvision R-CNN" \
        in refused(same, checkpoint, "--model", "retinanet_resnet50_fpn")  # fmt: skip
    # a spec whose base network is not the builder's backbone (the search's default norm)
    gn = resnet50_spec(tmp_path / "gn.json", norm="gn")
    assert (
        f"weights do not fit the base network of {gn} (resnet50, norm gn): "
        "body.bn1.running_mean is not in the base network"
    ) in refused(gn, checkpoint, *theirs)
    # spectra of another model
    other = Spectra({"backbone.body.conv1:out": torch.eye(24)}, {"backbone.body.conv1:out": 9})
    other.save(tmp_path / "other.safetensors")
    spectra = tmp_path / "other.safetensors"
    narrow = resnet50_spec(tmp_path / "narrow.json", NARROW)
    assert "spectra map 'backbone.body.conv1:out' has 24 channels, but body.conv1 of " \
           "BackboneWithFPN has 64 (spectra of another model?)" in refused(
        narrow, checkpoint, *theirs
    )  # fmt: skip


FACTORY = """
from torchvision.models import resnet18
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool


def tiny_rcnn():
    layers = {f"layer{i}": str(i - 1) for i in range(1, 5)}
    backbone = BackboneWithFPN(resnet18(), layers, [64, 128, 256, 512], 32,
                               extra_blocks=LastLevelMaxPool())
    return FasterRCNN(backbone, num_classes=9, min_size=64, max_size=64)
"""


def test_a_factory_detector_resizes_and_fine_tunes_its_factory_trusted_where_read(
    run_cli, shapes_root, tmp_path
):
    from eigenarch.models.backbone import BackboneOptions, parse_backbone
    from eigenarch.models.factory import call_factory

    from ..report.test_runs import factory_file, reference_args, write_reference_run

    (tmp_path / "tiny_rcnn.py").write_text(FACTORY, encoding="utf-8")
    factory = f"{tmp_path / 'tiny_rcnn.py'}:tiny_rcnn"
    torch.manual_seed(0)
    run = write_reference_run(tmp_path / "run", call_factory(factory),
                              reference_args(shapes_root), False, (2,))  # fmt: skip
    checkpoint, spectra = run / "model_2.pth", tmp_path / "s.safetensors"
    r = run_cli("spectrum", "--data", shapes_root, "--images", "4", "--workers", "0", "--model",
                factory, "--weights", checkpoint, "--include", "backbone.*", "--out",
                spectra)  # fmt: skip
    assert r.code == 0, r.stderr
    resnet18 = parse_backbone("resnet18", BackboneOptions("bn"))
    half = resnet18.scaled(0.5, 8)
    half.save(tmp_path / "half.json")
    out = tmp_path / "half.pt"
    r = run_cli("resize", tmp_path / "half.json", "--from", checkpoint, "--model", factory,
                "--spectra", spectra, "--out", out)  # fmt: skip
    assert r.code == 0, r.stdout + r.stderr
    written = load_checkpoint(out)
    assert written["config"]["kind"] == factory and written["inherited"]["epoch"] == 2
    assert written["config"]["min_size"] == 64 and written["config"]["num_classes"] == 9
    assert written["model"]["backbone.body.layer1.0.conv1.weight"].shape == (32, 32, 3, 3)
    train = run_cli("train", "--data", shapes_root, "--out", tmp_path / "ft", "--kind", factory,
                    "--backbone", tmp_path / "half.json", "--init", out, "--iters", "1",
                    "--batch-size", "2", "--workers", "0", "--no-tensorboard", *SMALL)  # fmt: skip
    assert train.code == 0, train.stdout + train.stderr
    start = load_checkpoint(RunDir(tmp_path / "ft").checkpoints()[0][1])["model"]
    assert all(torch.equal(start[k], v) for k, v in written["model"].items())
    # the written files name the factory: reading them runs it only when trusted
    r = run_cli("spectrum", "--model", out, "--data", shapes_root, "--images", "2",
                "--workers", "0", "--out", tmp_path / "w.safetensors")  # fmt: skip
    assert r.code == 2 and f"config 'kind': names the factory {factory!r}" in r.stderr
    r = run_cli("train", "--out", tmp_path / "ft", "--resume")
    assert r.code == 2 and f"names the factory {factory!r}" in r.stderr, r.stderr
    # a spec of another base network, and a factory of no FasterRCNN on an FPN: one line
    dataclasses.replace(resnet18, norm="gn").save(tmp_path / "gn.json")
    r = run_cli("resize", tmp_path / "gn.json", "--from", checkpoint, "--model", factory,
                "--spectra", spectra, "--out", out, "--force")  # fmt: skip
    assert r.code == 2 and "body.bn1.running_mean is not in the base network" in r.stderr
    plain, tiny_detector = factory_file(tmp_path)
    torch.save(tiny_detector().state_dict(), tmp_path / "plain.pth")
    r = run_cli("resize", tmp_path / "half.json", "--from", tmp_path / "plain.pth", "--model",
                plain, "--spectra", spectra, "--out", tmp_path / "x.pt")  # fmt: skip
    assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"--model {plain}: the factory returned a FasterRCNN on a Sequential" in r.stderr
