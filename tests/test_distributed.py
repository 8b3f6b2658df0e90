"""Joining the process group: each rank on its own GPU (issue 20.6)."""

from __future__ import annotations

import eigenarch.distributed as distributed


def test_each_cuda_rank_sets_its_own_device_before_joining(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda i: calls.append(("set", i)))
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **kw: calls.append(("join", backend)))  # fmt: skip
    distributed.init_distributed("cuda")
    assert calls == [("set", 1), ("join", "nccl")]  # the device first, then NCCL on it
    calls.clear()
    distributed.init_distributed("cpu")
    assert calls == [("join", "gloo")]
