"""The P2P service: one libp2p host, signed gossip, fetch-by-CID, discovery and peer scoring.

What runs inside (one trio nursery, all stopped together, host closed first):

* a libp2p host from the node's secp256k1 key (TCP + Noise + Yamux), listening on the configured
  multiaddrs, with GossipSub (``/meshsub/1.1.0``, 1 s heartbeat);
* **gossip**: topics are ``/flnode/<network-id>/<name>``; every message is a signed envelope
  (:mod:`flnode.p2p.envelope`). Envelopes are checked in GossipSub's *validator*, before they are
  delivered or forwarded, so a bad message stops at the first honest hop; the forwarding peer (or
  the sender, when its signature verified) is penalised. One consumer task per topic drains the
  libp2p subscription into bounded per-subscriber queues; overflow is logged and counted;
* **connections**: the bootstrap peers and every peer learned later are kept in a peer book;
  a connector task dials the ones that are not connected with exponential backoff (reconnecting
  when a peer drops or restarts). Peers announce who they know on the ``peers`` topic (peer
  exchange), so knowing one bootstrap peer is enough; mDNS finds peers on a LAN when enabled;
* **peer scoring**: :class:`~flnode.p2p.scoring.PeerScoreBook`; a banned peer is disconnected,
  blacklisted in GossipSub and not dialled until its ban ends;
* **fetch-by-CID**: :class:`~flnode.p2p.fetch.BlobFetcher` serves the local store (through a
  callback the node supplies, so this package never touches storage) and fetches from others.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from ..cid import Cid
from ..config import P2PSection
from ..identity import NodeIdentity
from ..log import get_logger
from ..service import Service
from . import _libp2p_fixes
from .envelope import Envelope, EnvelopeCodec, ReplayGuard, SequenceCounter, Verdict
from .errors import EnvelopeError
from .fetch import BlobFetcher, BlobSource
from .messages import MessageRegistry, PeerExchange, default_registry
from .scoring import PeerScoreBook

GOSSIP_PROTOCOL = "/meshsub/1.1.0"
PEERS_TOPIC = "peers"
_DIAL_TIMEOUT_S = 5.0
_CONNECTOR_TICK_S = 0.25
_MAX_PX_ADDRS = 64
_PX_GAP_PER_PEER_S = 0.25  # least time between two announcements, per connected peer
_PX_MAX_GAP_S = 15.0
_VALIDATED_CACHE = 8192
_REANNOUNCE_CHURN_S = 20.0  # see _reannounce_subscriptions
_REANNOUNCE_MIN_S = 2.0
_REANNOUNCE_PER_PEER_S = 0.2
_REANNOUNCE_STABLE_S = 30.0
_REANNOUNCE_AFTER_S = (0.5, 2.0)  # to a peer after a duplicate connection to it closed

log = get_logger("flnode.p2p")


def topic_name(network_id: str, name: str) -> str:
    """The libp2p topic of a flnode topic: ``/flnode/<network-id>/<name>``."""
    return f"/flnode/{network_id}/{name}"


@dataclass(slots=True)
class GossipStatistics:
    """Counters for the metrics endpoint (a later issue exports them)."""

    published: int = 0
    received: int = 0
    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    queue_overflow: int = 0

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


@dataclass(slots=True)
class _KnownPeer:
    addrs: list[multiaddr.Multiaddr]
    backoff: float = 0.5
    next_try: float = 0.0
    from_bootstrap: bool = False


class _Notifee(INotifee):
    """Forwards libp2p connection events to the service (called on the trio loop)."""

    def __init__(self, service: P2PService) -> None:
        self.service = service

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self.service._on_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self.service._on_disconnected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


PeerEventHandler = Callable[[str, str], None]
"""Called with ("joined" | "left", peer id) when a connection to a peer opens or closes."""


class P2PService(Service):
    """The node's libp2p presence. See the module docstring."""

    name = "p2p"

    def __init__(
        self,
        identity: NodeIdentity,
        settings: P2PSection,
        network_id: str,
        blob_source: BlobSource,
        *,
        registry: MessageRegistry | None = None,
        on_peer_event: PeerEventHandler | None = None,
    ) -> None:
        _libp2p_fixes.apply()
        self.identity = identity
        self.settings = settings
        self.network_id = network_id
        self.registry = registry or default_registry()
        self.codec = EnvelopeCodec(
            network_id, self.registry, max_skew_ms=int(settings.max_clock_skew_s * 1000)
        )
        self.scores = PeerScoreBook(
            ban_threshold=settings.ban_threshold, ban_seconds=settings.ban_seconds
        )
        self.stats = GossipStatistics()
        self.peer_id = identity.peer_id
        self._id = ID.from_base58(self.peer_id)
        self._guard = ReplayGuard(self.peer_id, max_skew_ms=int(settings.max_clock_skew_s * 1000))
        self._seq = SequenceCounter()
        self._blob_source = blob_source
        self._on_peer_event = on_peer_event
        self._known: dict[str, _KnownPeer] = {}
        self._connected: set[str] = set()
        self._subscribers: dict[str, list[trio.MemorySendChannel[Envelope]]] = {}
        self._validated: OrderedDict[tuple[bytes, bytes], Envelope] = OrderedDict()
        self._px_news = trio.Event()
        """Set when a peer connects that is news to the network (see :meth:`_announce_peers`)."""
        self._connections_changed_at = -math.inf
        """Monotonic time of the last connection opened or closed (duplicates included)."""
        self._nursery: trio.Nursery | None = None
        self._ready = trio.Event()
        self.host = None
        self.pubsub: Pubsub | None = None
        self.fetcher: BlobFetcher | None = None
        self._listen_addrs = [multiaddr.Multiaddr(a) for a in settings.listen]
        for addr in settings.bootstrap:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            if info.peer_id.to_base58() != self.peer_id:
                self._known[info.peer_id.to_base58()] = _KnownPeer(
                    list(info.addrs), from_bootstrap=True
                )

    # -- public API --------------------------------------------------------------------------

    @property
    def addrs(self) -> list[str]:
        """This node's dialable addresses, each ending in ``/p2p/<peer id>``."""
        if self.host is None:
            return []
        return [str(a) for a in self.host.get_addrs()]

    def connected_peers(self) -> list[str]:
        return sorted(self._connected)

    def known_peers(self) -> list[str]:
        return sorted(self._known)

    async def publish(self, topic: str, message: object) -> bytes:
        """Sign ``message`` into an envelope and gossip it on ``topic``; return the envelope."""
        if self.pubsub is None:
            raise RuntimeError("the p2p service is not running")
        raw = self.codec.encode(self.identity, message, seq=self._seq.next())
        await self.pubsub.publish(topic_name(self.network_id, topic), raw)
        self.stats.published += 1
        return raw

    async def subscribe(
        self, topic: str, max_queued: int | None = None
    ) -> trio.MemoryReceiveChannel[Envelope]:
        """A channel of verified envelopes arriving on ``topic`` (our own are not delivered).

        The channel holds ``max_queued`` envelopes (``p2p.gossip_queue``); when a slow reader
        lets it fill up, further envelopes for it are dropped, logged and counted.
        """
        if self._nursery is None or self.pubsub is None:
            raise RuntimeError("the p2p service is not running")
        send, receive = trio.open_memory_channel[Envelope](max_queued or self.settings.gossip_queue)
        full = topic_name(self.network_id, topic)
        first = full not in self._subscribers
        self._subscribers.setdefault(full, []).append(send)
        if first:
            self.pubsub.set_topic_validator(full, self._validate, False)
            subscription = await self.pubsub.subscribe(full)
            self._nursery.start_soon(self._consume, full, subscription)
        return receive

    async def fetch(self, cid: Cid, providers: Sequence[str]) -> bytes:
        """The verified bytes of ``cid`` from the first of ``providers`` that has them."""
        if self.fetcher is None:
            raise RuntimeError("the p2p service is not running")
        return await self.fetcher.fetch(cid, providers)

    async def connect(self, addr: str) -> str:
        """Dial ``/ip4/.../tcp/N/p2p/<id>`` now and remember the peer; returns its peer ID.
        A banned peer is remembered but not dialled."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        peer = info.peer_id.to_base58()
        self._known.setdefault(peer, _KnownPeer(list(info.addrs)))
        if not self.scores.is_banned(peer):
            await self._dial(peer, info)
        return peer

    async def wait_for_peers(self, count: int, timeout: float) -> None:
        """Wait until at least ``count`` peers are connected (raises ``trio.TooSlowError``)."""
        with trio.fail_after(timeout):
            while len(self._connected) < count:
                await trio.sleep(0.05)

    async def wait_for_topic_peers(self, topic: str, count: int, timeout: float) -> None:
        """Wait until ``count`` peers subscribe to ``topic`` (so a publish reaches someone)."""
        full = topic_name(self.network_id, topic)
        with trio.fail_after(timeout):
            while self.pubsub is None or len(self.pubsub.peer_topics.get(full, ())) < count:
                await trio.sleep(0.05)

    def describe(self) -> dict[str, object]:
        return {"p2p_addrs": self.addrs}

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host = new_host(
            key_pair=self.identity.libp2p_key_pair(),
            listen_addrs=self._listen_addrs,
            enable_mDNS=self.settings.mdns,
            connection_config=ConnectionConfig(
                # Without this, every dial waits 250 ms for a second connection (stack notes, P1).
                max_connections_per_peer=1,
            ),
        )
        _libp2p_fixes.disable_auto_connector(host)
        gossipsub = GossipSub(
            protocols=[GOSSIP_PROTOCOL],
            # Every subscriber receives each message from about `degree` mesh peers, and in
            # py-libp2p each copy costs real CPU: 4 (not the spec's 6) halves that on a
            # one-machine devnet and is still a connected mesh with gossip repair.
            degree=4,
            degree_low=3,
            degree_high=8,
            heartbeat_interval=1,  # the default 120 s forms the mesh far too slowly (P9)
            max_messages_per_topic_per_second=1000.0,  # default 10 drops bursts (P5)
            # Every peer of a devnet shares 127.0.0.1; IP-diversity pruning would starve meshes.
            eclipse_protection_enabled=False,
            # A message is also queued for every connected peer not (yet) subscribed to its
            # topic, in case a subscription is in flight; with committee-only topics that is
            # most peers, so keep those queues for seconds, not the default 30 s.
            pending_messages_ttl=3.0,
        )
        max_rpc = self.registry.max_size + 4096
        pubsub = Pubsub(host, gossipsub, max_inbound_rpc_size=max(max_rpc, 1 << 20))
        self.host, self.pubsub = host, pubsub
        host.get_network().register_notifee(_Notifee(self))
        mdns_token: Callable[[PeerInfo], None] | None = None
        try:
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(host.run(self._listen_addrs))
                await stack.enter_async_context(background_trio_service(pubsub))
                await stack.enter_async_context(background_trio_service(gossipsub))
                # Leaving host.run() does not close open connections (P2): close them first.
                stack.push_async_callback(self._close_host)
                await pubsub.wait_until_ready()
                self.fetcher = BlobFetcher(
                    host,
                    self._blob_source,
                    self.scores,
                    max_size=self.settings.max_fetch_size,
                    timeout_s=self.settings.fetch_timeout_s,
                    max_concurrent=self.settings.max_concurrent_fetches,
                )
                if self.settings.mdns:
                    mdns_token = self._watch_mdns(trio.lowlevel.current_trio_token())
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    px = await self.subscribe(PEERS_TOPIC)
                    nursery.start_soon(self._handle_peer_exchange, px)
                    nursery.start_soon(self._connector)
                    nursery.start_soon(self._announce_peers)
                    nursery.start_soon(self._reannounce_subscriptions)
                    log.info("p2p listening", addrs=self.addrs, bootstrap=len(self._known))
                    self._ready.set()
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            if mdns_token is not None:
                from libp2p.discovery.events.peerDiscovery import peerDiscovery

                peerDiscovery.unregister_peer_discovered_handler(mdns_token)
            for channels in self._subscribers.values():
                for channel in channels:
                    channel.close()

    async def _close_host(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2.0):
            await self.host.close()

    # -- gossip ------------------------------------------------------------------------------

    def _validate(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        """GossipSub validator: decode, verify and de-duplicate an envelope before delivery."""
        self.stats.received += 1
        origin = bytes(msg.from_id)
        if origin == self._id.to_bytes() and forwarder == self._id:
            return True  # our own publish: already valid, let it propagate
        try:
            envelope = self.codec.decode(bytes(msg.data), expected_sender=origin)
        except EnvelopeError as exc:
            self.stats.drop(exc.reason)
            blamed = forwarder.to_base58()
            if exc.sender_verified and exc.sender is not None:
                blamed = ID(exc.sender).to_base58()
            self.penalise(blamed, exc.reason)
            log.warning(
                "gossip dropped",
                reason=exc.reason,
                forwarder=forwarder.to_base58(),
                detail=str(exc)[:200],
            )
            return False
        verdict = self._guard.check(envelope)
        if verdict is Verdict.OWN:
            return False  # our envelope re-wrapped by someone else: never deliver or forward
        if verdict is not Verdict.NEW:
            self.stats.drop(verdict.value)
            if verdict in (Verdict.REPLAY, Verdict.CONFLICT):
                self.penalise(envelope.peer_id, verdict.value)
                log.warning("gossip dropped", reason=verdict.value, sender=envelope.peer_id)
            return False
        self._validated[(origin, bytes(msg.seqno))] = envelope
        if len(self._validated) > _VALIDATED_CACHE:
            self._validated.popitem(last=False)
        return True

    async def _consume(self, full_topic: str, subscription: object) -> None:
        """Drain one libp2p subscription into our subscribers' bounded channels."""
        own = self._id.to_bytes()
        while True:
            msg = await subscription.get()  # type: ignore[attr-defined]
            origin = bytes(msg.from_id)
            if origin == own:
                continue
            envelope = self._validated.pop((origin, bytes(msg.seqno)), None)
            if envelope is None:
                self.stats.drop("unvalidated")
                continue
            for channel in self._subscribers.get(full_topic, ()):
                try:
                    channel.send_nowait(envelope)
                    self.stats.delivered += 1
                except trio.WouldBlock:
                    self.stats.queue_overflow += 1
                    log.warning("gossip queue full, message dropped", topic=full_topic)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    continue

    # -- peers -------------------------------------------------------------------------------

    def penalise(self, peer: str, reason: str) -> None:
        """Charge ``peer`` for an offence (``reason``: a key of ``scoring.PENALTIES``); below the
        ban threshold it is banned: blacklisted in pubsub and disconnected. For the layers above
        that judge what peers send them (e.g. the consensus)."""
        if peer == self.peer_id:
            return
        if self.scores.penalise(peer, reason):
            log.warning(
                "peer banned",
                peer=peer,
                score=round(self.scores.score(peer), 1),
                seconds=self.scores.ban_seconds,
            )
            if self.pubsub is not None:
                self.pubsub.add_to_blacklist(ID.from_base58(peer))
            if self._nursery is not None and self.host is not None:
                self._nursery.start_soon(self.host.disconnect, ID.from_base58(peer))

    def ban(self, peer: str, seconds: float) -> None:
        """Ban ``peer`` for ``seconds`` (an operator's decision, e.g. ``node_ban`` on the API):
        disconnected, blacklisted in pubsub, not dialled and refused until the ban ends."""
        if peer == self.peer_id:
            raise ValueError("a node cannot ban itself")
        self.scores.ban(peer, seconds)
        log.warning("peer banned by the operator", peer=peer, seconds=seconds)
        if self.pubsub is not None:
            self.pubsub.add_to_blacklist(ID.from_base58(peer))
        if self._nursery is not None and self.host is not None:
            self._nursery.start_soon(self.host.disconnect, ID.from_base58(peer))

    def unban(self, peer: str) -> bool:
        """Lift ``peer``'s ban (whoever imposed it); a known peer is dialled again soon.
        Whether it was banned."""
        lifted = self.scores.unban(peer)
        if self.pubsub is not None:
            self.pubsub.remove_from_blacklist(ID.from_base58(peer))
        known = self._known.get(peer)
        if known is not None:
            known.backoff, known.next_try = 0.5, time.monotonic()
        if lifted:
            log.info("peer ban lifted", peer=peer)
        return lifted

    def _on_connected(self, peer_id: ID) -> None:
        self._connections_changed_at = time.monotonic()
        peer = peer_id.to_base58()
        if self.scores.is_banned(peer):
            if self._nursery is not None and self.host is not None:
                self._nursery.start_soon(self.host.disconnect, peer_id)
            return
        if peer not in self._connected:
            self._connected.add(peer)
            if peer not in self._known or len(self._connected) == 1:
                self._px_news.set()
            log.info("peer connected", peer=peer, peers=len(self._connected))
            if self._on_peer_event:
                self._on_peer_event("joined", peer)

    def _on_disconnected(self, peer_id: ID) -> None:
        self._connections_changed_at = time.monotonic()
        peer = peer_id.to_base58()
        if self.host is not None and peer_id in self.host.get_connected_peers():
            # Another connection to the peer is still open, and its pubsub may just have
            # forgotten our subscriptions (_libp2p_fixes, "Lost subscriptions").
            if self._nursery is not None:
                self._nursery.start_soon(self._reannounce_to, peer_id)
            return
        if peer in self._connected:
            self._connected.discard(peer)
            known = self._known.get(peer)
            if known is not None:
                known.backoff, known.next_try = 0.5, time.monotonic() + 0.5
            log.info("peer disconnected", peer=peer, peers=len(self._connected))
            if self._on_peer_event:
                self._on_peer_event("left", peer)

    async def _dial(self, peer: str, info: PeerInfo) -> bool:
        assert self.host is not None
        try:
            with trio.fail_after(_DIAL_TIMEOUT_S):
                await self.host.connect(info)
            return True
        except Exception as exc:  # libp2p raises assorted errors for refused or failed dials
            log.debug("dial failed", peer=peer, error=type(exc).__name__)
            return False

    async def _connector(self) -> None:
        """Keep a connection to every known peer, dialling with exponential backoff."""
        limit = trio.CapacityLimiter(8)
        dialling: set[str] = set()

        async def attempt(peer: str, known: _KnownPeer) -> None:
            async with limit:
                ok = await self._dial(peer, PeerInfo(ID.from_base58(peer), known.addrs))
            dialling.discard(peer)
            if ok:
                known.backoff = 0.5
            else:
                known.next_try = time.monotonic() + known.backoff
                known.backoff = min(known.backoff * 2, self.settings.reconnect_max_backoff_s)

        async with trio.open_nursery() as nursery:
            while True:
                now = time.monotonic()
                for peer, known in list(self._known.items()):
                    if (
                        peer in self._connected
                        or peer in dialling
                        or now < known.next_try
                        or self.scores.is_banned(peer)
                    ):
                        continue
                    if len(self._connected) >= self.settings.max_peers:
                        break
                    dialling.add(peer)
                    nursery.start_soon(attempt, peer, known)
                await trio.sleep(_CONNECTOR_TICK_S)

    def _learn(self, addr: multiaddr.Multiaddr) -> None:
        try:
            info = info_from_p2p_addr(addr)
        except Exception:
            return
        peer = info.peer_id.to_base58()
        if peer == self.peer_id or self.scores.is_banned(peer):
            return
        known = self._known.get(peer)
        if known is None:
            if len(self._known) >= 4 * self.settings.max_peers:
                return
            self._known[peer] = _KnownPeer(list(info.addrs))
        elif peer not in self._connected:
            for a in info.addrs:
                if a not in known.addrs:
                    known.addrs.insert(0, a)  # a restarted peer may listen on a new port
            # Someone connected to it just told us about it: it is probably up, retry soon.
            known.next_try = min(known.next_try, time.monotonic() + 0.5)
            known.backoff = min(known.backoff, 1.0)

    async def _handle_peer_exchange(self, channel: trio.MemoryReceiveChannel[Envelope]) -> None:
        async for envelope in channel:
            message = envelope.message
            if not isinstance(message, PeerExchange):
                continue
            for text in message.addrs:
                # Parsing a multiaddr is the expensive part, and in a settled network nearly
                # every announced peer is one we are connected to already.
                peer = text.rpartition("/p2p/")[2]
                if peer == self.peer_id or (peer in self._connected and peer in self._known):
                    continue
                try:
                    self._learn(multiaddr.Multiaddr(text))
                except Exception:
                    continue

    async def _announce_peers(self) -> None:
        """Tell the network whom we know: soon after we meet a peer that is news, and otherwise
        every ``peer_exchange_interval_s``.

        Every announcement reaches every node, so it costs O(N) deliveries, each with two
        signature checks. Announcing on every connection change made that O(N²) per change
        while N nodes meshed up: in a 45-node devnet each device validated ~1,200 announcements
        in its first 5 minutes, gossip arrived a minute late and no block was committed. A peer
        is news when we did not know it before it connected to us (nobody announced it to us,
        so others probably lack it too); a peer we dialled because someone announced it is not.
        So is our first connection after start or after losing every peer: the announcement
        carries our own addresses.

        News is still spaced: two announcements are at least ``_PX_GAP_PER_PEER_S`` per
        connected peer apart (at most ``_PX_MAX_GAP_S``), so a node with few peers spreads a new
        one within a second and a seed that many nodes join at once sends one list for them all.
        """
        last_at = trio.current_time()
        while True:
            with trio.move_on_at(last_at + self.settings.peer_exchange_interval_s):
                await self._px_news.wait()
                await trio.sleep(0.2)  # let a burst of new connections settle
            gap = min(_PX_MAX_GAP_S, _PX_GAP_PER_PEER_S * len(self._connected))
            await trio.sleep_until(max(trio.current_time(), last_at + gap))
            last_at = trio.current_time()
            self._px_news = trio.Event()
            if not self._connected:
                continue
            try:
                await self.publish(PEERS_TOPIC, PeerExchange(tuple(self._px_addrs())))
            except Exception as exc:  # never let discovery kill the service
                log.debug("peer exchange publish failed", error=repr(exc))

    def _px_addrs(self) -> list[str]:
        """Our own addresses, then one address of each connected peer (up to _MAX_PX_ADDRS)."""
        addrs = self.addrs[:4]
        for peer in sorted(self._connected):
            known = self._known.get(peer)
            if known is None and self.host is not None:
                try:
                    stored = self.host.get_peerstore().addrs(ID.from_base58(peer))
                except Exception:  # PeerStoreError: no addresses recorded for it
                    stored = []
                known = _KnownPeer(list(stored)) if stored else None
            if known is not None and known.addrs:
                transport = str(known.addrs[0]).split("/p2p/", 1)[0]
                addrs.append(f"{transport}/p2p/{peer}")
            if len(addrs) >= _MAX_PX_ADDRS:
                break
        return addrs

    async def _reannounce_subscriptions(self) -> None:
        """Work around libp2p forgetting a live peer's view of our topics (_libp2p_fixes).

        The loss follows one of two connections to the same peer closing, so our topics go to
        that peer shortly after we see it happen (:meth:`_reannounce_to`). We do not always see
        it (a 5-host test once waited 20 s in vain for a subscription), so while connections
        open or close, and for ``_REANNOUNCE_CHURN_S`` after, they also go to every peer every
        ``_REANNOUNCE_MIN_S``, or ``_REANNOUNCE_PER_PEER_S`` per connected peer if that is
        longer, and every ``_REANNOUNCE_STABLE_S`` otherwise. The spacing keeps a forming mesh
        of N nodes at O(N) of these RPCs a second: every 2 s regardless had been N² RPCs every
        2 s, half the CPU of a 35-node devnet's start-up (114 CPU-s and 65 s to come up with it,
        64 CPU-s and 38 s with no re-sending at all).
        """
        sent_at = time.monotonic()  # a new connection's first RPC carries our topics anyway
        while True:
            await trio.sleep(_REANNOUNCE_MIN_S)
            now = time.monotonic()
            churn = now - self._connections_changed_at <= _REANNOUNCE_CHURN_S
            every = (
                max(_REANNOUNCE_MIN_S, _REANNOUNCE_PER_PEER_S * len(self._connected))
                if churn
                else _REANNOUNCE_STABLE_S
            )
            if now - sent_at < every or self.pubsub is None or not self._connected:
                continue
            sent_at = now
            await self._send_subscriptions()

    async def _reannounce_to(self, peer_id: ID) -> None:
        """Re-send our subscriptions to ``peer_id`` once its side has handled the closed
        connection (it forgets our topics when it does), and once more later."""
        waited = 0.0
        for at in _REANNOUNCE_AFTER_S:
            await trio.sleep(at - waited)
            waited = at
            if self.host is None or peer_id not in self.host.get_connected_peers():
                return
            await self._send_subscriptions(peer_id)

    async def _send_subscriptions(self, peer_id: ID | None = None) -> None:
        """Our subscriptions to ``peer_id``, or to every peer; failures are only logged."""
        if self.pubsub is None:
            return
        try:
            await _libp2p_fixes.reannounce_subscriptions(self.pubsub, peer_id)
        except Exception as exc:  # never let this kill the service
            log.debug("re-announcing subscriptions failed", error=repr(exc))

    def _watch_mdns(self, token: trio.lowlevel.TrioToken) -> Callable[[PeerInfo], None]:
        from libp2p.discovery.events.peerDiscovery import peerDiscovery

        def found(info: PeerInfo) -> None:
            def learn() -> None:
                for addr in info.addrs:
                    self._learn(addr.encapsulate(multiaddr.Multiaddr(f"/p2p/{info.peer_id}")))

            token.run_sync_soon(learn)

        peerDiscovery.register_peer_discovered_handler(found)
        return found
