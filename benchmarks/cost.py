"""Microseconds per ``resnet_cost`` call and per ``search_widths`` call.

Run: ``.venv/bin/python benchmarks/cost.py`` (add ``--json`` for machine-readable output).
The search runs on synthetic ResNet-50 dims (every map of a group jittered around a value)
with a ResNet-50 MACs budget; the figure is the median of several repeats.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import timeit

from eigenarch.widths import (
    RESNET50_WIDTHS,
    adjust_widths,
    intrinsic_widths,
    resnet_cost,
    search_widths,
    width_groups,
)
from eigenarch.widths.search import expand_widths


def synthetic_dims(seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    values = (40, 30, 180, 90, 500, 150, 900, 300, 700)
    return {
        "backbone.body." + name: rng.randint(values[g.index] // 2, values[g.index])
        for g in width_groups()
        for unit in g.units
        for name in unit.producers + unit.consumers
        if not name.startswith("fc")
    }


def per_call_us(fn, number: int, repeat: int = 7) -> float:
    """Median over ``repeat`` runs of the time per call, in microseconds."""
    return statistics.median(
        t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)
    )


def cost_calls(dims: dict[str, int]) -> int:
    """How many cost evaluations one search (macs=resnet50) makes."""
    calls = []

    def cost(widths: tuple[int, ...]) -> int:
        calls.append(widths)
        return resnet_cost(widths).macs

    adjusted = adjust_widths(intrinsic_widths(dims))
    expand_widths(adjusted, resnet_cost(RESNET50_WIDTHS).macs, cost, 32)
    return len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    dims = synthetic_dims()
    result = search_widths(dims, "resnet50")
    figures = {
        "resnet_cost_us": per_call_us(lambda: resnet_cost(RESNET50_WIDTHS), 2000),
        "search_widths_us": per_call_us(lambda: search_widths(dims, "resnet50"), 20),
        "search_widths_params_us": per_call_us(
            lambda: search_widths(dims, "resnet50", "params"), 20
        ),
        "cost_calls_per_search": cost_calls(dims),
        "widths": list(result.widths),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"resnet_cost (ResNet-50):            {figures['resnet_cost_us']:8.1f} us per call")
    print(f"search_widths (macs=resnet50):      {figures['search_widths_us']:8.1f} us per call")
    print(
        f"search_widths (params=resnet50):    {figures['search_widths_params_us']:8.1f} us per call"
    )
    print(f"resnet_cost calls in one search:    {figures['cost_calls_per_search']:8d}")
    print(f"searched widths: {figures['widths']}")


if __name__ == "__main__":
    main()
