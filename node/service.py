"""The service pattern every long-lived part of a node follows.

A service is an object with one coroutine, :meth:`Service.run`, that sets itself up, reports
readiness through trio's ``task_status.started()``, then runs until it is cancelled, releasing what
it holds in ``finally`` blocks. The :class:`~flnode.node.Node` starts services one after another (so
a later one may rely on an earlier one being ready) and stops them in the reverse order, each inside
its own cancel scope, with a bounded grace period. Structured concurrency does the rest: no task
outlives the service that started it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import trio


class Service(ABC):
    """A long-lived component of a node."""

    #: Short name used in logs and metrics.
    name: str = "service"

    @abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Set up, call ``task_status.started()`` once ready, then run until cancelled."""

    def describe(self) -> dict[str, object]:
        """Facts about the running service for ``<datadir>/node.json`` (e.g. listen addresses)."""
        return {}


@dataclass(frozen=True, slots=True)
class LoopLagStatistics:
    """How late the event loop has woken the monitor (a blocked loop shows up here)."""

    samples: int
    last_lag_s: float
    max_lag_s: float


class LoopMonitor(Service):
    """Warns when the event loop is blocked, e.g. by CPU work that should be in a worker thread.

    Sleeps ``interval_s`` in a loop and measures how much later than asked it wakes up. On the same
    tick it records how the process is doing, for the metrics endpoint and for soak runs
    (``bench/soak.py``): the number of live trio tasks (a walk of the task tree from the root task,
    on the event loop itself, so the tree cannot change underneath), and, on Linux, the resident
    memory, the open file descriptors and the OS threads (from ``/proc/self``; elsewhere these stay
    ``None`` and are not exported).
    """

    name = "loop-monitor"

    def __init__(self, interval_s: float = 1.0, warn_lag_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.warn_lag_s = warn_lag_s
        self._samples = 0
        self._last = 0.0
        self._max = 0.0
        self._tasks: int | None = None
        self._process: dict[str, int] = {}

    def statistics(self) -> LoopLagStatistics:
        return LoopLagStatistics(self._samples, self._last, self._max)

    def process_statistics(self) -> dict[str, int]:
        """The last tick's ``tasks``, ``resident_bytes``, ``open_fds`` and ``threads`` (those known)."""
        out = dict(self._process)
        if self._tasks is not None:
            out["tasks"] = self._tasks
        return out

    @staticmethod
    def count_tasks() -> int:
        """Live trio tasks in this run (call from the event loop's thread)."""
        count = 0
        stack = [trio.lowlevel.current_root_task()]
        while stack:
            task = stack.pop()
            if task is None:
                continue
            count += 1
            for nursery in task.child_nurseries:
                stack.extend(nursery.child_tasks)
        return count

    @staticmethod
    def read_process() -> dict[str, int]:
        """Resident bytes, open fds and threads of this process from ``/proc/self`` ({} elsewhere)."""
        import contextlib
        import os

        out: dict[str, int] = {}
        try:
            with open("/proc/self/statm", "rb") as f:
                out["resident_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
        with contextlib.suppress(OSError):
            out["open_fds"] = len(os.listdir("/proc/self/fd"))
        try:
            with open("/proc/self/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Threads:"):
                        out["threads"] = int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            pass
        return out

    def _sample_process(self) -> None:
        self._tasks = self.count_tasks()
        self._process = self.read_process()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from .log import get_logger

        log = get_logger("flnode.loop")
        self._sample_process()
        task_status.started()
        while True:
            start = trio.current_time()
            await trio.sleep(self.interval_s)
            lag = trio.current_time() - start - self.interval_s
            self._samples += 1
            self._last = lag
            self._max = max(self._max, lag)
            if lag > self.warn_lag_s:
                log.warning("event loop blocked", lag_s=round(lag, 3))
            self._sample_process()
