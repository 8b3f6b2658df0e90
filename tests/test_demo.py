"""The demo runs the whole pipeline once, resumes from its state, and redoes it on --force."""

from __future__ import annotations

import json
import re
from functools import partial

import pytest

import eigenarch.demo as demo_module
from eigenarch.demo import (
    BASE_WIDTHS,
    STEPS,
    TABLE1_COLUMNS,
    DemoSizes,
    Step,
    base_spec,
    results_table,
    run_demo,
    run_parallel,
    train_runs,
)
from eigenarch.errors import EigenarchError
from eigenarch.report.claims import NOT_MEASURED, VERDICTS
from eigenarch.widths import resnet_cost


def test_demo_runs_every_step_then_skips_finished_ones(tmp_path, run_cli):
    result = run_cli("demo", "--out", tmp_path, "--quick", "--scale", "0.05", "--seeds", "2",
                     "--no-short-schedule", "--no-table2", "--no-mask")  # fmt: skip
    assert result.code == 0, result.stderr
    state = json.loads((tmp_path / "state.json").read_text())
    assert list(state["steps"]) == [step.name for step in STEPS if step.option is None]
    report = state["steps"]["report"]["outputs"]
    assert (tmp_path / "report" / "report.html").is_file()
    assert [row["backbone"] for row in report["table1"]][0] == "base"
    assert len(report["table1"]) == 5 and report["findings"]
    assert all(row["seeds"] == 2 for row in report["table1"])
    assert report["table1"][0]["AP_p"] is None
    assert all(0 <= row["AP_p"] <= 1 for row in report["table1"][1:])  # Welch, two seeds
    html = (tmp_path / "report" / "report.html").read_text()
    assert 'id="table1"' in html and "What was found" in html
    # The claims table: one filled row per claim (a)-(m), verdicts from the rules.
    assert [c["key"] for c in report["claims"]] == list("abcdefghijklm")
    assert 'id="claims"' in html
    body = re.search(r'<table id="claims-table">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", body)
    assert len(rows) == 13 and "<td></td>" not in body
    for row, claim in zip(rows, report["claims"], strict=True):
        assert row.startswith(f"<td>{claim['key']}</td>")
        assert claim["verdict"] in VERDICTS
    assert "conv5_2.1 = layer4.1.conv1:in" in html
    assert "(k) " in result.stderr and "using more in lower layers" not in result.stderr
    assert "(run the demo with --table2)" in result.stderr
    assert "not run (add --mask)" in result.stderr
    stamp = (tmp_path / "report" / "report.html").stat().st_mtime_ns
    assert run_demo(tmp_path, quick=True, scale=0.05, seeds=2, extras=()) == state
    assert (tmp_path / "report" / "report.html").stat().st_mtime_ns == stamp
    # A search's base is the network it searched on, not ResNet-50.
    searched = json.loads((tmp_path / "search" / "resianet-s-macs.json").read_text())
    base = resnet_cost(BASE_WIDTHS)
    assert searched["base"] == {"widths": list(BASE_WIDTHS), "macs": base.macs,
                                "params": base.params}  # fmt: skip
    assert searched["target"] == {"metric": "macs", "value": base.macs}
    # The default steps and --inherit add their rows to this demo without redoing it.
    assert "(run the demo with --inherit)" in result.stderr  # claim (m)
    result = run_cli("demo", "--out", tmp_path, "--quick", "--scale", "0.05", "--seeds", "2",
                     "--inherit")  # fmt: skip
    assert result.code == 0, result.stderr
    assert result.stderr.count("done already, skipped") == 6  # data ... retrain
    state = json.loads((tmp_path / "state.json").read_text())
    assert sorted(state["steps"]) == sorted(step.name for step in STEPS)
    report = state["steps"]["report"]["outputs"]
    assert [row["backbone"] for row in report["table1"]][1:4] == [
        "ResiaNet S (MACs)", "ResiaNet S (MACs) inherited from I",
        "ResiaNet S (MACs) inherited from I, 1/4 schedule"]  # fmt: skip
    assert len(report["table1"]) == 5 + 2 * 3 and all(r["seeds"] == 2 for r in report["table1"])
    inherited = json.loads((tmp_path / "runs" / "inherit-resianet-i-macs-inherited-from-i"
                            / "config.json").read_text())  # fmt: skip
    assert inherited["init"] == str(tmp_path / "inherit" / "resianet-i-macs.pt")
    assert inherited["backbone"] == str(tmp_path / "search" / "resianet-i-macs.json")
    quarter = tmp_path / "runs" / "inherit-resianet-i-macs-inherited-from-i-1-4-schedule"
    assert json.loads((quarter / "config.json").read_text())["iters"] == 1  # max(1, 1 // 4)
    assert "won here" in " ".join(report["findings"])
    # Each default step trains the rows its claim reads: (i) 1x, (k) Table 2, (l) Mask R-CNN.
    s_macs, i_macs = "ResiaNet S (MACs)", "ResiaNet I (MACs)"
    assert [row["backbone"] for row in report["table1_1x"]] == [s_macs, i_macs]
    assert sorted(p.name for p in (tmp_path / "runs").glob("1x-*")) == [
        "1x-resianet-i-macs", "1x-resianet-i-macs-seed1", "1x-resianet-s-macs",
        "1x-resianet-s-macs-seed1"]  # fmt: skip
    tables = (("table2", ("top1_err", "top5_err"), ["base", s_macs, i_macs]),
              ("mask", ("AP_bbox", "AP_mask"), ["base", s_macs]))  # fmt: skip
    for name, keys, rows in tables:
        assert [row["backbone"] for row in report[name]] == rows
        assert all(row["seeds"] == 2 and row[k] is not None for row in report[name] for k in keys)
    assert all(0 <= row["top1_err"] <= 100 for row in report["table2"])
    html = (tmp_path / "report" / "report.html").read_text()
    for ident in ("table1_1x-table", "table2-table", "mask-table"):
        assert f'<table id="{ident}">' in html
    verdicts = {c["key"]: c["verdict"] for c in report["claims"]}
    assert all(verdicts[key] != NOT_MEASURED for key in "iklm"), report["claims"]  # computed
    assert "Table 2, as BatchNorm classifiers" in result.stderr


def test_seeds_default_to_the_scale_and_at_least_two_unless_quick():
    assert DemoSizes.make(scale=3.5).seeds == 3 and DemoSizes.make(scale=0.5).seeds == 2
    assert DemoSizes.make(quick=True, scale=0.5).seeds == 1
    assert DemoSizes.make(quick=True, scale=2).seeds == 2
    assert DemoSizes.make(scale=0.5, seeds=4).seeds == 4
    with pytest.raises(EigenarchError, match="--seeds 0"):
        DemoSizes.make(seeds=0)


def test_detnet_demo_gives_detianets(tmp_path, run_cli):
    result = run_cli("demo", "--out", tmp_path, "--quick", "--scale", "0.05", "--backbone",
                     "detnet59")  # fmt: skip
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "state.json").read_text())["steps"]["report"]["outputs"]
    labels = [row["backbone"] for row in report["table1"]]
    assert labels[:4] == ["base", "DetiaNet S (MACs)", "DetiaNet I (MACs)", "DetiaNet I (params)"]
    base = base_spec("detnet59")
    assert report["table1"][0]["macs"] == base.cost().macs
    searched = json.loads((tmp_path / "search" / "detianet-s-macs.json").read_text())
    assert searched["builder"] == "detnet59" and searched["source"]["threshold"] == 10**-3.5
    assert searched["base"]["macs"] == base.cost().macs >= searched["macs"]
    assert "DetiaNet I2-59" in " ".join(report["findings"])


def test_the_short_schedule_halves_table1_for_the_rows_of_claim_i(tmp_path, monkeypatch):
    trained = {}
    monkeypatch.setattr(demo_module, "train_runs", lambda cfgs, jobs: trained.update(cfgs) or {
        name: {"name": name} for name in cfgs})  # fmt: skip
    demo = demo_module.Demo(tmp_path, DemoSizes.make(seeds=1))
    specs = {"ResiaNet S (MACs)": "s.json", "ResiaNet I (MACs)": "i.json",
             "ResiaNet I (params)": "p.json", "uniform x0.50": "u.json"}  # fmt: skip
    out = demo_module._step_short(demo, specs)
    assert list(out["metrics"]) == ["ResiaNet S (MACs)", "ResiaNet I (MACs)"]
    assert {n: (c.backbone, c.iters, c.checkpoint_every) for n, c in trained.items()} == {
        "1x-resianet-s-macs": ("s.json", 125, 25),
        "1x-resianet-i-macs": ("i.json", 125, 25),
    }


def test_an_earlier_demo_of_other_settings_is_kept_unless_forced(tmp_path, monkeypatch):
    steps = [Step("a", "a", lambda d, s: {"n": 1})]
    monkeypatch.setattr(demo_module, "STEPS", steps)
    run_demo(tmp_path, quick=True)
    (tmp_path / "mine.txt").write_text("a user's file")
    with pytest.raises(EigenarchError, match=r"holds a demo with other settings .* --force"):
        run_demo(tmp_path, quick=False)
    assert (tmp_path / "mine.txt").is_file() and (tmp_path / "state.json").is_file()
    run_demo(tmp_path, quick=False, force=True)
    assert not (tmp_path / "mine.txt").exists()


def test_force_redoes_every_step(tmp_path, monkeypatch):
    calls = []
    steps = [Step(name, name, lambda d, s, n=name: calls.append(n) or {"n": n}) for name in "abc"]
    monkeypatch.setattr(demo_module, "STEPS", steps)
    run_demo(tmp_path, quick=True)
    run_demo(tmp_path, quick=True)
    assert calls == ["a", "b", "c"]
    run_demo(tmp_path, quick=True, force=True)
    assert calls == ["a", "b", "c"] * 2


def test_an_option_adds_its_step_and_redoes_only_the_steps_that_read_it(tmp_path, monkeypatch):
    calls = []

    def step(name: str, needs: tuple[str, ...] = (), option: str | None = None) -> Step:
        return Step(name, name, lambda d, s: calls.append((name, sorted(s))) or {}, needs, option)

    steps = [step("a"), step("b", option="--b"), step("r", ("a", "b"))]
    monkeypatch.setattr(demo_module, "STEPS", steps)
    run_demo(tmp_path, quick=True)
    assert calls == [("a", []), ("r", ["a"])]
    run_demo(tmp_path, quick=True, extras=["b"])
    assert calls[2:] == [("b", ["a", "r"]), ("r", ["a", "b", "r"])]
    run_demo(tmp_path, quick=True)  # b stays in; nothing to redo
    assert len(calls) == 4
    with pytest.raises(EigenarchError, match="extras c: expected some of b"):
        run_demo(tmp_path, quick=True, extras=["c"])


def test_the_default_steps_run_unless_left_out(tmp_path, monkeypatch):
    calls = []
    steps = [Step(name, name, lambda d, s, n=name: calls.append(n) or {}, (), option, default)
             for name, option, default in (("a", None, False), ("b", "--b", True),
                                           ("c", "--c", False))]  # fmt: skip
    monkeypatch.setattr(demo_module, "STEPS", steps)
    run_demo(tmp_path / "default", quick=True)
    run_demo(tmp_path / "without", quick=True, extras=())
    assert calls == ["a", "b", "a"]


def test_parallel_trainings_equal_serial_ones(tiny_config, tmp_path, logged_steps):
    def configs(folder):
        return {
            name: tiny_config(f"{folder}/{name}", seed=seed, iters=3, checkpoint_every=0)
            for name, seed in (("a", 0), ("b", 1))
        }

    serial = train_runs(configs("serial"), jobs=1)
    parallel = train_runs(configs("parallel"), jobs=2)
    assert serial == parallel and serial["a"] != serial["b"]
    for name in "ab":
        logs = [logged_steps(tmp_path / folder / name) for folder in ("serial", "parallel")]
        assert logs[0] == logs[1] and len(logs[0]) == 3
    assert train_runs(configs("parallel"), jobs=2) == parallel  # finished runs are reused


def test_table1_leaves_out_sizes_without_val_objects():
    def run(ap, apl):
        return {"bbox": {"AP": ap, "AP50": ap, "AP75": ap, "APs": ap, "APm": ap, "APl": apl}}

    (row,) = results_table({}, {"base": [run(0.2, -1.0), run(0.4, 0.3)]}, TABLE1_COLUMNS)
    assert row["AP"] == pytest.approx(30.0) and row["AP_std"] == pytest.approx(14.142, abs=1e-3)
    assert row["APl"] == pytest.approx(30.0) and row["APl_std"] is None
    (row,) = results_table({}, {"base": [run(0.2, -1.0)]}, TABLE1_COLUMNS)
    assert row["APl"] is None and row["seeds"] == 1


def test_a_failing_parallel_call_raises_its_error():
    calls = {"bad": partial(int, "x"), "good": partial(abs, -1)}
    with pytest.raises(ValueError, match="invalid literal"):
        run_parallel(calls, 2, lambda name: (0, 1), "run")
    assert run_parallel({"good": partial(abs, -1)}, 2, lambda name: (0, 1), "run") == {"good": 1}


def test_finished_pretrainings_are_reused_with_their_accuracies(tmp_path):
    from eigenarch.data.shapes import ShapesClsConfig, generate_shapes_cls
    from eigenarch.train.pretrain import PretrainConfig

    from .conftest import TINY_WIDTHS

    generate_shapes_cls(tmp_path / "cls", ShapesClsConfig(2, 1, size=32), workers=1)
    cfg = PretrainConfig(str(tmp_path / "cls"), str(tmp_path / "a.pt"), TINY_WIDTHS, "bn",
                         gn_groups=8, epochs=1, batch_size=8, size=32, workers=0)  # fmt: skip
    first = demo_module.pretrain_runs({"a": cfg})
    assert set(first["a"]) == {"val_accuracy", "val_top5"}
    assert 0 <= first["a"]["val_accuracy"] <= first["a"]["val_top5"] <= 1
    stamp = (tmp_path / "a.pt").stat().st_mtime_ns
    assert demo_module.pretrain_runs({"a": cfg}) == first
    assert (tmp_path / "a.pt").stat().st_mtime_ns == stamp
