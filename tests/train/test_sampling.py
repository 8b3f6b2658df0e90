"""RPN / RoI sampling per image of the global batch, and each rank's share of the batches:
what makes 2 processes train as 1 (SPEC section 2)."""

from __future__ import annotations

import torch
from torchvision.models import detection
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

import eigenarch.train.loop as loop
from eigenarch.train.loop import IterationBatches
from eigenarch.train.sampling import ImageSeededSampler, image_seeded_samplers


def matched(seed: int) -> torch.Tensor:
    """An image's anchor labels as the sampler takes them: 1 positive, 0 negative, -1 ignored."""
    return torch.randint(-1, 2, (500,), generator=torch.Generator().manual_seed(seed))


def sampled(sampler, images, first, iteration=7):
    """The indices each image samples (positives, negatives) at one step of seed 3."""
    sampler.start(seed=3, iteration=iteration, first=first)
    pos, neg = sampler(images)
    return [(p.nonzero().flatten().tolist(), n.nonzero().flatten().tolist())
            for p, n in zip(pos, neg, strict=True)]  # fmt: skip


def test_each_image_samples_the_same_alone_or_in_a_batch():
    sampler = ImageSeededSampler(BalancedPositiveNegativeSampler(64, 0.25), salt=0)
    images = [matched(1), matched(2)]
    together = sampled(sampler, images, first=0)
    assert together == sampled(sampler, [images[0]], 0) + sampled(sampler, [images[1]], 1)
    assert all(len(p) == 16 and len(n) == 48 for p, n in together)  # 64 at 25 % positives
    assert together[0] != sampled(sampler, [images[0]], 1)[0]  # the image's index counts
    assert sampled(sampler, images, 0, iteration=8) != together  # and the iteration
    assert sampled(sampler, images, 0) == together  # the same step repeats
    state = torch.get_rng_state()
    sampled(sampler, images, 0)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone


def test_a_detectors_rpn_and_roi_samplers_are_replaced():
    model = detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    samplers = image_seeded_samplers(model)
    assert [s.salt for s in samplers] == [0, 1]
    assert model.rpn.fg_bg_sampler is samplers[0] and model.roi_heads.fg_bg_sampler is samplers[1]
    assert (samplers[0].batch_size_per_image, samplers[1].batch_size_per_image) == (256, 512)
    assert image_seeded_samplers(model) == samplers  # idempotent


def test_each_rank_takes_its_slice_of_the_one_process_batches(monkeypatch):
    data = [(k, None) for k in range(10)]  # image k, no target

    def batches(rank: int, world: int) -> list:
        monkeypatch.setattr(loop, "rank", lambda: rank)
        monkeypatch.setattr(loop, "world_size", lambda: world)
        found = IterationBatches(data, 4, 5, start=1, end=4, collate=lambda s: [i for i, _ in s])
        return [found[k] for k in range(len(found))]

    one = batches(0, 1)
    assert [sorted(b) for b in one[:2]] != [[0, 1, 2, 3], [4, 5, 6, 7]]  # shuffled per epoch
    assert [len(b) for b in one] == [4, 4, 4]
    for world in (2, 4):
        ranks = [batches(r, world) for r in range(world)]
        assert [sum((r[k] for r in ranks), []) for k in range(3)] == one
