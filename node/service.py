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

    Sleeps ``interval_s`` in a loop and measures how much later than asked it wakes up.
    """

    name = "loop-monitor"

    def __init__(self, interval_s: float = 1.0, warn_lag_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.warn_lag_s = warn_lag_s
        self._samples = 0
        self._last = 0.0
        self._max = 0.0

    def statistics(self) -> LoopLagStatistics:
        return LoopLagStatistics(self._samples, self._last, self._max)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from .log import get_logger

        log = get_logger("flnode.loop")
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
