"""Gossip between real libp2p hosts in one process: discovery, exactly-once delivery, bursts."""

from __future__ import annotations

import itertools

import pytest
import trio

from flnode.config import P2PSection
from flnode.p2p import service as p2p_service
from flnode.p2p.messages import PeerExchange, Ping
from flnode.p2p.service import P2PService

from .conftest import full_mesh, running_services


async def _collect(channel: trio.MemoryReceiveChannel, into: list, expected: int) -> None:  # type: ignore[type-arg]
    async for envelope in channel:
        into.append(envelope)
        if len(into) >= expected:
            return


async def test_five_hosts_find_each_other_from_one_bootstrap_peer() -> None:
    async with running_services(5) as services:
        await full_mesh(services)
        for s in services:
            others = {o.peer_id for o in services if o is not s}
            assert set(s.connected_peers()) == others


async def test_peer_announcements_are_spaced_by_the_number_of_connected_peers() -> None:
    """Announcing on every new connection made meshing N nodes cost O(N²) network-wide
    deliveries (a 45-node devnet never committed a block); a node now waits
    _PX_GAP_PER_PEER_S per connected peer between two announcements, and discovery still
    meshes everyone from one bootstrap address."""
    sent: dict[str, list[tuple[float, int]]] = {}
    async with running_services(7) as services:
        for s in services:
            publish = s.publish

            async def recorded(topic, message, *, _s=s, _publish=publish):  # type: ignore[no-untyped-def]
                if isinstance(message, PeerExchange):
                    sent.setdefault(_s.peer_id, []).append(
                        (trio.current_time(), len(_s.connected_peers()))
                    )
                return await _publish(topic, message)

            s.publish = recorded  # type: ignore[method-assign]
        await full_mesh(services)
        await trio.sleep(3.0)
    assert sent, "no node announced its peers"
    per_peer = p2p_service._PX_GAP_PER_PEER_S
    for peer, times in sent.items():
        for (t0, connected), (t1, _) in itertools.pairwise(times):
            assert t1 - t0 >= per_peer * connected - 0.05, (
                f"{peer} announced {t1 - t0:.2f} s after an announcement made with "
                f"{connected} peers connected (expected >= {per_peer * connected:.2f} s)"
            )


async def test_a_node_announces_its_peers_only_when_one_of_them_is_news(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Announcing after every connection change cost each device of a 45-node devnet ~1,200
    announcements while the mesh formed. Now a node announces when a peer it did not know
    connects to it (or on its first connection), and not when it dials a peer it learned from
    someone's announcement. Chain a <- b <- d; d dials only b, so a reaches d by dialling it."""
    sent: dict[str, list[tuple[str, ...]]] = {}
    publish = P2PService.publish

    async def recorded(self, topic, message):  # type: ignore[no-untyped-def]
        if isinstance(message, PeerExchange):
            sent.setdefault(self.peer_id, []).append(message.addrs)
        return await publish(self, topic, message)

    monkeypatch.setattr(P2PService, "publish", recorded)
    quiet = 600.0  # no periodic announcement during the test

    def settings(i: int, services: list[P2PService]) -> P2PSection:
        if i == 0:
            return P2PSection(peer_exchange_interval_s=quiet)
        return P2PSection(
            bootstrap=(services[i - 1].addrs[0],),
            peer_exchange_interval_s=quiet,
            max_peers=64 if i == 1 else 1,
        )

    async with running_services(3, settings=settings) as (a, b, d):
        with trio.fail_after(20):
            while d.peer_id not in a.connected_peers():
                await trio.sleep(0.05)
        await trio.sleep(2.0)  # longer than the settle time and gap of another announcement
    assert any(d.peer_id in addr for addrs in sent.get(b.peer_id, []) for addr in addrs), (
        "b never announced d, which connected to it unannounced"
    )
    from_a = sent.get(a.peer_id, [])
    assert len(from_a) == 1, (
        f"a announced {len(from_a)} times; expected once, when b connected (dialling d, which it "
        f"had learned from an announcement, is not news): {from_a}"
    )
    assert any(b.peer_id in addr for addr in from_a[0])


async def test_published_message_reaches_every_other_host_exactly_once() -> None:
    async with running_services(5) as services:
        await full_mesh(services)
        channels = [await s.subscribe("test") for s in services]
        for s in services:
            await s.wait_for_topic_peers("test", 4, timeout=20)
        await trio.sleep(1.5)  # a heartbeat, so the mesh includes everyone
        sender = services[2]
        await sender.publish("test", Ping(nonce=42))
        received: dict[int, list] = {i: [] for i in range(5)}  # type: ignore[type-arg]
        with trio.move_on_after(3):
            async with trio.open_nursery() as nursery:
                for i, ch in enumerate(channels):
                    if i != 2:
                        nursery.start_soon(_collect, ch, received[i], 2)  # wait for a duplicate
        for i in range(5):
            if i == 2:
                assert received[i] == []  # our own messages are not delivered to us
                continue
            assert len(received[i]) == 1, f"host {i} got {len(received[i])} copies"
            envelope = received[i][0]
            assert envelope.message == Ping(nonce=42)
            assert envelope.peer_id == sender.peer_id


async def test_burst_of_200_messages_arrives_complete() -> None:
    async with running_services(4) as services:
        await full_mesh(services)
        channels = [await s.subscribe("burst") for s in services[1:]]
        await services[0].wait_for_topic_peers("burst", 3, timeout=20)
        await trio.sleep(1.5)
        for n in range(200):
            await services[0].publish("burst", Ping(nonce=n))
        received: list[list] = [[] for _ in channels]  # type: ignore[type-arg]
        with trio.move_on_after(20):
            async with trio.open_nursery() as nursery:
                for ch, into in zip(channels, received, strict=True):
                    nursery.start_soon(_collect, ch, into, 200)
        for into in received:
            nonces = sorted(e.message.nonce for e in into)
            assert nonces == list(range(200))
        for s in services[1:]:
            assert s.stats.queue_overflow == 0


async def test_own_messages_are_flooded_to_every_subscriber_relayed_ones_are_not() -> None:
    from libp2p.peer.id import ID

    from flnode.p2p.service import topic_name

    async with running_services(8) as services:
        await full_mesh(services, timeout=40)
        me, others = services[0], services[1:]
        for s in others:  # me publishes without subscribing, as a device publishes a vote
            await s.subscribe("test")
        await me.wait_for_topic_peers("test", 7, timeout=30)
        assert me.pubsub is not None
        router = me.pubsub.router
        topic = topic_name(me.network_id, "test")
        own = ID.from_base58(me.peer_id)
        flooded = set(router._get_peers_to_send([topic], msg_forwarder=own, origin=own))
        assert {p.to_base58() for p in flooded} == {s.peer_id for s in others}
        # A message someone else published goes to the fanout only: `degree` (4) peers.
        other = ID.from_base58(others[0].peer_id)
        relayed = set(router._get_peers_to_send([topic], msg_forwarder=other, origin=other))
        assert 0 < len(relayed) <= 4 and other not in relayed
