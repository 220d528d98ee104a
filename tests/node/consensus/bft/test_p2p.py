"""The consensus over real libp2p hosts (gossip + /flnode/sync/1.0.0) in one trio process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from eth.db.atomic import AtomicDB

from flnode.cid import Cid
from flnode.config import P2PSection
from flnode.consensus.bft.service import ConsensusService
from flnode.consensus.network import NetworkSpec
from flnode.consensus.service import ChainService
from flnode.consensus_net import P2PConsensusNetwork, register_consensus_messages
from flnode.identity import NodeIdentity
from flnode.p2p.service import P2PService, topic_name

from .nodes import FAST, make_spec, people


async def _no_blobs(cid: Cid) -> bytes | None:
    return None


@dataclass
class P2PNode:
    identity: NodeIdentity
    p2p: P2PService
    chain: ChainService
    consensus: ConsensusService


@asynccontextmanager
async def p2p_node(
    nursery: trio.Nursery,
    inner: trio.Nursery,
    identity: NodeIdentity,
    spec: NetworkSpec,
    state_dir: Path,
    bootstrap: tuple[str, ...] = (),
) -> AsyncIterator[P2PNode]:
    p2p = P2PService(
        identity,
        P2PSection(bootstrap=bootstrap, peer_exchange_interval_s=1.0),
        spec.network_id,
        _no_blobs,
    )
    register_consensus_messages(p2p.registry)
    chain = ChainService(spec, AtomicDB, identity)
    consensus = ConsensusService(
        chain, P2PConsensusNetwork(p2p), identity, state_dir=state_dir, settings=FAST
    )
    await nursery.start(p2p.run)
    await nursery.start(chain.run)
    if bootstrap:
        await p2p.wait_for_peers(1, timeout=10)
    await inner.start(consensus.run)  # stopped first, as the node stops it before the chain
    yield P2PNode(identity, p2p, chain, consensus)


async def test_miners_over_libp2p_commit_a_late_miner_syncs_and_a_follower_sends_by_fanout(
    tmp_path: Path,
) -> None:
    ids = people(5, seed=77)
    spec = make_spec(ids[:4], ids[4:])
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as inner:
            await _scenario(nursery, inner, ids, spec, tmp_path)
            inner.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


async def _scenario(
    nursery: trio.Nursery,
    inner: trio.Nursery,
    ids: list[NodeIdentity],
    spec: NetworkSpec,
    tmp_path: Path,
) -> None:
    nodes: list[P2PNode] = []
    for i in range(3):
        boot = (nodes[0].p2p.addrs[0],) if nodes else ()
        async with p2p_node(nursery, inner, ids[i], spec, tmp_path / f"n{i}", boot) as node:
            nodes.append(node)
    with trio.fail_after(20):
        while any(len(n.p2p.connected_peers()) < 2 for n in nodes):
            await trio.sleep(0.05)
        for n in nodes:
            await n.p2p.wait_for_topic_peers("bft", 2, timeout=20)
    txs = [await nodes[i % 3].chain.send(ids[3].address, b"", value=1) for i in range(6)]
    with trio.fail_after(60):
        for n in nodes:
            for tx in txs:
                while True:
                    try:
                        await n.chain.receipt(tx)
                        break
                    except KeyError:
                        await trio.sleep(0.05)
    target = await nodes[0].chain.head()
    assert target.number >= 1
    # a fourth miner starts late: it catches up by block sync before taking part
    async with p2p_node(
        nursery, inner, ids[3], spec, tmp_path / "n3", (nodes[1].p2p.addrs[0],)
    ) as late:
        pass
    assert (await late.chain.head()).number >= target.number
    assert late.consensus.stats.synced >= target.number
    nodes.append(late)
    with trio.fail_after(20):
        while any(len(n.p2p.connected_peers()) < 3 for n in nodes):
            await trio.sleep(0.05)
    await nodes[0].chain.send(ids[1].address, b"", value=2)
    with trio.fail_after(60):
        while True:
            heads = [await n.chain.head() for n in nodes]
            if heads[0].number > target.number and len({h.hash for h in heads}) == 1:
                break
            await trio.sleep(0.1)
    assert len({h.state_root for h in heads}) == 1
    # A node outside the committee neither receives the votes nor the other nodes'
    # transactions; its own reach the committee through gossipsub's fanout and are committed.
    async with p2p_node(
        nursery, inner, ids[4], spec, tmp_path / "follower", (nodes[2].p2p.addrs[0],)
    ) as follower:
        pass
    assert not follower.consensus.core.is_member  # type: ignore[union-attr]
    await follower.p2p.wait_for_topic_peers("txs", 4, timeout=20)
    subscribed = set(follower.p2p.pubsub.topic_ids)  # type: ignore[union-attr]
    assert subscribed == {topic_name(spec.network_id, t) for t in ("blocks", "peers")}
    tx = await follower.chain.send(ids[0].address, b"", value=3)
    with trio.fail_after(60):
        for n in [*nodes, follower]:
            while True:
                try:
                    assert (await n.chain.receipt(tx)).success
                    break
                except KeyError:
                    await trio.sleep(0.05)
    assert follower.consensus.stats.txs_received == 0
    assert all(n.consensus.stats.txs_received > 0 for n in nodes)
    for n in [*nodes, follower]:
        assert not n.consensus.stats.offences, n.consensus.stats.offences
