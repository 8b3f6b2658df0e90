"""Run independent calls in worker processes, a progress bar per call."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from typing import Any

import torch

from eigenarch.progress import console, progress_bar

#: ``prctl``'s option that signals a process when its parent ends (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def _quiet_worker(threads: int, parent: int) -> None:
    _die_with(parent)
    torch.set_num_threads(threads)
    console.quiet = True


def _die_with(parent: int) -> None:
    """End this worker as soon as its ``parent`` process ends, however it ends (kill -9 or
    SIGTERM too), so that no orphan goes on training into the run folder: on Linux the
    kernel sends SIGKILL (``prctl(PR_SET_PDEATHSIG)``), elsewhere a thread checks."""
    if not (sys.platform.startswith("linux") and _kill_on_parent_death()):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # it ended before we asked
        os._exit(1)


def _kill_on_parent_death() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def run_parallel(
    calls: dict[str, Callable[[], Any]],
    jobs: int,
    progress: Callable[[str], tuple[int, int]],
    verb: str,
) -> dict[str, Any]:
    """``{name: call()}`` for every call, ``jobs`` of them at once.

    With ``jobs > 1`` the calls run in worker processes that share this process's threads
    (one each on a 2-core CPU, where two single-thread trainings get through about 1.5x the
    images of one two-thread training), without output of their own; one bar per call
    shows ``progress(name) -> (done, total)``. A call must pickle: a module-level function
    or a ``functools.partial`` of one; worker processes are spawned, so a script calling
    this (or :func:`eigenarch.demo.run_demo`) needs the ``if __name__ == "__main__":`` guard.
    The workers end with this process, also when it is killed; when a call fails or this
    process is interrupted (Ctrl-C, SIGTERM), the other running calls are ended at once.
    """
    jobs = max(1, min(jobs, len(calls)))
    if jobs == 1:
        results = {}
        for name, call in calls.items():
            console.print(f"{verb} {name}", highlight=False)
            results[name] = call()
        return results
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(jobs, context, _quiet_worker, (threads, os.getpid())) as pool,
        progress_bar() as bar,
    ):
        futures = {name: pool.submit(call) for name, call in calls.items()}
        tasks = {name: bar.add_task(f"{verb} {name}", total=progress(name)[1]) for name in calls}
        running = set(futures.values())
        try:
            while running:
                finished, running = wait(running, timeout=1.0)
                for name in calls:
                    bar.update(tasks[name], completed=progress(name)[0])
                for future in finished:
                    future.result()  # a failed call stops the rest, with its error
        except BaseException:  # also Ctrl-C, SIGTERM: nothing queued starts, nothing runs on
            for process in list(pool._processes.values()):  # noqa: SLF001 (no public way)
                process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        return {name: future.result() for name, future in futures.items()}
