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
