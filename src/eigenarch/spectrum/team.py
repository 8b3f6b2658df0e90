"""Run a few jobs side by side on torch's own CPU threads.

torch's intra-op threads are an OpenMP team which, after each op, busy-waits for the next one
(libgomp spins up to ``GOMP_SPINCOUNT`` times before it sleeps). Jobs on threads of our own
compete with those spinning threads for the cores: on 2 cores, the collector's products split
over two Python threads made a forward 2.9x a plain one, 2.1-2.4x in the team (BENCHMARKS.md).
So the jobs run as one OpenMP parallel region of the runtime torch uses (``GOMP_parallel``,
which libgomp, LLVM's libomp and Intel's libiomp5 all export), entered through ``ctypes``
(which releases the GIL): every thread of the team runs a Python callback that takes its share
of the jobs, and the jobs' BLAS calls (:mod:`eigenarch.spectrum.blas`) release the GIL again,
so only their bookkeeping is serial. Where torch has no OpenMP runtime, or it exports no
``GOMP_parallel``, a thread pool runs them instead.
"""

from __future__ import annotations

import ctypes
import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import NamedTuple

import torch
from threadpoolctl import threadpool_info

Job = Callable[[], None]


class _Runtime(NamedTuple):
    parallel: ctypes._CFuncPtr  # GOMP_parallel(fn, data, num_threads, flags)
    thread_num: ctypes._CFuncPtr  # omp_get_thread_num()
    num_threads: ctypes._CFuncPtr  # omp_get_num_threads()


_REGION = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
#: The jobs and errors of every region now running, by the token its threads are given.
_regions: dict[int, tuple[Sequence[Job], list[BaseException]]] = {}
_tokens = itertools.count(1)
_workers: ThreadPoolExecutor | None = None


def side_by_side(jobs: Sequence[Job]) -> None:
    """Run ``jobs`` on up to ``torch.get_num_threads()`` threads, this one among them (job
    ``i`` on thread ``i`` modulo their number); the first error any raised is raised here
    once all have ended."""
    threads = min(len(jobs), torch.get_num_threads())
    if threads <= 1:
        for job in jobs:
            job()
        return
    runtime = _runtime()
    if runtime is None:
        _in_pool(jobs, threads)
        return
    token = next(_tokens)
    errors: list[BaseException] = []
    _regions[token] = (jobs, errors)
    try:
        runtime.parallel(_REGION_BODY, token, threads, 0)
    finally:
        del _regions[token]
    if errors:
        raise errors[0]


def _body(token: int) -> None:
    """One team thread's part of the region ``token``. Nothing may escape a ctypes callback
    (it would be printed and dropped), so errors are kept for :func:`side_by_side`."""
    jobs, errors = _regions[token]
    try:
        runtime = _runtime()
        _share(jobs, runtime.thread_num(), runtime.num_threads())
    except BaseException as error:  # Ctrl-C on the main thread included
        errors.append(error)


_REGION_BODY = _REGION(_body)


def _share(jobs: Sequence[Job], index: int, threads: int) -> None:
    """Thread ``index``'s share of ``jobs`` among ``threads``: every ``threads``-th job."""
    for job in jobs[index::threads]:
        job()


@cache
def _runtime() -> _Runtime | None:
    """torch's OpenMP runtime (loaded with torch: the one under torch's folder, else the only
    one loaded), if torch runs its ops on OpenMP and the runtime exports ``GOMP_parallel``."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    found = [lib["filepath"] for lib in threadpool_info() if lib["user_api"] == "openmp"]
    ours = [path for path in found if path.startswith(os.path.dirname(torch.__file__))]
    paths = ours or found
    if len(paths) != 1:
        return None
    library = ctypes.PyDLL(paths[0])  # the two queries keep the GIL: they take nanoseconds
    try:
        parallel = ctypes.CDLL(paths[0]).GOMP_parallel  # releases the GIL while the team runs
    except AttributeError:
        return None
    parallel.argtypes = [_REGION, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    library.omp_get_thread_num.restype = library.omp_get_num_threads.restype = ctypes.c_int
    return _Runtime(parallel, library.omp_get_thread_num, library.omp_get_num_threads)


def _in_pool(jobs: Sequence[Job], threads: int) -> None:
    global _workers
    if _workers is None or _workers._max_workers < threads - 1:
        _workers = ThreadPoolExecutor(threads - 1, thread_name_prefix="eigenarch-team")
    futures = [_workers.submit(_share, jobs, i, threads) for i in range(1, threads)]
    try:
        _share(jobs, 0, threads)
    finally:
        errors = [future.exception() for future in futures]
    for error in errors:
        if error is not None:
            raise error


def _forget_workers() -> None:
    global _workers
    _workers = None  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_forget_workers)
