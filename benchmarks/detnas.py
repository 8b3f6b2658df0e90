"""DetNAS end to end on the shapes set, and evolution vs. random search on a known optimum.

Part 1 (``synthetic``): the paper's search sizes (population 50, top-k 10, 20 mutations, 20
crossovers, 20 generations = 1,000 evaluations) on a fitness of known optimum: the number of
choices equal to a hidden target path within the FLOPs limit (optimum = number of blocks).
Evolution and random search get the same seeds and the same number of evaluations.

Part 2 (``pipeline``): the real commands on a generated shapes set (search space 1 at full
width, 128 px images): ``detnas supernet`` -> ``detnas search`` (evolution, then random with
the same budget, same supernet) -> ``detnas retrain`` of both best paths, evaluated on the val
split that the search never saw. Every command runs with ``OMP_NUM_THREADS=1``.

    python benchmarks/detnas.py [--skip-pipeline] [--iters 1000] [--out runs/detnas-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from eigenarch.data.shapes import ShapesConfig, generate_shapes
from eigenarch.nas.evolution import SearchConfig, run_search
from eigenarch.nas.shufflenet import SPACES, path_macs

DETECTOR = [
    "--gn-groups", "16", "--fpn-channels", "64", "--head-channels", "64",
    "--representation", "256", "--min-size", "128", "--max-size", "128",
    "--anchor-sizes", "16,32,64,128,256", "--roi-batch", "128", "--rpn-batch", "128",
    "--workers", "1", "--batch-size", "4", "--lr", "0.02",
]  # fmt: skip


def synthetic(seeds: int = 10) -> dict:
    """Best fitness (matching choices) of evolution and random search, per space."""
    out = {}
    for space_id, limit in ((1, 330e6), (2, 1.3e9)):
        space = SPACES[space_id]
        best = {"evolution": [], "random": []}
        seconds = {"evolution": 0.0, "random": 0.0}
        for seed in range(seeds):
            rng = random.Random(1000 + seed)
            while True:
                target = tuple(rng.randrange(4) for _ in range(space.num_blocks))
                if path_macs(space, target) <= limit:
                    break

            def fitness(paths, target=target):
                return [sum(a == b for a, b in zip(p, target, strict=True)) for p in paths]

            for strategy in best:
                start = time.perf_counter()
                cfg = SearchConfig(flops=limit, strategy=strategy, seed=seed)
                result = run_search(space, cfg, fitness)
                seconds[strategy] += time.perf_counter() - start
                best[strategy].append(result.best.fitness)
        out[f"space{space_id}"] = {
            "blocks": space.num_blocks,
            "flops_limit": limit,
            "evaluations": 1000,
            "mean_best": {k: statistics.mean(v) for k, v in best.items()},
            "best_per_seed": best,
            "evolution_wins": sum(e > r for e, r in zip(*best.values(), strict=True)),
            "search_seconds_per_run": {k: v / seeds for k, v in seconds.items()},
        }
    return out


def run(*args: str) -> float:
    """Run ``eigenarch ARGS`` with one intra-op thread; returns the wall time in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "eigenarch", *args], env=env, check=True)
    return time.perf_counter() - start


def pipeline(out: Path, iters: int, population: int, generations: int) -> dict:
    data = out / "data"
    if not (data / "annotations").is_dir():
        generate_shapes(data, ShapesConfig(train=320, val=100, size=128, seed=0))
    times = {}
    supernet = out / "supernet"
    times["supernet"] = run(
        "detnas", "supernet", "--data", str(data), "--out", str(supernet), "--space", "1",
        "--holdout", "40", "--iters", str(iters), "--checkpoint-every", str(iters), *DETECTOR,
    )  # fmt: skip
    checkpoint = supernet / "checkpoints" / f"iter_{iters:07d}.pt"
    topk = max(2, population // 5)
    children = population * 2 // 5
    results = {}
    for strategy in ("evolution", "random"):
        folder = out / f"search-{strategy}"
        times[f"search_{strategy}"] = run(
            "detnas", "search", "--supernet", str(checkpoint), "--out", str(folder),
            "--strategy", strategy, "--flops", "330M", "--population", str(population),
            "--topk", str(topk), "--mutations", str(children), "--crossovers", str(children),
            "--generations", str(generations), "--bn-images", "32", "--batch-size", "4",
        )  # fmt: skip
        result = json.loads((folder / "result.json").read_text())
        retrain = out / f"retrain-{strategy}"
        times[f"retrain_{strategy}"] = run(
            "detnas", "retrain", "--path", str(folder), "--data", str(data), "--out",
            str(retrain), "--iters", str(iters), "--checkpoint-every", str(iters), *DETECTOR,
        )  # fmt: skip
        metrics = json.loads((retrain / "metrics.json").read_text())
        results[strategy] = {
            "best_path": result["best_path"],
            "macs": result["best"]["macs"],
            "fitness_heldout_ap": result["best"]["fitness"],
            "generations": result["generations"],
            "retrained_val_ap": metrics["bbox"]["AP"],
            "retrained_val_ap50": metrics["bbox"]["AP50"],
        }
    return {"iters": iters, "population": population, "generations": generations,
            "seconds": times, "results": results}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/detnas-bench"))
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    report = {"synthetic": synthetic()}
    print(json.dumps(report, indent=2), flush=True)
    if not args.skip_pipeline:
        args.out.mkdir(parents=True, exist_ok=True)
        report["pipeline"] = pipeline(args.out, args.iters, args.population, args.generations)
        (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["pipeline"], indent=2))


if __name__ == "__main__":
    main()
