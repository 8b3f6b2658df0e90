"""Another's training run, as torchvision's detection reference scripts write it: its
checkpoints ordered by their ``epoch``, its schedule from their ``args`` (or the options),
and ``eigenarch dynamics``, ``compare`` and ``report`` over it.

Run ``I`` of :func:`write_reference_run` zeroes 12 of the 16 output channels of
``backbone.2`` (weights and biases) in the checkpoints of epochs 2 and 9 and restores them at
epoch 10: positioned at epochs trained (3 and 10; 11), its ``:out`` map drops at 3 (within
the first quarter of 16 epochs) and rebounds at 11, right after the decay at 10
(``lr_steps`` 10, 14). Run ``S`` keeps its initial weights: nothing changes.
"""

from __future__ import annotations

import argparse
import json
import re
import runpy
import shutil
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

import eigenarch.io
from eigenarch.errors import EigenarchError
from eigenarch.report import dynamics as dynamics_module
from eigenarch.report.claims import NOT_MEASURED, paper_claims
from eigenarch.report.dynamics import load_dynamics, run_config
from eigenarch.report.runs import reference_run, training_run
from eigenarch.spectrum import Spectra
from eigenarch.widths.cost import RESNET50_WIDTHS

EPOCHS = (1, 2, 9, 10)  # written as model_{e}.pth: their names sort 1, 10, 2, 9
KNOCKED_OUT = (2, 9)
TARGET = "backbone.2"
IMAGES = 3

FACTORY = """
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign


def tiny_detector():
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
    )
    backbone.out_channels = 16
    anchors = AnchorGenerator(sizes=((16, 32, 64),), aspect_ratios=((0.5, 1.0, 2.0),))
    pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    return FasterRCNN(backbone, num_classes=4, rpn_anchor_generator=anchors,
                      box_roi_pool=pool, min_size=128, max_size=128)
"""


def factory_file(folder) -> tuple[str, Callable[[], nn.Module]]:
    """:data:`FACTORY` written as ``folder/my_detector.py``: its ``--model`` spec and the
    factory itself."""
    path = folder / "my_detector.py"
    path.write_text(FACTORY, encoding="utf-8")
    return f"{path}:tiny_detector", runpy.run_path(str(path))["tiny_detector"]


def reference_args(data, **changes) -> argparse.Namespace:
    """The ``args`` of ``references/detection/train.py`` (its argument parser's defaults)."""
    args = dict(data_path=str(data), dataset="coco", model="tiny", device="cpu", batch_size=2,
                epochs=16, workers=4, opt="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4,
                norm_weight_decay=None, lr_scheduler="multisteplr", lr_step_size=8,
                lr_steps=[10, 14], lr_gamma=0.1, print_freq=20, output_dir=".", resume="",
                start_epoch=0, aspect_ratio_group_factor=3, rpn_score_thresh=None,
                trainable_backbone_layers=None, data_augmentation="hflip", sync_bn=False,
                test_only=False, use_deterministic_algorithms=False, world_size=1,
                dist_url="env://", weights=None, weights_backbone=None, amp=False,
                use_copypaste=False, backend="pil", use_v2=False, distributed=False)  # fmt: skip
    return argparse.Namespace(**{**args, **changes})


def write_reference_run(folder, model: nn.Module, args, knock_out: bool, epochs=EPOCHS):
    """``model_{e}.pth`` for each of ``epochs`` and ``checkpoint.pth`` (the last one again),
    each exactly as torchvision's reference scripts save them."""
    folder.mkdir(parents=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.lr_steps, args.lr_gamma)
    for epoch in epochs:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        if knock_out and epoch in KNOCKED_OUT:
            state[TARGET + ".weight"][4:] = 0
            state[TARGET + ".bias"][4:] = 0
        checkpoint = {
            "model": state,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "args": args,
            "epoch": epoch,
        }
        torch.save(checkpoint, folder / f"model_{epoch}.pth")
        torch.save(checkpoint, folder / "checkpoint.pth")
    return folder


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, shapes_root):
    """``(factory spec, {"I": run folder, "S": run folder})``, written (not analysed)."""
    root = tmp_path_factory.mktemp("reference")
    spec, tiny_detector = factory_file(root)
    runs = {}
    for name, seed, knock in (("I", 0, True), ("S", 1, False)):
        torch.manual_seed(seed)
        runs[name] = write_reference_run(root / name, tiny_detector(), reference_args(shapes_root),
                                         knock)  # fmt: skip
    return spec, runs


def _dynamics(run_cli, run, spec, *args):
    r = run_cli("dynamics", "--checkpoints", run / "*.pth", "--model", spec, "--images", IMAGES,
                "--workers", "0", "--device", "cpu", *args)  # fmt: skip
    assert r.code == 0, r.stderr
    return r


def test_checkpoints_ordered_by_epoch_with_the_schedule_of_their_args(reference_runs):
    spec, runs = reference_runs
    found = reference_run(str(runs["I"] / "*.pth"), spec)
    # checkpoint.pth holds epoch 10 again (model_10.pth): left out; epochs trained, not names
    assert [(it, p.name) for it, p in found.checkpoints] == [
        (2, "model_1.pth"), (3, "model_2.pth"), (10, "model_9.pth"), (11, "model_10.pth")
    ]  # fmt: skip
    assert (found.length, found.milestones, found.unit) == (16, [10, 14], "epoch")
    assert found.out == runs["I"] and found.data == found.trained["args"]["data_path"]
    assert found.trained["args"]["lr_steps"] == [10, 14] and found.trained["epochs"] == [
        1,
        2,
        9,
        10,
    ]
    # The options win over the args.
    given = reference_run(str(runs["I"] / "model_*.pth"), spec, "elsewhere", [12], 20)
    assert (given.length, given.milestones, str(given.out)) == (20, [12], "elsewhere")
    assert given.source == {"checkpoints": str(runs["I"] / "model_*.pth"), "model": spec,
                            "out": "elsewhere", "lr_steps": [12], "epochs": 20}  # fmt: skip
    # Alone, checkpoint.pth is the latest epoch.
    (latest,) = reference_run(str(runs["I"] / "checkpoint.pth"), spec).checkpoints
    assert latest[0] == 11


def test_each_checkpoint_is_read_once(reference_runs, monkeypatch):
    # The epoch scan reads only each file's pickle; the weights, once per analysed file.
    spec, runs = reference_runs
    reads = []
    original = eigenarch.io.file_bytes
    monkeypatch.setattr(eigenarch.io, "file_bytes", lambda path: reads.append(path.name)
                        or original(path))  # fmt: skip
    found = reference_run(str(runs["I"] / "*.pth"), spec)
    assert reads == []
    for _, path in found.checkpoints:
        model, detector = found.load(path, 4, None)
        saved = torch.load(path, weights_only=False)["model"]  # our own test file
        assert detector and torch.equal(model.state_dict()[TARGET + ".weight"],
                                        saved[TARGET + ".weight"])  # fmt: skip
    assert reads == [path.name for _, path in found.checkpoints]  # checkpoint.pth: never


def test_schedule_without_args_or_with_another_scheduler(tmp_path, shapes_root):
    model = nn.Conv2d(3, 4, 1)  # what the checkpoints hold does not matter here
    cosine = reference_args(shapes_root, lr_scheduler="cosineannealinglr", epochs=12)
    write_reference_run(tmp_path / "cos", model, cosine, False, epochs=(0, 5))
    found = reference_run(str(tmp_path / "cos" / "model_*.pth"), "x.py:f")
    assert (found.milestones, found.length) == ([], 12)  # cosine: no step decays
    bare = tmp_path / "bare"
    bare.mkdir()
    for epoch in (0, 3):  # a state dict and an epoch only (args lost): the last one's length
        torch.save({"model": model.state_dict(), "epoch": epoch}, bare / f"model_{epoch}.pth")
    found = reference_run(str(bare / "*.pth"), "x.py:f")
    assert ([it for it, _ in found.checkpoints], found.length, found.milestones) == ([1, 4], 4, [])
    assert found.data is None and found.trained["args"] == {}
    torch.save({"model": {}, "epoch": 9, "args": {"lr_steps": 5}}, bare / "model_9.pth")
    with pytest.raises(EigenarchError, match="args.lr_steps 5: expected a list"):
        reference_run(str(bare / "*.pth"), "x.py:f")
    assert reference_run(str(bare / "model_9.pth"), "x.py:f", lr_steps=[1]).milestones == [1]


def test_reference_run_errors(tmp_path, reference_runs, run_cli, shapes_root):
    spec, runs = reference_runs
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "plain.pth")  # no epoch
    (tmp_path / "notes.pth").write_text("{}", encoding="utf-8")
    cases = [
        (("--checkpoints", tmp_path / "none_*.pth", "--model", spec), "no file matches"),
        (("--checkpoints", tmp_path / "plain.pth", "--model", spec), "'epoch' (an int >= 0)"),
        (("--checkpoints", tmp_path / "notes.pth", "--model", spec), "a JSON file"),
        (("--checkpoints", runs["I"] / "*.pth", "--model", spec, "--epochs", "5"),
         "--epochs 5 / --lr-steps [10, 14]: expected epochs >= 11"),
        (("--checkpoints", runs["I"] / "*.pth"), "give --model"),
        (("--run", runs["I"], "--model", spec), "--model: for --checkpoints only"),
        (("--run", runs["I"], "--min-size", "64", "--epochs", "3"),
         "--epochs, --min-size: for --checkpoints only"),
        (("--run", runs["I"], "--checkpoints", runs["I"] / "*.pth"), "needs --run RUN"),
        ((), "needs --run RUN"),
        (("--checkpoints", runs["I"] / "*.pth", "--model", spec, "--lr-steps", "a"),
         "--lr-steps 'a': expected comma-separated integers"),
    ]  # fmt: skip
    for args, message in cases:
        r = run_cli("dynamics", "--data", shapes_root, *args)
        assert r.code == 2 and message in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    twice = tmp_path / "twice"
    shutil.copytree(runs["S"], twice)
    shutil.copy(twice / "model_9.pth", twice / "model_9_copy.pth")
    with pytest.raises(Exception, match="both hold epoch 9"):
        training_run(checkpoints=str(twice / "*.pth"), model=spec)


def test_dynamics_compare_and_report_over_reference_runs(
    reference_runs, run_cli, tmp_path, monkeypatch
):
    spec, written = reference_runs
    runs = {name: shutil.copytree(run, tmp_path / name) for name, run in written.items()}
    r = _dynamics(run_cli, runs["I"], spec, "--json")
    result = json.loads(r.stdout)
    assert result["iterations"] == [2, 3, 10, 11] and result["unit"] == "epoch"
    assert (result["milestones"], result["length"]) == ([10, 14], 16)
    target = next(m for m in result["maps"] if m["name"] == TARGET + ":out")
    assert target["dims"][1] <= 4 < target["dims"][0] and target["dims"][3] == target["dims"][0]
    assert [(e["kind"], e["iteration"], e["milestone"]) for e in target["events"]] == [
        ("dropping", 3, None), ("rebounding", 11, 10)
    ]  # fmt: skip
    spectra = Spectra.load(runs["I"] / result["spectra"][1])
    assert not spectra.covariance(TARGET + ":out")[4:].any()  # the file's weights, not random
    assert spectra.meta["model"] == str(runs["I"] / "model_2.pth")
    assert "--checkpoints" in result["command"] and f"--model {spec}" in result["command"]
    # The data came from the checkpoints' args.data_path; rerunning reuses every spectrum.
    monkeypatch.setattr(dynamics_module, "stream_spectra", lambda *a, **k: pytest.fail("again"))
    again = _dynamics(run_cli, runs["I"], spec, "--json", "--threshold", "1e-2")
    assert json.loads(again.stdout)["spectra"] == result["spectra"]
    monkeypatch.undo()
    shown = _dynamics(run_cli, runs["S"], spec).stdout
    assert not any(m.events for m in load_dynamics(runs["S"]).maps)
    assert "at epochs 2 3 10 11" in " ".join(shown.split()) and "iteration" not in shown

    r = run_cli("compare", runs["I"], runs["S"], "--json", "--top", "2")
    assert r.code == 0, r.stderr
    compared = json.loads(r.stdout)
    assert compared["names"] == ["I", "S"] and TARGET + ":out" in {
        m["name"] for m in compared["maps"]
    }

    assert run_config(runs["I"])["args"]["lr_steps"] == [10, 14]  # the report's run settings
    final = {"bbox": {"AP": 0.25, "AP_small": -1.0, "AR_large": 0.5}}  # -1: no small object
    (runs["I"] / "metrics.json").write_text(json.dumps(final))
    r = run_cli("report", runs["I"], runs["S"], "--out", tmp_path / "rep")
    assert r.code == 0, r.stderr
    page = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert page["runs"]["I"]["dynamics"]["milestones"] == [10, 14]
    assert page["runs"]["I"]["config"]["model"] == spec
    assert "search" not in page["runs"]["I"]  # a factory's widths are not known
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "eigenarch dynamics --checkpoints" in html and "eigenarch train" not in html
    tables = dict(re.findall(r'<table id="([^"]+)">(.*?)</table>', html))
    assert "<th>epoch</th>" in tables["I-events"] and "iteration" not in tables["I-events"]
    assert "I: training settings (the checkpoints&#x27; args)" in tables["I-settings"]
    assert re.findall(r"<td>([^<]*)</td>", tables["I-metrics"]) == [
        "bbox", "AP", "0.25", "bbox", "AP_small", "n/a", "bbox", "AR_large", "0.5"
    ]  # fmt: skip
    claims = paper_claims({}, None, {"I": load_dynamics(runs["I"]), "S": load_dynamics(runs["S"])})
    rebound = next(c for c in claims if c.key == "f")
    # (f) compares the rises after the decay with a placebo of rises away from any decay
    # (issue 22.4); these runs hold no checkpoint interval away from it: not measured, and why
    assert rebound.verdict == NOT_MEASURED and "placebo" in rebound.reason


def test_dynamics_of_a_torchvision_builder(run_cli, shapes_root, tmp_path):
    """A builder's checkpoints (91 COCO classes, read from the box predictor) under --out."""
    torch.manual_seed(0)
    model = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None,
                                         weights_backbone=None, num_classes=91)  # fmt: skip
    args = reference_args(shapes_root, model="fasterrcnn_mobilenet_v3_large_320_fpn", epochs=2,
                          lr_steps=[1])  # fmt: skip
    write_reference_run(tmp_path / "run", model, args, False, epochs=(0, 1))
    r = run_cli("dynamics", "--checkpoints", tmp_path / "run" / "model_*.pth", "--model",
                "fasterrcnn_mobilenet_v3_large_320_fpn", "--min-size", "128", "--images", "2",
                "--workers", "0", "--device", "cpu", "--include", "backbone.body.0.*",
                "--out", tmp_path / "out")  # fmt: skip
    assert r.code == 0, r.stderr
    result = load_dynamics(tmp_path / "out")
    assert result.iterations == [1, 2] and result.milestones == [1] and result.maps
    assert all(m.name.startswith("backbone.body.0.") for m in result.maps)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint.pth", "model_0.pth", "model_1.pth"
    ]  # fmt: skip
    assert result.settings["min_size"] == 128


def test_backbone_of_a_torchvision_resnet50_rcnn_is_resnet50s(reference_runs):
    """The report searches the widths of such a run (its maps are named as a ResiaNet's)."""
    _, runs = reference_runs
    pattern = str(runs["S"] / "model_*.pth")
    expected = {"widths": list(RESNET50_WIDTHS), "depths": [3, 4, 6, 3], "gn_groups": 32}
    for builder, norm in (("fasterrcnn_resnet50_fpn", "frozen_bn"),
                          ("maskrcnn_resnet50_fpn_v2", "bn"),
                          ("keypointrcnn_resnet50_fpn", "frozen_bn")):  # fmt: skip
        spec = reference_run(pattern, builder).backbone().to_dict()
        assert {k: spec[k] for k in expected} == expected and spec["norm"] == norm
    for other in ("retinanet_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "f.py:net"):
        assert reference_run(pattern, other).backbone() is None  # FPN over other stages, ...
