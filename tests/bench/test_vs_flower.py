"""The per-thread CPU accounting of ``bench/vs_flower.py``, on this test's own threads.

No engine runs here; ``python -m bench.vs_flower`` runs the benchmark itself.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:  # `bench` is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

from bench import vs_flower  # noqa: E402
from flnode.federation.context import name_os_thread  # noqa: E402


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_threads_are_read_with_their_os_names_and_cpu_and_sorted_into_kinds() -> None:
    pid = os.getpid()
    seen: dict[int, tuple[str, float]] = {}
    ready, done = threading.Event(), threading.Event()

    def learner() -> None:
        name_os_thread("flnode-learn")
        _spin(0.3)
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=learner)
    thread.start()
    try:
        assert ready.wait(10)
        for tid, name, cpu in vs_flower._threads(pid):
            seen[tid] = (name, cpu)
    finally:
        done.set()
        thread.join()
    main_name = seen[pid][0]
    learning = [tid for tid, (name, _) in seen.items() if name == "flnode-learn"]
    assert len(learning) == 1, seen
    assert seen[learning[0]][1] >= 0.25  # its CPU time, in seconds
    assert vs_flower._thread_kind(pid, pid, main_name, main_name) == "event loop"
    assert vs_flower._thread_kind(pid, learning[0], "flnode-learn", main_name) == "learning"
    assert vs_flower._thread_kind(pid, 1, "Trio thread 3", main_name) == "trio workers"
    assert vs_flower._thread_kind(pid, 1, main_name, main_name) == "other threads"
    assert vs_flower._threads(2**22 + 12345) == []  # no such process: nothing, no error


def test_cpu_between_two_moments_is_split_by_kind_of_thread() -> None:
    sampler = vs_flower.Sampler(threads=True)  # not started: the samples are given
    pid = 100
    sampler.thread_cpu = {
        (pid, pid): [(0.0, 1.0), (10.0, 3.0)],  # the event loop: 2 s over 0-10 s
        (pid, 101): [(2.0, 0.0), (6.0, 4.0)],  # a thread made at 2 s: all of its 4 s count
        (pid, 102): [(0.0, 0.0), (10.0, 1.0)],
        (pid, 103): [(20.0, 0.0), (30.0, 5.0)],  # alive only after the window
        (999, 104): [(0.0, 0.0), (10.0, 9.0)],  # another process
    }
    sampler.thread_names = {
        (pid, pid): "python",
        (pid, 101): "flnode-learn",
        (pid, 102): "Trio thread 0",
        (pid, 103): "flnode-learn",
        (999, 104): "flnode-learn",
    }
    by_kind = sampler.cpu_by_thread_between(pid, 0.0, 10.0)
    assert by_kind == {"event loop": 2.0, "learning": 4.0, "trio workers": 1.0}
    assert sampler.busiest_thread_between(pid, 0.0, 10.0) == 4.0
    assert sampler.busiest_thread_between(pid, 40.0, 50.0) is None
