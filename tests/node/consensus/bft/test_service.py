"""Consensus services on real py-evm chains, exchanging real wire messages in one process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio

from flnode.consensus.bft.abc import BFT_TOPIC
from flnode.consensus.bft.messages import PREVOTE, VoteMessage, encode_message

from .nodes import ETHER, FAST, Node, running_nodes


async def _transfer(node: Node, to: str, value: int = 1) -> bytes:
    assert node.chain is not None
    return await node.chain.send(to, b"", value=value)


async def _wait_included(nodes: list[Node], txs: list[bytes], timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        for node in nodes:
            assert node.chain is not None
            for tx in txs:
                while True:
                    try:
                        await node.chain.receipt(tx)
                        break
                    except KeyError:
                        await trio.sleep(0.05)


async def _same_heads(nodes: list[Node], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while True:
            heads = [await n.head() for n in nodes]
            if len({(h.number, h.hash, h.state_root) for h in heads}) == 1:
                return
            await trio.sleep(0.05)


async def test_four_miners_and_a_follower_commit_transactions_from_any_node(
    tmp_path: Path,
) -> None:
    async with running_nodes(tmp_path, miners=4, followers=1) as (_net, nodes, _):
        txs = []
        for _ in range(3):
            for i, node in enumerate(nodes):
                txs.append(await _transfer(node, nodes[(i + 1) % 5].identity.address))
            await trio.sleep(0.3)
        await _wait_included(nodes, txs)
        await _same_heads(nodes)
        head = await nodes[0].head()
        assert head.number >= 2
        for node in nodes:
            assert node.consensus is not None
            # honest nodes reject nothing, except a second leader's proposal when a lower
            # credential arrived late (the race test_processes.py allows too)
            assert not set(node.consensus.stats.offences) - {"not-leader"}
        follower = nodes[4]
        assert follower.consensus is not None and follower.consensus.core is not None
        assert not follower.consensus.core.is_member
        assert follower.consensus.core.signer.last is None
        # the certificates are served by block sync
        served = await nodes[1].consensus.link.certified(1, 64, 10**7)  # type: ignore[union-attr]
        assert [c.height for c in served] == list(range(1, head.number + 1))


async def test_stopped_miner_restarts_and_catches_up(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as (net, nodes, nursery):
        first = await _transfer(nodes[0], nodes[1].identity.address)
        await _wait_included(nodes, [first])
        behind = await nodes[3].head()
        await nodes[3].stop()
        txs = [await _transfer(nodes[i % 3], nodes[2].identity.address) for i in range(6)]
        await _wait_included(nodes[:3], txs)
        ahead = await nodes[0].head()
        assert behind.number < ahead.number
        await nodes[3].start(nursery, net)
        await _same_heads(nodes)
        assert nodes[3].consensus is not None and nodes[3].consensus.stats.synced >= 1
        # and it takes part again: with another miner down, progress needs it
        await nodes[2].stop()
        last = await _transfer(nodes[3], nodes[0].identity.address)
        await _wait_included([nodes[0], nodes[1], nodes[3]], [last])


async def test_two_of_four_stopped_no_commit_then_progress_resumes(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as (net, nodes, nursery):
        await nodes[2].stop()
        await nodes[3].stop()
        tx = await _transfer(nodes[0], nodes[1].identity.address)
        await trio.sleep(3)
        assert (await nodes[0].head()).number == 0
        assert (await nodes[1].head()).number == 0
        await nodes[2].start(nursery, net)
        await _wait_included(nodes[:3], [tx])


async def test_equivocation_is_proven_and_slashed_on_chain(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as (_net, nodes, _):
        cheat = nodes[3]
        assert cheat.chain is not None and cheat.endpoint is not None
        stake = await cheat.chain.view("stake", cheat.identity.address)
        assert stake == 2 * ETHER
        # the cheater signs two different prevotes for the same height and round
        a = VoteMessage.sign(cheat.identity, 4343, 1, 0, PREVOTE, b"\x01" * 32)
        b = VoteMessage.sign(cheat.identity, 4343, 1, 0, PREVOTE, b"\x02" * 32)
        await cheat.endpoint.publish(BFT_TOPIC, encode_message(a))
        await cheat.endpoint.publish(BFT_TOPIC, encode_message(b))
        tx = await _transfer(nodes[0], nodes[1].identity.address)
        await _wait_included(nodes[:3], [tx])
        with trio.fail_after(30):
            while await nodes[0].chain.view("stake", cheat.identity.address) != 0:  # type: ignore[union-attr]
                await _transfer(nodes[0], nodes[1].identity.address)
                await trio.sleep(0.5)
        assert any(n.consensus.stats.evidence for n in nodes[:3])  # type: ignore[union-attr]
        await _same_heads(nodes[:3])
        # the slashed miner is out of the committee: the other three keep committing
        later = await _transfer(nodes[1], nodes[0].identity.address)
        await _wait_included(nodes[:3], [later])
        assert nodes[0].consensus.core.ctx.committee.size == 3  # type: ignore[union-attr]


async def test_partition_two_two_heals_without_forks(tmp_path: Path) -> None:
    async with running_nodes(tmp_path) as (net, nodes, _):
        first = await _transfer(nodes[0], nodes[1].identity.address)
        await _wait_included(nodes, [first])
        left, right = {"n0", "n1"}, {"n2", "n3"}
        net.blocked = {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
        height = (await nodes[0].head()).number
        stuck = [await _transfer(nodes[0], nodes[2].identity.address)]
        stuck.append(await _transfer(nodes[2], nodes[0].identity.address))
        await trio.sleep(3)
        assert {(await n.head()).number for n in nodes} == {height}  # no side has a quorum
        net.blocked = set()
        await _wait_included(nodes, stuck, timeout=60)
        await _same_heads(nodes)


async def test_a_transaction_whose_gossip_was_lost_is_gossiped_again(tmp_path: Path) -> None:
    settings = replace(FAST, tx_regossip_s=0.5)
    async with running_nodes(tmp_path, miners=4, followers=1, settings=settings) as (net, nodes, _):
        follower = nodes[4]
        cut = {(follower.name, m.name) for m in nodes[:4]}
        net.blocked |= cut  # the follower's first gossip of the transaction reaches no one
        tx = await _transfer(follower, nodes[0].identity.address)
        with trio.fail_after(10):
            while follower.consensus.stats.txs_gossiped == 0:  # type: ignore[union-attr]
                await trio.sleep(0.02)
        net.blocked -= cut
        await _wait_included(nodes, [tx], timeout=15)
        assert follower.consensus.stats.txs_regossiped >= 1  # type: ignore[union-attr]


async def test_the_committee_is_read_again_only_after_a_change_of_stake(tmp_path: Path) -> None:
    """Blocks of plain transfers reuse the committee read before them; a miner's
    ``requestLeave`` (a ``MinerLeaving`` event) makes every node read it again, without that
    miner."""
    async with running_nodes(tmp_path, miners=4, followers=1) as (_net, nodes, _):
        follower = nodes[4]
        assert follower.consensus is not None
        await _wait_included(nodes, [await _transfer(nodes[0], nodes[1].identity.address)])
        reads = follower.consensus.link.committee_reads
        heights = (await follower.head()).number
        for i in range(3):
            tx = await _transfer(nodes[i], nodes[i + 1].identity.address)
            await _wait_included(nodes, [tx])
        assert (await follower.head()).number >= heights + 3
        assert follower.consensus.link.committee_reads == reads, "plain blocks re-read it"
        miners = sorted(n.identity.address for n in nodes[:4])
        assert follower.consensus.status()["committee"] == miners

        leaving = nodes[3]
        assert leaving.chain is not None
        tx = await leaving.chain.send(
            leaving.chain.contract.address, leaving.chain.contract.request_leave()
        )
        await _wait_included(nodes, [tx])
        stayed = sorted(n.identity.address for n in nodes[:3])
        with trio.fail_after(15):
            while follower.consensus.status()["committee"] != stayed:
                await _wait_included(
                    nodes[:3], [await _transfer(nodes[0], nodes[1].identity.address)]
                )
        assert follower.consensus.link.committee_reads > reads


async def test_a_miner_registered_after_genesis_joins_the_committee(tmp_path: Path) -> None:
    async with running_nodes(tmp_path, miners=4, followers=1) as (_net, nodes, _):
        newcomer = nodes[4]
        assert newcomer.chain is not None and newcomer.consensus is not None
        contract = newcomer.chain.contract
        joined = await newcomer.chain.send(
            contract.address, contract.register_miner(), value=2 * ETHER
        )
        await _wait_included(nodes, [joined])
        # The committee is read at the head that includes the registration: five members of
        # equal stake, whose quorum (more than 2/3 of the stake) needs four of them.
        with trio.fail_after(10):
            while newcomer.consensus.status()["committee"] != sorted(
                n.identity.address for n in nodes
            ):
                await _wait_included(nodes, [await _transfer(nodes[0], nodes[1].identity.address)])
        assert newcomer.consensus.status()["member"] is True
        # With one founding miner stopped, the remaining three cannot commit without the
        # newcomer's votes: a commit now proves it votes.
        await nodes[0].stop()
        tx = await _transfer(nodes[1], nodes[2].identity.address)
        await _wait_included(nodes[1:], [tx])
        await _same_heads(nodes[1:])


async def test_the_fallback_sync_waits_while_blocks_arrive_and_runs_when_they_stop(
    tmp_path: Path,
) -> None:
    # Empty blocks every 0.2 s keep the chain moving; the fallback sync would run every 1 s.
    settings = replace(FAST, sync_interval_s=1.0, max_block_interval_s=0.2)
    async with running_nodes(tmp_path, miners=4, followers=1, settings=settings) as (
        _net,
        nodes,
        _,
    ):
        follower = nodes[4]
        assert follower.consensus is not None
        with trio.fail_after(20):
            while (await follower.head()).number < 3:
                await trio.sleep(0.05)
        before, start = follower.consensus.stats.sync_requests, (await follower.head()).number
        await trio.sleep(3.5)
        assert (await follower.head()).number >= start + 3, "the blocks stopped coming"
        assert follower.consensus.stats.sync_requests == before, (
            "a node that kept committing announced blocks still ran the fallback sync"
        )
        # No quorum, no blocks: now the fallback asks the peers left.
        await nodes[2].stop()
        await nodes[3].stop()
        await trio.sleep(3.5)
        assert follower.consensus.stats.sync_requests > before
