"""The P2P seams the other layers use (DESIGN.md, "Seams between the layers").

Consensus and the learning roles talk to the network through these two protocols only, never to
libp2p: :class:`~flnode.p2p.service.P2PService` implements both, and a test can pass anything with
the same methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import trio

from ..cid import Cid
from .envelope import Envelope


@runtime_checkable
class GossipAPI(Protocol):
    """Publish signed messages to a topic; receive verified envelopes from it."""

    async def publish(self, topic: str, message: object) -> bytes:
        """Sign ``message`` (a registered message type) and gossip it; return the raw envelope."""
        ...

    async def subscribe(
        self, topic: str, max_queued: int | None = None
    ) -> trio.MemoryReceiveChannel[Envelope]:
        """A bounded channel of verified envelopes from others on ``topic``."""
        ...


@runtime_checkable
class FetcherAPI(Protocol):
    """Fetch a blob by CID from candidate providers, verified against the CID."""

    async def fetch(self, cid: Cid, providers: Sequence[str]) -> bytes:
        """The bytes of ``cid``; raises ``FetchError`` when no provider delivers them."""
        ...
