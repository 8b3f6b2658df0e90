"""Jobs side by side on torch's own OpenMP threads, or a pool where there are none."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from eigenarch.spectrum import team


@pytest.fixture(params=["team", "pool"])
def mode(request, monkeypatch):
    """Each test runs in torch's OpenMP team and in the fallback thread pool."""
    torch.set_num_threads(2)  # the autouse fixture restores one thread
    assert team._runtime() is not None  # this torch runs its ops on OpenMP (libgomp)
    if request.param == "pool":
        monkeypatch.setattr(team, "_runtime", lambda: None)
    return request.param


def _tasks() -> set[int]:
    return {int(task) for task in os.listdir("/proc/self/task")}


def test_every_job_runs_once_and_two_run_at_the_same_time(mode):
    both = threading.Barrier(2, timeout=20)  # broken unless jobs 0 and 1 overlap
    ran: list[tuple[int, int]] = []

    def job(i: int):
        def run() -> None:
            if i < 2:
                both.wait()
            ran.append((i, threading.get_native_id()))

        return run

    team.side_by_side([job(i) for i in range(5)])
    assert sorted(i for i, _ in ran) == [0, 1, 2, 3, 4]
    thread_of = dict(ran)
    # job i on thread i modulo 2; the even ones on this thread
    assert thread_of[0] == thread_of[2] == thread_of[4] == threading.get_native_id()
    assert thread_of[1] == thread_of[3] != thread_of[0]


def test_the_jobs_run_on_torchs_threads_not_new_ones():
    torch.set_num_threads(2)
    torch.randn(256, 256) @ torch.randn(256, 256)  # torch's team exists
    before = _tasks()
    threads: set[int] = set()
    team.side_by_side([lambda: threads.add(threading.get_native_id()) for _ in range(2)])
    assert len(threads) == 2 and threads <= before and _tasks() == before


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_an_error_of_any_job_is_raised_after_all_have_ended(mode, error):
    ran = []

    def failing() -> None:
        raise error("job 1")

    jobs = [lambda: ran.append(0), failing, lambda: ran.append(2), lambda: ran.append(3)]
    with pytest.raises(error, match="job 1"):
        team.side_by_side(jobs)
    assert sorted(ran) == [0, 2]  # job 3 shares job 1's thread, after it
    team.side_by_side([lambda: ran.append(4)] * 2)  # the team is still usable
    assert ran.count(4) == 2


def test_one_thread_runs_the_jobs_here_in_order():
    torch.set_num_threads(1)
    ran = []
    team.side_by_side([lambda i=i: ran.append((i, threading.get_native_id())) for i in range(3)])
    assert ran == [(i, threading.get_native_id()) for i in range(3)]


def test_regions_of_two_callers_at_once_keep_their_own_jobs():
    torch.set_num_threads(2)  # (the pool would queue one caller's job behind the other's)
    all_four = threading.Barrier(4, timeout=20)  # both regions' threads at once
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def region(name: str) -> None:
        def job(i: int):
            def run() -> None:
                all_four.wait()
                seen[name].append(i)

            return run

        team.side_by_side([job(i) for i in range(2)])

    callers = [threading.Thread(target=region, args=(name,)) for name in seen]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=60)
    assert sorted(seen["a"]) == sorted(seen["b"]) == [0, 1]
