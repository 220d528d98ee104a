"""Faults between real `flnode start` miner processes: a 2|2 partition (made with the operators'
``node_ban``), and a miner whose key signs two conflicting votes (injected over real libp2p by a
peer holding that key), which must end with its stake slashed on every node's chain."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from flnode.config import P2PSection
from flnode.consensus.bft.abc import BFT_TOPIC
from flnode.consensus.bft.messages import PREVOTE, VoteMessage, encode_message
from flnode.consensus_net import P2PConsensusNetwork, register_consensus_messages
from flnode.identity import NodeIdentity
from flnode.p2p.service import P2PService

from .procs import ETHER, ProcessNet, api_call, same_head, submit_all, wait_heads

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


async def _no_blobs(_cid: object) -> None:
    return None


async def _ban_across(net: ProcessNet, left: list[int], right: list[int], ban: bool) -> None:
    for side, other in ((left, right), (right, left)):
        for i in side:
            for j in other:
                if ban:
                    await api_call(
                        net.dirs[i], "node_ban", {"peer_id": net.ids[j].peer_id, "seconds": 600}
                    )
                else:
                    await api_call(net.dirs[i], "node_unban", {"peer_id": net.ids[j].peer_id})


async def _peers(datadir: Path) -> set[str]:
    view = await api_call(datadir, "node_peers")
    return {p["peer_id"] for p in view["peers"] if p["connected"]}


async def test_partition_two_two_of_processes_commits_nothing_then_heals_without_forks(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    net = ProcessNet(flnode_exe, tmp_path, clean_env, 4)
    try:
        net.start_all(mesh_timeout=60)
        await submit_all(net.dirs[0], net.transfers(3))
        statuses = await wait_heads(net.dirs, lambda s: same_head(s, 1), 90)
        height = statuses[0]["head"]["number"]

        left, right = [0, 1], [2, 3]
        await _ban_across(net, left, right, ban=True)
        with trio.fail_after(30):
            while True:
                cut = [await _peers(net.dirs[i]) for i in range(4)]
                if all(
                    not cut[i] & {net.ids[j].peer_id for j in (right if i in left else left)}
                    for i in range(4)
                ):
                    break
                await trio.sleep(0.2)
        # each side has half the stake, short of the quorum: neither commits
        await submit_all(net.dirs[0], net.transfers(2, wallet=0))
        await submit_all(net.dirs[2], net.transfers(2, wallet=1))
        await trio.sleep(8)
        statuses = await wait_heads(net.dirs, lambda s: all(st.get("head") for st in s), 30)
        assert {st["head"]["number"] for st in statuses} == {height}, statuses

        await _ban_across(net, left, right, ban=False)
        # the four transactions stuck on either side are all committed, on one chain
        statuses = await wait_heads(
            net.dirs,
            lambda s: all(st.get("txs_committed", 0) >= 7 for st in s) and same_head(s, height + 1),
            120,
        )
        last = net.transfers(1, wallet=2)
        await submit_all(net.dirs[3], last)
        top = statuses[0]["head"]["number"]
        await wait_heads(net.dirs, lambda s: same_head(s, top + 1), 90)
    finally:
        net.stop_all()


async def test_equivocating_miner_key_is_slashed_on_every_process(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    net = ProcessNet(flnode_exe, tmp_path, clean_env, 4)
    cheat = net.ids[3]
    try:
        net.start_all(mesh_timeout=60)
        await submit_all(net.dirs[0], net.transfers(2))
        statuses = await wait_heads(net.dirs, lambda s: same_head(s, 1), 90)
        height = statuses[0]["head"]["number"] + 1
        stake = await api_call(net.dirs[0], "miner_status", {"address": cheat.address})
        assert stake["stake"]["wei"] == str(2 * ETHER) and stake["active"] is True
        network_id = (await api_call(net.dirs[0], "node_info"))["network_id"]

        # A peer holding miner 3's key (as a compromised or buggy miner would) gossips two
        # different prevotes for the same height and round.
        service = P2PService(
            NodeIdentity.generate(),
            P2PSection(bootstrap=(net.addr(0), net.addr(1))),
            network_id,
            _no_blobs,
        )
        register_consensus_messages(service.registry)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await service.wait_for_topic_peers(BFT_TOPIC, 2, 30)
            gossip = P2PConsensusNetwork(service)
            chain_id = net.spec.chain_id
            for _ in range(3):  # gossip may drop a message: say it again (duplicates are free)
                for digest in (b"\x01" * 32, b"\x02" * 32):
                    vote = VoteMessage.sign(cheat, chain_id, height, 0, PREVOTE, digest)
                    await gossip.publish(BFT_TOPIC, encode_message(vote))
                await trio.sleep(0.5)
            # the evidence is submitted as a slash transaction: blocks must be made to hold it
            with trio.fail_after(120):
                while True:
                    statuses = [
                        await api_call(d, "miner_status", {"address": cheat.address})
                        for d in net.dirs[:3]
                    ]
                    if all(st["stake"]["wei"] == "0" for st in statuses):
                        break
                    await submit_all(net.dirs[0], net.transfers(1))
                    await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert not any(st["active"] for st in statuses)
        evidence = [
            (await api_call(d, "consensus_status")).get("evidence", 0) for d in net.dirs[:3]
        ]
        assert sum(evidence) >= 1, evidence
        # the three honest miners (6 of the 6 ether now staked) keep committing without it
        statuses = await wait_heads(net.dirs[:3], lambda s: same_head(s, 1), 30)
        top = statuses[0]["head"]["number"]
        assert statuses[0]["committee"] == sorted(i.address for i in net.ids[:3])
        await submit_all(net.dirs[1], net.transfers(1, wallet=1))
        await wait_heads(net.dirs[:3], lambda s: same_head(s, top + 1), 60)
    finally:
        net.stop_all()


async def test_two_of_four_miner_processes_killed_nothing_commits_until_one_returns(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    net = ProcessNet(flnode_exe, tmp_path, clean_env, 4)
    try:
        net.start_all(mesh_timeout=60)
        await submit_all(net.dirs[0], net.transfers(2))
        statuses = await wait_heads(net.dirs, lambda s: same_head(s, 1), 90)
        height = statuses[0]["head"]["number"]
        for i in (2, 3):
            daemon = net.daemons[i]
            assert daemon is not None
            daemon.kill()
        await submit_all(net.dirs[0], net.transfers(2))
        await trio.sleep(8)
        statuses = await wait_heads(net.dirs[:2], lambda s: all(st.get("head") for st in s), 30)
        assert {st["head"]["number"] for st in statuses} == {height}, "committed without a quorum"
        net.start(2)
        net.wait_ready(2)
        statuses = await wait_heads(
            net.dirs[:3],
            lambda s: (
                all(st.get("txs_committed", 0) >= 4 for st in s[:2]) and same_head(s, height + 1)
            ),
            120,
        )
    finally:
        net.stop_all()
