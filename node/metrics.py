"""Prometheus metrics: samples read from the services' statistics at scrape time, served over HTTP.

Services keep plain counters (``statistics()`` objects, cheap to update on the hot path); nothing
here is touched per message. At each scrape the :class:`MetricsService` awaits its *refreshers*
(for numbers that need I/O, such as the blob store's size, read in a worker thread), then asks each
*source* for :class:`Sample` values, groups them into families and renders the text format with
``prometheus_client`` (its own ``CollectorRegistry``, never the process-global one, so several nodes
can share a process in tests).

It sits at the top of the package so that any layer may add a source later without importing the
API; the node wires the sources it has (:mod:`flnode.controlplane`).

The HTTP side is deliberately tiny (one ``GET /metrics`` per connection, then close) and runs on
trio like the rest of the node, instead of prometheus_client's thread-based server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .config import MetricsSection, is_loopback_host
from .log import get_logger
from .service import Service

log = get_logger("flnode.metrics")

_MAX_REQUEST_BYTES = 8192
_REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one metric. Counters are named without ``_total`` (the renderer adds it)."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


MetricSource = Callable[[], Iterable[Sample]]
Refresher = Callable[[], Awaitable[None]]


@runtime_checkable
class MetricsProvider(Protocol):
    """A service that reports its own samples (the node adds it as a source)."""

    def metric_samples(self) -> Iterable[Sample]: ...


class SampleCollector(Collector):
    """Adapts sample sources to prometheus_client's collector interface."""

    def __init__(self) -> None:
        self._sources: list[MetricSource] = []

    def add_source(self, source: MetricSource) -> None:
        self._sources.append(source)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for source in self._sources:
            try:
                samples = list(source())
            except Exception:  # a broken source must not take the whole endpoint down
                log.exception("metrics source failed", source=getattr(source, "__name__", "?"))
                continue
            for s in samples:
                family = families.get(s.name)
                if family is None:
                    cls = CounterMetricFamily if s.kind == "counter" else GaugeMetricFamily
                    family = cls(s.name, s.help, labels=sorted(s.labels))
                    families[s.name] = family
                family.add_metric([s.labels[k] for k in sorted(s.labels)], s.value)
        yield from families.values()


class MetricsService(Service):
    """Serves ``GET /metrics`` on ``metrics.listen_host:metrics.port``."""

    name = "metrics"

    def __init__(self, settings: MetricsSection) -> None:
        self.settings = settings
        self.collector = SampleCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._refreshers: list[Refresher] = []
        self.port: int | None = None
        self.scrapes = 0

    def add_source(self, source: MetricSource) -> None:
        self.collector.add_source(source)

    def add_refresher(self, refresher: Refresher) -> None:
        """An async callable awaited before each scrape (e.g. to read sizes off the disk)."""
        self._refreshers.append(refresher)

    @property
    def url(self) -> str | None:
        if self.port is None:
            return None
        host = self.settings.listen_host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    def describe(self) -> dict[str, object]:
        return {"metrics_url": self.url}

    async def render(self) -> bytes:
        """The current metrics in the Prometheus text format."""
        for refresher in self._refreshers:
            try:
                await refresher()
            except Exception:
                log.exception("metrics refresher failed")
        self.scrapes += 1
        return generate_latest(self.registry)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not is_loopback_host(self.settings.listen_host):
            log.warning("metrics listening beyond loopback", host=self.settings.listen_host)
        listeners = await trio.open_tcp_listeners(
            self.settings.port, host=self.settings.listen_host
        )
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            log.info("metrics listening", url=self.url)
            task_status.started()
            await trio.sleep_forever()

    async def _serve(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(_REQUEST_TIMEOUT_S):
                head = b""
                while b"\r\n\r\n" not in head and len(head) < _MAX_REQUEST_BYTES:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    head += chunk
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
                if len(request_line) < 2 or request_line[0] not in ("GET", "HEAD"):
                    await _respond(stream, 405, b"only GET /metrics\n")
                    return
                path = request_line[1].split("?", 1)[0]
                if path != "/metrics":
                    await _respond(stream, 404, b"metrics are at /metrics\n")
                    return
                body = await self.render()
                if request_line[0] == "HEAD":
                    body = b""
                await _respond(stream, 200, body, CONTENT_TYPE_LATEST)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()


async def _respond(
    stream: trio.SocketStream, status: int, body: bytes, content_type: str = "text/plain"
) -> None:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    await stream.send_all(head + body)
