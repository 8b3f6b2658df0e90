"""Evolutionary and random search on synthetic fitness functions of known optimum."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from eigenarch.errors import EigenarchError
from eigenarch.nas.evolution import SearchConfig, run_search
from eigenarch.nas.shufflenet import SPACES, macs_range, path_macs

SPACE = SPACES[1]
SMALL = dict(population=20, topk=5, mutations=8, crossovers=8, generations=10)


def target_path(seed: int, limit: float) -> tuple[int, ...]:
    rng = random.Random(seed)
    while True:
        path = tuple(rng.randrange(4) for _ in range(SPACE.num_blocks))
        if path_macs(SPACE, path) <= limit:
            return path


class Matches:
    """Fitness = choices equal to a hidden target path (optimum: all 20); records calls."""

    def __init__(self, target: tuple[int, ...]) -> None:
        self.target, self.calls = target, []

    def __call__(self, paths):
        self.calls += paths
        return [sum(a == b for a, b in zip(p, self.target, strict=True)) for p in paths]


def test_evolution_beats_random_search_with_the_same_evaluations():
    limit = 330e6  # binding: about half of all paths are over it
    gaps = []
    for seed in range(5):
        target = target_path(100 + seed, limit)
        best = {}
        for strategy in ("evolution", "random"):
            fitness = Matches(target)
            cfg = SearchConfig(max_macs=limit, strategy=strategy, seed=seed, **SMALL)
            result = run_search(SPACE, cfg, fitness)
            assert len(fitness.calls) == 200 == len(set(fitness.calls))  # none evaluated twice
            assert all(path_macs(SPACE, p) <= limit for p in fitness.calls)
            best[strategy] = result.best.fitness
        assert best["evolution"] > best["random"]
        gaps.append(SPACE.num_blocks - best["evolution"])
    assert sum(gaps) / len(gaps) <= 5  # close to the optimum (20) within 200 evaluations


def test_generations_are_made_as_the_spec_says():
    limit = 340e6
    cfg = SearchConfig(max_macs=limit, population=50, generations=3, seed=1)  # the paper's sizes
    result = run_search(SPACE, cfg, Matches(target_path(1, limit)))
    assert [len(g) for g in result.generations] == [50, 50, 50]
    assert Counter(c.origin for c in result.generations[0]) == {"random": 50}
    for population in result.generations[1:]:
        assert Counter(c.origin for c in population) == {
            "mutation": 20,
            "crossover": 20,
            "random": 10,
        }
    assert all(c.macs == path_macs(SPACE, c.path) <= limit for c in result.evaluated)
    summary = result.summary()
    assert [row["evaluated"] for row in summary] == [50, 50, 50]
    assert summary[-1]["best_so_far"] == result.best.fitness
    so_far = [row["best_so_far"] for row in summary]
    assert so_far == sorted(so_far)


def test_mutation_changes_about_one_gene_in_ten():
    cfg = SearchConfig(max_macs=1e12, population=50, generations=2, seed=3)
    result = run_search(SPACE, cfg, Matches(target_path(3, 1e12)))
    parents = {c.path for c in result.generations[0]}
    changed = [
        min(sum(a != b for a, b in zip(child.path, p, strict=True)) for p in parents)
        for child in result.generations[1]
        if child.origin == "mutation"
    ]
    # redrawn with probability 0.1, a gene changes with 0.075: 20 children x 20 genes change
    # Binomial(400, 0.075) genes, mean 30, sd 5.3 (fewer: the nearest parent counts). Seed 3
    # gives 38, within 1.5 sd; a per-gene probability of 0.2 would give about 60.
    assert (sum(changed), len(changed)) == (38, 20)


def test_same_seed_same_search_and_random_search_is_different():
    target = target_path(5, 340e6)
    cfg = SearchConfig(340e6, seed=2, **SMALL)
    runs = [[c.path for c in run_search(SPACE, cfg, Matches(target)).evaluated] for _ in range(2)]
    assert runs[0] == runs[1]
    other = run_search(SPACE, SearchConfig(340e6, seed=3, **SMALL), Matches(target)).evaluated
    assert [c.path for c in other] != runs[0]


def test_an_interrupted_search_resumes_without_lost_or_repeated_evaluations(tmp_path):
    target = target_path(7, 340e6)
    cfg = SearchConfig(max_macs=340e6, population=6, topk=2, mutations=2, crossovers=2,
                       generations=4, seed=4)  # fmt: skip
    whole = run_search(SPACE, cfg, Matches(target), tmp_path / "whole", chunk=4)

    class Killed(Exception):
        pass

    calls = []

    def dies_after_three_chunks(paths):
        if len(calls) == 3:
            raise Killed
        calls.append(paths)
        return Matches(target)(paths)

    with pytest.raises(Killed):
        run_search(SPACE, cfg, dies_after_three_chunks, tmp_path / "killed", chunk=4)
    saved = json.loads((tmp_path / "killed" / "generations" / "gen_001.json").read_text())
    assert sum(c["fitness"] is not None for c in saved["candidates"]) == 4  # chunks 4, 2, 4
    rest = Matches(target)
    resumed = run_search(SPACE, cfg, rest, tmp_path / "killed", chunk=4)
    done = [p for chunk in calls for p in chunk]
    assert len(rest.calls) == 24 - 10 and not set(rest.calls) & set(done)
    assert [c.to_dict() for c in resumed.evaluated] == [c.to_dict() for c in whole.evaluated]
    for g in range(4):
        name = f"generations/gen_{g:03d}.json"
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text()


def test_a_tiny_space_runs_out_of_new_paths():
    from eigenarch.nas.shufflenet import SearchSpace

    space = SearchSpace(8, (16, 32, 48, 64), (1, 1, 1, 1))  # 4^4 = 256 paths
    cfg = SearchConfig(max_macs=1e12, population=100, topk=5, mutations=20, crossovers=20,
                       generations=5, seed=0)  # fmt: skip
    result = run_search(space, cfg, lambda paths: [sum(p) for p in paths])
    assert len(result.evaluated) == len({c.path for c in result.evaluated}) == 256
    assert result.best.path == (3, 3, 3, 3)


def test_bad_settings_are_one_line_errors():
    low, _ = macs_range(SPACE)
    with pytest.raises(EigenarchError, match="below the .* MACs of the smallest path"):
        run_search(SPACE, SearchConfig(max_macs=low - 1), Matches((0,) * 20))
    with pytest.raises(EigenarchError, match="--strategy 'grid'"):
        SearchConfig(max_macs=3e8, strategy="grid")
    with pytest.raises(EigenarchError, match="exceed --population 30"):
        SearchConfig(max_macs=3e8, population=30)
    with pytest.raises(EigenarchError, match="--mutation-prob 1.5"):
        SearchConfig(max_macs=3e8, mutation_prob=1.5)
    with pytest.raises(EigenarchError, match="--topk 0"):
        SearchConfig(max_macs=3e8, topk=0)


def test_a_search_saved_with_the_old_flops_field_resumes(tmp_path):
    from eigenarch.nas.supernet import DetectionSearch, _load_search_settings

    settings = DetectionSearch("m.pt", str(tmp_path), SearchConfig(max_macs=3e8, seed=4))
    saved = settings.to_dict()
    assert saved["search"]["max_macs"] == 3e8
    saved["search"]["flops"] = saved["search"].pop("max_macs")
    (tmp_path / "search.json").write_text(json.dumps(saved))
    assert _load_search_settings(tmp_path) == settings
