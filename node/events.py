"""The node's event bus: services publish named events, API clients subscribe to them.

It sits at the top of the package so that every layer can publish without importing the API
(layers may not import each other): the Node creates one bus and hands it to whoever emits events
(peer joined/left now; new round, update received, block committed when those services exist) and
to the API service, which streams them to subscribers.

Publishing never blocks and never fails because of a subscriber: each subscription has a bounded
queue, and an event that does not fit is dropped *for that subscriber only* and counted, so a slow
client cannot stall the node. Topics are declared with a description before use, so a subscriber
asking for a misspelt topic hears about it instead of waiting forever. Call :meth:`EventBus.publish`
from the trio thread.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from .errors import FLNodeError


class UnknownTopicError(FLNodeError):
    """A subscription named a topic nobody declared; the message lists the known topics."""


@dataclass(frozen=True, slots=True)
class Event:
    """One published event: its topic, its JSON-able data, wall-clock time and bus sequence."""

    topic: str
    data: Mapping[str, Any]
    time: float
    seq: int

    def to_json(self) -> dict[str, Any]:
        return {"event": self.topic, "data": dict(self.data), "time": self.time, "seq": self.seq}


@dataclass(slots=True, eq=False)
class _Subscriber:
    topics: frozenset[str]
    send: trio.MemorySendChannel[Event]
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class EventBusStatistics:
    published: int
    delivered: int
    dropped: int
    subscribers: int


@dataclass(slots=True)
class Subscription:
    """A live subscription: iterate ``receive`` for events; ``dropped`` counts overflow."""

    topics: frozenset[str]
    receive: trio.MemoryReceiveChannel[Event]
    _subscriber: _Subscriber
    _bus: EventBus = field(repr=False)

    @property
    def dropped(self) -> int:
        return self._subscriber.dropped

    def close(self) -> None:
        self._bus._remove(self._subscriber)
        self._subscriber.send.close()
        self.receive.close()


class EventBus:
    """Fan-out of named events to bounded per-subscriber queues. See the module docstring."""

    def __init__(self, default_queue: int = 256) -> None:
        self.default_queue = default_queue
        self._topics: dict[str, str] = {}
        self._subscribers: list[_Subscriber] = []
        self._seq = itertools.count(1)
        self._published = 0
        self._delivered = 0
        self._dropped = 0

    def declare(self, topic: str, description: str) -> None:
        """Announce that ``topic`` exists (idempotent); publishers call this when built."""
        self._topics[topic] = description

    def topics(self) -> dict[str, str]:
        """Every declared topic and its description, sorted by name."""
        return dict(sorted(self._topics.items()))

    def publish(self, topic: str, **data: Any) -> Event:
        """Deliver an event to every subscriber of ``topic`` without waiting for any of them."""
        if topic not in self._topics:
            raise UnknownTopicError(f"event topic {topic!r} was never declared on the bus")
        event = Event(topic, data, time.time(), next(self._seq))
        self._published += 1
        for sub in list(self._subscribers):
            if topic not in sub.topics:
                continue
            try:
                sub.send.send_nowait(event)
                self._delivered += 1
            except trio.WouldBlock:
                sub.dropped += 1
                self._dropped += 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._remove(sub)
        return event

    def subscribe(self, topics: Iterable[str], max_queued: int | None = None) -> Subscription:
        """Subscribe to ``topics`` (all declared ones if empty)."""
        wanted = frozenset(topics) or frozenset(self._topics)
        unknown = sorted(wanted - self._topics.keys())
        if unknown:
            raise UnknownTopicError(
                f"unknown event topic(s) {', '.join(unknown)}; "
                f"known topics: {', '.join(sorted(self._topics)) or 'none'}"
            )
        send, receive = trio.open_memory_channel[Event](max_queued or self.default_queue)
        sub = _Subscriber(wanted, send)
        self._subscribers.append(sub)
        return Subscription(wanted, receive, sub, self)

    def statistics(self) -> EventBusStatistics:
        return EventBusStatistics(
            self._published, self._delivered, self._dropped, len(self._subscribers)
        )

    def _remove(self, sub: _Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
