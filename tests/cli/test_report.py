"""``eigenarch dynamics``, ``compare`` and ``report``: their options, output and errors
(``compare`` on saved spectra with known differences)."""

from __future__ import annotations

import json

import pytest
import safetensors
import safetensors.torch
import torch
from PIL import Image

from eigenarch.report import dynamics as dynamics_module
from eigenarch.report.compare import compare_spectra
from eigenarch.spectrum import Spectra

# map -> (channels, dim in I, dim in S)
KNOWN = {
    "backbone.body.conv1:out": (16, 12, 12),
    "backbone.body.layer1.0.conv1:in": (16, 10, 14),
    "backbone.body.layer1.0.conv3:out": (32, 20, 30),
    "backbone.body.layer4.0.conv1:in": (64, 20, 60),
    "backbone.body.layer4.0.conv2:in": (32, 8, 8),
    "backbone.fpn.inner_blocks.0.0:in": (32, 24, 16),
    "backbone.fpn.layer_blocks.3.0:out": (16, 16, 0),
    "rpn.head.conv.0.0:in": (16, 9, 3),
    "roi_heads.box_head.5:in": (64, 40, 30),
    "roi_heads.box_predictor.cls_score:in": (32, 5, 10),
}


def spectra_with(dims: dict[str, tuple[int, int]]) -> Spectra:
    """Diagonal covariances with exactly ``d`` eigenvalues above 1e-3 of the largest (d = 0:
    a dead map)."""
    covs = {}
    for name, (channels, d) in dims.items():
        values = torch.full((channels,), 1e-4 if d else 0.0, dtype=torch.float64)
        values[:d] = torch.logspace(0, -2.9, d, dtype=torch.float64)
        covs[name] = torch.diag(values) if d else torch.zeros(channels, channels)
    return Spectra(covs, {name: 7 for name in dims}, {"test": True})


@pytest.fixture
def saved(tmp_path):
    a = spectra_with({n: (c, i) for n, (c, i, _) in KNOWN.items()}).save(tmp_path / "I.sft")
    b = spectra_with({n: (c, s) for n, (c, _, s) in KNOWN.items()}).save(tmp_path / "S.sft")
    return a, b


def test_compare_json_per_map_part_and_stage(run_cli, saved):
    r = run_cli("compare", *saved, "--names", "I,S", "--json", "--top", "3")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["names"] == ["I", "S"] and out["threshold"] == 1e-3
    rows = {m["name"]: m for m in out["maps"]}
    assert list(rows) == list(KNOWN)
    for name, (channels, i, s) in KNOWN.items():
        assert (rows[name]["channels"], rows[name]["a"], rows[name]["b"]) == (channels, i, s)
        assert rows[name]["diff"] == i - s
        assert rows[name]["ratio"] == (i / s if s else None)
    parts = {p["part"]: (p["maps"], p["channels"], p["a"], p["b"], p["diff"]) for p in out["parts"]}
    assert parts == {
        "backbone": (5, 160, 70, 124, -54),
        "FPN": (2, 48, 40, 16, 24),
        "RPN": (1, 16, 9, 3, 6),
        "heads": (2, 96, 45, 40, 5),
    }
    stages = [(s["part"], s["stage"], s["a"], s["b"]) for s in out["stages"]]
    assert stages == [
        ("backbone", "stem", 12, 12),
        ("backbone", "layer1", 30, 44),
        ("backbone", "layer4", 28, 68),
        ("FPN", "P2", 24, 16),
        ("FPN", "P5", 16, 0),
        ("RPN", "conv", 9, 3),
        ("heads", "box_head", 40, 30),
        ("heads", "box_predictor", 5, 10),
    ]
    # |I - S| / channels: layer4.0.conv1:in 40/64, P5 16/16, rpn 6/16, ...
    assert out["most_different"] == [
        "backbone.fpn.layer_blocks.3.0:out",
        "backbone.body.layer4.0.conv1:in",
        "rpn.head.conv.0.0:in",
    ]


def test_names_is_one_comma_separated_value(run_cli, saved, analysed_runs, tmp_path):
    for args in ((*saved, "--names", "I,S"), ("--names", "I,S", *saved)):
        r = run_cli("compare", *args, "--json", "--top", "1")
        assert r.code == 0, (args, r.stderr)
        assert json.loads(r.stdout)["names"] == ["I", "S"]
    r = run_cli("compare", *saved, "--names", "I,S,T")
    assert r.code == 2 and "--names I,S,T: expected two labels, --names A,B" in r.stderr
    # The space form, as every list option: the second label is an unexpected argument.
    for args in (
        (*saved, "--names", "I", "S"),
        ("--names", "I", "S", *saved),
        (saved[0], "--names", "I", "S", saved[1]),
    ):
        r = run_cli("compare", *args, "--json")
        assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert "Got unexpected extra argument" in r.stderr and r.stdout == ""
    # report: the second label is read as a third run, so the labels do not match the runs.
    out = tmp_path / "report"
    runs = (analysed_runs["A"], analysed_runs["B"])
    r = run_cli("report", *runs, "--out", out, "--names", "I", "S")
    assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "run names I: expected 3 distinct names" in r.stderr and "--names A,B" in r.stderr
    assert not out.exists()


def test_compare_tables_threshold_and_plot(run_cli, saved, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    r = run_cli("compare", *saved, "--plot", tmp_path / "fig5", "--stages", "layer1,layer4")
    assert r.code == 0, r.stderr
    assert "summed intrinsic dimensionality per part" in r.stdout
    assert "per stage" in r.stdout and "differ most" in r.stdout
    line = next(x for x in r.stdout.splitlines() if "layer4.0.conv1:in" in x)
    assert [c.strip() for c in line.split("│")[2:7]] == ["64", "20", "60", "-40", "0.333"]
    assert "dims I " in r.stdout and "dims S " in r.stdout  # labels from the file names
    with Image.open(tmp_path / "fig5.png") as image:
        assert image.size[0] > 300 and image.size[1] > 300
    assert (tmp_path / "fig5.svg").read_text().lstrip().startswith("<?xml")
    # A lower threshold counts more eigenvalues (the 1e-4 floor of each live map).
    r = run_cli("compare", *saved, "--threshold", "1e-5", "--json")
    rows = {m["name"]: m for m in json.loads(r.stdout)["maps"]}
    assert rows["backbone.body.layer4.0.conv1:in"]["a"] == 64
    r = run_cli("compare", *saved, "--plot", tmp_path / "x", "--stages", "layer9")
    assert r.code == 2 and "--stages layer9" in r.stderr and "layer4" in r.stderr


def test_compare_refuses_different_architectures(run_cli, saved, tmp_path):
    other = dict(KNOWN)
    del other["rpn.head.conv.0.0:in"]
    other["backbone.body.layer4.0.conv1:in"] = (48, 20, 20)
    other["extra.conv:out"] = (8, 1, 1)
    path = spectra_with({n: (c, i) for n, (c, i, _) in other.items()}).save(tmp_path / "X.sft")
    r = run_cli("compare", saved[0], path, "--names", "I,X")
    assert r.code == 2
    message = r.stderr.replace("\n", "")
    assert "I and X are not the same architecture" in message
    assert "1 map(s) only in I: rpn.head.conv.0.0:in" in message
    assert "1 map(s) only in X: extra.conv:out" in message
    assert "backbone.body.layer4.0.conv1:in (64 vs 48 channels)" in message
    assert "Traceback" not in r.stderr


def test_compare_run_folders(run_cli, analysed_runs, tmp_path):
    r = run_cli("compare", analysed_runs["A"], analysed_runs["B"], "--json")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["names"] == ["A", "B"]
    final = compare_spectra(
        Spectra.load(analysed_runs["A"] / "spectra/iter_0000040.safetensors"),
        Spectra.load(analysed_runs["B"] / "spectra/iter_0000040.safetensors"),
    )
    assert [(m["a"], m["b"]) for m in out["maps"]] == [(m.a, m.b) for m in final.maps]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "iter_0000007.pt").write_bytes(b"")
    r = run_cli("compare", analysed_runs["A"], tmp_path)
    assert r.code == 2 and "no spectra of its last checkpoint (iteration 7)" in r.stderr
    r = run_cli("compare", analysed_runs["A"], tmp_path / "missing.sft")
    assert r.code == 2 and "missing.sft: spectra file not found" in r.stderr


def test_cli_reuses_spectra_and_recomputes_on_new_settings(
    analysed_runs, known, copy_run, run_cli, monkeypatch
):
    run = copy_run(analysed_runs["A"])
    files = sorted((run / "spectra").glob("*.safetensors"))
    stamps = [f.stat().st_mtime_ns for f in files]

    def fail(*args, **kwargs):
        raise AssertionError("spectra recomputed")

    monkeypatch.setattr(dynamics_module, "stream_spectra", fail)
    r = run_cli(
        "dynamics",
        "--run",
        run,
        "--images",
        known.images,
        "--workers",
        "0",
        "--json",
        "--threshold",
        "1e-3.5",
    )
    assert r.code == 0, r.stderr
    assert [f.stat().st_mtime_ns for f in files] == stamps
    out = json.loads(r.stdout)
    assert out["threshold"] == pytest.approx(10**-3.5)
    spectra = Spectra.load(files[0])
    for m in out["maps"]:
        assert m["dims"][0] == spectra.intrinsic_dim(m["name"], 10**-3.5)
    assert json.loads((run / "dynamics.json").read_text())["threshold"] == out["threshold"]
    assert "--threshold 0.000316" in out["command"] and f"--images {known.images}" in out["command"]

    # Other settings (fewer images) need a new pass over the data.
    with pytest.raises(AssertionError, match="recomputed"):
        run_cli("dynamics", "--run", run, "--images", "2", "--workers", "0")
    # So does a file of an older spectra format, as the same settings computed it.
    kept = files[0].read_bytes()
    with safetensors.safe_open(files[0], framework="pt") as f:
        header = {**json.loads(f.metadata()["eigenarch-spectra"]), "version": 2}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    metadata = {"eigenarch-spectra": json.dumps(header)}
    files[0].write_bytes(safetensors.torch.save(tensors, metadata=metadata))
    with pytest.raises(AssertionError, match="recomputed"):
        run_cli("dynamics", "--run", run, "--images", known.images, "--workers", "0")
    files[0].write_bytes(kept)
    monkeypatch.undo()
    monkeypatch.setenv("COLUMNS", "250")  # table rows on one line each
    r = run_cli(
        "dynamics",
        "--run",
        run,
        "--images",
        "2",
        "--workers",
        "0",
        "--include",
        "backbone.body.layer1.*",
        "--flagged",
    )
    assert r.code == 0, r.stderr
    assert [f.stat().st_mtime_ns for f in files] != stamps
    spectra = Spectra.load(files[-1])
    assert spectra.meta["images"] == 2 and spectra.samples(known.target + ":out") == 2
    assert all(n.startswith("backbone.body.layer1.") for n in spectra.names)
    assert "dropping" in r.stdout and "@10:" in r.stdout and "@30:" in r.stdout
    flagged = [line for line in r.stdout.splitlines() if "@" in line]
    assert len(flagged) == 1 and known.target + ":out" in flagged[0]


def test_cli_errors(run_cli, tmp_path, analysed_runs, copy_run):
    r = run_cli("dynamics", "--run", tmp_path)
    assert r.code == 2 and "no config.json" in r.stderr
    run = copy_run(analysed_runs["B"])
    for path in (run / "checkpoints").iterdir():
        path.unlink()
    r = run_cli("dynamics", "--run", run)
    assert r.code == 2 and "no checkpoints" in r.stderr
    r = run_cli("dynamics", "--run", analysed_runs["B"], "--drop", "0")
    assert r.code == 2 and "--drop 0.0" in r.stderr
    r = run_cli("dynamics", "--run", analysed_runs["B"], "--workers", "-1")
    assert r.code == 2 and "--workers" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("report", tmp_path, "--out", tmp_path / "rep")
    assert r.code == 2 and "eigenarch dynamics --run" in r.stderr


def test_cli_sketches_wide_maps_and_reads_them_back(analysed_runs, copy_run, run_cli):
    run = copy_run(analysed_runs["B"])
    args = ("dynamics", "--run", run, "--images", "2", "--workers", "0", "--json", "--include",
            "roi_heads.box_head.*", "--max-channels", "64", "--sketch-rank", "4")  # fmt: skip
    r = run_cli(*args)
    assert r.code == 0, r.stderr
    files = sorted((run / "spectra").glob("*.safetensors"))
    spectra = Spectra.load(files[-1])
    wide = [n for n in spectra.names if spectra.channels(n) > 64]
    assert wide and all(spectra.sketch_rank(n) == 4 for n in wide)
    out = json.loads(r.stdout)
    assert "--sketch-rank 4" in out["command"] and "--max-channels 64" in out["command"]
    dims = {m["name"]: m["dims"] for m in out["maps"]}
    for name in wide:
        assert dims[name][-1] == spectra.intrinsic_dim(name) and 1 <= dims[name][-1] <= 4
    stamps = [f.stat().st_mtime_ns for f in files]
    assert run_cli(*args).code == 0  # the sketched files are reused as computed
    assert [f.stat().st_mtime_ns for f in files] == stamps
    r = run_cli("report", run, "--out", run.parent / "report")  # reads the sketched files
    assert r.code == 0, r.stderr


def test_report_notes_and_errors(run_cli, analysed_runs, copy_run, tmp_path):
    # Run B, with its last spectra missing one map: another architecture than A.
    other = copy_run(analysed_runs["B"])
    final = other / "spectra" / "iter_0000040.safetensors"
    spectra = Spectra.load(final)
    kept = [n for n in spectra.names if n != "rpn.head.conv.0.0:in"]
    Spectra({n: spectra.covariance(n) for n in kept}, {n: spectra.samples(n) for n in kept}).save(
        final
    )
    out = tmp_path / "two"
    only = ["--maps", "*layer1.0.conv3*", "--max-maps", "1", "--checkpoints", "2"]
    r = run_cli("report", analysed_runs["A"], other, "--out", out, "--names", "I,S", *only)
    assert r.code == 0, r.stderr
    page = (out / "report.html").read_text()
    # With widths of multiples of 32 the tiny backbone's budget cannot be met: said, not fatal.
    assert "search not possible" in page and "smallest reachable" in page
    assert "I and S are not the same architecture: 1 map(s) only in I: rpn.head.conv.0.0:in" in page
    summary = json.loads((out / "report.json").read_text())
    assert summary["figures"] == [f"{run}-{kind}" for run in "IS"
                                  for kind in ("dims", "spectra", "width-diagram")]  # fmt: skip
    assert summary["comparisons"] == []
    assert summary["runs"]["S"]["dynamics"]["plotted"] == ["backbone.body.layer1.0.conv3:in"]
    assert "iterations of backbone.body.layer1.0.conv3:in;" in page

    bad = tmp_path / "bad"
    for args, message in [
        (["--maps", "nothing*"], "--maps nothing*: no map"),
        (["--names", "I"], "expected 2 distinct names"),
        (["--names", "I,I"], "run names I,I: expected 2 distinct names"),
        (["--metrics", "flops"], "--metrics flops"),
        (["--stages", "layer1,layer9"], "--stages layer9: not a backbone stage"),
        (["--widths", tmp_path / "none.json"], "none.json: cannot read"),
    ]:
        r = run_cli("report", analysed_runs["A"], analysed_runs["B"], "--out", bad, *args)
        assert r.code == 2 and message in r.stderr, (args, r.stderr)
        assert not bad.exists()  # nothing written, not even plots
    # One run: no comparison, but an unknown stage is still refused.
    r = run_cli("report", analysed_runs["A"], "--out", bad, "--stages", "layer9")
    assert r.code == 2 and "--stages layer9: not a backbone stage" in r.stderr, r.stderr
    assert not bad.exists()
