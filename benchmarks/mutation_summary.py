"""Killed / survived mutants per rule function, from a finished `make mutation` (mutants/).

Usage: python benchmarks/mutation_summary.py [PATTERN ...]  (fnmatch patterns of mutant
names; default: every mutant that ran). Prints one Markdown row per module and the
surviving mutants' names.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code


def main(patterns: list[str]) -> None:
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if code is None or (patterns and not any(fnmatch.fnmatch(name, p) for p in patterns)):
                continue
            status = status_by_exit_code[code]
            module = name.split(".x")[0]
            counts[module][status] += 1
            if status != "killed":
                survivors.append(f"{status}: {name}")
    print("| module | mutants | killed | survived | timeout | no tests | killed % |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for module, c in counts.items():
        total = sum(c.values())
        ran = total - c["no tests"]
        print(
            f"| `{module}` | {total} | {c['killed']} | {c['survived']} | {c['timeout']} | "
            f"{c['no tests']} | {100 * c['killed'] / ran:.0f} % |"
            if ran
            else ""
        )
    print(*survivors, sep="\n")


if __name__ == "__main__":
    main(sys.argv[1:])
