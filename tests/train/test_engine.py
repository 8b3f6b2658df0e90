"""The Trainer's hook order, after_train on a failure, and after_backward's place."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from eigenarch.train.checkpoint import load_checkpoint
from eigenarch.train.engine import Checkpointer, Hook, Trainer
from eigenarch.train.hooks import MetricsWriter, PeriodicCheckpointer, ProgressBar


class _Batches(torch.utils.data.Dataset):
    start = 0

    def __len__(self) -> int:
        return 3

    def __getitem__(self, k: int):
        return [torch.ones(2)], [{"y": torch.tensor(1.0)}]


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, images, targets):
        return {"loss_sq": ((self.w - images[0]) ** 2).sum()}


class Recorder(Hook):
    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[str] = []
        self.grads: list[float] = []
        self.fail_at = fail_at

    def before_train(self, trainer):
        self.calls.append("before_train")

    def before_step(self, trainer):
        self.calls.append(f"before_step {trainer.iter}")
        if trainer.iter == self.fail_at:
            raise KeyboardInterrupt

    def after_backward(self, trainer):
        self.calls.append(f"after_backward {trainer.iter}")
        self.grads.append(float(trainer.model.w.grad.abs().sum()))
        if trainer.iter == 1:
            trainer.model.w.grad = None  # no update at this step

    def after_step(self, trainer):
        self.calls.append(f"after_step {trainer.iter}")

    def after_train(self, trainer):
        self.calls.append("after_train")


def _trainer(hook: Hook) -> Trainer:
    model = _Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.25)
    return Trainer(model, optimizer, _Batches(), 3, [hook], torch.device("cpu"), seed=0)


def test_hooks_run_in_order_and_after_backward_sees_the_gradients():
    hook = Recorder()
    trainer = _trainer(hook)
    assert trainer.train() is None
    steps = [f"{what} {k}" for k in range(3) for what in ("before_step", "after_backward",
                                                           "after_step")]  # fmt: skip
    assert hook.calls == ["before_train", *steps, "after_train"]
    assert hook.grads[0] == pytest.approx(4.0)  # d/dw sum (w - 1)^2 at w = 0
    # step 0 moved w to 0.5; step 1's gradient was dropped, so step 2 starts from 0.5
    assert hook.grads[2] == pytest.approx(hook.grads[1])
    assert torch.allclose(trainer.model.w.detach(), torch.full((2,), 0.75))


def test_after_train_runs_when_training_stops():
    hook = Recorder(fail_at=1)
    with pytest.raises(KeyboardInterrupt):
        _trainer(hook).train()
    assert hook.calls == ["before_train", "before_step 0", "after_backward 0", "after_step 0",
                          "before_step 1", "after_train"]  # fmt: skip


def test_the_checkpointer_writes_payload_weights_optimizer_and_iteration(tmp_path):
    checkpointer = Checkpointer(
        {"format": "test", "data": {"k": 1}}, lambda i: tmp_path / f"{i}.pt"
    )
    checkpointer.resumed_from(2)
    assert checkpointer.last is None  # no file of iteration 2: nothing to fall back on
    model = _Model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.25), _Batches(), 3,
                      [PeriodicCheckpointer(2)], torch.device("cpu"), 0, checkpointer)  # fmt: skip
    trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.pt", "3.pt"]  # every 2, the last
    saved = load_checkpoint(tmp_path / "3.pt", expect="test")
    assert saved["format"] == "test" and saved["data"] == {"k": 1} and saved["iteration"] == 3
    assert torch.equal(saved["model"]["w"], model.w.detach())
    assert "state" in saved["optimizer"] and trainer.last_checkpoint() == tmp_path / "3.pt"
    resumed = Checkpointer({}, lambda i: tmp_path / f"{i}.pt")
    resumed.resumed_from(2)
    assert resumed.last == tmp_path / "2.pt"
    assert _trainer(Recorder()).last_checkpoint() is None  # no checkpointer: none written


def test_the_metrics_file_and_the_bar_are_separate_hooks(tmp_path):
    log = tmp_path / "metrics.jsonl"
    trainer = _trainer(MetricsWriter(log, every=2))
    trainer.train()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 3]  # every 2 and the last
    assert set(records[0]) == {"iteration", "loss", "loss_sq", "lr", "time"}
    _trainer(ProgressBar("bar only")).train()  # a bar writes no file
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
