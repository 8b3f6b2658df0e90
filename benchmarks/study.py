"""Print a finished ``eigenarch demo``'s tables and claims as Markdown (docs/study.md).

    python benchmarks/study.py runs/study/state.json > /tmp/study-tables.md

Every table of the report (Table 1, its 1x column, Table 2, Mask R-CNN) with mean ± std
over the seeds and each row's Welch p-value against the base, then one line per claim with
its verdict and the figure that decided it, and the step times.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eigenarch.report.claims import mean_std

#: Each table: its title and columns (key, header).
TABLES = {
    "table1": ("Table 1 (the paper's 2x column): bbox AP %",
               (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"))),
    "table1_1x": ("Table 1 at 1x (half the iterations): bbox AP %", (("AP", "AP"),)),
    "table2": ("Table 2, BatchNorm classifiers: error %",
               (("top1_err", "top-1 err"), ("top5_err", "top-5 err"))),
    "mask": ("Mask R-CNN: AP %", (("AP_bbox", "AP bbox"), ("AP_mask", "AP mask"))),
}  # fmt: skip


def _p(row: dict, key: str) -> str:
    p = row.get(f"{key}_p")
    return "–" if p is None else f"{p:.3f}"


def table(name: str, rows: list[dict]) -> list[str]:
    """One report table as Markdown lines."""
    title, columns = TABLES[name]
    head = ["backbone", "MACs", "params", "seeds", *(h for _, h in columns),
            f"p ({columns[0][1]} vs base)"]  # fmt: skip
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cost = [f"{r['macs'] / 1e6:.0f} M", f"{r['params'] / 1e6:.2f} M", str(r["seeds"])]
        values = [mean_std(r, k) for k, _ in columns]
        cells = [r["backbone"], *cost, *values, _p(r, columns[0][0])]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("state", type=Path, help="the demo's state.json")
    args = parser.parse_args()
    state = json.loads(args.state.read_text())
    report = state["steps"]["report"]["outputs"]
    lines = []
    for name in TABLES:
        if name in report:
            lines += table(name, report[name])
    lines += ["| claim | verdict | this run | why |", "| --- | --- | --- | --- |"]
    for c in report["claims"]:
        why = c["reason"] or c["rule"]
        lines.append(f"| ({c['key']}) {c['paper']} | **{c['verdict']}** | {c['ours']} | {why} |")
    seconds = {k: v["seconds"] for k, v in state["steps"].items()}
    lines += ["", f"Step times (s): {seconds}; total {sum(seconds.values()):.0f} s."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
