"""A one-node ledger network for tests that run a real node in-process."""

from __future__ import annotations

from pathlib import Path

from flnode.consensus.network import new_network
from flnode.datadir import init_datadir
from flnode.identity import NodeIdentity

ETHER = 10**18


def one_node_network(
    tmp_path: Path, network_id: str, chain_id: int, *, miner: NodeIdentity | None = None
) -> NodeIdentity:
    """Make ``tmp_path / "node"`` (a data dir) and ``tmp_path / "net.toml"`` (a network file that
    funds the node's key with 100 ether and names ``miner``, by default the node itself, as the
    only miner with a 2-ether stake); the node's identity."""
    me = init_datadir(tmp_path / "node").identity
    spec = new_network(
        network_id=network_id,
        chain_id=chain_id,
        accounts=[(me.address, 100 * ETHER)],
        miners=[((miner or me).address, 2 * ETHER)],
        min_stake=ETHER,
    )
    spec.save(tmp_path / "net.toml")
    return me
