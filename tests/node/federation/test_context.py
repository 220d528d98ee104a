"""run_low_priority: the work runs on a fresh, named thread at the nice value asked for."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from flnode.federation.context import BACKGROUND_NICE, LOW_PRIORITY_NICE, run_low_priority


def _own_nice() -> tuple[int, int]:
    return threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_work_runs_at_low_priority_on_its_own_thread_and_the_caller_keeps_its_own() -> None:
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    tid, nice = await run_low_priority(_own_nice)
    assert tid != threading.get_native_id()
    assert nice >= LOW_PRIORITY_NICE
    tid_bg, nice_bg = await run_low_priority(_own_nice, nice=BACKGROUND_NICE)
    assert nice_bg == BACKGROUND_NICE and tid_bg != tid
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller


def _os_thread_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


async def test_the_learning_thread_carries_its_own_os_name() -> None:
    """``top -H`` and the vs_flower benchmark tell the learning work's CPU apart by this name;
    without it the thread shows the name of the trio worker that started it."""
    assert await run_low_priority(_os_thread_name) == "flnode-learn"
    assert _os_thread_name() != "flnode-learn"


async def test_errors_in_low_priority_work_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad shard")

    with pytest.raises(ValueError, match="bad shard"):
        await run_low_priority(fail)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_release_free_memory_returns_freed_heap_pages_to_the_os() -> None:
    import ctypes

    from flnode.federation.context import release_free_memory

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    block = 64 * 1024  # under glibc's mmap threshold: these come from the heap
    blocks = [libc.malloc(block) for _ in range(2048)]  # 128 MiB
    for b in blocks:
        libc.memset(b, 1, block)  # touch the pages
    for b in blocks[:-1]:  # the last block pins the top of the heap: free() cannot shrink it
        libc.free(b)
    held = _rss_bytes()
    assert release_free_memory() is True
    released = held - _rss_bytes()
    libc.free(blocks[-1])
    assert released > 64 * 2**20, f"only {released / 2**20:.1f} MiB went back to the OS"
