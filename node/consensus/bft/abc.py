"""The network seam of the consensus: what it needs from P2P, without importing it.

Layers do not import each other (DESIGN.md), so the consensus defines the small protocol it
drives and the node (:mod:`flnode.consensus_net`) implements it over the P2P service: gossip of
opaque byte messages on three topics, one request/response exchange for block sync, the list of
connected peers, and a way to charge a peer for a bad message. Tests can pass anything with the
same methods (e.g. an in-memory network).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

BFT_TOPIC = "bft"
"""Credentials, proposals, votes and evidence (:mod:`.messages`)."""
TX_TOPIC = "txs"
"""Transaction batches to the committee's mempools (members subscribe; others only publish)."""
BLOCK_TOPIC = "blocks"
"""Certified blocks, announced by their proposers, for the nodes outside the committee.

Only committee members subscribe to :data:`BFT_TOPIC`: the credentials, proposals and votes of
one height are a dozen messages or more, and every subscriber receives each of them from
several mesh peers. A node that does not vote needs only the outcome, one
:class:`~.messages.CertifiedBlock` per height (a lost one is fetched by block sync).
"""

SyncHandler = Callable[[bytes, str], Awaitable[bytes]]
"""Serves one block-sync request: (request bytes, requesting peer) → response bytes."""


@runtime_checkable
class ConsensusNetworkAPI(Protocol):
    """Gossip, block sync and peer scoring, as the consensus service uses them."""

    async def publish(self, topic: str, data: bytes) -> None:
        """Gossip ``data`` (an encoded consensus message) on ``topic``."""
        ...

    async def subscribe(self, topic: str) -> AsyncIterator[tuple[bytes, str]]:
        """(data, sender peer id) of every message others gossip on ``topic``."""
        ...

    def serve_sync(self, handler: SyncHandler) -> None:
        """Answer block-sync requests from peers with ``handler``."""
        ...

    async def request_sync(self, peer: str, request: bytes) -> bytes:
        """Send a block-sync request to ``peer``; its response (raises on failure/timeout)."""
        ...

    def peers(self) -> list[str]:
        """The peers connected now."""
        ...

    def penalise(self, peer: str, reason: str) -> None:
        """Charge ``peer`` for a consensus message rejected with ``reason``."""
        ...


@runtime_checkable
class ProposalSource(Protocol):
    """Transactions a node wants in the blocks it proposes itself.

    The ledger contract lets only a block's proposer commit a federated-learning round
    (``msg.sender == block.coinbase``), so such a transaction cannot travel through the mempool:
    whichever miner leads the height must sign its own. ``wants_block`` also wakes an idle height
    (the consensus makes no block without work), e.g. when a round's deadline has passed.

    The source may also take transactions from the mempool and put them first, in its own order
    (e.g. the round's last submissions, followed by the ``commitRound`` that closes the round on
    them, so that one block both records and commits them); the block's remaining mempool
    transactions follow.
    """

    def wants_block(self) -> bool:
        """Whether a block is wanted now even with an empty mempool (cheap; polled often)."""
        ...

    async def prepare(self, head_number: int, round_: int) -> None:
        """Called by a leader before it asks for :meth:`transactions`: return once what the
        source is still computing for this block is ready (the caller bounds the wait)."""
        ...

    async def transactions(self, head_number: int, round_: int = 0) -> list[bytes]:
        """Raw signed transactions for a block on top of ``head_number`` proposed in consensus
        round ``round_`` (may be empty)."""
        ...
