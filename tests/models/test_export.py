"""``export_backbone``: a resized backbone that torchvision / timm alone rebuild, weights that
load into it with ``strict=True``, and ONNX files checked against PyTorch (issue 21 item 3)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from eigenarch.errors import EigenarchError
from eigenarch.io import current_umask
from eigenarch.models import standalone
from eigenarch.models.backbone import (
    BackboneOptions,
    body_with_fpn,
    load_backbone,
    parse_backbone,
)
from eigenarch.models.export import (
    ONNX_TOLERANCE,
    TIMM_MODEL,
    _in_order_of,
    check_onnx,
    export_backbone,
    portable_table,
    shape_table,
)
from eigenarch.models.timm_format import model_string
from eigenarch.nas.shufflenet import SPACES, detnas_config

TINY = "16,16,32,16,32,32,64,32,64"
GN8 = BackboneOptions(gn_groups=8)
#: Small heads, so that a whole detector exports in seconds.
SMALL_DETECTOR = {"fpn_channels": 32, "head_channels": 32, "representation": 64, "gn_groups": 8,
                  "rpn_post_nms_top_n_test": 50, "box_detections_per_img": 10}  # fmt: skip


def outputs(model: torch.nn.Module) -> torch.Tensor:
    image = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.eval()(image)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny ResiaNet exported with weights from a safetensors state dict."""
    folder = tmp_path_factory.mktemp("export")
    spec = parse_backbone(TINY, GN8)
    trained = spec.build()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))  # not what a fresh build holds
    save_file(trained.state_dict(), str(folder / "weights.safetensors"))
    result = export_backbone(spec, folder / "out", folder / "weights.safetensors")
    return result, trained


def test_folder_holds_the_four_files_and_the_weights(exported):
    result, trained = exported
    assert result.files == ["build.py", "model.onnx", "model.safetensors", "spec.json"]
    state = load_file(str(result.out / "model.safetensors"))
    assert state.keys() == trained.state_dict().keys()
    for key, value in trained.state_dict().items():  # fc is never taken from a weights file
        assert torch.equal(state[key], value) == (not key.startswith("fc.")), key
    assert result.fresh == ["fc.bias", "fc.weight"]
    assert result.loaded == len(state) - 2


def test_spec_json_reads_back_as_the_spec(exported):
    result, _ = exported
    spec = load_backbone(result.out / "spec.json")
    assert spec == parse_backbone(TINY, GN8)
    section = json.loads((result.out / "spec.json").read_text())["export"]
    assert section["base"] == {"kind": "resnet", "depths": [3, 4, 6, 3], "norm": "gn",
                               "gn_groups": 8, "num_classes": 1000}  # fmt: skip
    assert section["onnx"]["model.onnx"]["outputs"] == [f"fpn.{k}" for k in "0123"] + ["fpn.pool"]


def test_build_py_rebuilds_it_without_eigenarch(exported):
    """build.py in a fresh interpreter (``-I``: no PYTHONPATH, no user site) where importing
    eigenarch fails: the safetensors load with ``strict=True`` and compute the same outputs."""
    result, trained = exported
    script = textwrap.dedent(f"""
        import sys
        sys.modules["eigenarch"] = None  # any import of eigenarch raises ImportError
        sys.path.insert(0, {str(result.out)!r})
        import torch
        from build import load
        model = load("spec.json", "model.safetensors").eval()
        image = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            torch.save(model(image), "out.pt")
    """)  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=result.out, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = trained.eval()
    expected.load_state_dict(load_file(str(result.out / "model.safetensors")))
    assert torch.equal(torch.load(result.out / "out.pt"), outputs(expected))


def test_onnx_tolerance_is_relative_to_the_largest_output(exported, tmp_path):
    """The exported model.onnx passes; PyTorch outputs moved by 2x the tolerance (relative to
    their largest magnitude) fail, by half of it pass."""
    result, _ = exported
    body = standalone.load(result.out / "spec.json", result.out / "model.safetensors")
    model = body_with_fpn(body).eval()
    onnx = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(onnx), input_names=["image"],
                      dynamic_axes={"image": {2: "h", 3: "w"}}, dynamo=False)  # fmt: skip
    image = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        want = list(model(image).values())
    assert check_onnx(onnx, image, want) < ONNX_TOLERANCE
    top = float(want[0].abs().max())
    for factor, fails in ((0.5, False), (2.0, True)):
        moved = [want[0] + factor * ONNX_TOLERANCE * top, *want[1:]]
        if fails:
            with pytest.raises(EigenarchError, match=r"model.onnx: onnxruntime's outputs differ"):
                check_onnx(onnx, image, moved)
        else:
            assert check_onnx(onnx, image, moved) <= ONNX_TOLERANCE


@pytest.mark.parametrize(
    "text, multiplier",
    [("mobilenet_v3_small", 0.5), ("timm:convnext_atto", 0.75), ("detnet59", 0.25)],
)
def test_every_builder_kind_is_rebuilt_exactly(text, multiplier):
    """Depthwise convs (groups), LayerNorm shapes, layer-scale parameters, DetNet's dilated
    stages: build.py's network equals eigenarch's on the same weights, and without the
    shape table the weights do not even load."""
    spec = parse_backbone(text, BackboneOptions(gn_groups=8)).scaled(multiplier, 8)
    body = spec.build()
    table = portable_table(spec, body)
    assert table.modules and table.tensors and table.timm_model is None
    timm = text.startswith("timm:")  # ConvNeXt: timm's own format cannot express it
    assert (table.not_timm or "").startswith("stem.1 (LayerNorm2d) has resized" if timm else "")
    rebuilt = standalone.adapt(standalone.base_model(table.base), table.modules, table.tensors)
    rebuilt.load_state_dict(body.state_dict(), strict=True)
    assert torch.equal(outputs(rebuilt), outputs(body))
    with pytest.raises(RuntimeError, match="size mismatch"):
        standalone.base_model(table.base).load_state_dict(body.state_dict(), strict=True)


@pytest.fixture(scope="module")
def timm_exported(tmp_path_factory):
    """``timm:efficientnet_b0`` (timm's format expresses it) and ``timm:convnext_atto`` (it
    does not) at 3/4 of their widths, exported: ``{name: (result, spec)}``."""
    folder, found = tmp_path_factory.mktemp("timm"), {}
    for name in ("efficientnet_b0", "convnext_atto"):
        spec = parse_backbone(f"timm:{name}").scaled(0.75, 8)
        found[name] = (export_backbone(spec, folder / name), spec)
    return found


def test_a_timm_export_writes_timms_model_string_and_timm_alone_rebuilds_it(timm_exported):
    """timm_model.txt is the resized model in timm's format; in a fresh interpreter where
    eigenarch cannot be imported, timm's ``adapt_model_from_string`` one-liner and build.py
    both take the weights with ``strict=True`` and compute eigenarch's outputs."""
    result, spec = timm_exported["efficientnet_b0"]
    assert result.files == ["build.py", "model.onnx", "model.safetensors", "spec.json",
                            TIMM_MODEL]  # fmt: skip
    section = json.loads((result.out / "spec.json").read_text())["export"]
    assert section["timm_model"] == TIMM_MODEL and section["not_timm"] is None
    assert section["modules"] == {} and section["tensors"] == {}  # timm's format says it all
    body = spec.build()
    assert (result.out / TIMM_MODEL).read_text() == model_string(body)  # read() as it is
    script = textwrap.dedent("""
        import sys
        sys.modules["eigenarch"] = None  # any import of eigenarch raises ImportError
        sys.path.insert(0, ".")
        import timm, torch
        from safetensors.torch import load_file
        from timm.models._prune import adapt_model_from_string
        from build import load
        model = adapt_model_from_string(timm.create_model("efficientnet_b0"),
                                        open("timm_model.txt").read())
        model.load_state_dict(load_file("model.safetensors"), strict=True)
        image = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            torch.save([model.eval()(image), load("spec.json", "model.safetensors").eval()(image)],
                       "out.pt")
    """)  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=result.out, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    body.load_state_dict(load_file(str(result.out / "model.safetensors")), strict=True)
    one_liner, build_py = torch.load(result.out / "out.pt")
    assert torch.equal(one_liner, outputs(body)) and torch.equal(build_py, outputs(body))


def test_build_py_reads_timm_model_txt(timm_exported, tmp_path):
    """With one conv's in / out swapped in timm_model.txt, build.py's network no longer takes
    the weights: it is built from the file, not from the (empty) shape table."""
    result, _ = timm_exported["efficientnet_b0"]
    shutil.copytree(result.out, tmp_path / "out")
    text = (tmp_path / "out" / TIMM_MODEL).read_text()
    wrong = re.sub(r"(blocks\.1\.0\.conv_pw\.weight):\[(\d+), (\d+),", r"\1:[\3, \2,", text)
    assert wrong != text
    (tmp_path / "out" / TIMM_MODEL).write_text(wrong)
    with pytest.raises(RuntimeError, match="size mismatch for blocks.1.0.conv_pw.weight") as info:
        standalone.load(tmp_path / "out" / "spec.json", tmp_path / "out" / "model.safetensors")
    assert str(info.value).count("size mismatch") == 1  # the base network's would be many


def test_a_timm_export_timms_format_cannot_express_says_why(timm_exported):
    result, _ = timm_exported["convnext_atto"]
    assert TIMM_MODEL not in result.files
    section = json.loads((result.out / "spec.json").read_text())["export"]
    assert section["timm_model"] is None and section["tensors"]
    assert section["not_timm"].startswith("stem.1 (LayerNorm2d) has resized tensors")
    standalone.load(result.out / "spec.json", result.out / "model.safetensors")


def test_shape_table_records_only_what_changed():
    base = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3, groups=8),
                               torch.nn.BatchNorm2d(8))  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3, groups=4),
                                torch.nn.BatchNorm2d(8))  # fmt: skip
    modules, tensors = shape_table(base, model)
    assert modules == {"0": {"out_channels": 4}, "1": {"in_channels": 4, "out_channels": 4,
                                                       "groups": 4}}  # fmt: skip
    assert tensors == {"0.weight": [4, 3, 3, 3], "0.bias": [4], "1.weight": [4, 1, 3, 3],
                       "1.bias": [4]}  # fmt: skip
    with pytest.raises(EigenarchError, match=r"module '3' \(ReLU\) is not in"):
        shape_table(base, torch.nn.Sequential(*base, torch.nn.ReLU()))
    with pytest.raises(EigenarchError, match=r"tensor '2.bias' is in only one"):
        shape_table(base, torch.nn.Sequential(*base[:2], torch.nn.BatchNorm2d(8, affine=False)))


def test_detector_onnx_compares_its_detections(tmp_path):
    result = export_backbone(parse_backbone(TINY, GN8), tmp_path / "out", detector="faster_rcnn",
                             num_classes=3, detector_options=SMALL_DETECTOR)  # fmt: skip
    assert "detector.onnx" in result.files
    assert result.onnx_errors["detector.onnx"] < ONNX_TOLERANCE
    import onnxruntime

    session = onnxruntime.InferenceSession(str(result.out / "detector.onnx"))
    boxes, labels, scores = session.run(None, {"image": torch.rand(3, 128, 96).numpy()})
    assert boxes.shape == (10, 4) and labels.shape == scores.shape == (10,)  # threshold 0


def test_detections_pair_by_label_and_nearest_box():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [5, 5, 20, 20]])
    labels, scores = torch.tensor([1, 2, 1]), torch.tensor([0.5, 0.5, 0.4])
    order = torch.tensor([1, 2, 0])  # onnxruntime sorted the two 0.5 the other way
    want = _in_order_of([boxes[order], labels[order], scores[order]], [boxes, labels, scores])
    assert [w.tolist() for w in want] == [boxes[order].tolist(), labels[order].tolist(),
                                          scores[order].tolist()]  # fmt: skip


def test_refusals_name_what_and_why(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(EigenarchError, match="folder exists and is not empty; give another"):
        export_backbone(parse_backbone(TINY, GN8), tmp_path / "full")
    detnas = detnas_config(SPACES[1], [0] * sum(SPACES[1].depths))
    with pytest.raises(EigenarchError, match="a DetNAS network: built from eigenarch's own"):
        export_backbone(detnas, tmp_path / "detnas")
    assert not (tmp_path / "detnas").exists()
    bad = parse_backbone("32,32,64,32,64,32,64,32,64", GN8).build().state_dict()
    save_file(bad, str(tmp_path / "other.safetensors"))
    with pytest.raises(EigenarchError, match=r"--weights .*other.safetensors: shapes do not"):
        export_backbone(parse_backbone(TINY, GN8), tmp_path / "w", tmp_path / "other.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "other.safetensors"]


def test_force_replaces_a_folder_whole(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    weights = tmp_path / "ckpt.pt"
    torch.save({"model": parse_backbone(TINY, GN8).build().state_dict()}, weights)  # checkpoint
    result = export_backbone(parse_backbone(TINY, GN8), tmp_path / "out", weights, force=True)
    assert "old.txt" not in result.files and "model.onnx" in result.files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "out"]  # no temp left
    assert result.out.stat().st_mode & 0o777 == 0o777 & ~current_umask()  # not mkdtemp's 0700


def test_a_factory_backbone_is_refused_before_it_runs():
    from eigenarch.models.builders import BuilderBackbone

    with pytest.raises(EigenarchError, match=r"'net.py:make' is a factory's \(your code\)"):
        BuilderBackbone("net.py:make").export_base()  # net.py does not even exist
