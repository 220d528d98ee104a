"""Real libp2p hosts in one trio process, started as the node starts them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from flnode.cid import Cid
from flnode.config import P2PSection
from flnode.identity import NodeIdentity
from flnode.p2p.service import P2PService

NETWORK = "flnode-test"


class DictStore:
    """A blob source backed by a dict, standing in for the node's blob store."""

    def __init__(self) -> None:
        self.blobs: dict[Cid, bytes] = {}

    def put(self, data: bytes) -> Cid:
        cid = Cid.from_data(data)
        self.blobs[cid] = data
        return cid

    async def get(self, cid: Cid) -> bytes | None:
        return self.blobs.get(cid)


@asynccontextmanager
async def running_services(
    count: int,
    *,
    settings: Callable[[int, list[P2PService]], P2PSection] | None = None,
    bootstrap_to_first: bool = True,
) -> AsyncIterator[list[P2PService]]:
    """Start ``count`` P2P services on 127.0.0.1; all but the first bootstrap to the first."""
    services: list[P2PService] = []
    async with trio.open_nursery() as nursery:
        for i in range(count):
            if settings is not None:
                section = settings(i, services)
            elif i and bootstrap_to_first:
                section = P2PSection(
                    bootstrap=(services[0].addrs[0],), peer_exchange_interval_s=1.0
                )
            else:
                section = P2PSection(peer_exchange_interval_s=1.0)
            store = DictStore()
            service = P2PService(NodeIdentity.generate(), section, NETWORK, store.get)
            service.test_store = store  # type: ignore[attr-defined]
            await nursery.start(service.run)
            services.append(service)
        try:
            yield services
        finally:
            nursery.cancel_scope.cancel()


async def full_mesh(services: list[P2PService], timeout: float = 20.0) -> None:
    """Wait until every service is connected to every other."""
    with trio.fail_after(timeout):
        while any(len(s.connected_peers()) < len(services) - 1 for s in services):
            await trio.sleep(0.05)
