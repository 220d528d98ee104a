"""Wiring of the control plane: the API service and the metrics endpoint over the node's services.

The API and metrics packages know no layer; this module is where the node's concrete services
meet them: an adapter presents the P2P service as the API's :class:`~flnode.api.NodeInfoSource`,
P2P connection events are published on the :class:`~flnode.events.EventBus`, and each service's
``statistics`` become Prometheus samples. Later services add their namespaces with
``ApiService.add_provider`` and their samples with ``MetricsService.add_source``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import trio

from . import __version__
from .api import ApiService, ConnectOutcome, PeerView, node_provider
from .config import NodeConfig
from .datadir import DataDir
from .events import EventBus
from .identity import NodeIdentity
from .metrics import MetricsProvider, MetricsService, Sample
from .p2p.service import P2PService
from .privacy_methods import privacy_provider
from .rpc import MethodProvider
from .service import LoopMonitor, Service
from .storage.service import BlobStoreService

PEER_JOINED = "peer_joined"
PEER_LEFT = "peer_left"
_CONNECT_SETTLE_S = 1.0
_ADDRS_TTL_S = 5.0


def peer_event_publisher(bus: EventBus) -> Any:
    """A P2P ``on_peer_event`` callback that publishes ``peer_joined`` / ``peer_left``."""
    bus.declare(PEER_JOINED, "A connection to a peer opened: {peer_id}.")
    bus.declare(PEER_LEFT, "The last connection to a peer closed: {peer_id}.")

    def publish(kind: str, peer: str) -> None:
        bus.publish(PEER_JOINED if kind == "joined" else PEER_LEFT, peer_id=peer)

    return publish


class P2PNodeInfo:
    """:class:`~flnode.api.NodeInfoSource` over the identity, config and P2P service."""

    def __init__(self, config: NodeConfig, identity: NodeIdentity, p2p: P2PService) -> None:
        self.config = config
        self.identity = identity
        self.p2p = p2p
        self.started_at = time.time()
        # The identity's properties re-derive the key each time (~0.1 ms) and libp2p rebuilds
        # multiaddrs on every get_addrs(); node_info is called often, so compute them rarely.
        self._static = {
            "peer_id": identity.peer_id,
            "address": identity.address,
            "roles": list(config.node.roles),
            "network_id": config.node.network_id,
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
        }
        self._addrs: list[str] = []
        self._addrs_at = -1.0

    def info(self) -> Mapping[str, Any]:
        now = time.monotonic()
        if now - self._addrs_at > _ADDRS_TTL_S or not self._addrs:
            self._addrs, self._addrs_at = self.p2p.addrs, now
        return {
            **self._static,
            "uptime_s": round(time.time() - self.started_at, 3),
            "p2p_addrs": list(self._addrs),
        }

    def peers(self) -> Sequence[PeerView]:
        connected = set(self.p2p.connected_peers())
        known = getattr(self.p2p, "_known", {})  # the peer book's addresses; read-only
        views = []
        banned = set(self.p2p.scores.banned())
        for peer in sorted(connected | banned | set(self.p2p.known_peers())):
            entry = known.get(peer)
            addrs = tuple(str(a) for a in entry.addrs) if entry is not None else ()
            views.append(
                PeerView(
                    peer,
                    peer in connected,
                    self.p2p.scores.score(peer),
                    addrs,
                    banned=peer in banned,
                )
            )
        views.sort(key=lambda v: not v.connected)
        return views

    def ban(self, peer_id: str, seconds: float) -> None:
        self.p2p.ban(peer_id, seconds)

    def unban(self, peer_id: str) -> bool:
        return self.p2p.unban(peer_id)

    async def connect(self, addr: str) -> ConnectOutcome:
        peer = await self.p2p.connect(addr)
        if self.p2p.scores.is_banned(peer):
            return ConnectOutcome(peer, False, banned=True)
        # The connection event may be delivered just after the dial returns.
        with trio.move_on_after(_CONNECT_SETTLE_S):
            while peer not in self.p2p.connected_peers():
                await trio.sleep(0.02)
        return ConnectOutcome(peer, peer in self.p2p.connected_peers())


def control_plane_services(
    config: NodeConfig,
    datadir: DataDir,
    identity: NodeIdentity,
    *,
    bus: EventBus,
    monitor: LoopMonitor,
    blobs: BlobStoreService,
    p2p: P2PService,
    extra: Sequence[object] = (),
) -> list[Service]:
    """The metrics and API services of a node (each only when enabled), in start order.

    Each object in ``extra`` (typically a later layer's service) that is a
    :class:`~flnode.rpc.MethodProvider` has its namespace served, and each that is a
    :class:`~flnode.metrics.MetricsProvider` has its samples exported. When one of them is the
    chain service, the ledger's namespaces and ``block_committed`` events come with it
    (:class:`flnode.chain_methods.ChainApi`, started before the API).
    """
    services: list[Service] = []
    api: ApiService | None = None
    if config.api.enabled:
        api = ApiService(config.api, datadir.token_file, bus)
        api.add_provider(node_provider(P2PNodeInfo(config, identity, p2p)))
        api.add_provider(privacy_provider(datadir.privacy_dir))
    chain_api = _chain_api(extra, bus, blobs, identity)
    if chain_api is not None:
        services.append(chain_api)
        extra = [*extra, chain_api, *(chain_api.providers() if api is not None else [])]
    if api is not None:
        for obj in extra:
            if isinstance(obj, MethodProvider):
                api.add_provider(obj)
    if config.metrics.enabled:
        metrics = MetricsService(config.metrics)
        for obj in extra:
            if isinstance(obj, MetricsProvider):
                metrics.add_source(obj.metric_samples)
        for stats in _consensus_stats(extra):
            metrics.add_source(lambda stats=stats: _consensus_samples(stats))
        started = time.time()
        blob_stats: list[Any] = []

        async def refresh_blobs() -> None:
            stat = await trio.to_thread.run_sync(blobs.store.stat)
            blob_stats[:] = [stat]

        metrics.add_refresher(refresh_blobs)
        metrics.add_source(lambda: _node_samples(config, identity, started))
        metrics.add_source(lambda: _p2p_samples(p2p))
        metrics.add_source(lambda: _blob_samples(blob_stats))
        metrics.add_source(lambda: _loop_samples(monitor))
        metrics.add_source(lambda: _event_samples(bus))
        if api is not None:
            metrics.add_source(lambda: _api_samples(api))
        services.append(metrics)
    if api is not None:
        services.append(api)  # last: once it answers, everything it reports is running
    return services


def _chain_api(
    extra: Sequence[object], bus: EventBus, blobs: BlobStoreService, identity: NodeIdentity
) -> Any:
    """The ledger's API service (:mod:`flnode.chain_methods`) when ``extra`` holds the chain.

    Imported only then: a node without a ledger never loads py-evm.
    """
    if not extra:
        return None
    from .chain_methods import ChainApi
    from .consensus.service import ChainService

    chain = next((obj for obj in extra if isinstance(obj, ChainService)), None)
    return None if chain is None else ChainApi(chain, bus, blobs, identity)


def _consensus_stats(extra: Sequence[object]) -> list[Any]:
    """The statistics of a consensus service among ``extra`` (read at scrape time)."""
    if not extra:
        return []
    from .consensus.bft.service import ConsensusService

    return [obj.stats for obj in extra if isinstance(obj, ConsensusService)]


def _consensus_samples(s: Any) -> Iterable[Sample]:
    yield Sample("flnode_consensus_height", "gauge", "Height the consensus is deciding.", s.height)
    yield Sample(
        "flnode_consensus_round",
        "gauge",
        "Round at that height (above 0: earlier rounds timed out or failed).",
        s.round,
    )
    for name, value, text in (
        ("committed", s.committed, "Blocks this node committed by agreement."),
        ("synced", s.synced, "Blocks adopted from peers: block sync or announcements."),
        ("sync_requests", s.sync_requests, "Block-sync requests sent."),
        ("txs_gossiped", s.txs_gossiped, "Transactions gossiped to the other mempools."),
        ("txs_regossiped", s.txs_regossiped, "Own transactions gossiped again (still pending)."),
        ("txs_received", s.txs_received, "Gossiped transactions received."),
        ("txs_committed", s.txs_committed, "Transactions in committed blocks."),
        ("evidence", s.evidence, "Equivocations detected (slashing evidence)."),
    ):
        yield Sample(f"flnode_consensus_{name}", "counter", text, value)
    for reason, count in sorted(s.offences.items()):
        yield Sample(
            "flnode_consensus_offences",
            "counter",
            "Consensus messages rejected, by reason.",
            count,
            {"reason": reason},
        )
    recent = sorted(s.commit_ms[-100:])
    if recent:
        yield Sample(
            "flnode_consensus_commit_seconds",
            "gauge",
            "Median time from first proposal to commit over the last 100 heights.",
            recent[len(recent) // 2] / 1000,
        )


def _node_samples(config: NodeConfig, identity: NodeIdentity, started: float) -> Iterable[Sample]:
    labels = {
        "peer_id": identity.peer_id,
        "roles": ",".join(config.node.roles),
        "network_id": config.node.network_id,
        "version": __version__,
    }
    yield Sample(
        "flnode_node_info", "gauge", "Constant 1, labelled with who this node is.", 1, labels
    )
    yield Sample(
        "flnode_uptime_seconds", "gauge", "Seconds since the node started.", time.time() - started
    )


def _p2p_samples(p2p: P2PService) -> Iterable[Sample]:
    stats = p2p.stats
    yield Sample("flnode_peers", "gauge", "Peers connected now.", len(p2p.connected_peers()))
    yield Sample("flnode_known_peers", "gauge", "Peers in the peer book.", len(p2p.known_peers()))
    gossip = "Gossip messages: out = published by this node, in = received for validation."
    yield Sample("flnode_gossip_messages", "counter", gossip, stats.published, {"direction": "out"})
    yield Sample("flnode_gossip_messages", "counter", gossip, stats.received, {"direction": "in"})
    yield Sample(
        "flnode_gossip_delivered",
        "counter",
        "Gossip envelopes handed to local subscribers.",
        stats.delivered,
    )
    dropped = {**stats.dropped, "queue_full": stats.queue_overflow}
    for reason, count in sorted(dropped.items()):
        yield Sample(
            "flnode_gossip_dropped",
            "counter",
            "Gossip dropped, by reason.",
            count,
            {"reason": reason},
        )
    if p2p.fetcher is not None:
        fs = p2p.fetcher.stats
        yield Sample("flnode_fetch_served", "counter", "Fetch-by-CID requests served.", fs.served)
        yield Sample("flnode_fetch_fetched", "counter", "Blobs fetched from peers.", fs.fetched)
        yield Sample(
            "flnode_fetch_fetched_bytes", "counter", "Bytes fetched from peers.", fs.fetched_bytes
        )
        yield Sample(
            "flnode_fetch_failed", "counter", "Fetches that failed at every provider.", fs.failed
        )


def _blob_samples(blob_stats: list[Any]) -> Iterable[Sample]:
    if not blob_stats:
        return
    s = blob_stats[0]
    yield Sample("flnode_blobs", "gauge", "Blobs in the local store.", s.blobs)
    yield Sample("flnode_blob_bytes", "gauge", "Bytes in the local store.", s.bytes)
    yield Sample("flnode_blobs_pinned", "gauge", "Pinned blobs.", s.pinned_blobs)
    yield Sample(
        "flnode_blobs_quarantined",
        "gauge",
        "Blobs quarantined after failing verification.",
        s.quarantined,
    )


def _loop_samples(monitor: LoopMonitor) -> Iterable[Sample]:
    s = monitor.statistics()
    yield Sample(
        "flnode_event_loop_lag_seconds",
        "gauge",
        "How late the event loop woke the monitor last time.",
        s.last_lag_s,
    )
    yield Sample(
        "flnode_event_loop_lag_max_seconds", "gauge", "Largest event-loop lag seen.", s.max_lag_s
    )
    # Sampled by the monitor on its tick (the task walk must run on the event loop); the process
    # figures come from /proc/self and are absent where there is none.
    p = monitor.process_statistics()
    for key, name, help_text in (
        ("tasks", "flnode_trio_tasks", "Live trio tasks in the node process."),
        ("resident_bytes", "flnode_process_resident_bytes", "Resident memory of the process."),
        ("open_fds", "flnode_process_open_fds", "Open file descriptors of the process."),
        ("threads", "flnode_process_threads", "OS threads of the process."),
    ):
        if key in p:
            yield Sample(name, "gauge", help_text, p[key])


def _event_samples(bus: EventBus) -> Iterable[Sample]:
    s = bus.statistics()
    yield Sample(
        "flnode_events_published", "counter", "Events published on the node's bus.", s.published
    )
    yield Sample(
        "flnode_events_dropped", "counter", "Events dropped for slow subscribers.", s.dropped
    )
    yield Sample("flnode_event_subscriptions", "gauge", "Open event subscriptions.", s.subscribers)


def _api_samples(api: ApiService) -> Iterable[Sample]:
    s = api.stats
    yield Sample("flnode_api_connections", "gauge", "Open API connections.", s.connections)
    yield Sample(
        "flnode_api_frames", "counter", "API frames received (requests and batches).", s.frames
    )
    yield Sample(
        "flnode_api_connections_rejected",
        "counter",
        "API handshakes refused (token, limit).",
        s.rejected_connections,
    )
    for method, count in sorted(s.calls.items()):
        yield Sample(
            "flnode_api_calls", "counter", "API calls served, by method.", count, {"method": method}
        )
    for code, count in sorted(s.errors.items()):
        yield Sample(
            "flnode_api_errors",
            "counter",
            "API error replies, by JSON-RPC code.",
            count,
            {"code": str(code)},
        )
