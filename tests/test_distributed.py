"""Joining the process group: each rank on its own GPU (issue 20.6); SIGTERM under torchrun."""

from __future__ import annotations

from contextlib import ExitStack

import eigenarch.distributed as distributed
from eigenarch.errors import Terminated


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


def test_sigterm_under_torchrun_names_the_rank_and_where_to_resume(monkeypatch):
    def stopped(*hints):
        """The Terminated that leaves ``lost_rank_as_error`` blocks nested with ``hints``."""
        try:
            with ExitStack() as blocks:
                for hint in hints:  # the first is the outermost (the CLI's, without a hint)
                    blocks.enter_context(distributed.lost_rank_as_error(hint))
                raise Terminated
        except Terminated as exc:
            return exc

    assert stopped(lambda: "; resume").args == ()  # alone: the plain "terminated"
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    told = stopped(lambda: "", lambda: "; the last complete checkpoint is iter_2.pt; resume")
    assert str(told).startswith("rank 1 (SIGTERM: torchrun's launcher stops every rank")
    # the inner block's hint is kept; the outer one does not wrap it again
    assert str(told).endswith("); the last complete checkpoint is iter_2.pt; resume")
    assert str(told).count("rank 1") == 1
