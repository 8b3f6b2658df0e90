"""``eigenarch data shapes``, ``data shapes-cls`` and ``data check``."""

from __future__ import annotations


def test_cli_writes_the_sets(tmp_path, run_cli):
    result = run_cli(
        "data",
        "shapes",
        "--out",
        tmp_path / "det",
        "--train",
        "3",
        "--val",
        "2",
        "--size",
        "64",
        "--workers",
        "1",
    )
    assert result.code == 0, result.stderr
    assert len(list((tmp_path / "det" / "val").glob("*.jpg"))) == 2
    result = run_cli(
        "data",
        "shapes-cls",
        "--out",
        tmp_path / "cls",
        "--train-per-class",
        "1",
        "--val-per-class",
        "1",
        "--size",
        "32",
    )
    assert result.code == 0, result.stderr
    assert (tmp_path / "cls" / "classes.json").is_file()


def test_cli_rejects_a_tiny_size(tmp_path, run_cli):
    result = run_cli("data", "shapes", "--out", tmp_path, "--size", "8")
    assert result.code == 2
    assert "--size 8" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "annotations").exists()


def test_check_command_reports_counts(shapes_root, run_cli):
    result = run_cli("data", "check", shapes_root, "--masks")
    assert result.code == 0, result.stderr
    rows = [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in result.stderr.splitlines() if line.startswith("│")]  # fmt: skip
    # split, images, without annotations, annotations, crowd, classes, dropped, clipped boxes
    assert rows == [
        ["train", "12", "0", "46", "0", "8", "0", "0"],
        ["val", "6", "0", "28", "0", "8", "0", "0"],
    ]
