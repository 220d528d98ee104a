"""Hostile gossip over real hosts: every bad envelope is dropped, counted and scored; honest
traffic keeps flowing. The attacker publishes raw bytes with its own libp2p pubsub, bypassing
flnode's codec, exactly as a modified node would."""

from __future__ import annotations

import time

import cbor2
import pytest
import trio

from flnode.identity import NodeIdentity
from flnode.p2p.envelope import DOMAIN, sender_bytes
from flnode.p2p.messages import Ping
from flnode.p2p.service import P2PService, topic_name

from .conftest import NETWORK, full_mesh, running_services

TOPIC = "hostile"


def forge(
    signer: NodeIdentity,
    *,
    sender: NodeIdentity | None = None,
    version: object = 1,
    type_name: object = "ping",
    network: object = NETWORK,
    seq: int = 1,
    timestamp: int | None = None,
    payload: bytes = b"\x81\x07",
) -> bytes:
    """An envelope in the documented wire format, signed by ``signer``."""
    who = sender or signer
    ts = int(time.time() * 1000) if timestamp is None else timestamp
    fields = [version, type_name, network, sender_bytes(who.peer_id), seq, ts, payload]
    return cbor2.dumps([*fields, signer.sign(DOMAIN, cbor2.dumps(fields))])


async def _drain(channel: trio.MemoryReceiveChannel, into: list, seconds: float) -> None:  # type: ignore[type-arg]
    with trio.move_on_after(seconds):
        async for envelope in channel:
            into.append(envelope)


def _identity(service: P2PService) -> NodeIdentity:
    return service.identity


CASES = [
    ("garbage", lambda m, h: b"\x00\xffnot cbor at all", "malformed"),
    ("truncated", lambda m, h: forge(m, seq=2)[:-10], "malformed"),
    ("wrong signature", lambda m, h: forge(m, seq=3)[:-2] + b"\x00\x1b", "bad_signature"),
    ("claims another sender", lambda m, h: forge(m, sender=h, seq=4), "sender_mismatch"),
    ("unknown type", lambda m, h: forge(m, type_name="launch", seq=5), "unknown_type"),
    ("unknown version", lambda m, h: forge(m, version=7, seq=6), "unknown_version"),
    ("wrong network", lambda m, h: forge(m, network="other-net", seq=7), "wrong_network"),
    ("stale", lambda m, h: forge(m, seq=8, timestamp=1_000), "stale"),
    ("oversize", lambda m, h: b"\x88" + b"\x00" * 600_000, "oversized"),
]


@pytest.mark.parametrize("name, make, reason", CASES, ids=[c[0] for c in CASES])
async def test_bad_envelope_is_dropped_counted_and_scored(name: str, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    async with running_services(3) as (honest, receiver, mallory):
        await full_mesh([honest, receiver, mallory])
        inbox = await receiver.subscribe(TOPIC)
        await honest.subscribe(TOPIC)
        await mallory.subscribe(TOPIC)
        await mallory.wait_for_topic_peers(TOPIC, 2, timeout=20)
        await honest.wait_for_topic_peers(TOPIC, 2, timeout=20)
        await trio.sleep(1.2)
        assert mallory.pubsub is not None
        raw = make(_identity(mallory), _identity(honest))
        await mallory.pubsub.publish(topic_name(NETWORK, TOPIC), raw)
        await honest.publish(TOPIC, Ping(nonce=7))
        received: list = []  # type: ignore[type-arg]
        await _drain(inbox, received, 2.0)
        # Honest traffic still arrives, and only it.
        assert [e.message for e in received] == [Ping(nonce=7)]
        assert receiver.stats.dropped.get(reason, 0) >= 1, receiver.stats.dropped
        # Mallory (the hop it came from) paid for it; the honest node did not. A stale envelope
        # is only dropped: honest relays on a loaded machine deliver late (PENALTIES["stale"]).
        assert receiver.scores.score(honest.peer_id) == 0
        assert receiver.scores.snapshot(mallory.peer_id).offences.get(reason, 0) >= 1
        if reason == "stale":
            assert receiver.scores.score(mallory.peer_id) == 0
        else:
            assert receiver.scores.score(mallory.peer_id) < 0


async def test_resent_envelope_is_a_duplicate_and_old_sequence_a_replay() -> None:
    async with running_services(2) as (receiver, mallory):
        await full_mesh([receiver, mallory])
        inbox = await receiver.subscribe(TOPIC)
        await mallory.subscribe(TOPIC)
        await mallory.wait_for_topic_peers(TOPIC, 1, timeout=20)
        await trio.sleep(1.2)
        assert mallory.pubsub is not None
        me = _identity(mallory)
        first = forge(me, seq=10**12)
        full = topic_name(NETWORK, TOPIC)
        await mallory.pubsub.publish(full, first)
        await mallory.pubsub.publish(full, first)  # same envelope, new pubsub wrapper
        for n in range(200):  # push the window forward, then go back to an old sequence number
            await mallory.pubsub.publish(full, forge(me, seq=10**12 + 1 + n, payload=b"\x81\x01"))
        await mallory.pubsub.publish(full, forge(me, seq=5, payload=b"\x81\x02"))
        received: list = []  # type: ignore[type-arg]
        await _drain(inbox, received, 3.0)
        assert len(received) == 201
        assert receiver.stats.dropped.get("duplicate", 0) == 1
        assert receiver.stats.dropped.get("replay", 0) == 1
        assert receiver.scores.snapshot(mallory.peer_id).offences.get("replay") == 1


async def test_persistent_offender_is_banned_and_disconnected() -> None:
    async with running_services(2) as (receiver, mallory):
        await full_mesh([receiver, mallory])
        await receiver.subscribe(TOPIC)
        await mallory.subscribe(TOPIC)
        await mallory.wait_for_topic_peers(TOPIC, 1, timeout=20)
        await trio.sleep(1.2)
        assert mallory.pubsub is not None
        for n in range(10):  # 10 x bad_signature (25 points) crosses the -100 threshold
            raw = forge(_identity(mallory), seq=100 + n)
            await mallory.pubsub.publish(topic_name(NETWORK, TOPIC), raw[:-2] + b"\x00\x1b")
        with trio.fail_after(10):
            while mallory.peer_id in receiver.connected_peers():
                await trio.sleep(0.05)
        assert receiver.scores.is_banned(mallory.peer_id)
        assert receiver.scores.bans_total == 1
        await trio.sleep(1.0)  # the banned peer is not let back in
        assert mallory.peer_id not in receiver.connected_peers()


async def test_a_layer_above_can_charge_a_peer_until_it_is_banned() -> None:
    """``P2PService.penalise`` is how the consensus charges peers for bad consensus messages."""
    async with running_services(2) as (judge, accused):
        await full_mesh([judge, accused])
        judge.penalise(judge.peer_id, "invalid_payload")  # never itself
        assert judge.scores.snapshot(judge.peer_id).offences == {}
        for _ in range(6):  # 6 x invalid_payload (20 points) crosses the -100 threshold
            judge.penalise(accused.peer_id, "invalid_payload")
        with trio.fail_after(10):
            while accused.peer_id in judge.connected_peers():
                await trio.sleep(0.05)
        assert judge.scores.is_banned(accused.peer_id)
        assert judge.scores.snapshot(accused.peer_id).offences.get("invalid_payload") == 6


async def test_a_pubsub_rpc_that_is_not_protobuf_does_not_stop_the_node() -> None:
    from libp2p.peer.id import ID

    from flnode.p2p.service import GOSSIP_PROTOCOL

    async with running_services(3) as services:
        victim, attacker, honest = services
        await full_mesh(services)
        inbox = await victim.subscribe(TOPIC)
        await honest.subscribe(TOPIC)
        await honest.wait_for_topic_peers(TOPIC, 1, timeout=20)
        assert attacker.host is not None
        stream = await attacker.host.new_stream(ID.from_base58(victim.peer_id), [GOSSIP_PROTOCOL])
        await stream.write(b"\x05" + b"\xff" * 5)  # a length prefix, then not a protobuf RPC
        await trio.sleep(1)
        # The victim is still up (a failure would have cancelled this block) and still gossips.
        received: list = []  # type: ignore[type-arg]
        with trio.move_on_after(10):
            while not received:
                await honest.publish(TOPIC, Ping(nonce=len(received) + 99))
                with trio.move_on_after(1):
                    received.append(await inbox.receive())
        assert received and received[0].message.nonce == 99
