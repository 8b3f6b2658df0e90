"""Evolutionary and random search over the paths of a search space (SPEC section 8).

Generation 0 is ``population`` random paths within the FLOPs limit. Each later generation
(evolution) takes the ``topk`` best paths evaluated so far as parents and breeds
``mutations`` children by mutation (each gene redrawn with probability ``mutation_prob``),
``crossovers`` children by uniform crossover of two parents, and fills the rest of the
population with random paths. A child over the FLOPs limit, already evaluated, or already in
the new population is redrawn, so no path is evaluated twice. Random search draws every
generation at random: the same number of evaluations, the baseline.

Every random draw comes from ``(seed, generation)``, and each generation's candidates,
FLOPs and fitness are saved after every evaluation round, so an interrupted search resumes
with no lost or repeated evaluation and ends as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eigenarch.distributed import is_main
from eigenarch.errors import EigenarchError
from eigenarch.io import atomic_path, atomic_write_json
from eigenarch.nas.shufflenet import CHOICES, SearchSpace, macs_range, path_macs

STRATEGIES = ("evolution", "random")
#: Draws allowed per wanted candidate before a generation settles for fewer.
MAX_TRIES = 200


@dataclass(frozen=True)
class SearchConfig:
    """Settings of a search; ``max_macs`` is the limit on a path's MACs at 224 x 224 (the
    DetNAS paper's "FLOPs", its ``--flops``)."""

    max_macs: float
    strategy: str = "evolution"
    population: int = 50
    topk: int = 10
    mutations: int = 20
    crossovers: int = 20
    mutation_prob: float = 0.1
    generations: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise EigenarchError(
                f"--strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}"
            )
        for name in ("population", "topk", "generations"):
            if getattr(self, name) < 1:
                raise EigenarchError(f"--{name} {getattr(self, name)}: expected at least 1")
        if self.mutations < 0 or self.crossovers < 0:
            raise EigenarchError(
                f"--mutations {self.mutations} / --crossovers {self.crossovers}: expected >= 0"
            )
        if self.mutations + self.crossovers > self.population:
            raise EigenarchError(
                f"--mutations {self.mutations} + --crossovers {self.crossovers} exceed "
                f"--population {self.population}"
            )
        if not 0 <= self.mutation_prob <= 1:
            raise EigenarchError(f"--mutation-prob {self.mutation_prob}: expected 0..1")
        if not self.max_macs > 0:
            raise EigenarchError(f"--flops {self.max_macs}: expected a positive number")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Candidate:
    """A path, its MACs, how it was made, and its fitness once evaluated."""

    path: tuple[int, ...]
    macs: int
    origin: str
    fitness: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": list(self.path)}


def _score(candidate: Candidate) -> float:
    f = candidate.fitness
    return f if f is not None and math.isfinite(f) else -math.inf


def top_k(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """The ``k`` fittest candidates, best first; ties go to the one evaluated first."""
    return sorted(candidates, key=_score, reverse=True)[:k]


@dataclass
class SearchResult:
    """The candidates of every generation, in evaluation order."""

    space: SearchSpace
    config: SearchConfig
    generations: list[list[Candidate]]

    @property
    def evaluated(self) -> list[Candidate]:
        return [c for population in self.generations for c in population if c.fitness is not None]

    @property
    def best(self) -> Candidate:
        return top_k(self.evaluated, 1)[0]

    def summary(self) -> list[dict[str, Any]]:
        """Per generation: evaluations, best / mean fitness, and the best so far."""
        rows, best = [], -math.inf
        for g, population in enumerate(self.generations):
            scores = [_score(c) for c in population if c.fitness is not None]
            if not scores:
                break
            best = max(best, *scores)
            rows.append(
                {
                    "generation": g,
                    "evaluated": len(scores),
                    "best": max(scores),
                    "mean": sum(scores) / len(scores),
                    "best_so_far": best,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "best": best.to_dict(),
            "strategy": self.config.strategy,
            "evaluations": len(self.evaluated),
            "search": self.config.to_dict(),
            "space": self.space.to_dict(),
            "generations": self.summary(),
        }


def next_population(
    space: SearchSpace, cfg: SearchConfig, generation: int, evaluated: Sequence[Candidate]
) -> list[Candidate]:
    """The new candidates of ``generation``, given every candidate evaluated before it."""
    rng = random.Random(cfg.seed * 1_000_003 + generation)
    seen = {c.path for c in evaluated}
    new: list[Candidate] = []

    def fill(count: int, draw: Callable[[], tuple[int, ...]], origin: str) -> None:
        target = len(new) + count
        for _ in range(count * MAX_TRIES):
            if len(new) >= target:
                return
            path = draw()
            if path in seen:
                continue
            macs = path_macs(space, path)
            if macs <= cfg.max_macs:
                seen.add(path)
                new.append(Candidate(path, macs, origin))

    def random_path() -> tuple[int, ...]:
        return tuple(rng.randrange(len(CHOICES)) for _ in range(space.num_blocks))

    if generation > 0 and cfg.strategy == "evolution":
        parents = [c.path for c in top_k(evaluated, cfg.topk)]

        def mutate() -> tuple[int, ...]:
            parent = rng.choice(parents)
            return tuple(
                rng.randrange(len(CHOICES)) if rng.random() < cfg.mutation_prob else gene
                for gene in parent
            )

        def crossover() -> tuple[int, ...]:
            a, b = rng.choice(parents), rng.choice(parents)
            return tuple(rng.choice(pair) for pair in zip(a, b, strict=True))

        fill(cfg.mutations, mutate, "mutation")
        fill(cfg.crossovers, crossover, "crossover")
    fill(cfg.population - len(new), random_path, "random")
    return new


def generation_file(out_dir: str | os.PathLike[str], generation: int) -> Path:
    return Path(out_dir) / "generations" / f"gen_{generation:03d}.json"


def load_generations(out_dir: str | os.PathLike[str]) -> list[list[Candidate]]:
    """The generations saved in ``out_dir`` (in order; stops at the first missing one)."""
    generations = []
    while (path := generation_file(out_dir, len(generations))).is_file():
        try:
            data = json.loads(path.read_text())
            generations.append(
                [
                    Candidate(tuple(c["path"]), int(c["macs"]), c["origin"], c["fitness"])
                    for c in data["candidates"]
                ]
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise EigenarchError(f"{path}: not a search generation file ({exc})") from None
    return generations


def _save_generation(out_dir: Path | None, generation: int, population: list[Candidate]) -> None:
    if out_dir is not None and is_main():
        atomic_write_json(
            generation_file(out_dir, generation),
            {"generation": generation, "candidates": [c.to_dict() for c in population]},
        )


def run_search(
    space: SearchSpace,
    cfg: SearchConfig,
    fitness: Callable[[list[tuple[int, ...]]], Sequence[float]],
    out_dir: str | os.PathLike[str] | None = None,
    chunk: int = 1,
    on_evaluated: Callable[[int, list[Candidate]], None] | None = None,
) -> SearchResult:
    """Run (or resume, from ``out_dir``'s saved generations) a search.

    Args:
        space: the search space.
        cfg: the strategy, sizes, FLOPs limit and seed.
        fitness: maps a list of paths to their fitness (higher is better); called with at
            most ``chunk`` paths at a time, never with a path evaluated before.
        out_dir: where ``generations/gen_XXX.json`` are kept (rank 0 writes).
        chunk: paths per ``fitness`` call (e.g. the number of ranks evaluating in parallel).
        on_evaluated: called with ``(generation, candidates)`` after each ``fitness`` call.
    """
    low, _ = macs_range(space)
    if cfg.max_macs < low:
        raise EigenarchError(
            f"--flops {cfg.max_macs:.4g}: below the {low} MACs of the smallest path of this space"
        )
    out = Path(out_dir) if out_dir is not None else None
    generations = load_generations(out) if out is not None else []
    if len(generations) > cfg.generations:
        raise EigenarchError(
            f"{out}: holds {len(generations)} generations, more than --generations "
            f"{cfg.generations}"
        )
    for g in range(cfg.generations):
        if g == len(generations):
            done = [c for population in generations for c in population]
            population = next_population(space, cfg, g, done)
            if not population and g == 0:
                raise EigenarchError(
                    f"--flops {cfg.max_macs:.4g}: random sampling found no path within the limit "
                    f"(the smallest path has {low} MACs)"
                )
            if not population:
                break  # every path within the limit has been evaluated
            generations.append(population)
            _save_generation(out, g, population)
        pending = [c for c in generations[g] if c.fitness is None]
        for start in range(0, len(pending), chunk):
            part = pending[start : start + chunk]
            scores = fitness([c.path for c in part])
            for candidate, score in zip(part, scores, strict=True):
                candidate.fitness = float(score)
            _save_generation(out, g, generations[g])
            if on_evaluated is not None:
                on_evaluated(g, part)
    return SearchResult(space, cfg, generations)


# --- reports ------------------------------------------------------------------------------

#: Colours of the choices in the plots: 3x3 blue, 5x5 / 7x7 orange, Xception dark blue.
CHOICE_COLOURS = ("#7fb3e0", "#f5a55a", "#d9661f", "#1f5f9e")


def _save_figure(figure, stem: Path) -> list[Path]:
    written = []
    for fmt in ("png", "svg"):
        target = stem.with_suffix("." + fmt)
        with atomic_path(target) as tmp:
            figure.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
        written.append(target)
    return written


def plot_fitness(result: SearchResult, stem: str | os.PathLike[str]) -> list[Path]:
    """Best / mean fitness per generation and best so far; writes ``stem``.png and .svg."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = result.summary()
    x = [r["generation"] for r in rows]
    figure = Figure(figsize=(6, 3.6))
    axes = figure.subplots()
    axes.plot(x, [r["best_so_far"] for r in rows], "-", color="black", label="best so far")
    axes.plot(x, [r["best"] for r in rows], "o-", color="#d9661f", label="generation best")
    axes.plot(x, [r["mean"] for r in rows], "s--", color="#1f5f9e", label="generation mean")
    axes.set_xlabel("generation")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("fitness (bbox AP)")
    axes.set_title(f"{result.config.strategy} search, {len(result.evaluated)} evaluations")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save_figure(figure, Path(stem))


def plot_choices(result: SearchResult, stem: str | os.PathLike[str]) -> list[Path]:
    """The best path block by block, grouped by stage, and the choice mix of the top paths.

    Like the paper's Figure 3: one box per block, coloured by choice (Xception boxes are
    taller: three times deeper); below, per stage, the share of each choice among the
    ``topk`` best paths. Writes ``stem``.png and .svg.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    space, best = result.space, result.best
    top = top_k(result.evaluated, result.config.topk)
    figure = Figure(figsize=(max(6, 0.35 * space.num_blocks + 2), 5))
    upper, lower = figure.subplots(2, 1, height_ratios=(1, 1.4))
    x, k, centres = 0.0, 0, []
    for depth in space.depths:
        start = x
        for _ in range(depth):
            choice = best.path[k]
            height = 1.0 if choice == 3 else 0.6
            upper.add_patch(
                Rectangle((x, (1 - height) / 2), 0.8, height, color=CHOICE_COLOURS[choice])
            )
            x, k = x + 1, k + 1
        centres.append((start + x - 0.2) / 2)
        x += 0.8
    upper.set_xlim(-0.5, x)
    upper.set_ylim(-0.1, 1.1)
    upper.set_xticks(centres, [f"stage {s}" for s in range(1, 5)])
    upper.set_yticks([])
    upper.set_title(
        f"best path {''.join(map(str, best.path))}: {best.macs / 1e6:.0f} M MACs, "
        f"fitness {best.fitness:.4f}"
    )
    shares = [[0.0] * len(CHOICES) for _ in range(4)]
    first = [sum(space.depths[:s]) for s in range(4)]
    for candidate in top:
        for s in range(4):
            for choice in candidate.path[first[s] : first[s] + space.depths[s]]:
                shares[s][choice] += 1 / (space.depths[s] * len(top))
    bottom = [0.0] * 4
    for c, name in enumerate(CHOICES):
        values = [shares[s][c] for s in range(4)]
        lower.bar(range(1, 5), values, bottom=bottom, color=CHOICE_COLOURS[c], label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    lower.set_xticks(range(1, 5), [f"stage {s}" for s in range(1, 5)])
    lower.set_ylabel(f"share among top {len(top)}")
    lower.set_ylim(0, 1)
    figure.legend(
        handles=[Patch(color=CHOICE_COLOURS[c], label=n) for c, n in enumerate(CHOICES)],
        loc="lower center",
        ncol=4,
        bbox_to_anchor=(0.5, -0.02),
    )
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return _save_figure(figure, Path(stem))
