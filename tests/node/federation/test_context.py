"""run_low_priority: the work runs on a fresh thread at the nice value asked for."""

from __future__ import annotations

import os
import threading

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


async def test_errors_in_low_priority_work_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad shard")

    with pytest.raises(ValueError, match="bad shard"):
        await run_low_priority(fail)
