"""``eigenarch resize``: a trained detector on a width spec's widths with its weights (SPEC
section 6c), the checkpoint ``train --init`` takes, and what it refuses."""

from __future__ import annotations

import json

import pytest
import torch

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
