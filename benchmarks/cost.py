"""Cost calls and whole width searches, per backbone (issue 13: a search under 10 s).

Run: ``.venv/bin/python benchmarks/cost.py`` (``--json`` for machine-readable output,
``--models a,b`` for a subset, ``--models timm`` for one model of each timm family
tried). For each backbone: the first trace (build the classifier,
one hooked forward at 224 px, Torch-Pruning's dependency graph, ties), one cost call on the
traced shapes, and a whole search from a cold start (trace + search) and warm (the trace
cached, as the CLI's second search in a process) on synthetic dims (every map of a group
jittered around a value), MACs budget = the backbone's own. Figures are medians of repeats.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
import timeit

import torch
from torch.utils.flop_counter import FlopCounterMode

from eigenarch.errors import EigenarchError
from eigenarch.models.backbone import BackboneOptions, parse_backbone
from eigenarch.models.builders import classifier_by_name
from eigenarch.widths import RESNET50_WIDTHS, graph_cost, resnet_cost, trace_model, width_ties
from eigenarch.widths.ias import group_maps

MODELS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "wide_resnet50_2",
    "mobilenet_v3_large", "regnet_y_400mf", "regnet_x_800mf", "regnet_y_8gf", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "convnext_tiny", "detnet59",
)  # fmt: skip


def synthetic_dims(graph, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    dims = {}
    for k, units in enumerate(group_maps(graph).units):
        value = 20 + (37 * k) % 400
        for producer, readers in units:
            dims[f"backbone.body.{producer}:out"] = rng.randint(value // 2, value)
            for reader in readers:
                dims[f"backbone.body.{reader}:in"] = rng.randint(value // 2, value)
    return dims


def per_call_us(fn, number: int, repeat: int = 7) -> float:
    """Median over ``repeat`` runs of the time per call, in microseconds."""
    return statistics.median(
        t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)
    )


#: timm families tried with ``--models timm`` (one model each; issue 21).
TIMM_MODELS = (
    "resnet50d", "resnext26ts", "seresnext26d_32x4d", "efficientnet_b0", "tf_efficientnetv2_b0",
    "mobilenetv3_large_100", "mobilenetv4_conv_small", "regnety_016", "regnetz_b16",
    "convnext_atto", "ghostnet_100", "mixnet_s", "rexnet_100", "hrnet_w18_small",
    "dla34", "cspresnet50", "res2net50_26w_4s", "densenet121", "dpn68", "vit_tiny_patch16_224",
)  # fmt: skip


def measure(name: str) -> dict:
    """One backbone's row; a backbone the graph cannot resize gives its one-line refusal."""
    try:
        return _measure(name)
    except EigenarchError as exc:
        return {"model": name, "refused": str(exc)}


def _measure(name: str) -> dict:
    norm = None if name.startswith(("convnext", "timm:")) else "bn"
    spec = parse_backbone(name, BackboneOptions(norm))
    start = time.perf_counter()  # what a first search in a process pays before searching
    graph = trace_model(classifier_by_name(name, norm), torch.zeros(1, 3, 224, 224))
    ties = width_ties(graph)
    trace_s = time.perf_counter() - start
    dims = synthetic_dims(graph)
    multiple = math.lcm(8, *(t.divisor for t in ties))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        classifier_by_name(name, norm).eval()(torch.zeros(1, 3, 224, 224))
    start = time.perf_counter()
    result, _ = spec.search(dims, "base", "macs", multiple, "in")  # caches its trace
    first_search_s = time.perf_counter() - start
    warm_ms = per_call_us(lambda: spec.search(dims, "base", "macs", multiple), 3, 5) / 1e3
    return {
        "model": name,
        "groups": len(graph.groups),
        "widths": len(ties),
        "layers": len(graph.layers),
        "trace_s": round(trace_s, 3),
        "cost_call_us": round(per_call_us(lambda: graph_cost(graph), 200), 1),
        "search_cold_s": round(first_search_s, 3),
        "search_warm_ms": round(warm_ms, 2),
        "base_gmacs": round(result.base_macs / 1e9, 3),
        "count_vs_flop_counter": round(result.base_macs / (counter.get_total_flops() / 2), 4),
        "searched_gmacs": round(result.macs / 1e9, 3),
        "params_m": [round(result.base_params / 1e6, 2), round(result.params / 1e6, 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated builders")
    args = parser.parse_args()
    names = TIMM_MODELS if args.models == "timm" else args.models.split(",")
    rows = [measure(f"timm:{n}" if args.models == "timm" else n) for n in names]
    resnet = per_call_us(lambda: resnet_cost(RESNET50_WIDTHS), 500)
    if args.json:
        print(json.dumps({"resnet_cost_us": resnet, "models": rows}))
        return
    print(f"resnet_cost (ResNet-50 nine widths): {resnet:.1f} us per call")
    print(f"{'model':20s} {'groups':>6s} {'widths':>6s} {'trace s':>8s} {'cost us':>8s} "
          f"{'cold s':>7s} {'warm ms':>8s}  GMACs / Mparams base->searched")  # fmt: skip
    for r in rows:
        if "refused" in r:
            print(f"{r['model']:20s} refused: {r['refused']}")
            continue
        print(f"{r['model']:20s} {r['groups']:6d} {r['widths']:6d} {r['trace_s']:8.2f} "
              f"{r['cost_call_us']:8.1f} {r['search_cold_s']:7.2f} {r['search_warm_ms']:8.2f}  "
              f"{r['base_gmacs']:.3f}->{r['searched_gmacs']:.3f}  "
              f"{r['params_m'][0]:.2f}->{r['params_m'][1]:.2f}  "
              f"count/flops {r['count_vs_flop_counter']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
