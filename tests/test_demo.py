"""The demo runs its steps once and resumes from its state file."""

from __future__ import annotations

import json

from eigenarch.demo import STEPS, run_demo


def test_demo_runs_every_step_then_skips_finished_ones(tmp_path, run_cli):
    result = run_cli("demo", "--out", tmp_path, "--quick", "--scale", "0.05")
    assert result.code == 0, result.stderr
    state = json.loads((tmp_path / "state.json").read_text())
    assert list(state["steps"]) == [name for name, _, _ in STEPS]
    assert (tmp_path / "shapes" / "annotations" / "instances_val.json").is_file()
    stamp = (tmp_path / "shapes" / "annotations" / "instances_val.json").stat().st_mtime_ns
    again = run_demo(tmp_path, quick=True, scale=0.05)
    assert again == state
    assert (tmp_path / "shapes" / "annotations" / "instances_val.json").stat().st_mtime_ns == stamp
    result = run_cli("demo", "--out", tmp_path, "--quick", "--scale", "0.05", "--force")
    assert result.code == 0 and "skipped" not in result.stderr
