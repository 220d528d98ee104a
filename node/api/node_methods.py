"""The ``node`` namespace: who this node is, whom it is connected to, connect to a peer.

The API may not import the P2P layer, so it states what it needs as :class:`NodeInfoSource` and the
Node passes in an adapter over its P2P service (``flnode.node``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import multiaddr
from pydantic import Field, field_validator

from ..rpc import SERVER_ERROR, NoParams, Params, RpcError, RpcMethod, StaticProvider


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer as the API shows it."""

    peer_id: str
    connected: bool
    score: float
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConnectOutcome:
    peer_id: str
    connected: bool


class NodeInfoSource(Protocol):
    """What the ``node_*`` methods read and do; the Node implements it over its services."""

    def info(self) -> Mapping[str, Any]:
        """Identity and facts: peer_id, address, roles, network_id, version, addresses, ..."""
        ...

    def peers(self) -> Sequence[PeerView]:
        """Every known peer (connected or not), connected ones first."""
        ...

    async def connect(self, addr: str) -> ConnectOutcome:
        """Dial a full multiaddr now; report whether a connection is open afterwards."""
        ...


class NodePeersParams(Params):
    all: bool = Field(False, description="Include known peers that are not connected.")


class ConnectParams(Params):
    addr: str = Field(description="Full multiaddr: /ip4/HOST/tcp/PORT/p2p/PEER_ID.")

    @field_validator("addr")
    @classmethod
    def _full_multiaddr(cls, addr: str) -> str:
        try:
            parsed = multiaddr.Multiaddr(addr)
        except Exception:
            raise ValueError(f"{addr!r} is not a multiaddr") from None
        names = {p.name for p in parsed.protocols()}
        if "tcp" not in names or "p2p" not in names:
            raise ValueError("expected /ip4/HOST/tcp/PORT/p2p/PEER_ID (a tcp port and a peer id)")
        return addr


def node_provider(source: NodeInfoSource) -> StaticProvider:
    """The ``node_*`` methods over ``source``."""

    async def node_info(params: NoParams) -> dict[str, Any]:
        info = dict(source.info())
        info["peers"] = sum(1 for p in source.peers() if p.connected)
        return info

    async def node_peers(params: NodePeersParams) -> dict[str, Any]:
        peers = [p for p in source.peers() if params.all or p.connected]
        return {
            "connected": sum(1 for p in peers if p.connected),
            "peers": [
                {
                    "peer_id": p.peer_id,
                    "connected": p.connected,
                    "score": round(p.score, 3),
                    "addrs": list(p.addrs),
                }
                for p in peers
            ],
        }

    async def node_connect(params: ConnectParams) -> dict[str, Any]:
        outcome = await source.connect(params.addr)
        if not outcome.connected:
            raise RpcError(
                SERVER_ERROR,
                f"could not connect to {outcome.peer_id} at {params.addr}: is that node running "
                "and the address right? (the peer stays known and is retried in the background)",
                data={"peer_id": outcome.peer_id},
            )
        return {"peer_id": outcome.peer_id, "connected": True}

    return StaticProvider(
        "node",
        (
            RpcMethod(
                "node_info",
                node_info,
                "This node: peer id, chain address, roles, network, addresses, version.",
                result="object",
            ),
            RpcMethod(
                "node_peers",
                node_peers,
                "Peers this node is connected to (with all=true also known ones).",
                NodePeersParams,
                '{"connected": n, "peers": [{peer_id, connected, score, addrs}]}',
            ),
            RpcMethod(
                "node_connect",
                node_connect,
                "Connect to a peer now, by its full multiaddr.",
                ConnectParams,
                '{"peer_id": ..., "connected": true}',
            ),
        ),
    )
