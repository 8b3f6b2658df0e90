"""``eigenarch count`` and ``eigenarch search`` as a user runs them."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from eigenarch.models import (
    BackboneOptions,
    load_backbone,
    parse_backbone,
)
from eigenarch.options import parse_threshold
from eigenarch.widths import (
    RESNET50_WIDTHS,
    resnet_cost,
    search_widths,
    uniform_widths,
)

from ..conftest import resnet_tie_maps


def write_dims(path, values, prefix="backbone.body."):
    dims = {}
    for index, (producers, consumers) in enumerate(resnet_tie_maps()):
        for name in producers + consumers:
            if not name.startswith("fc"):
                dims[prefix + name] = values[index] - 3 * (name.endswith(":out"))
    path.write_text(json.dumps(dims))
    return dims


def test_count_table(run_cli):
    r = run_cli("count")
    assert r.code == 0
    lines = r.stdout.splitlines()
    assert any("layer3" in line and "256/1024" in line and "7.078" in line for line in lines)
    assert any("total" in line and "4.089" in line and "25.503" in line for line in lines)


def test_count_json(run_cli):
    widths = "64,64,224,128,576,256,1152,544,896"
    r = run_cli("count", "--widths", widths, "--depths", "3,4,6,3", "--json")
    assert r.code == 0
    obj = json.loads(r.stdout)
    cost = resnet_cost(tuple(int(w) for w in widths.split(",")))
    assert obj["widths"] == list(cost.widths) and obj["depths"] == [3, 4, 6, 3]
    assert (obj["macs"], obj["params"]) == (cost.macs, cost.params)
    assert sum(s["params"] for s in obj["stages"].values()) == cost.params
    assert obj["layers"][0]["name"] == "conv1" and len(obj["layers"]) == len(cost.layers)


def test_count_multiplier_baseline(run_cli):
    r = run_cli("count", "--multiplier", "0.75", "--json")
    obj = json.loads(r.stdout)
    assert tuple(obj["widths"]) == uniform_widths(0.75) and obj["multiplier"] == 0.75
    assert obj["params"] == resnet_cost(uniform_widths(0.75)).params
    r = run_cli("count", "--multiplier", "0.75", "--multiple", "8", "--json")
    assert json.loads(r.stdout)["widths"][0] == 48


@pytest.mark.parametrize(
    "args, message",
    [
        (("--widths", "64,x"), "--widths '64,x': expected comma-separated integers"),
        (("--widths", "64,64"), "widths [64, 64] has 2 numbers; expected 9"),
        (("--depths", "3,4,6"), "depths [3, 4, 6] has 3 numbers; expected 4"),
        (("--multiplier", "-1"), "multiplier -1"),
        (("--spec", "missing.json"), "width spec missing.json: cannot read"),
    ],
)
def test_count_errors(run_cli, args, message):
    r = run_cli("count", *args)
    assert r.code == 2 and r.stdout == ""
    assert f"error: {message}" in r.stderr and "Traceback" not in r.stderr


def test_search_with_dims_writes_a_width_spec(run_cli, tmp_path):
    values = (70, 40, 190, 90, 470, 150, 950, 300, 650)
    dims = write_dims(tmp_path / "dims.json", values)
    out = tmp_path / "w.json"
    r = run_cli(
        "search",
        "--dims",
        tmp_path / "dims.json",
        "--target",
        "params=resnet50",
        "--side",
        "both",
        "--out",
        out,
    )
    assert r.code == 0, r.stderr
    expected = search_widths(dims, "resnet50", "params", side="both")
    obj = json.loads(out.read_text())
    assert obj["widths"] == list(expected.widths)
    assert obj["adjusted"] == pytest.approx(values)  # "both": the larger (":in") side
    assert obj["omega"] == expected.omega
    assert (obj["macs"], obj["params"]) == (expected.macs, expected.params)
    assert obj["target"] == {"metric": "params", "value": 25_502_912}
    assert obj["base"] == {
        "widths": list(RESNET50_WIDTHS),
        "macs": 4_089_184_256,
        "params": 25_502_912,
    }
    assert obj["norm"] == "gn" and obj["source"]["dims"] == str(tmp_path / "dims.json")
    assert load_backbone(out).widths == expected.widths
    reduction = 100 * (1 - expected.params / 25_502_912)
    assert f"parameter reduction {reduction:.1f}%" in r.stdout
    assert "layer3" in r.stdout and "->" in r.stdout


def test_search_numeric_target_and_options(run_cli, tmp_path):
    write_dims(tmp_path / "dims.json", (70, 40, 190, 90, 470, 150, 950, 300, 650))
    out = tmp_path / "w.json"
    r = run_cli(
        "search",
        "--dims",
        tmp_path / "dims.json",
        "--target",
        "macs=2.5G",
        "--multiple",
        "8",
        "--norm",
        "bn",
        "--side",
        "out",
        "--out",
        out,
    )
    assert r.code == 0, r.stderr
    obj = json.loads(out.read_text())
    assert obj["target"] == {"metric": "macs", "value": 2_500_000_000}
    assert obj["macs"] <= 2_500_000_000 and all(w % 8 == 0 for w in obj["widths"])
    assert obj["norm"] == "bn" and obj["side"] == "out" and obj["multiple"] == 8


@pytest.mark.parametrize(
    "args, message",
    [
        (("--target", "macs=1M"), "budget 1,000,000 macs is below the smallest reachable 222,"),
        (("--target", "flops=4G"), "--target 'flops=4G': expected macs=<value>"),
        (("--target", "macs=-3"), "--target 'macs=-3': '-3' is not a positive number"),
        (("--target", "macs=1e30"), "target 1e+30 macs is above the largest this search takes"),
        (("--target", "macs=resnet50", "--multiple", "8"), "--multiple 8 gives widths"),
        (("--target", "macs=resnet50", "--threshold", "1e-3"), "--threshold applies to"),
        (("--target", "macs=resnet50", "--depths", "3,4,5,3"), "outside depths [3, 4, 5, 3]"),
    ],
)
def test_search_errors_leave_no_file(run_cli, tmp_path, args, message):
    write_dims(tmp_path / "dims.json", RESNET50_WIDTHS)
    out = tmp_path / "w.json"
    r = run_cli("search", "--dims", tmp_path / "dims.json", "--out", out, *args)
    assert r.code == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert not out.exists() and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"backbone.body.conv1:out": 3}', "width group 'layer1.0.conv1'"),
        ('{"conv1:out": 3', "invalid JSON"),
        ('{"conv1": 3}', "does not end in ':in'"),
        ("7", "expected a JSON object"),
        ('{"conv1:out": 1e12}', "is 1000000000000.0; expected a number >= 0 and at most 1,000,000"),
        ('{"backbone.extra.0.1:in": 3}', "map 'backbone.extra.0.1:in': SSD's backbone is"),
    ],
)
def test_search_bad_dims(run_cli, tmp_path, content, message):
    (tmp_path / "dims.json").write_text(content)
    out = tmp_path / "w.json"
    r = run_cli(
        "search",
        "--dims",
        tmp_path / "dims.json",
        "--target",
        "macs=resnet50",
        "--side",
        "out",
        "--out",
        out,
    )
    assert r.code == 2 and message in r.stderr and not out.exists(), r.stderr


def test_search_needs_one_input(run_cli, tmp_path):
    r = run_cli("search", "--target", "macs=resnet50", "--out", tmp_path / "w.json")
    assert r.code == 2 and "exactly one of --spectra FILE or --dims" in r.stderr


def test_search_from_saved_spectra(run_cli, tmp_path):
    from eigenarch.models import resianet
    from eigenarch.spectrum import SpectrumCollector

    torch.manual_seed(0)
    net = resianet((32,) * 9, (1, 1, 1, 1), norm="bn", num_classes=10).eval()
    detector = nn.Module()  # a detector-like wrapper: maps are "backbone.body.<...>"
    detector.backbone = nn.Module()
    detector.backbone.body = net
    with torch.no_grad(), SpectrumCollector(detector) as collector:
        for _ in range(3):
            net(torch.randn(4, 3, 64, 64))
    spectra = collector.spectra()
    spectra.save(tmp_path / "s.safetensors")
    dims = {n: spectra.intrinsic_dim(n, 10**-2.5) for n in spectra.names}
    assert "backbone.body.layer1.0.conv1:in" in dims

    out = tmp_path / "w.json"
    r = run_cli(
        "search",
        "--spectra",
        tmp_path / "s.safetensors",
        "--threshold",
        "1e-2.5",  # the fractional-exponent form `spectrum show` takes
        "--target",
        "params=2M",
        "--depths",
        "1,1,1,1",
        "--out",
        out,
    )
    assert r.code == 0, r.stderr
    obj = json.loads(out.read_text())
    expected = search_widths(dims, 2e6, "params", depths=(1, 1, 1, 1))
    assert obj["widths"] == list(expected.widths) and obj["source"]["threshold"] == 10**-2.5
    r = run_cli("search", "--spectra", tmp_path / "nope", "--target", "params=2M", "--out", out)
    assert r.code == 2 and "error:" in r.stderr


def test_parse_threshold():
    assert parse_threshold("1e-3") == 1e-3
    assert parse_threshold("1e-3.5") == pytest.approx(10**-3.5)
    assert parse_threshold("5e-2.5") == pytest.approx(5 * 10**-2.5)
    assert parse_threshold("0.01") == 0.01
    for bad in ("0", "1", "2e0.5", "e", "1e-3.5.1", "-1e-3"):
        with pytest.raises(Exception, match="--threshold"):
            parse_threshold(bad)


# ------------------------------------------------------------------ any backbone (issue 13)


def test_count_model_json_matches_the_flop_counter(run_cli):
    from torch.utils.flop_counter import FlopCounterMode

    from eigenarch.models.builders import classifier_by_name

    for name in ("detnet59", "mobilenet_v3_large"):
        r = run_cli("count", "--model", name, "--json")
        assert r.code == 0, r.stderr
        obj = json.loads(r.stdout)
        model = classifier_by_name(name).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 3, 224, 224))
        weights = sum(m.weight.numel() for m in model.modules()
                      if isinstance(m, (nn.Conv2d, nn.Linear)))  # fmt: skip
        assert (obj["macs"], obj["params"]) == (counter.get_total_flops() // 2, weights)
    r = run_cli("count", "--model", "detnet59")
    assert "5.000" in r.stdout and "18.319" in r.stdout and "layer5" in r.stdout
    assert "DetNet-59† (GN): 5.00+ G MACs, 18.3+ M params" in r.stdout


def test_search_model_writes_a_spec_that_count_and_train_read(run_cli, tmp_path, shapes_root):
    from eigenarch.widths.ias import group_maps

    graph, _ = parse_backbone("mobilenet_v3_large", BackboneOptions("bn")).graph()
    dims = {}
    for k, units in enumerate(group_maps(graph).units):
        for producer, readers in units:
            dims[f"{producer}:out"] = 5 + 7 * k
            dims.update((f"{r}:in", 3 + 11 * k) for r in readers)
    (tmp_path / "dims.json").write_text(json.dumps(dims))
    out = tmp_path / "mbv3.json"
    args = ["--model", "mobilenet_v3_large", "--target", "macs=base", "--multiple", "8"]
    r = run_cli("search", "--dims", tmp_path / "dims.json", *args, "--norm", "bn", "--out", out)
    assert r.code == 0, r.stderr
    assert "features.{4..6}.block.0.0" in r.stdout and "total" in r.stdout
    obj = json.loads(out.read_text())
    assert obj["format"] == "eigenarch.backbone" and obj["builder"] == "mobilenet_v3_large"
    assert obj["target"] == {"metric": "macs", "value": obj["base"]["macs"]}
    assert obj["macs"] <= obj["base"]["macs"] and obj["norm"] == "bn"
    r = run_cli("count", "--backbone", out, "--json")
    assert r.code == 0, r.stderr
    assert {k: json.loads(r.stdout)[k] for k in ("macs", "params")} == {
        "macs": obj["macs"], "params": obj["params"]
    }  # fmt: skip
    run = tmp_path / "run"
    r = run_cli("train", "--data", shapes_root, "--out", run, "--backbone", out, "--iters", "1",
                "--batch-size", "1", "--fpn-channels", "32", "--head-channels", "32",
                "--gn-groups", "8", "--representation", "64", "--min-size", "96",
                "--max-size", "96", "--workers", "0", "--checkpoint-every", "1")  # fmt: skip
    assert r.code == 0, r.stderr
    from eigenarch.train.checkpoint import detector_from_checkpoint

    model, payload = detector_from_checkpoint(run / "checkpoints" / "iter_0000001.pt")
    assert payload["config"]["backbone"]["groups"] == obj["groups"]
    conv = model.backbone.body.get_submodule("features.4.block.0.0")
    assert conv.out_channels == obj["groups"]["features.4.block.0.0"]


def test_search_from_a_real_spectra_file_of_a_non_resnet(run_cli, tmp_path):
    from eigenarch.models.builders import classifier_by_name
    from eigenarch.spectrum import SpectrumCollector

    torch.manual_seed(0)
    model = classifier_by_name("regnet_x_400mf").eval()
    with SpectrumCollector(model) as collector, torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, 64, 64))
    spectra = collector.spectra()
    spectra.save(tmp_path / "s.safetensors")
    out = tmp_path / "r.json"
    args = ["--model", "regnet_x_400mf", "--target", "params=2M", "--multiple", "16", "--norm"]
    r = run_cli("search", "--spectra", tmp_path / "s.safetensors", *args, "bn", "--out", out)
    assert r.code == 0, r.stderr
    obj = json.loads(out.read_text())
    assert obj["params"] <= 2_000_000 and obj["source"]["model"] == "regnet_x_400mf"
    layer = "trunk_output.block2.block2-0.f.a.0"
    assert obj["intrinsic"][layer] == spectra.intrinsic_dim(
        "trunk_output.block2.block2-0.f.b.0:in", 1e-3
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("--model", "shufflenet_v2_x1_0"), "reorders or concatenates channels"),
        (("--model", "no_such_net"), "a builder name or an existing width-spec file"),
        (("--model", "vit_b_16"), "'vit_b_16' is a transformer, not resizable"),
        (("--model", "swin_t"), "'swin_t' is a transformer, not resizable"),
        (("--model", "maxvit_t"), "'maxvit_t' is a transformer, not resizable"),
        (("--model", "resnet18", "--widths", "1,2"), "drop --widths"),
        (
            ("--model", "ssd300_vgg16"),
            "SSD's backbone is its classifier's features plus the "
            "extra blocks SSD adds (backbone.extra)",
        ),  # fmt: skip
        (("--model", "ssdlite320_mobilenet_v3_large"), "'ssdlite320_mobilenet_v3_large': SSD's"),
        # A detector names its backbone: the longest builder name inside its name.
        (
            ("--model", "fasterrcnn_mobilenet_v3_large_fpn"),
            "is a detector, not a backbone: give --model mobilenet_v3_large (its spectra fit it)",
        ),
        (("--model", "retinanet_resnet50_fpn_v2"), "give --model resnet50 ("),
    ],
)
def test_count_model_errors(run_cli, args, message):
    r = run_cli("count", *args)
    assert r.code == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_count_refuses_a_spec_its_network_cannot_have(run_cli, tmp_path):
    spec = tmp_path / "rx.json"
    for groups, norm, message in [
        ({"layer4.0.conv1": 1000}, "bn", "not a multiple of 32 (the group width"),
        ({"conv1": 48}, "gn", "width 48 of group 'conv1' is not a multiple of 32"),
        ({"layer9.0.conv1": 64}, "bn", "no channel group 'layer9.0.conv1' (its groups: conv1, "),
    ]:
        builder = "resnext50_32x4d" if "layer4" in str(groups) else "resnet18"
        spec.write_text(json.dumps({"format": "eigenarch.backbone", "builder": builder,
                                    "groups": groups, "norm": norm}))  # fmt: skip
        r = run_cli("count", "--backbone", spec, "--json")
        assert r.code == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_builder_that_sets_its_own_norm_is_one_line(run_cli):
    r = run_cli("count", "--model", "mnasnet0_5", "--json")
    assert r.code == 0 and json.loads(r.stdout)["macs"] > 0  # costs need no norm
    from eigenarch.errors import EigenarchError
    from eigenarch.models.builders import classifier_by_name

    with pytest.raises(EigenarchError, match="sets its own normalisation.*--norm bn"):
        classifier_by_name("mnasnet0_5", "gn")


def test_search_tie_table_shows_the_base_range_of_a_tie(run_cli, tmp_path):
    from eigenarch.widths.ias import group_maps

    graph, _ = parse_backbone("convnext_tiny").graph()
    dims = {f"{p}:out": 40 for units in group_maps(graph).units for p, _ in units}
    (tmp_path / "d.json").write_text(json.dumps(dims))
    out = tmp_path / "c.json"
    r = run_cli("search", "--dims", tmp_path / "d.json", "--model", "convnext_tiny", "--target",
                "macs=base", "--multiple", "8", "--side", "out", "--out", out)  # fmt: skip
    assert r.code == 0, r.stderr  # no GroupNorm pre-check for a LayerNorm model
    graph, _ = parse_backbone("mobilenet_v3_large", BackboneOptions("bn")).graph()
    dims = {f"{p}:out": 40 for units in group_maps(graph).units for p, _ in units}
    (tmp_path / "m.json").write_text(json.dumps(dims))
    r = run_cli("search", "--dims", tmp_path / "m.json", "--model", "mobilenet_v3_large",
                "--target", "macs=base", "--multiple", "8", "--norm", "bn", "--side", "out",
                "--out", tmp_path / "m-out.json")  # fmt: skip
    assert r.code == 0, r.stderr
    assert "72-120" in r.stdout  # features.{4..6}.block.0.0: 72, 120, 120
    assert json.loads((tmp_path / "m-out.json").read_text())["base"]["ranges"][3] == [72, 120]


FACTORY = "import torchvision\n\n\ndef net():\n    return torchvision.models.regnet_x_400mf()\n"


def test_count_search_and_train_a_backbone_of_a_factory(
    run_cli, tmp_path, monkeypatch, shapes_root
):
    from eigenarch.models.factory import trusted_factories
    from eigenarch.spectrum import SpectrumCollector
    from eigenarch.train.checkpoint import detector_from_checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynet.py").write_text(FACTORY)
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "__init__.py").write_text("")
    (tmp_path / "nets" / "regnets.py").write_text(FACTORY)
    builder = json.loads(run_cli("count", "--model", "regnet_x_400mf", "--json").stdout)
    for spec in ("mynet.py:net", "nets.regnets:net"):
        r = run_cli("count", "--model", spec, "--json")
        assert r.code == 0, r.stderr
        assert json.loads(r.stdout) == builder  # the factory's model, traced as the builder's

    torch.manual_seed(0)
    model = torchvision.models.regnet_x_400mf().eval()
    with SpectrumCollector(model) as collector, torch.no_grad():
        model(torch.rand(2, 3, 64, 64))
    collector.spectra().save(tmp_path / "s.safetensors")
    found = {}
    for spec, extra in (("mynet.py:net", ()), ("regnet_x_400mf", ("--norm", "bn"))):
        out = tmp_path / f"{spec.split('.')[0]}.json"
        r = run_cli("search", "--spectra", tmp_path / "s.safetensors", "--model", spec,
                    "--target", "params=2M", "--multiple", "16", *extra, "--out", out)  # fmt: skip
        assert r.code == 0, r.stderr
        found[spec] = json.loads(out.read_text())
    ours = found["mynet.py:net"]
    assert ours["builder"] == "mynet.py:net" and ours["norm"] is None
    assert ours["groups"] == found["regnet_x_400mf"]["groups"] and ours["params"] <= 2_000_000
    r = run_cli("count", "--backbone", tmp_path / "mynet.json", "--json")
    assert r.code == 2 and "names the factory 'mynet.py:net'" in r.stderr  # a file runs no code
    assert "--trust-factory mynet.py:net" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("count", "--backbone", tmp_path / "mynet.json", "--json",
                "--trust-factory", "mynet.py:net")  # fmt: skip
    assert r.code == 0, r.stderr
    assert (json.loads(r.stdout)["macs"], json.loads(r.stdout)["params"]) == (
        ours["macs"], ours["params"]
    )  # fmt: skip
    r = run_cli("train", "--data", shapes_root, "--out", tmp_path / "run", "--backbone",
                tmp_path / "mynet.json", "--iters", "1", "--batch-size", "1", "--fpn-channels",
                "32", "--head-channels", "32", "--gn-groups", "8", "--representation", "64",
                "--min-size", "96", "--max-size", "96", "--workers", "0",
                "--trust-factory", "mynet.py:net")  # fmt: skip
    assert r.code == 0, r.stderr  # the spec's widths, built through the factory again
    with trusted_factories(["mynet.py:net"]):  # the Python API: the caller names it
        model, payload = detector_from_checkpoint(
            tmp_path / "run" / "checkpoints" / "iter_0000001.pt"
        )
    assert payload["config"]["backbone"]["builder"] == "mynet.py:net"
    for group, width in ours["groups"].items():
        assert model.backbone.body.get_submodule(group).out_channels == width
    r = run_cli("search", "--spectra", tmp_path / "s.safetensors", "--model", "mynet.py:net",
                "--target", "macs=base", "--norm", "gn", "--out", tmp_path / "gn.json")  # fmt: skip
    assert r.code == 2 and "sets its own normalisation: --norm gn" in r.stderr
    assert not (tmp_path / "gn.json").exists()
    for spec, message in (("mynet.py:nothing", "has no function 'nothing'"),
                          ("absent.py:net", "absent.py not found"),
                          ("nets.absent:net", "no module named 'nets.absent'")):  # fmt: skip
        r = run_cli("count", "--model", spec)
        assert r.code == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
