"""Width spec files: round trip, validation, one-line errors, atomic writes."""

from __future__ import annotations

import json

import pytest

from eigenarch.errors import EigenarchError
from eigenarch.models import (
    ResiaNetBackbone,
    load_backbone,
)
from eigenarch.models.resianet import check_resianet_norm
from eigenarch.widths import (
    RESNET50_WIDTHS,
    load_dims,
)


def test_round_trip_keeps_spec_and_extra_fields(tmp_path):
    spec = ResiaNetBackbone([32] * 9, [1, 2, 1, 1], "bn", 8, {"command": "test"})
    assert spec.widths == (32,) * 9 and spec.depths == (1, 2, 1, 1)
    path = spec.save(tmp_path / "sub" / "w.json", {"omega": 1.5, "widths": [0]})
    obj = json.loads(path.read_text())
    assert list(obj)[:5] == ["widths", "depths", "norm", "gn_groups", "source"]
    assert obj["widths"] == [32] * 9 and obj["omega"] == 1.5
    assert load_backbone(path) == spec
    assert [p.name for p in path.parent.iterdir()] == ["w.json"]  # no temp file left


def test_defaults_for_a_hand_written_spec(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"widths": list(RESNET50_WIDTHS)}))
    spec = load_backbone(path)
    assert (spec.depths, spec.norm, spec.gn_groups, spec.source) == ((3, 4, 6, 3), "gn", 32, {})


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"widths": [1, 2', "invalid JSON at line 1 column"),
        ("[1, 2]", "expected a JSON object, got list"),
        ("{}", "missing field 'widths'"),
        ('{"widths": 64}', "field 'widths' is not a JSON list"),
        ('{"widths": [64, 64]}', "expected 9"),
        ('{"widths": [64, 64, 256, 128, 512, 256, 1024, 512, "x"]}', "width 'x'"),
        ('{"widths": [48, 64, 256, 128, 512, 256, 1024, 512, 2048]}', "stem=48 is not a multi"),
        ('{"widths": [64, 64, 256, 128, 512, 256, 1024, 512, 2048], "norm": "ln"}', "norm 'ln'"),
        ('{"widths": [64, 64, 256, 128, 512, 256, 1024, 512, 2048], "depths": [3]}', "expected 4"),
        ('{"widths": [64, 64, 256, 128, 512, 256, 1024, 512, 2048], "source": 1}', "'source'"),
    ],
)
def test_malformed_spec_files(tmp_path, text, match):
    path = tmp_path / "w.json"
    path.write_text(text)
    with pytest.raises(EigenarchError, match=match) as info:
        load_backbone(path)
    message = str(info.value)
    assert message.startswith(f"width spec {path}: ") and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(EigenarchError, match="cannot read"):
        load_backbone(tmp_path / "none.json")


def test_group_norm_divisibility():
    check_resianet_norm([48] * 9, "gn", 16)
    check_resianet_norm([48] * 9, "bn")
    with pytest.raises(EigenarchError, match="width b2=40 is not a multiple of the 16 GroupNorm"):
        check_resianet_norm([48, 40] + [48] * 7, "gn", 16)
    with pytest.raises(EigenarchError, match="gn_groups 0"):
        check_resianet_norm([48] * 9, "gn", 0)


def test_dims_files(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"conv1:out": 12, "layer1.0.conv1:in": 3.5}')
    assert load_dims(path) == {"conv1:out": 12, "layer1.0.conv1:in": 3.5}
    path.write_text('{"conv1:out": null}')
    with pytest.raises(EigenarchError, match=r"dims file .*d.json: intrinsic dim.*'conv1:out'"):
        load_dims(path)


def test_a_kind_of_a_higher_layer_loads_from_its_entry_point(tmp_path):
    """A DetNAS description builds without importing eigenarch.nas first: the kind comes
    from the ``eigenarch.backbones`` entry point on first use."""
    import subprocess
    import sys

    code = ("import json, sys; from eigenarch.models import BACKBONE_KINDS, backbone_from_dict;"
            "assert 'eigenarch.detnas' not in BACKBONE_KINDS;"
            "assert 'eigenarch.nas' not in sys.modules;"
            "b = backbone_from_dict(json.load(open(sys.argv[1])));"
            "print(type(b).__name__, b.cost().macs > 0)")  # fmt: skip
    from eigenarch.nas.shufflenet import SPACES, detnas_config

    spec = tmp_path / "path.json"
    spec.write_text(json.dumps(detnas_config(SPACES[1], [0] * SPACES[1].num_blocks)))
    done = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["DetnasBackbone", "True"]


def test_every_kind_round_trips_and_an_unknown_format_is_one_line():
    from eigenarch.models import BuilderBackbone, ResiaNetBackbone, backbone_from_dict
    from eigenarch.nas.shufflenet import SPACES, DetnasBackbone

    for backbone in (ResiaNetBackbone(source={"x": 1}), BuilderBackbone("resnet18", {}, "bn"),
                     DetnasBackbone(SPACES[1], (1,) * SPACES[1].num_blocks)):  # fmt: skip
        assert backbone_from_dict(backbone.to_dict()) == backbone
    with pytest.raises(EigenarchError, match="format 'eigenarch.nope' is not a backbone kind"):
        backbone_from_dict({"format": "eigenarch.nope"}, "spec")


def test_a_factory_in_a_data_file_is_refused_unless_trusted():
    from eigenarch.models import backbone_from_dict
    from eigenarch.models.factory import trusted_factories

    obj = {"format": "eigenarch.backbone", "builder": "net.py:build"}
    with pytest.raises(EigenarchError, match=r"spec: names the factory 'net.py:build'.*--trust-f"):
        backbone_from_dict(obj, "spec")
    with trusted_factories(["net.py:build"]):
        assert backbone_from_dict(obj, "spec").builder == "net.py:build"  # read, not yet run
    with trusted_factories(["other.py:build"]), pytest.raises(EigenarchError):
        backbone_from_dict(obj, "spec")
