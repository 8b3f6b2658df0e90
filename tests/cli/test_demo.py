"""``eigenarch demo --help``: which option adds which rows."""

from __future__ import annotations


def test_demo_help_says_which_option_adds_which_rows(run_cli):
    result = run_cli("demo", "--help")
    assert result.code == 0
    text = " ".join(result.stdout.split())
    rows_of = (("--short-schedule", "Table 1 at 1x"), ("--table2", "Table 2:"),
               ("--mask", "Mask R-CNN rows"), ("--inherit", "claim (m)"))  # fmt: skip
    for option, rows in rows_of:
        assert option in text and rows in text
    for option in ("--no-short-schedule", "--no-table2", "--no-mask"):
        assert option in text
