"""timm backbones (``timm:NAME``) as builders: counted, searched, resized and trained like
torchvision's, through the same traced graph; never downloaded."""

from __future__ import annotations

import functools
import json
import random
import re

import pytest
import timm
import torch
from timm.models._prune import adapt_model_from_string
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from eigenarch.errors import EigenarchError
from eigenarch.models import BuilderBackbone, build_detector, classifier_by_name, parse_backbone
from eigenarch.models.timm_format import model_string, timm_resized, why_not
from eigenarch.widths.resize import resize


def flop_macs(model: torch.nn.Module) -> int:
    """Half of ``FlopCounterMode``'s count of a 224-pixel forward: the MACs it counts."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    return counter.get_total_flops() // 2


def some_dims(backbone, seed: int = 0) -> dict[str, int]:
    graph, _ = backbone.graph()
    rng = random.Random(seed)
    return {f"{c}:in": rng.randint(max(1, g.width // 4), g.width)
            for g in graph.groups for c in g.consumers}  # fmt: skip


@functools.lru_cache(maxsize=8)
def searched(name: str, multiple: int):
    """``timm:name`` searched at ``macs=base`` on :func:`some_dims`: ``(result, spec)``."""
    backbone = parse_backbone(f"timm:{name}")
    return backbone.search(some_dims(backbone), "base", "macs", multiple, "in")


def resized_module_by_module(spec: BuilderBackbone) -> torch.nn.Module:
    """``spec``'s network as eigenarch resizes timm's model, module by module."""
    return resize(classifier_by_name(spec.builder), spec.groups, graph=spec.graph()[0])


def parse_string(text: str) -> dict[str, list[int]]:
    """timm's model string read back: tensor name -> shape."""
    pairs = (entry.split(":") for entry in text.split("***"))
    return {k: json.loads(shape) for k, shape in pairs}


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(a.eval()(image), b.eval()(image), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name, multiple",
    [("resnet50d", 8), ("efficientnet_b0", 8), ("convnext_atto", 8),
     ("mobilenetv3_large_100", 8), ("regnety_016", 24)],
)  # fmt: skip
def test_a_timm_backbone_counts_searches_resizes_and_detects(name, multiple):
    backbone = parse_backbone(f"timm:{name}")
    assert backbone.norm is None  # timm's own normalisation
    base = backbone.cost()
    assert abs(base.macs - flop_macs(backbone.build())) <= 0.01 * base.macs
    result, found = searched(name, multiple)
    assert found.builder == f"timm:{name}" and found.groups and result.macs <= base.macs
    resized = found.build()
    assert found.cost().macs == result.macs  # the searched widths, as built
    assert abs(found.cost().macs - flop_macs(resized)) <= 0.01 * found.cost().macs
    detector = build_detector("faster_rcnn", found, num_classes=3, min_size=64, max_size=64,
                              gn_groups=8, fpn_channels=32, head_channels=32,
                              representation=64)  # fmt: skip
    assert detector.backbone.out_channels == 32
    assert len(detector.eval()([torch.rand(3, 64, 64)])) == 1


def test_the_fpn_levels_are_timm_feature_info_modules():
    from eigenarch.models import feature_levels

    model = parse_backbone("timm:efficientnet_b0").build()
    names, channels = feature_levels(model)
    info = model.feature_info[-4:]
    assert names == [i["module"] for i in info] and channels == [i["num_chs"] for i in info]
    assert channels[-1] == 320  # the last stage, not the 1280-wide head the pooling reads


@pytest.mark.parametrize(
    "text, message",
    [
        ("timm:res2net50_26w_4s", "(a concatenation); its widths cannot be searched"),
        ("timm:cspresnet50", "are split into parts that different layers read (a chunk"),
        ("timm:no_such_model", "timm has no model 'no_such_model'"),
        ("timm:vit_tiny_patch16_224", "is a transformer, not resizable: its attention (blocks.0"),
    ],
)
def test_timm_backbones_the_graph_cannot_resize_are_refused_in_one_line(text, message):
    with pytest.raises(EigenarchError, match=re.escape(message)) as info:
        parse_backbone(text).cost()
    assert "\n" not in str(info.value)


def test_timm_norm_is_its_own_and_multiple_of_grouped_convs_is_named():
    with pytest.raises(EigenarchError, match="sets its own normalisation: --norm gn"):
        BuilderBackbone("timm:resnet50d", {}, "gn").cost()
    backbone = parse_backbone("timm:regnety_016")
    with pytest.raises(EigenarchError, match="must be multiples of 24"):
        backbone.search(some_dims(backbone), "base", "macs", 8, "in")


def test_count_and_train_a_timm_backbone_from_the_command_line(run_cli, shapes_root, tmp_path):
    r = run_cli("count", "--model", "timm:mobilenetv3_large_100", "--json")
    assert r.code == 0, r.stderr
    model = parse_backbone("timm:mobilenetv3_large_100").build()
    assert json.loads(r.stdout)["macs"] == pytest.approx(flop_macs(model), rel=0.01)
    r = run_cli("train", "--data", shapes_root, "--out", tmp_path / "run", "--backbone",
                "timm:mobilenetv3_large_100", "--iters", "2", "--batch-size", "1",
                "--fpn-channels", "32", "--head-channels", "32", "--gn-groups", "8",
                "--representation", "64", "--min-size", "64", "--max-size", "64",
                "--workers", "0")  # fmt: skip
    assert r.code == 0, r.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["backbone"] == "timm:mobilenetv3_large_100"
    assert (tmp_path / "run" / "checkpoints" / "iter_0000002.pt").is_file()


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_large_100", "resnet50d"])
def test_a_searched_timm_backbone_is_timms_adapt_model_from_string_model(name):
    """The searched widths, written in timm's format, give timm's own resized model: every
    group's producers and consumers at the searched width in the string, the module-by-module
    resized network's state dict loading into timm's with ``strict=True`` both ways and the
    same outputs; and that model is what the spec builds."""
    _, spec = searched(name, 8)
    graph = spec.graph()[0]
    assert sum(spec.groups[g.name] != g.width for g in graph.groups) >= len(graph.groups) // 2
    ours = resized_module_by_module(spec)
    text = model_string(ours)
    shapes = parse_string(text)
    modules = dict(ours.named_modules())
    for group in graph.groups:
        width = spec.groups[group.name]
        assert all(shapes[f"{p}.weight"][0] == width for p in group.producers), group.name
        for c in group.consumers:
            depthwise = getattr(modules[c], "groups", 1) > 1
            assert shapes[f"{c}.weight"][1] == (1 if depthwise else width), (group.name, c)
    theirs = adapt_model_from_string(timm.create_model(name, pretrained=False), text)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert same_outputs(theirs, ours)
    built = spec.build()
    assert [(n, type(m)) for n, m in built.named_modules()] == [
        (n, type(m)) for n, m in theirs.named_modules()
    ]
    assert (
        built.num_features == theirs.num_features != classifier_by_name(spec.builder).num_features
    )
    assert [i["num_chs"] for i in built.feature_info] == [i["num_chs"] for i in theirs.feature_info]


def test_a_wrong_timm_string_does_not_take_the_weights():
    """The check is at the edge: one conv's in / out swapped, or one group left at its base
    width, and timm's model refuses the resized network's state dict."""
    _, spec = searched("efficientnet_b0", 8)
    ours = resized_module_by_module(spec)
    shapes = parse_string(model_string(ours))
    graph = spec.graph()[0]
    group = next(g for g in graph.groups if spec.groups[g.name] != g.width)
    conv = next(k for k, s in shapes.items() if len(s) == 4 and s[1] > 1 and s[0] != s[1])
    swapped = {**shapes, conv: [shapes[conv][1], shapes[conv][0], *shapes[conv][2:]]}
    at_base = dict(shapes)
    for p in group.producers:
        at_base[f"{p}.weight"] = [group.width, *shapes[f"{p}.weight"][1:]]
    for wrong in (swapped, at_base):
        text = "***".join(f"{k}:{v}" for k, v in wrong.items())
        theirs = adapt_model_from_string(timm.create_model("efficientnet_b0"), text)
        with pytest.raises(RuntimeError, match="size mismatch"):
            theirs.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize(
    "name, multiple, reason",
    [("regnety_016", 24, "s1.b1.conv2.conv is a grouped conv (2 groups of 24 channels): "
                         "timm's format makes every grouped conv depthwise"),
     ("convnext_atto", 8, "stem.1 (LayerNorm2d) has resized tensors (weight, bias): timm's "
                          "format rebuilds only Conv2d")],
)  # fmt: skip
def test_families_timms_format_cannot_express_keep_the_module_by_module_resize(
    name, multiple, reason
):
    _, spec = searched(name, multiple)
    ours = resized_module_by_module(spec)
    adapted, why = timm_resized(classifier_by_name(spec.builder), ours)
    assert adapted is None and why.startswith(reason), why
    theirs = adapt_model_from_string(timm.create_model(name), model_string(ours))
    with pytest.raises(RuntimeError, match="size mismatch"):  # the reason is real
        theirs.load_state_dict(ours.state_dict(), strict=True)
    built = spec.build()  # the module-by-module resize
    assert [type(m) for m in built.modules()] == [type(m) for m in ours.modules()]
    built.load_state_dict(ours.state_dict(), strict=True)
    assert same_outputs(built, ours)


def _net(width: int, *layers: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3), *layers)


@pytest.mark.parametrize(
    "base, resized, reason",
    [(_net(8, nn.Conv2d(8, 8, 3, groups=2)), _net(8, nn.Conv2d(8, 8, 3, groups=2)),
      "1 is a grouped conv (2 groups of 4 channels): timm's format makes every grouped conv "
      "depthwise"),
     (_net(8, nn.Conv2d(8, 8, 3, groups=8)), _net(8, nn.Conv2d(8, 16, 3, groups=8)),
      "1 is a depthwise conv of 2 outputs per channel: timm's format makes every depthwise conv"),
     (_net(8, nn.GroupNorm(2, 8)), _net(16, nn.GroupNorm(2, 16)),
      "1 (GroupNorm) has resized tensors (weight, bias): timm's format rebuilds only"),
     (_net(8, nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2)),
      _net(8, nn.Flatten(), nn.Linear(8, 6), nn.Linear(6, 2)),
      "2 is a Linear of 6 outputs, not 4: timm's format keeps every Linear's outputs"),
     (_net(8, nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2)),
      _net(16, nn.Conv2d(16, 16, 3, groups=16), nn.BatchNorm2d(16), nn.Flatten(),
           nn.Linear(16, 2)),
      None)],
)  # fmt: skip
def test_why_not_names_the_first_layer_timms_format_cannot_rebuild(base, resized, reason):
    found = why_not(base, resized)
    assert found == reason if reason is None else found.startswith(reason), found


#: The timm model of the command-line tests: the smallest real CNN of timm's families here.
SMALL = "mobilenetv3_small_050"
#: ``train`` options of a detector on :data:`SMALL` that trains in a second.
TINY_TIMM = ("--backbone", f"timm:{SMALL}", "--batch-size", "1", "--fpn-channels", "32",
             "--head-channels", "32", "--gn-groups", "8", "--representation", "64",
             "--min-size", "64", "--max-size", "64", "--workers", "0")  # fmt: skip


def users_weights(name: str = SMALL, seed: int = 1) -> dict[str, torch.Tensor]:
    """A user's trained timm weights: ``model.state_dict()`` as timm saves it (seeded)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the weights a fresh model gets
    return model.state_dict()


def first_misfit(file: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> str:
    """The first key, in the model's order, whose shape in ``file`` differs."""
    return next(k for k, v in model.items() if k in file and file[k].shape != v.shape)


def test_spectrum_of_a_timm_classifier_with_the_users_weights_then_search(
    run_cli, shapes_root, tmp_path
):
    """``spectrum --model timm:NAME`` is timm's classifier, as ``--model resnet50`` is
    torchvision's; ``--weights`` takes the user's safetensors file (its zeroed stem gives a
    zero ``conv_stem:out``, which a fresh model would not), and the spectra search widths."""
    from safetensors.torch import save_file

    from eigenarch.spectrum import Spectra

    state = users_weights()
    state["conv_stem.weight"].zero_()
    save_file(state, tmp_path / "mine.safetensors")
    out = tmp_path / "small.safetensors"
    r = run_cli("spectrum", "--model", f"timm:{SMALL}", "--weights", tmp_path / "mine.safetensors",
                "--data", shapes_root, "--images", "2", "--workers", "0", "--out", out)  # fmt: skip
    assert r.code == 0, r.stderr
    spectra = Spectra.load(out)
    assert spectra.names[0] == "conv_stem:in" and "classifier:out" in spectra.names
    assert (
        spectra.covariance("conv_stem:in").any() and not spectra.covariance("conv_stem:out").any()
    )
    found = tmp_path / "found.json"
    r = run_cli("search", "--spectra", out, "--model", f"timm:{SMALL}", "--target", "macs=base",
                "--multiple", "8", "--out", found)  # fmt: skip
    assert r.code == 0, r.stderr
    spec = json.loads(found.read_text())
    base = parse_backbone(f"timm:{SMALL}").cost()
    assert spec["builder"] == f"timm:{SMALL}" and spec["macs"] <= base.macs
    assert all(w % 8 == 0 for w in spec["groups"].values())
    other = users_weights("mobilenetv3_small_075")
    save_file(other, tmp_path / "other.safetensors")
    r = run_cli("spectrum", "--model", f"timm:{SMALL}", "--weights", tmp_path / "other.safetensors",
                "--data", shapes_root, "--images", "2", "--workers", "0", "--out",
                tmp_path / "other-spectra.safetensors")  # fmt: skip
    key = first_misfit(other, users_weights())
    assert r.code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"weights do not fit the timm:{SMALL}: {key} has shape" in r.stderr


def test_train_init_takes_the_users_timm_weights_into_the_body(run_cli, shapes_root, tmp_path):
    """``--init`` takes timm's own files: a safetensors file, a ``.pth`` state dict, a
    checkpoint of timm's ``train.py`` (``state_dict`` beside ``args``, not its EMA); every
    tensor of the detector's body is then the file's. A file that does not fit is one line
    naming the first misfit in the model's order, or the first body tensor it lacks."""
    import argparse

    from safetensors.torch import save_file

    from eigenarch.models.weights import load_init_weights
    from eigenarch.train.checkpoint import load_checkpoint

    state = users_weights()
    save_file(state, tmp_path / "mine.safetensors")
    r = run_cli("train", "--data", shapes_root, "--out", tmp_path / "run", "--init",
                tmp_path / "mine.safetensors", "--iters", "1", *TINY_TIMM)  # fmt: skip
    assert r.code == 0, r.stderr
    first = load_checkpoint(tmp_path / "run" / "checkpoints" / "iter_0000000.pt")["model"]
    body = {k.removeprefix("backbone.body."): v for k, v in first.items()
            if k.startswith("backbone.body.")}  # fmt: skip
    info = json.loads((tmp_path / "run" / "init.json").read_text())
    assert info["loaded"] == len(body) and info["missing"] == []
    assert all(torch.equal(v, state[k]) for k, v in body.items())
    assert "classifier.weight" in info["unexpected"]  # the head the FPN does not read
    shallow = {k: v for k, v in state.items() if not k.startswith("blocks.3.")}
    torch.save(shallow, tmp_path / "shallow.pth")
    r = run_cli("train", "--data", shapes_root, "--out", tmp_path / "bad", "--init",
                tmp_path / "shallow.pth", "--iters", "1", *TINY_TIMM)  # fmt: skip
    assert r.code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "does not fit the backbone: its blocks.3.0.conv_pw.weight is not in the file" in r.stderr

    def detector():
        torch.manual_seed(0)
        return build_detector("faster_rcnn", f"timm:{SMALL}", num_classes=3, min_size=64,
                              max_size=64, gn_groups=8, fpn_channels=32, head_channels=32,
                              representation=64)  # fmt: skip

    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "mine.pth")
    torch.save({"epoch": 9, "arch": SMALL, "state_dict": state, "state_dict_ema": ema,
                "args": argparse.Namespace(model=SMALL, sched="cosine"), "version": 2},
               tmp_path / "last.pth.tar")  # fmt: skip
    for name in ("mine.pth", "last.pth.tar"):
        model = detector()
        load_init_weights(model, tmp_path / name, complete=True)
        assert all(torch.equal(v, state[k]) for k, v in model.backbone.body.state_dict().items())
    other = users_weights("mobilenetv3_small_075")
    save_file(other, tmp_path / "other.safetensors")
    key = first_misfit(other, state)
    with pytest.raises(EigenarchError, match=f"shapes do not match the backbone: {key} "):
        load_init_weights(detector(), tmp_path / "other.safetensors", complete=True)


def test_dynamics_of_timm_train_checkpoints(run_cli, shapes_root, tmp_path):
    """``dynamics --checkpoints --model timm:NAME`` reads timm's ``train.py`` checkpoints
    (``checkpoint-{e}.pth.tar``: its ``state_dict``, ``epoch`` from 0, ``args.sched``),
    leaves out ``last.pth.tar`` / ``model_best.pth.tar`` (epochs held again), and knows the
    backbone, timm's classifier, for the report's search."""
    import argparse

    from eigenarch.report.dynamics import load_dynamics
    from eigenarch.report.runs import reference_run

    run = tmp_path / "train" / "20261203-small"
    run.mkdir(parents=True)
    args = argparse.Namespace(model=SMALL, epochs=4, sched="step", decay_epochs=1.5,
                              data_dir="imagenet")  # fmt: skip
    for epoch in (0, 1, 2):
        state = users_weights(seed=epoch)
        ema = {k: torch.zeros_like(v) for k, v in state.items()}
        saved = {"epoch": epoch, "arch": SMALL, "state_dict": state, "state_dict_ema": ema,
                 "args": args, "version": 2, "metric": 0.1 * epoch}  # fmt: skip
        torch.save(saved, run / f"checkpoint-{epoch}.pth.tar")
    for name in ("last.pth.tar", "model_best.pth.tar"):
        torch.save(saved, run / name)
    r = run_cli("dynamics", "--checkpoints", run / "*.pth.tar", "--model", f"timm:{SMALL}",
                "--data", shapes_root, "--images", "2", "--workers", "0",
                "--include", "conv_stem,blocks.0.*")  # fmt: skip
    assert r.code == 0, r.stderr
    result = load_dynamics(run)
    # timm's StepLR: the rate falls at epoch index ceil(k * 1.5) (2 and 3), before epoch 4
    assert (result.iterations, result.milestones, result.unit) == ([1, 2, 3], [2, 3], "epoch")
    assert result.maps and all(m.name.startswith(("conv_stem:", "blocks.0.")) for m in result.maps)
    assert result.backbone["builder"] == f"timm:{SMALL}" and result.backbone["norm"] is None
    found = reference_run(str(run / "*.pth.tar"), f"timm:{SMALL}")
    assert [p.name for _, p in found.checkpoints] == [f"checkpoint-{e}.pth.tar" for e in (0, 1, 2)]
    model, detector = found.load(found.checkpoints[0][1], 9, None)
    assert not detector and torch.equal(
        model.conv_stem.weight, users_weights(seed=0)["conv_stem.weight"]
    )
    multistep = argparse.Namespace(epochs=10, sched="multistep", decay_milestones=[6, 8])
    torch.save({"epoch": 0, "state_dict": state, "args": multistep}, run / "checkpoint-0.pth.tar")
    found = reference_run(str(run / "checkpoint-0.pth.tar"), f"timm:{SMALL}")
    assert (found.milestones, found.length) == ([6, 8], 10)
    cosine = argparse.Namespace(epochs=10, sched="cosine", decay_epochs=1.5)
    torch.save({"epoch": 0, "state_dict": state, "args": cosine}, run / "checkpoint-0.pth.tar")
    assert reference_run(str(run / "checkpoint-0.pth.tar"), f"timm:{SMALL}").milestones == []


def test_report_of_a_run_trained_with_a_timm_backbone(run_cli, shapes_root, tmp_path):
    """``train --backbone timm:NAME`` -> ``dynamics --run`` -> ``report``: the report
    searches the timm backbone's channel groups from the run's final spectra, and the
    search command it prints finds the same widths."""
    import shlex

    run, out = tmp_path / "run", tmp_path / "report"
    r = run_cli("train", "--data", shapes_root, "--out", run, "--iters", "1", *TINY_TIMM)
    assert r.code == 0, r.stderr
    r = run_cli(
        "dynamics",
        "--run",
        run,
        "--images",
        "2",
        "--workers",
        "0",
        "--include",
        "backbone.body.*,backbone.fpn.inner_blocks.*",
    )  # what the search reads
    assert r.code == 0, r.stderr
    r = run_cli("report", run, "--out", out, "--multiple", "8", "--metrics", "macs")
    assert r.code == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    search = report["runs"]["run"]["search"]["macs"]
    graph, _ = parse_backbone(f"timm:{SMALL}").graph()
    assert sorted(search["groups"]) == sorted(g.name for g in graph.groups)
    assert search["macs"] <= search["base"]["macs"] == parse_backbone(f"timm:{SMALL}").cost().macs
    assert "run-widths" in report["tables"] and (out / "report.html").is_file()
    command = shlex.split(search["command"])
    assert command[:2] == ["eigenarch", "search"]
    found = tmp_path / "found.json"
    r = run_cli(*command[1:-1], found)  # the report's command, its --out here
    assert r.code == 0, r.stderr
    assert json.loads(found.read_text())["groups"] == search["groups"]


def test_demo_backbone_timm_is_its_quarter_widths_with_its_own_norm(tmp_path):
    """What ``demo --backbone timm:NAME`` takes the backbone for (a whole quick demo takes
    minutes; it ran once from the command line, docs/timm.md): its base is the width
    multiplier's quarter, multiples of 8, timm's own normalisation, kept by Table 2's
    BatchNorm rows; its searched rows are ``IA-NAME``; an unknown model fails before
    anything is written."""
    from eigenarch import demo

    base = demo.base_spec(f"timm:{SMALL}")
    own = BuilderBackbone(f"timm:{SMALL}", {}, None, demo.GN_GROUPS)
    assert base.builder == f"timm:{SMALL}" and base.norm is None
    assert base.groups == own.scaled(0.25, demo.MULTIPLE).groups
    assert all(w % demo.MULTIPLE == 0 for w in base.groups.values())
    assert demo._bn(base)["norm"] is None
    assert BuilderBackbone.from_dict(demo._bn(base), "table2").build() is not None
    assert demo._bn(demo.base_spec("detnet59"))["norm"] == "bn"
    family, threshold, paper = demo.backbone_family(f"timm:{SMALL}")
    assert (family, threshold) == (f"IA-{SMALL}", 1e-3)
    assert paper.startswith("The paper reports no timm backbone; for ResNet-50 it reports Resia")
    with pytest.raises(EigenarchError, match="timm has no model 'no_such_model'"):
        demo.run_demo(tmp_path / "demo", quick=True, backbone="timm:no_such_model")
    assert not (tmp_path / "demo").exists()
