"""``eigenarch train``: a run from the command line and one-line errors for bad options."""

from __future__ import annotations

import json

import pytest

from eigenarch.train.checkpoint import detector_from_checkpoint

from ..train.conftest import TINY_ARGS


def test_train_and_evaluate_commands(shapes_root, tmp_path, run_cli):
    out = tmp_path / "cli"
    args = ["--data", shapes_root, "--out", out, "--iters", "2", "--batch-size", "2"]
    result = run_cli("train", *args, *TINY_ARGS, "--proposals", "300,100")
    assert result.code == 0, result.stderr
    assert "AP50" in result.stderr and (out / "checkpoints" / "iter_0000002.pt").is_file()
    rpn = detector_from_checkpoint(out / "checkpoints" / "iter_0000002.pt")[0].rpn
    assert rpn._pre_nms_top_n == rpn._post_nms_top_n == {"training": 300, "testing": 100}
    again = run_cli("train", *args, *TINY_ARGS)
    assert again.code == 2 and "already holds a run; use --resume" in again.stderr
    result = run_cli("evaluate", "--run", out)
    assert result.code == 0, result.stderr
    evaluated = json.loads((out / "eval" / "iter_0000002-val" / "metrics.json").read_text())
    assert evaluated == json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--backbone", "1,2,x", "--backbone '1,2,x'"),
        ("--backbone", "missing.json", "not 'resnet50', nine comma-separated widths"),
        ("--kind", "yolo", "--kind 'yolo'"),
        ("--schedule", "5x", "--schedule '5x'"),
        ("--init", "absent.pt", "--init absent.pt: file not found"),
        ("--proposals", "0,100", "--proposals 0,100: expected two positive counts"),
        ("--proposals", "300", "--proposals 300: expected two positive counts"),
        ("--workers", "-1", "Invalid value for '--workers'"),
    ],
)
def test_bad_train_options_give_one_line_errors(
    shapes_root, tmp_path, run_cli, option, value, message
):
    args = ["--data", shapes_root, "--out", tmp_path / "bad", "--iters", "1", *TINY_ARGS]
    result = run_cli("train", *args, option, value)
    assert result.code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
