"""The demo runs the whole pipeline once, resumes from its state, and redoes it on --force."""

from __future__ import annotations

import json

import eigenarch.demo as demo_module
from eigenarch.demo import STEPS, run_demo


def test_demo_runs_every_step_then_skips_finished_ones(tmp_path, run_cli):
    result = run_cli("demo", "--out", tmp_path, "--quick", "--scale", "0.05")
    assert result.code == 0, result.stderr
    state = json.loads((tmp_path / "state.json").read_text())
    assert list(state["steps"]) == [name for name, _, _ in STEPS]
    report = state["steps"]["report"]["outputs"]
    assert (tmp_path / "report" / "report.html").is_file()
    assert [row["backbone"] for row in report["table1"]][0] == "base"
    assert len(report["table1"]) == 5 and report["findings"]
    html = (tmp_path / "report" / "report.html").read_text()
    assert 'id="table1"' in html and "What was found" in html
    stamp = (tmp_path / "report" / "report.html").stat().st_mtime_ns
    assert run_demo(tmp_path, quick=True, scale=0.05) == state
    assert (tmp_path / "report" / "report.html").stat().st_mtime_ns == stamp


def test_force_redoes_every_step(tmp_path, monkeypatch):
    calls = []
    steps = [(name, name, lambda d, s, n=name: calls.append(n) or {"n": n}) for name in "abc"]
    monkeypatch.setattr(demo_module, "STEPS", steps)
    run_demo(tmp_path, quick=True)
    run_demo(tmp_path, quick=True)
    assert calls == ["a", "b", "c"]
    run_demo(tmp_path, quick=True, force=True)
    assert calls == ["a", "b", "c"] * 2
