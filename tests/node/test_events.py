"""The event bus: declared topics, fan-out, and a slow subscriber that never blocks the publisher."""

from __future__ import annotations

import pytest

from flnode.events import EventBus, UnknownTopicError


async def test_fan_out_by_topic_and_overflow_counted() -> None:
    bus = EventBus()
    bus.declare("block_committed", "A block was committed.")
    bus.declare("peer_joined", "A peer connected.")
    blocks = bus.subscribe(["block_committed"], max_queued=2)
    everything = bus.subscribe([])
    for height in range(5):
        bus.publish("block_committed", height=height)
    bus.publish("peer_joined", peer_id="p")
    assert [blocks.receive.receive_nowait().data["height"] for _ in range(2)] == [0, 1]
    assert blocks.dropped == 3
    assert [everything.receive.receive_nowait().topic for _ in range(6)][-1] == "peer_joined"
    stats = bus.statistics()
    assert (stats.published, stats.dropped, stats.subscribers) == (6, 3, 2)
    blocks.close()
    bus.publish("block_committed", height=5)
    assert bus.statistics().subscribers == 1


def test_unknown_topics_are_refused_with_the_known_ones() -> None:
    bus = EventBus()
    bus.declare("peer_joined", "A peer connected.")
    with pytest.raises(UnknownTopicError, match="known topics: peer_joined"):
        bus.subscribe(["peer_joind"])
    with pytest.raises(UnknownTopicError, match="never declared"):
        bus.publish("round_started", round=1)
