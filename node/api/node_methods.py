"""The ``node`` namespace: who this node is, whom it is connected to, connect to, ban and unban
a peer.

The API may not import the P2P layer, so it states what it needs as :class:`NodeInfoSource` and the
Node passes in an adapter over its P2P service (``flnode.node``).
"""

from __future__ import annotations

import re
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
    banned: bool = False


@dataclass(frozen=True, slots=True)
class ConnectOutcome:
    peer_id: str
    connected: bool
    banned: bool = False


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

    def ban(self, peer_id: str, seconds: float) -> None:
        """Disconnect ``peer_id`` and refuse it for ``seconds``."""
        ...

    def unban(self, peer_id: str) -> bool:
        """Lift a ban; whether there was one."""
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


#: Longest ban ``node_ban`` accepts (a week); a peer that misbehaves longer can be banned again.
MAX_BAN_S = 7 * 24 * 3600.0


#: A libp2p peer id as text: a base58btc multihash (``Qm…`` sha2-256, ``12D3KooW…``/``16U…``
#: identity-hashed public keys), 46 to 128 characters.
_PEER_ID = re.compile(r"[1-9A-HJ-NP-Za-km-z]{46,128}")


def _peer_id(value: str) -> str:
    if not _PEER_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a peer id (base58, e.g. 12D3KooW… or Qm…)")
    return value


class BanParams(Params):
    peer_id: str = Field(description="The peer to ban (node_peers lists them).")
    seconds: float = Field(
        3600.0, gt=0, le=MAX_BAN_S, description="How long the ban lasts (at most a week)."
    )

    @field_validator("peer_id")
    @classmethod
    def _check(cls, v: str) -> str:
        return _peer_id(v)


class UnbanParams(Params):
    peer_id: str = Field(description="The banned peer.")

    @field_validator("peer_id")
    @classmethod
    def _check(cls, v: str) -> str:
        return _peer_id(v)


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
                    "banned": p.banned,
                    "addrs": list(p.addrs),
                }
                for p in peers
            ],
        }

    async def node_connect(params: ConnectParams) -> dict[str, Any]:
        outcome = await source.connect(params.addr)
        if outcome.banned:
            raise RpcError(
                SERVER_ERROR,
                f"{outcome.peer_id} is banned on this node (node_unban lifts the ban)",
                data={"peer_id": outcome.peer_id},
            )
        if not outcome.connected:
            raise RpcError(
                SERVER_ERROR,
                f"could not connect to {outcome.peer_id} at {params.addr}: is that node running "
                "and the address right? (the peer stays known and is retried in the background)",
                data={"peer_id": outcome.peer_id},
            )
        return {"peer_id": outcome.peer_id, "connected": True}

    async def node_ban(params: BanParams) -> dict[str, Any]:
        try:
            source.ban(params.peer_id, params.seconds)
        except ValueError as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from None
        return {"peer_id": params.peer_id, "banned": True, "seconds": params.seconds}

    async def node_unban(params: UnbanParams) -> dict[str, Any]:
        if not source.unban(params.peer_id):
            raise RpcError(
                SERVER_ERROR, f"{params.peer_id} is not banned (node_peers shows who is)"
            )
        return {"peer_id": params.peer_id, "banned": False}

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
            RpcMethod(
                "node_ban",
                node_ban,
                "Disconnect a peer and refuse it (no gossip, no fetches, no dials) for a while; "
                "peers that misbehave are banned automatically by their score.",
                BanParams,
                '{"peer_id": ..., "banned": true, "seconds": ...}',
            ),
            RpcMethod(
                "node_unban",
                node_unban,
                "Lift a peer's ban (an operator's or the score book's); it is dialled again.",
                UnbanParams,
                '{"peer_id": ..., "banned": false}',
            ),
        ),
    )
