"""Work-arounds for measured problems of py-libp2p 0.8.1, in one place.

Each is applied once, before any ``Pubsub`` is created (:func:`apply`), and names what it fixes.

* **Per-peer outbound queue of 32 RPCs** (stack notes, P4): ``Pubsub`` builds each peer's
  ``RpcQueue()`` with its defaults, and a burst of more than 32 publishes drops the rest silently;
  the size is not configurable. We make ``pubsub.RpcQueue`` a subclass with room for 4,096 RPCs.
  Our messages are at most ~270 KiB, below the 1 MiB per-RPC cap, so that cap stays as it is.
* **The swarm's auto-connector** dials every address in the peerstore to reach a connection target
  (the middle of the low and high watermarks, 150 by default), whatever ``min_connections`` says;
  flnode's connector decides whom to dial, so :func:`disable_auto_connector` switches it off for one
  host.
* **Lost subscriptions**: when one of two simultaneous connections to a peer dies, ``Pubsub``
  forgets *all* of that peer's topic subscriptions, although the peer is still connected over the
  other connection and will not announce them again; from then on we never send it anything on
  those topics (seen in tests as a peer that waits forever for a subscriber). Subscriptions are
  idempotent, so :func:`reannounce_subscriptions` re-sends ours: to the peer, shortly after
  one of two connections to it closes, and to every peer every few seconds while connections
  open or close (spaced by the number of peers) and every 30 s otherwise.
* **Teardown race**: ``Pubsub._teardown_if_connected`` deletes the peer's stream entry after an
  await, so a peer removed meanwhile raises KeyError, which stops the Pubsub service and then
  crashes the node on the next RPC read (seen on a loaded 14-node devnet). Replaced by a version
  that pops the entry.
* **Signed peer records**: every gossipsub RPC carries the sender's signed peer record and every
  receipt re-verifies it; an unchanged record is now verified once per peer.
* **A yamux WINDOW_UPDATE per read**: with ``PY_YAMUX_RELEASE_ON_READ`` unset, every read of a
  yamux stream sends the peer a window update for the bytes read, and pubsub reads each RPC's
  varint length prefix one byte at a time: two to four encrypted frames and syscalls went back
  for every gossip message received. On a 14-process devnet that kept both cores busy whenever
  blocks were being made, starved the event loops, and delayed gossip by minutes. Credit is now
  released as go-yamux does it: in one update once half the window has been consumed.
* **A malformed pubsub RPC stopped the node**: ``Pubsub.stream_handler`` closes a peer's stream on
  stream and varint errors, but an RPC that is not valid protobuf raises ``DecodeError`` from
  ``continuously_read_stream``, which propagated through the connection's and the swarm's
  nurseries and stopped the whole node. Any peer could do it with one frame; a peer killed while
  writing left one too (seen in the chaos test: a miner and the manufacturer died). The
  replacement treats it like the other read errors: the stream is reset and the peer dropped
  from pubsub until it reconnects.
* **A signed peer record built for every RPC sent**: ``env_to_send_in_RPC`` rebuilds the host's
  advertised addresses (multiaddr parsing and encapsulation) and re-serialises its signed peer
  record for each RPC, a few per cent of every node's CPU on a busy devnet. The bytes are now
  kept for ``_RECORD_TTL_S`` per host (a change of address shows up at most that late).
* **A pubsub stream that failed to open once was never retried**: ``Pubsub`` retries opening its
  stream to a newly connected peer while the peer stays connected, but only on
  ``SwarmException``/``StreamClosed``; a protocol negotiation that times out (10 s) raises the
  host's ``StreamFailure``, which it takes as final. The peer then stays connected with no pubsub
  stream: we never send it a message, and a node whose only peers are such peers hears no gossip,
  so no peer announcement either, for good (seen on a loaded 45-process devnet: 5 devices kept
  their 2 bootstrap peers and nothing else for 12 minutes). ``StreamFailure`` is now retried like
  the others.
* **No flood publishing**: py-libp2p's GossipSub sends a message this node publishes to its mesh
  (or fanout) peers only, ``degree`` of them, so most subscribers get it a hop or two later.
  go-libp2p's GossipSub floods its own publications to every subscribed peer with an acceptable
  score (``WithFloodPublish``, on by default); we do the same, which puts a device's transaction,
  a proposer's block announcement and a committee member's vote one hop from every subscriber
  it is connected to. Relayed messages still go to the mesh only.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from typing import Any

import libp2p.peer.peerstore as _peerstore_module
import libp2p.pubsub.gossipsub as _gossipsub_module
import libp2p.pubsub.pubsub as _pubsub_module
import libp2p.pubsub.utils as _pubsub_utils
import libp2p.stream_muxer.yamux.yamux as _yamux_module
from google.protobuf.message import DecodeError
from libp2p.host.exceptions import StreamFailure
from libp2p.network.exceptions import SwarmException
from libp2p.pubsub.rpc_queue import RpcQueue

OUTBOUND_QUEUE_RPCS = 4096

_applied = False


class _DeepRpcQueue(RpcQueue):
    def __init__(self, max_size: int = OUTBOUND_QUEUE_RPCS, **kwargs: object) -> None:
        super().__init__(max_size, **kwargs)  # type: ignore[arg-type]


def disable_auto_connector(host: object) -> None:
    """Turn the swarm's auto-connector of ``host`` into a no-op (see the module docstring)."""

    async def _never() -> None:
        return None

    network = host.get_network()  # type: ignore[attr-defined]
    network.auto_connector.maybe_connect = _never


async def reannounce_subscriptions(pubsub: object, peer: object | None = None) -> None:
    """Send one RPC listing every topic we subscribe to, to ``peer`` (a libp2p ``ID``) or to
    every peer (see the docstring)."""
    from libp2p.pubsub.pb import rpc_pb2

    topics = list(pubsub.topic_ids)  # type: ignore[attr-defined]
    if not topics:
        return
    packet = rpc_pb2.RPC()
    packet.subscriptions.extend(
        [rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic) for topic in topics]
    )
    if peer is None:
        await pubsub.message_all_peers(packet.SerializeToString())  # type: ignore[attr-defined]
        return
    queue = pubsub.peer_queues.get(peer)  # type: ignore[attr-defined]
    if queue is not None:
        queue.push(packet)


async def _teardown_if_connected(self: Any, peer_id: Any) -> None:
    """py-libp2p 0.8.1's version deletes ``self.peers[peer_id]`` after awaiting the stream's
    reset; when the peer was removed meanwhile (a ban and a disconnect at once) the KeyError
    stops the whole Pubsub service, and the next RPC read crashes the swarm and the node."""
    stream = self.peers.get(peer_id)
    if stream is not None:
        with contextlib.suppress(Exception):
            await stream.reset()
        self.peers.pop(peer_id, None)
    self._forget_all_subscriptions(peer_id)


_verified_records: dict[Any, bytes] = {}
_original_consume = _pubsub_utils.maybe_consume_signed_record


def _consume_signed_record_once(msg: Any, host: Any, peer_id: Any = None) -> bool:
    """py-libp2p attaches the sender's signed peer record to every gossipsub RPC and verifies
    it (a secp256k1 signature check and a peer-store update) on every receipt; on a busy
    devnet that was a tenth of each node's CPU. A record identical to the one last verified for
    the same peer is accepted without checking it again (same bytes, same signature)."""
    if not msg.HasField("senderRecord"):
        return True
    record = bytes(msg.senderRecord)
    if peer_id is not None and _verified_records.get(peer_id) == record:
        return True
    ok = bool(_original_consume(msg, host, peer_id))
    if ok and peer_id is not None:
        if len(_verified_records) >= 4096:
            _verified_records.clear()
        _verified_records[peer_id] = record
    return ok


_RECORD_TTL_S = 1.0
_records_to_send: weakref.WeakKeyDictionary[Any, tuple[float, bytes]] = weakref.WeakKeyDictionary()
_original_env_to_send = _peerstore_module.env_to_send_in_RPC


def _env_to_send_cached(host: Any) -> tuple[bytes, bool]:
    """``env_to_send_in_RPC`` with its result kept for ``_RECORD_TTL_S`` (see the docstring)."""
    now = time.monotonic()
    cached = _records_to_send.get(host)
    if cached is not None and now - cached[0] < _RECORD_TTL_S:
        return cached[1], False
    envelope, created = _original_env_to_send(host)
    _records_to_send[host] = (now, envelope)
    return envelope, created


def apply() -> None:
    """Install the work-arounds (idempotent)."""
    global _applied
    if _applied:
        return
    _pubsub_module.RpcQueue = _DeepRpcQueue  # type: ignore[misc]
    _pubsub_module.Pubsub._teardown_if_connected = _teardown_if_connected  # type: ignore[method-assign]
    _pubsub_module.maybe_consume_signed_record = _consume_signed_record_once  # type: ignore[assignment]
    _gossipsub_module.maybe_consume_signed_record = _consume_signed_record_once  # type: ignore[assignment]
    _yamux_module._yamux_release_on_read = _release_on_half_window
    _pubsub_module.env_to_send_in_RPC = _env_to_send_cached  # type: ignore[assignment]
    _gossipsub_module.env_to_send_in_RPC = _env_to_send_cached  # type: ignore[assignment]
    _pubsub_module.Pubsub.stream_handler = _stream_handler  # type: ignore[method-assign]
    _pubsub_module.Pubsub._handle_new_peer = _retryable_stream_failure(  # type: ignore[method-assign]
        _pubsub_module.Pubsub._handle_new_peer
    )
    _gossipsub_module.GossipSub._get_peers_to_send = _flood_own_publications(
        _gossipsub_module.GossipSub._get_peers_to_send
    )
    _applied = True


def _retryable_stream_failure(original: Any) -> Any:
    """Wraps ``Pubsub._handle_new_peer``: see "A pubsub stream that failed to open once" above."""

    async def handle_new_peer(self: Any, peer_id: Any) -> None:
        try:
            await original(self, peer_id)
        except StreamFailure as exc:
            raise SwarmException(f"opening a pubsub stream to {peer_id} failed: {exc}") from exc

    return handle_new_peer


def _flood_own_publications(original: Any) -> Any:
    """Wraps ``GossipSub._get_peers_to_send``: see "No flood publishing" in the docstring."""

    def peers_to_send(
        self: Any, topic_ids: Any, msg_forwarder: Any, origin: Any, msg_id: Any = None
    ) -> Any:
        topic_ids = list(topic_ids)
        chosen = set(original(self, topic_ids, msg_forwarder, origin, msg_id))
        pubsub = self.pubsub
        if pubsub is None or origin != pubsub.my_id:
            return chosen
        scorer = self.scorer
        for topic in topic_ids:
            for peer in pubsub.peer_topics.get(topic, ()):
                if peer == origin or self.peer_protocol.get(peer) not in self.protocols:
                    continue
                if scorer is not None and (
                    not scorer.allow_publish(peer, [topic]) or scorer.is_graylisted(peer, [topic])
                ):
                    continue
                chosen.add(peer)
        return chosen

    return peers_to_send


def _release_on_half_window() -> bool:
    """Replaces ``yamux._yamux_release_on_read``: no credit per read (see the docstring)."""
    return False


async def _stream_handler(self: Any, stream: Any) -> None:
    """Replaces ``Pubsub.stream_handler``: see "A malformed pubsub RPC" in the docstring."""
    peer_id = stream.muxed_conn.peer_id
    try:
        await self.continuously_read_stream(stream)
    except (
        _pubsub_module.StreamError,
        _pubsub_module.ParseError,
        _pubsub_module.IncompleteReadError,
        DecodeError,
        ValueError,
    ) as error:
        _pubsub_module.logger.debug("bad pubsub stream from %s (%s); closing it", peer_id, error)
        with contextlib.suppress(Exception):
            await stream.reset()
        self._handle_dead_peer(peer_id)
