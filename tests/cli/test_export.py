"""``eigenarch export`` and ``eigenarch bench`` on the command line (issue 21 item 3)."""

from __future__ import annotations

import functools
import json

from eigenarch.models import bench

SPEC = {"widths": [16, 16, 32, 16, 32, 32, 64, 32, 64], "norm": "gn", "gn_groups": 8}


def test_export_writes_then_refuses_a_full_folder(run_cli, tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    done = run_cli("export", tmp_path / "spec.json", "--out", tmp_path / "out")
    assert done.code == 0, done.stdout
    assert (
        "wrote" in done.stdout
        and "build.py, model.onnx, model.safetensors, spec.json" in done.stdout
    )
    again = run_cli("export", tmp_path / "spec.json", "--out", tmp_path / "out")
    assert again.code == 2
    assert again.stderr.strip().splitlines() == [
        f"error: --out {tmp_path / 'out'}: folder exists and is not empty; give another --out "
        "or --force to replace it"
    ]


def test_bench_prints_json(run_cli, tmp_path, monkeypatch):
    small = {"fpn_channels": 32, "head_channels": 32, "representation": 64, "gn_groups": 8,
             "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 50}  # fmt: skip
    monkeypatch.setattr(bench, "build_detector", functools.partial(bench.build_detector, **small))
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    done = run_cli("bench", tmp_path / "spec.json", "--base", "16,16,64,16,64,32,128,32,128",
                   "--size", "64", "--repeats", "1", "--warmup", "0", "--json")  # fmt: skip
    assert done.code == 0, done.stdout
    result = json.loads(done.stdout)
    assert [(r["network"], r["part"]) for r in result["rows"]] == [
        ("spec", "body"), ("spec", "backbone"), ("spec", "detector"),
        ("base", "body"), ("base", "backbone"), ("base", "detector"),
    ]  # fmt: skip
    assert result["size"] == 64 and result["threads"] == 1
