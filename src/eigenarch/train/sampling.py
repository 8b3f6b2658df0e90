"""RPN / RoI sampling that does not depend on the number of processes.

torchvision's :class:`BalancedPositiveNegativeSampler` draws every image's positives and
negatives from the global generator, one image after another: a rank's draws depend on how
many images came before it in its own batch, so 2 processes differ from 1. Here each image
draws from a generator seeded by ``(seed, iteration, the image's index in the global batch,
the sampler, the call)``, so any number of processes samples the same anchors and
proposals (SPEC section 2: results equal one process).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

_MIX = 1_000_003


class ImageSeededSampler(BalancedPositiveNegativeSampler):
    """A torchvision sampler whose draws for each image are seeded by its global index.

    :meth:`start` names the step: ``first`` is the global index of this process's first
    image. Before any :meth:`start` it draws as torchvision's does.
    """

    def __init__(self, sampler: BalancedPositiveNegativeSampler, salt: int) -> None:
        super().__init__(sampler.batch_size_per_image, sampler.positive_fraction)
        self.salt = salt
        self.step: tuple[int, int, int] | None = None
        self.calls = 0

    def start(self, seed: int, iteration: int, first: int) -> None:
        self.step, self.calls = (seed, iteration, first), 0

    def __call__(self, matched_idxs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        if self.step is None:
            return super().__call__(matched_idxs)
        seed, iteration, first = self.step
        positives, negatives = [], []
        for j, matched in enumerate(matched_idxs):
            key = (((seed * _MIX + iteration) * _MIX + first + j) * _MIX + self.salt) * 64
            devices = [matched.device] if matched.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed((key + self.calls) % 2**63)
                (pos,), (neg,) = super().__call__([matched])
            positives.append(pos)
            negatives.append(neg)
        self.calls += 1
        return positives, negatives


def image_seeded_samplers(model: nn.Module) -> list[ImageSeededSampler]:
    """Replace every module's ``fg_bg_sampler`` (a detector's RPN and RoI heads) by an
    :class:`ImageSeededSampler`, in place; the samplers, in module order."""
    samplers = []
    for module in model.modules():
        sampler = getattr(module, "fg_bg_sampler", None)
        if isinstance(sampler, BalancedPositiveNegativeSampler):
            if not isinstance(sampler, ImageSeededSampler):
                sampler = ImageSeededSampler(sampler, salt=len(samplers))
                module.fg_bg_sampler = sampler
            samplers.append(sampler)
    return samplers
