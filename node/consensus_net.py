"""Where the consensus meets the P2P layer: the node implements the consensus' network seam.

``flnode.consensus`` may not import ``flnode.p2p`` (layers talk through seams the node passes
in), so this node-level module adapts the :class:`~flnode.p2p.service.P2PService` to
:class:`~flnode.consensus.bft.abc.ConsensusNetworkAPI`:

* three gossip message types, ``bft``, ``txs`` and ``blocks``, each a signed envelope whose payload is the
  CBOR array ``[data]`` around the consensus' own canonical RLP message (so the envelope layer
  authenticates the sender and bounds the size, and the consensus checks its own signatures);
* block sync over libp2p request/response, protocol ``/flnode/sync/1.0.0`` (one request, one
  response of at most :data:`MAX_SYNC_RESPONSE_SIZE` bytes);
* peer scoring: consensus rejections charge the sending peer through the P2P score book.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from libp2p.peer.id import ID
from libp2p.request_response import (
    BytesCodec,
    RequestContext,
    RequestResponse,
    RequestResponseConfig,
)

from .consensus.bft.abc import BFT_TOPIC, BLOCK_TOPIC, TX_TOPIC, SyncHandler
from .consensus.bft.messages import MAX_MESSAGE_SIZE, MAX_SYNC_RESPONSE_SIZE
from .p2p.messages import MessageRegistry, cbor_encode, check_bytes, construct, decode_fields

if TYPE_CHECKING:
    from .config import NodeConfig
    from .consensus.bft.service import ConsensusService
    from .consensus.service import ChainService
    from .datadir import DataDir
    from .identity import NodeIdentity
    from .p2p.service import P2PService

SYNC_PROTOCOL = "/flnode/sync/1.0.0"
SYNC_TIMEOUT_S = 10.0
_GOSSIP_MAX = MAX_MESSAGE_SIZE + 16  # the consensus message plus the CBOR array around it

# Consensus rejection reasons → the P2P score book's offences (flnode.p2p.scoring.PENALTIES).
_OFFENCE = {
    "not-leader": "spam",
    "wrong-topic": "spam",
    "proposal-equivocation": "conflict",
    "oversize": "oversized",
}


@dataclass(frozen=True, slots=True)
class _OpaqueGossip:
    """Bytes the consensus layer encodes itself, carried as the envelope's one field."""

    data: bytes

    def __post_init__(self) -> None:
        check_bytes(self.data, "data", min_len=1, max_len=MAX_MESSAGE_SIZE)

    def to_cbor(self) -> bytes:
        return cbor_encode([self.data])

    @classmethod
    def from_cbor(cls, data: bytes) -> Self:
        return construct(cls, *decode_fields(data, 1))


@dataclass(frozen=True, slots=True)
class BftGossip(_OpaqueGossip):
    """A consensus message (credential, proposal, vote, evidence) on the ``bft`` topic."""


@dataclass(frozen=True, slots=True)
class TxGossip(_OpaqueGossip):
    """A batch of raw transactions on the ``txs`` topic."""


@dataclass(frozen=True, slots=True)
class BlockGossip(_OpaqueGossip):
    """A certified block announced by its proposer on the ``blocks`` topic."""


_WRAPPERS: dict[str, type[_OpaqueGossip]] = {
    BFT_TOPIC: BftGossip,
    TX_TOPIC: TxGossip,
    BLOCK_TOPIC: BlockGossip,
}


def register_consensus_messages(registry: MessageRegistry) -> None:
    """Add the consensus gossip types (before the P2P service starts)."""
    registry.register("bft", BftGossip, max_size=_GOSSIP_MAX)
    registry.register("txs", TxGossip, max_size=_GOSSIP_MAX)
    registry.register("blocks", BlockGossip, max_size=_GOSSIP_MAX)


class P2PConsensusNetwork:
    """:class:`~flnode.consensus.bft.abc.ConsensusNetworkAPI` over a running P2P service."""

    def __init__(self, p2p: P2PService, *, sync_timeout_s: float = SYNC_TIMEOUT_S) -> None:
        self.p2p = p2p
        self._config = RequestResponseConfig(
            timeout=sync_timeout_s,
            max_request_size=64,
            max_response_size=MAX_SYNC_RESPONSE_SIZE,
            max_concurrent_inbound=8,
        )
        self._rr: RequestResponse | None = None

    def _requests(self) -> RequestResponse:
        if self._rr is None:
            if self.p2p.host is None:
                raise RuntimeError("the p2p service is not running")
            self._rr = RequestResponse(self.p2p.host)
        return self._rr

    async def publish(self, topic: str, data: bytes) -> None:
        await self.p2p.publish(topic, _WRAPPERS[topic](data))

    async def subscribe(self, topic: str) -> AsyncIterator[tuple[bytes, str]]:
        channel = await self.p2p.subscribe(topic)
        wrapper = _WRAPPERS[topic]

        async def iterate() -> AsyncIterator[tuple[bytes, str]]:
            async for envelope in channel:
                if isinstance(envelope.message, wrapper):
                    yield envelope.message.data, envelope.peer_id

        return iterate()

    def serve_sync(self, handler: SyncHandler) -> None:
        async def serve(request: bytes, context: RequestContext) -> bytes:
            peer = context.peer_id.to_base58()
            if self.p2p.scores.is_banned(peer):
                return b""
            return await handler(bytes(request), peer)

        self._requests().set_handler(SYNC_PROTOCOL, serve, BytesCodec(), self._config)

    async def request_sync(self, peer: str, request: bytes) -> bytes:
        response = await self._requests().send_request(
            ID.from_base58(peer), [SYNC_PROTOCOL], request, BytesCodec(), self._config
        )
        return bytes(response)

    def peers(self) -> list[str]:
        return [p for p in self.p2p.connected_peers() if not self.p2p.scores.is_banned(p)]

    def penalise(self, peer: str, reason: str) -> None:
        self.p2p.penalise(peer, _OFFENCE.get(reason, "invalid_payload"))


def consensus_service_for(
    config: NodeConfig,
    datadir: DataDir,
    identity: NodeIdentity,
    p2p: P2PService,
    chain: ChainService,
    hooks: dict[str, Any] | None = None,
) -> ConsensusService | None:
    """The consensus service of a node with a ledger, unless it runs the dev proposer.

    Its settings come from the config's ``[consensus]`` section; ``hooks`` are the node's
    application hooks (``proposals``, ``validator``: the federation's miner role)."""
    if chain.dev_mine_interval_s > 0:
        return None
    from .consensus.bft.service import ConsensusService

    settings = config.consensus.settings()
    register_consensus_messages(p2p.registry)
    return ConsensusService(
        chain,
        P2PConsensusNetwork(p2p, sync_timeout_s=settings.sync_timeout_s),
        identity,
        state_dir=Path(datadir.path) / "consensus",
        settings=settings,
        **(hooks or {}),
    )
