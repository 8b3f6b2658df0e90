"""torch.distributed helpers: the same code runs alone or under ``torchrun``.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`init_distributed` joins the
process group (NCCL for CUDA, gloo for CPU); alone, every helper is a no-op.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from eigenarch.errors import EigenarchError, Terminated

#: The environment variable (set by ``eigenarch --collective-timeout``) holding how many
#: seconds a rank waits in a collective for the others before it gives up.
TIMEOUT_ENV = "EIGENARCH_COLLECTIVE_TIMEOUT"
#: Its default: a rank killed or stopped ends the others within 5 minutes, not torch's 30.
DEFAULT_TIMEOUT = 300
#: How gloo and the store word a lost or stopped peer.
_LOST = re.compile(r"Connection reset by peer|Connection closed by peer|Broken pipe|"
                   r"Timed out|timed out|Socket Timeout|Connection refused|EOF")  # fmt: skip


def collective_timeout() -> timedelta:
    """The collective timeout: :data:`TIMEOUT_ENV` seconds, else :data:`DEFAULT_TIMEOUT`."""
    text = os.environ.get(TIMEOUT_ENV, "").strip() or str(DEFAULT_TIMEOUT)
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise EigenarchError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def init_distributed(device: str = "cpu") -> tuple[int, int]:
    """Join the process group if launched by torchrun, with :func:`collective_timeout`;
    returns ``(rank, world size)``. On CUDA the process's current device becomes
    ``cuda:LOCAL_RANK`` first (as torchvision's ``init_distributed_mode``), so NCCL
    collectives of every rank run on its own GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=collective_timeout())
    return rank(), world_size()


@contextmanager
def lost_rank_as_error(hint: Callable[[], str] = lambda: "") -> Iterator[None]:
    """Under ``torch.distributed``, a collective that failed because another rank was
    killed, or stopped past the collective timeout, becomes one line naming this rank and
    the reason (plus ``hint()``, e.g. where to resume from); other errors pass. SIGTERM
    under ``torch.distributed`` (:class:`Terminated`; torchrun's launcher sends it to every
    rank as soon as one fails, which may come before this rank's next collective notices)
    gets the same rank and ``hint()``."""
    try:
        yield
    except Terminated as exc:
        if not is_distributed() or exc.args:  # alone, or already told by an inner block
            raise
        raise Terminated(
            f"rank {rank()} (SIGTERM: torchrun's launcher stops every rank when one fails, "
            f"or when it is stopped){hint()}"
        ) from None
    except RuntimeError as exc:  # gloo's errors, and torch's DistError, are RuntimeErrors
        found = _LOST.search(str(exc))
        if not is_distributed() or found is None:
            raise
        timeout = int(collective_timeout().total_seconds())
        raise EigenarchError(
            f"rank {rank()}: another rank was lost or stopped ({found.group(0).lower()}; "
            f"collective timeout {timeout} s){hint()}"
        ) from None


def shutdown_distributed() -> None:
    """Leave the process group, if joined. Call on a clean finish only (a rank that failed
    may have left others inside a collective, which destroying would hang): left to
    interpreter exit, gloo's threads can abort the process (SIGABRT, "terminate called
    without an active exception") after all the work is done."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launch_rank() -> int:
    """This process's rank as ``torchrun`` set it, before (or without) joining the group."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes files (rank 0)."""
    return rank() == 0


def local_device(device: str) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; anything else is unchanged."""
    if str(device) == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_over_ranks(values: dict[str, float], device: torch.device | str = "cpu") -> dict:
    """The mean of each value over all ranks (for logging losses)."""
    if not is_distributed() or not values:
        return dict(values)
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / world_size()).tolist(), strict=True))


def barrier() -> None:
    if is_distributed():
        dist.barrier()
