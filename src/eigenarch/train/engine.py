"""The training engine (detectron2 style): :class:`Trainer` runs SGD steps, calling
:class:`Hook` methods around each; :class:`Checkpointer` writes checkpoints.

A hook overrides any of ``before_train``, ``before_step``, ``after_backward``,
``after_step`` and ``after_train``; each receives the :class:`Trainer`, whose ``iter`` is
the iteration being run (0-based), ``max_iter`` the run's length, ``losses`` the last
step's losses and ``metrics`` what the step logs (:meth:`Trainer.step_metrics`; evaluators
add theirs). ``after_train`` runs also when training stops on an error or an
interruption: close files and bars there, do no work that needs a finished run. The
standard hooks are in :mod:`eigenarch.train.hooks`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eigenarch.distributed import (
    barrier,
    is_distributed,
    is_main,
    mean_over_ranks,
    rank,
    world_size,
)
from eigenarch.errors import EigenarchError
from eigenarch.train.checkpoint import save_checkpoint
from eigenarch.train.sampling import image_seeded_samplers


class Hook:
    """Base hook: every method does nothing; override the ones you need."""

    #: Whether the steps under this hook leave some parameters without a gradient (a
    #: supernet's paths): DistributedDataParallel must then look for them.
    unused_parameters = False

    def before_train(self, trainer: Trainer) -> None:
        """Called once before the first iteration (also after a resume)."""

    def before_step(self, trainer: Trainer) -> None:
        """Called before each iteration."""

    def after_backward(self, trainer: Trainer) -> None:
        """Called after each backward pass, before the optimizer step (change gradients)."""

    def after_step(self, trainer: Trainer) -> None:
        """Called after each iteration, with ``trainer.losses`` set."""

    def after_train(self, trainer: Trainer) -> None:
        """Called once when training ends: after the last iteration, or on a failure."""


def finite_on_all_ranks(loss: torch.Tensor) -> bool:
    """Whether ``loss`` is finite on every rank (one all-reduce under ``torch.distributed``),
    so that every rank stops together, before any weight is touched."""
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    if is_distributed():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())


class Trainer:
    """Runs SGD steps ``batches.start`` .. ``max_iter - 1`` of a model, calling hooks around
    each step.

    Override :meth:`compute_losses` for another model (a classifier's cross-entropy; a
    detector's own loss dict here), :meth:`run_step` for another step; add behaviour with
    :class:`Hook` subclasses (``before_step`` to pick a supernet's path, ``after_backward``
    to change gradients before the update). The :class:`Checkpointer` writes checkpoints.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: Any,  # an IterationBatches
        max_iter: int,
        hooks: Sequence[Hook],
        device: torch.device,
        seed: int,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.model, self.optimizer, self.batches = model, optimizer, batches
        self.max_iter, self.hooks, self.device, self.seed = max_iter, list(hooks), device, seed
        self.checkpointer = checkpointer
        self.iter = batches.start
        self.losses: dict[str, float] = {}
        self.metrics: dict[str, Any] = {}  # the step's logged values (hooks add to them)
        self.data_time = self.step_time = 0.0  # seconds of the step: waiting for data, run
        self.samplers = image_seeded_samplers(model)
        if checkpointer is not None:
            checkpointer.resumed_from(batches.start)

    def train(self, workers: int = 0) -> None:
        """Run from ``batches.start`` to ``max_iter``; every hook's ``after_train`` runs
        however the loop ends (a finished run, an error, Ctrl-C)."""
        loader = torch.utils.data.DataLoader(
            self.batches,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=2 if workers else None,
        )
        self.model.train()
        for hook in self.hooks:
            hook.before_train(self)
        try:
            self.started = fetched = time.perf_counter()
            for iteration, (images, targets) in enumerate(loader, start=self.batches.start):
                self.iter, self.data_time = iteration, time.perf_counter() - fetched
                for hook in self.hooks:
                    hook.before_step(self)
                started = time.perf_counter()
                self.run_step(images, targets)
                self.step_time = time.perf_counter() - started
                self.metrics = self.step_metrics()
                for hook in self.hooks:
                    hook.after_step(self)
                fetched = time.perf_counter()
        finally:
            for hook in self.hooks:
                hook.after_train(self)

    def step_metrics(self) -> dict[str, Any]:
        """What a step logs (``metrics.jsonl``'s line; hooks may add to it): the iteration
        done, the losses averaged over ranks (every rank takes part), the learning rate and
        the seconds since training started."""
        return {
            "iteration": self.iter + 1,
            **mean_over_ranks(self.losses, self.device),
            "lr": self.optimizer.param_groups[0]["lr"],
            "time": round(time.perf_counter() - self.started, 3),
        }

    def compute_losses(self, images: Any, targets: Any) -> dict[str, torch.Tensor]:
        """The losses of one batch, to be summed and minimised: a detector's, from lists of
        images and targets. Override for another model."""
        images = [image.to(self.device) for image in images]
        targets = [
            {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()}
            for t in targets
        ]
        return self.model(images, targets)

    def run_step(self, images: Any, targets: Any) -> None:
        """One SGD step: seed the model's sampling, forward, check, backward, update."""
        # RPN / RoI sampling: seeded per image of the global batch; anything else random in
        # the model (dropout) draws from the global generator, seeded per iteration and rank.
        for sampler in self.samplers:
            sampler.start(self.seed, self.iter, rank() * len(images))
        torch.manual_seed(self.seed * 1_000_003 + self.iter * world_size() + rank())
        losses = self.compute_losses(images, targets)
        total = sum(losses.values())
        # Stop every rank if any rank's loss is not finite, before the weights are touched.
        if not finite_on_all_ranks(total):
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            raise EigenarchError(
                f"non-finite loss at iteration {self.iter + 1} ({parts}); stopped, the last "
                f"good checkpoint is kept: {self.last_checkpoint() or 'none'}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for hook in self.hooks:
            hook.after_backward(self)
        self.optimizer.step()
        self.losses = {
            "loss": float(total.detach()),
            **{k: float(v.detach()) for k, v in losses.items()},
        }

    def save_checkpoint(self, iteration: int) -> None:
        """Write the checkpoint of ``iteration`` (:meth:`Checkpointer.save`), if any."""
        if self.checkpointer is not None:
            self.checkpointer.save(self.model, self.optimizer, iteration)

    def last_checkpoint(self) -> Path | None:
        """The last checkpoint written (or resumed from), if any."""
        return self.checkpointer.last if self.checkpointer is not None else None


class Checkpointer:
    """Writes a run's checkpoints: ``payload`` plus the weights, the optimizer and the
    iteration, at ``file_of(iteration)``; rank 0 writes, every rank waits for it."""

    def __init__(self, payload: dict[str, Any], file_of: Callable[[int], Path]) -> None:
        self.payload, self.file_of = payload, file_of
        self.last: Path | None = None

    def resumed_from(self, iteration: int) -> None:
        """A run resumed at ``iteration``: its checkpoint, if there, is the last one."""
        path = self.file_of(iteration) if iteration else None
        self.last = path if path is not None and path.is_file() else None

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int) -> Path:
        path = self.file_of(iteration)
        if is_main():
            model = model.module if hasattr(model, "module") else model
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iteration": iteration,
            }
            save_checkpoint(path, {**self.payload, **state})
        self.last = path
        barrier()
        return path
