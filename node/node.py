"""The Node: one daemon, whose role decides which services it runs.

The Node owns a trio nursery. It starts its services one by one (each reports when it is ready),
announces readiness (a log line and ``<datadir>/node.json``), waits for a stop request, then stops
the services in reverse order, each with a bounded grace period, and logs "stopped". Later issues add
their services (p2p, chain, consensus, learning, api) to :func:`services_for` without changing this
lifecycle.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from . import __version__
from .cid import Cid
from .config import NodeConfig
from .controlplane import control_plane_services, peer_event_publisher
from .datadir import DataDir
from .errors import ConfigError
from .events import EventBus
from .identity import NodeIdentity
from .log import get_logger
from .p2p.service import P2PService
from .service import LoopMonitor, Service
from .storage import BlobNotFoundError, CorruptBlobError
from .storage.service import BlobStoreService

if TYPE_CHECKING:
    from .consensus.service import ChainService


def services_for(config: NodeConfig, datadir: DataDir, identity: NodeIdentity) -> list[Service]:
    """The services a node with ``config`` runs, in start order."""
    blobs = BlobStoreService(
        datadir.blob_dir,
        max_blob_size=config.storage.max_blob_size,
        gc_budget_bytes=config.storage.gc_budget_bytes,
        gc_interval_s=config.storage.gc_interval_s,
    )

    async def blob_source(cid: Cid) -> bytes | None:
        """Serve fetch-by-CID requests from the local store (verified reads)."""
        try:
            return await trio.to_thread.run_sync(blobs.store.get, cid)
        except (BlobNotFoundError, CorruptBlobError):
            return None

    bus = EventBus()
    p2p = P2PService(
        identity,
        config.p2p,
        config.node.network_id,
        blob_source,
        on_peer_event=peer_event_publisher(bus),
    )
    monitor = LoopMonitor()
    chain = chain_service_for(config, datadir, identity)
    ledger: list[Service] = []
    providers: list[object] = []
    if chain is not None:
        from .consensus_net import consensus_service_for
        from .federation.context import FederationContext
        from .federation.service import FederationService

        federation = FederationService(
            FederationContext(config, datadir, identity, p2p, chain, blobs, bus)
        )
        consensus = consensus_service_for(
            config,
            datadir,
            identity,
            p2p,
            chain,
            federation.consensus_hooks(),
        )
        ledger = [chain, *([consensus] if consensus is not None else []), federation]
        providers = list(federation.providers())
    control = control_plane_services(
        config,
        datadir,
        identity,
        bus=bus,
        monitor=monitor,
        blobs=blobs,
        p2p=p2p,
        extra=[*ledger, *providers],
    )
    return [monitor, blobs, p2p, *ledger, *control]


def chain_service_for(
    config: NodeConfig, datadir: DataDir, identity: NodeIdentity
) -> ChainService | None:
    """The ledger service when ``chain.network_file`` is set: the chain on ``<datadir>/chain.sqlite``.

    The network file is verified (its genesis recomputed) and a copy kept in the data dir; the
    SQLite database comes from ``flnode.storage`` and is handed to the consensus layer as a factory.
    """
    if not config.chain.network_file:
        return None
    from .consensus.network import load_network
    from .consensus.service import CHAIN_DB_FILE, ChainService, adopt_network
    from .storage.chaindb import SqliteAtomicDB

    path = Path(config.chain.network_file)
    spec = load_network(path if path.is_absolute() else datadir.path / path)
    if spec.network_id != config.node.network_id:
        raise ConfigError(
            f"node.network_id is {config.node.network_id!r} but the network file is for "
            f"{spec.network_id!r}; set node.network_id = {spec.network_id!r} (or omit --network-id)"
        )
    adopt_network(datadir.path, spec)
    return ChainService(
        spec,
        lambda: SqliteAtomicDB(datadir.path / CHAIN_DB_FILE),
        identity,
        mempool_max_txs=config.chain.mempool_max_txs,
        max_tx_size=config.chain.max_tx_size,
        dev_mine_interval_s=config.chain.dev_mine_interval_s,
        on_close=lambda db: db.close(),  # type: ignore[attr-defined]
    )


@dataclass(slots=True)
class _Running:
    service: Service
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)


class Node:
    """A running flnode daemon."""

    def __init__(
        self,
        config: NodeConfig,
        identity: NodeIdentity,
        datadir: str | Path,
        services: Sequence[Service] | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.datadir = DataDir(Path(datadir))
        self.services = (
            list(services) if services is not None else services_for(config, self.datadir, identity)
        )
        self._stop_requested = trio.Event()
        self._running: list[_Running] = []
        self.log = get_logger("flnode.node", node=identity.peer_id[-8:])

    def request_stop(self) -> None:
        """Ask the node to stop; :meth:`run` returns once every service has stopped."""
        self._stop_requested.set()

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(f"no service named {name!r} in this node")

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        started_at = time.time()
        async with trio.open_nursery() as nursery:
            try:
                for svc in self.services:
                    running = _Running(svc, trio.CancelScope())
                    self._running.append(running)
                    await nursery.start(self._supervise, running)
                described: dict[str, object] = {}
                for svc in self.services:
                    described.update(svc.describe())
                self.datadir.write_state(
                    {
                        **described,
                        "pid": os.getpid(),
                        "peer_id": self.identity.peer_id,
                        "address": self.identity.address,
                        "roles": list(self.config.node.roles),
                        "network_id": self.config.node.network_id,
                        "version": __version__,
                        "started_at": started_at,
                    }
                )
                self.log.info(
                    "ready",
                    peer_id=self.identity.peer_id,
                    address=self.identity.address,
                    roles=",".join(self.config.node.roles),
                    network_id=self.config.node.network_id,
                    services=[s.name for s in self.services],
                    startup_s=round(time.time() - started_at, 3),
                    **described,
                )
                task_status.started(self)
                await self._stop_requested.wait()
                self.log.info("stopping")
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop_services()
                    self.datadir.clear_state()
        self.log.info("stopped", uptime_s=round(time.time() - started_at, 3))

    async def _supervise(self, running: _Running, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with running.scope:
                await running.service.run(task_status=task_status)
                if not running.scope.cancel_called:
                    raise RuntimeError(
                        f"service {running.service.name!r} exited while the node ran"
                    )
        finally:
            running.done.set()

    async def _stop_services(self) -> None:
        grace = self.config.node.shutdown_timeout_s
        for running in reversed(self._running):
            running.scope.cancel()
            with trio.move_on_after(grace) as waited:
                await running.done.wait()
            if waited.cancelled_caught:
                self.log.warning(
                    "service did not stop in time", service=running.service.name, grace_s=grace
                )
