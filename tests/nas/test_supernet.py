"""Supernet training (single path per step), held-out split, BN recalibration."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from eigenarch.data.coco import CocoDetection, collate_detection
from eigenarch.errors import EigenarchError
from eigenarch.models.detector import build_detector
from eigenarch.nas.shufflenet import ShuffleNetV2, choice_blocks, detnas_config, set_path
from eigenarch.nas.supernet import (
    PathSampling,
    holdout_split,
    recalibrate_bn,
    sample_path,
    subset,
    train_supernet,
)
from eigenarch.train.checkpoint import load_checkpoint
from eigenarch.train.engine import Hook, Trainer
from eigenarch.train.loop import IterationBatches
from eigenarch.train.pretrain import ClassifierTrainer
from eigenarch.train.rundir import RunDir

from .conftest import DETECTOR_KWARGS, TINY_SPACE

_CHOICE = re.compile(r"stage(\d)\.(\d+)\.choices\.(\d)\.")
FIRST = [0, 1, 2, 4]  # index of each stage's first block in the path


def _choice_of(name: str) -> tuple[int, int] | None:
    """``(block index in the path, choice)`` of a supernet parameter name, else None."""
    match = _CHOICE.search(name)
    if match is None:
        return None
    stage, index, choice = (int(g) for g in match.groups())
    return FIRST[stage - 1] + index, choice


def test_paths_are_uniform_and_depend_on_seed_and_iteration_only():
    paths = [sample_path(TINY_SPACE, 0, it) for it in range(2000)]
    assert paths == [sample_path(TINY_SPACE, 0, it) for it in range(2000)]  # any rank, any time
    assert sample_path(TINY_SPACE, 1, 5) != sample_path(TINY_SPACE, 0, 5)
    counts = Counter(choice for path in paths for choice in path)
    assert all(0.23 < counts[c] / 10_000 < 0.27 for c in range(4))
    assert len(set(paths)) > 840  # of 1024; uniform draws give 879 on average


def test_only_the_sampled_path_is_updated(supernet_config, tmp_path):
    train_supernet(supernet_config(iters=4))
    run = tmp_path / "supernet"
    states = {it: load_checkpoint(path) for it, path in RunDir(run).checkpoints()}
    assert sorted(states) == [0, 1, 2, 3, 4]
    config = states[4]["config"]
    names = [name for name, _ in build_detector(**config).named_parameters()]
    kept_momentum = 0
    for it in (1, 2, 3):  # iteration `it` turns checkpoint `it` into `it + 1`
        path = sample_path(TINY_SPACE, 0, it)
        before, after = states[it], states[it + 1]
        momentum = [
            {k: v["momentum_buffer"] for k, v in s["optimizer"]["state"].items()}
            for s in (before, after)
        ]
        for index, name in enumerate(names):
            where = _choice_of(name)
            if where is None:
                continue
            old, new = before["model"][name], after["model"][name]
            if path[where[0]] == where[1]:  # on the path: trained
                if name.endswith("weight") and old.dim() == 4:
                    assert not torch.equal(old, new), name
                assert index in momentum[1], name
            else:  # off the path: no gradient, momentum or weight-decay update
                assert torch.equal(old, new), name
                assert (index in momentum[0]) == (index in momentum[1]), name
                if index in momentum[0]:
                    assert torch.equal(momentum[0][index], momentum[1][index]), name
                    kept_momentum += 1
        for name, value in before["model"].items():  # BN statistics off the path stay too
            where = _choice_of(name)
            if where is not None and path[where[0]] != where[1] and "running" in name:
                assert torch.equal(value, after["model"][name]), name
    assert kept_momentum > 0  # some off-path choices had been trained before
    payload = states[4]
    assert payload["config"]["backbone"]["path"] is None
    assert len(payload["data"]["holdout_ids"]) == 4


def test_holdout_split_is_fixed_by_seed():
    ids = list(range(100, 200))
    train, held = holdout_split(ids, 0.1, seed=3)
    assert len(held) == 10 and sorted(train + held) == ids and not set(train) & set(held)
    assert holdout_split(ids, 0.1, seed=3) == (train, held)
    assert holdout_split(ids, 10, seed=4)[1] != held
    assert len(holdout_split(ids, 37, seed=0)[1]) == 37
    for bad in (0, 100, 2.5, -1, 0.001):
        with pytest.raises(EigenarchError, match="--holdout"):
            holdout_split(ids, bad, seed=0)


def test_bn_recalibration_is_a_plain_average_over_the_subset(shapes_root):
    torch.manual_seed(0)
    model = build_detector(backbone=ShuffleNetV2(TINY_SPACE), num_classes=9, **DETECTOR_KWARGS)
    set_path(model, (1, 3, 0, 2, 1))
    dataset = subset(CocoDetection.from_root(shapes_root, "train"), [1, 2, 3, 4])
    stem_conv, stem_bn = model.backbone.body.stem[0], model.backbone.body.stem[1]
    means, variances = [], []
    with torch.no_grad():
        for start in (0, 2):
            images, _ = collate_detection([dataset[start], dataset[start + 1]])
            x = stem_conv(model.eval().transform(images)[0].tensors)
            means.append(x.mean((0, 2, 3)))
            variances.append(x.transpose(0, 1).flatten(1).var(1, unbiased=True))
    for module in model.modules():  # stale statistics must not matter
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.fill_(5.0)
    model.train()
    recalibrate_bn(model, dataset, batch_size=2)
    assert model.training and stem_bn.momentum == 0.1  # restored
    expected_mean = (means[0] + means[1]) / 2  # not 0.1-momentum smoothing
    assert torch.allclose(stem_bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(stem_bn.running_var, (variances[0] + variances[1]) / 2, rtol=1e-4)
    active = choice_blocks(model)[1].choices[3].main[1]
    first = active.running_mean.clone()
    recalibrate_bn(model, dataset, batch_size=2)
    assert torch.equal(active.running_mean, first) and int(active.num_batches_tracked) == 2


def test_sampled_paths_continue_after_a_resume():
    supernet = ShuffleNetV2(TINY_SPACE, num_classes=3)
    samples = [(torch.zeros(3, 32, 32), 0), (torch.ones(3, 32, 32), 1)]
    batches = IterationBatches(samples, 2, 2, start=10, end=12, collate=default_collate)
    paths = []

    class Paths(Hook):
        def after_step(self, trainer):
            paths.append(tuple(b.active for b in choice_blocks(supernet)))

    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.01)
    hooks = [PathSampling(TINY_SPACE), Paths()]
    trainer = ClassifierTrainer(supernet, optimizer, batches, 12, hooks, torch.device("cpu"), 2)
    trainer.train()
    assert paths == [sample_path(TINY_SPACE, 2, step) for step in (10, 11)]


def test_supernet_training_refuses_a_single_path(supernet_config):
    with pytest.raises(EigenarchError, match="needs a supernet description"):
        train_supernet(supernet_config(backbone=detnas_config(TINY_SPACE, (0, 1, 2, 3, 0))))
    with pytest.raises(EigenarchError, match="--holdout 12"):
        train_supernet(supernet_config(name="all", holdout=12))


def test_a_killed_supernet_run_resumes_exactly(supernet_config, tmp_path, monkeypatch):
    train_supernet(supernet_config("whole", iters=4))
    original = Trainer.run_step

    def killed_at_iteration_3(self, images, targets):
        if self.iter == 2:
            raise KeyboardInterrupt
        original(self, images, targets)

    monkeypatch.setattr(Trainer, "run_step", killed_at_iteration_3)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(supernet_config("killed", iters=4))
    monkeypatch.setattr(Trainer, "run_step", original)
    train_supernet(supernet_config("killed", seed=9), resume=True)  # saved settings win
    losses = [
        [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").open()]
        for run in ("whole", "killed")
    ]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    whole, killed = (
        load_checkpoint(tmp_path / run / "checkpoints" / "iter_0000004.pt")["model"]
        for run in ("whole", "killed")
    )
    assert all(torch.equal(value, killed[key]) for key, value in whole.items())
