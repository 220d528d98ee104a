"""Real consensus services on real chains (py-evm in memory), for in-process service tests.

:class:`MemoryNetwork` implements the consensus network seam between services in one process
(gossip fan-out, block sync by direct call, peer penalties recorded), so a test can stop,
restart and partition nodes precisely; ``test_p2p.py`` runs the same services over real libp2p.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trio
from eth.db.atomic import AtomicDB

from flnode.consensus.bft.abc import SyncHandler
from flnode.consensus.bft.core import Timeouts
from flnode.consensus.bft.service import ConsensusService, ConsensusSettings
from flnode.consensus.network import NetworkSpec, new_network
from flnode.consensus.service import ChainService
from flnode.identity import NodeIdentity

ETHER = 10**18
FAST = ConsensusSettings(
    timeouts=Timeouts(propose=0.6, prevote=0.3, precommit=0.3, delta=0.3, rebroadcast=1.0),
    proposal_wait_s=0.05,
    tx_gossip_interval_s=0.02,
    sync_interval_s=1.0,
    initial_sync_s=5.0,
)


def people(n: int, seed: int = 41) -> list[NodeIdentity]:
    return [NodeIdentity.from_secret((seed * 1000 + i + 1).to_bytes(32, "big")) for i in range(n)]


def make_spec(miners: list[NodeIdentity], others: list[NodeIdentity]) -> NetworkSpec:
    return new_network(
        network_id="bft-test",
        chain_id=4343,
        accounts=[(p.address, 1000 * ETHER) for p in [*miners, *others]],
        miners=[(m.address, 2 * ETHER) for m in miners],
        genesis_timestamp=1_700_000_000,
        min_stake=ETHER,
    )


class MemoryNetwork:
    """The consensus network seam for many services in one process."""

    def __init__(self) -> None:
        self.members: dict[str, MemoryEndpoint] = {}
        self.blocked: set[tuple[str, str]] = set()

    def endpoint(self, name: str) -> MemoryEndpoint:
        endpoint = MemoryEndpoint(self, name)
        self.members[name] = endpoint
        return endpoint

    def reachable(self, a: str, b: str) -> bool:
        return (a, b) not in self.blocked and self.members[b].up


@dataclass
class MemoryEndpoint:
    net: MemoryNetwork
    name: str
    up: bool = True
    handler: SyncHandler | None = None
    channels: dict[str, list[trio.MemorySendChannel[tuple[bytes, str]]]] = field(
        default_factory=dict
    )
    penalties: list[tuple[str, str]] = field(default_factory=list)

    async def publish(self, topic: str, data: bytes) -> None:
        for other in self.net.members.values():
            if other is self or not self.net.reachable(self.name, other.name):
                continue
            for channel in other.channels.get(topic, []):
                with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    channel.send_nowait((data, self.name))

    async def subscribe(self, topic: str) -> AsyncIterator[tuple[bytes, str]]:
        send, receive = trio.open_memory_channel[tuple[bytes, str]](10_000)
        self.channels.setdefault(topic, []).append(send)

        async def iterate() -> AsyncIterator[tuple[bytes, str]]:
            async for item in receive:
                yield item

        return iterate()

    def serve_sync(self, handler: SyncHandler) -> None:
        self.handler = handler

    async def request_sync(self, peer: str, request: bytes) -> bytes:
        other = self.net.members[peer]
        if not self.net.reachable(self.name, peer) or other.handler is None:
            raise ConnectionError(f"{peer} unreachable")
        return await other.handler(request, self.name)

    def peers(self) -> list[str]:
        return [n for n in self.net.members if n != self.name and self.net.reachable(self.name, n)]

    def penalise(self, peer: str, reason: str) -> None:
        self.penalties.append((peer, reason))

    def go_down(self) -> None:
        self.up = False
        for channels in self.channels.values():
            for channel in channels:
                channel.close()
        self.channels = {}
        self.handler = None


@dataclass
class Node:
    """One node: its chain DB survives restarts (like the SQLite file), as does its state dir."""

    name: str
    identity: NodeIdentity
    spec: NetworkSpec
    state_dir: Path
    db: AtomicDB = field(default_factory=AtomicDB)
    chain: ChainService | None = None
    consensus: ConsensusService | None = None
    scope: trio.CancelScope | None = None
    endpoint: MemoryEndpoint | None = None

    async def start(
        self, nursery: trio.Nursery, net: MemoryNetwork, settings: ConsensusSettings = FAST
    ) -> None:
        self.endpoint = net.endpoint(self.name)
        self.chain = ChainService(self.spec, lambda: self.db, self.identity)
        self.consensus = ConsensusService(
            self.chain,
            self.endpoint,
            self.identity,
            state_dir=self.state_dir,
            settings=settings,
        )
        self.scope = await nursery.start(self._run)

    async def _run(self, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        """The chain, and inside it the consensus, which stops first (as in the node)."""
        assert self.chain is not None and self.consensus is not None
        self.stopped = trio.Event()
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.chain.run)
                with trio.CancelScope() as self.consensus_scope:
                    async with trio.open_nursery() as inner:
                        await inner.start(self.consensus.run)
                        task_status.started(scope)
                nursery.cancel_scope.cancel()
        self.stopped.set()

    async def stop(self) -> None:
        assert self.scope is not None and self.endpoint is not None
        self.endpoint.go_down()
        self.consensus_scope.cancel()
        await self.stopped.wait()

    async def head(self):  # type: ignore[no-untyped-def]
        assert self.chain is not None
        return await self.chain.head()


@asynccontextmanager
async def running_nodes(
    tmp_path: Path, miners: int = 4, followers: int = 0, settings: ConsensusSettings = FAST
) -> AsyncIterator[tuple[MemoryNetwork, list[Node], trio.Nursery]]:
    ids = people(miners + followers)
    spec = make_spec(ids[:miners], ids[miners:])
    net = MemoryNetwork()
    nodes = [
        Node(f"n{i}", ident, spec, tmp_path / f"n{i}" / "consensus") for i, ident in enumerate(ids)
    ]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await node.start(nursery, net, settings)
        try:
            yield net, nodes, nursery
        finally:
            with trio.move_on_after(10, shield=True):
                for node in nodes:
                    if node.endpoint is not None and node.endpoint.up:
                        await node.stop()
            nursery.cancel_scope.cancel()
