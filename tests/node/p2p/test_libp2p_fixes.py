"""The py-libp2p work-arounds of ``flnode.p2p._libp2p_fixes`` on a real host."""

from __future__ import annotations

import libp2p.pubsub.gossipsub as gossipsub_module
import libp2p.pubsub.pubsub as pubsub_module
import pytest
import trio
from libp2p.peer.envelope import consume_envelope

from flnode.p2p import _libp2p_fixes
from flnode.p2p import service as p2p_service
from flnode.p2p.service import topic_name

from .conftest import NETWORK, full_mesh, running_services


async def test_the_signed_peer_record_sent_with_each_rpc_is_built_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_services(1) as (service,):
        # Installed with the other work-arounds before the service's pubsub was built.
        assert pubsub_module.env_to_send_in_RPC is _libp2p_fixes._env_to_send_cached
        assert gossipsub_module.env_to_send_in_RPC is _libp2p_fixes._env_to_send_cached
        host = service.host
        assert host is not None
        built: list[bytes] = []
        original = _libp2p_fixes._original_env_to_send

        def counting(h: object) -> tuple[bytes, bool]:
            envelope, created = original(h)
            built.append(envelope)
            return envelope, created

        monkeypatch.setattr(_libp2p_fixes, "_original_env_to_send", counting)
        _libp2p_fixes._records_to_send.pop(host, None)
        first, _ = _libp2p_fixes._env_to_send_cached(host)
        assert [_libp2p_fixes._env_to_send_cached(host)[0] for _ in range(50)] == [first] * 50
        assert len(built) == 1
        # What is sent is the host's own valid signed record, as py-libp2p would send it.
        _, record = consume_envelope(first, "libp2p-peer-record")  # checks the signature
        assert record.peer_id == host.get_id()
        assert [str(a) for a in record.addrs] == [str(a) for a in host.get_addrs()]
        # After the interval the record is built again (an address change shows up).
        monkeypatch.setattr(_libp2p_fixes, "_RECORD_TTL_S", 0.0)
        _libp2p_fixes._env_to_send_cached(host)
        assert len(built) == 2


async def _knows_subscription(pubsub: object, topic: str, peer: object, within: float) -> bool:
    with trio.move_on_after(within):
        while peer not in pubsub.peer_topics.get(topic, ()):  # type: ignore[attr-defined]
            await trio.sleep(0.05)
        return True
    return False


async def test_subscriptions_a_peer_forgot_are_resent_after_a_duplicate_connection_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """py-libp2p forgets all of a peer's subscriptions when one of two connections to it closes,
    though the peer stays connected. The node that sees such a close re-sends its own
    subscriptions to that peer within a second (the re-sends to every peer are switched to their
    30 s pace here, so that only the targeted one can bring the subscription back)."""
    monkeypatch.setattr(p2p_service, "_REANNOUNCE_CHURN_S", 0.0)
    async with running_services(2) as (a, b):
        await full_mesh([a, b])
        await b.subscribe("t")
        topic = topic_name(NETWORK, "t")
        a_id, b_id = a.host.get_id(), b.host.get_id()  # type: ignore[union-attr]
        assert await _knows_subscription(a.pubsub, topic, b_id, within=10.0)
        # What py-libp2p does on a's side when a duplicate connection closes ...
        a.pubsub._forget_all_subscriptions(b_id)  # type: ignore[union-attr]
        assert not await _knows_subscription(a.pubsub, topic, b_id, within=3.0), (
            "the lost subscription came back by itself; this test no longer shows anything"
        )
        # ... and what b's notifee reports at the same moment: a closed connection to a peer
        # that is still connected.
        assert a_id in b.host.get_connected_peers()  # type: ignore[union-attr]
        b._on_disconnected(a_id)
        assert await _knows_subscription(a.pubsub, topic, b_id, within=3.0), (
            "b did not re-send its subscriptions after the duplicate connection closed"
        )


async def test_a_pubsub_stream_that_failed_to_open_is_retried_while_the_peer_stays_connected() -> (
    None
):
    """py-libp2p took a failed protocol negotiation (the host's ``StreamFailure``, e.g. a 10 s
    timeout on a loaded peer) as final and left the peer connected with no pubsub stream: nothing
    was ever sent to it. Here b refuses the gossip protocol at first, as a peer too busy to
    answer would; once it answers, a registers it as a pubsub peer by itself."""
    async with running_services(2, bootstrap_to_first=False) as (a, b):
        assert a.host is not None and b.host is not None and a.pubsub is not None
        b.host.remove_stream_handler(p2p_service.GOSSIP_PROTOCOL)
        await a.connect(b.addrs[0])
        b_id = b.host.get_id()
        await a.wait_for_peers(1, timeout=10.0)
        await trio.sleep(1.0)  # a's first attempt has failed
        assert b_id not in a.pubsub.peers, "b answered the gossip protocol; nothing was tested"
        b.host.set_stream_handler(p2p_service.GOSSIP_PROTOCOL, b.pubsub.stream_handler)  # type: ignore[union-attr]
        with trio.move_on_after(15.0):
            while b_id not in a.pubsub.peers:
                await trio.sleep(0.1)
        assert b_id in a.pubsub.peers, "a never retried opening its pubsub stream to b"
        assert b_id in a.host.get_connected_peers()
