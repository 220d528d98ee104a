"""The agreement state machine: real instances exchanging real wire messages in memory.

Every scenario runs under a simulated clock (:mod:`.simnet`), so timeouts of seconds cost
nothing and the runs are deterministic; safety (no two different blocks at one height) is
checked after each.
"""

from __future__ import annotations

from flnode.consensus.bft.messages import NIL, PREVOTE

from .simnet import CHAIN_ID, Equivocator, SimNet, block_txs


def _txs(
    net: SimNet, count: int, *, at: int = 0, tag: str = "tx", every: float = 0.05
) -> list[bytes]:
    txs = [f"{tag}-{i}".encode() for i in range(count)]
    for i, tx in enumerate(txs):
        net.at(i * every, lambda tx=tx, i=i: net.submit((at + i) % len(net.nodes), tx))
    return txs


def _included(net: SimNet, node: int = 0) -> list[bytes]:
    return [tx for b in net.nodes[node].chain for tx in block_txs(b.block)]


def test_four_miners_reach_twenty_heights_with_identical_heads() -> None:
    net = SimNet(4)
    net.start()
    for h in range(40):
        net.at(h * 0.5, lambda h=h: net.submit(h % 4, f"tx-{h}".encode()))
    assert net.run_until(lambda: min(net.heights()) >= 20, limit=60)
    net.assert_consistent()
    heads = {n.chain[19].certificate.block_hash for n in net.nodes}
    assert len(heads) == 1
    included = set(_included(net))
    assert {f"tx-{h}".encode() for h in range(19)} <= included
    # a block's coinbase leads a round of its height; every certificate is a quorum
    for certified in net.nodes[0].chain:
        assert len(certified.certificate.signatures) >= net.committee.quorum
    assert not any(n.offences for n in net.nodes)


def test_idle_network_makes_no_blocks() -> None:
    net = SimNet(4)
    net.start()
    net.run_for(30)
    assert net.heights() == [0, 0, 0, 0]
    # each member revealed its round-0 credential to the 3 others once when the height began,
    # and sent nothing else
    assert net.sent == 4 * 3
    net.submit(2, b"wake")
    assert net.run_until(lambda: min(net.heights()) >= 1, limit=10)
    net.run_for(30)
    assert net.heights() == [1, 1, 1, 1]  # nothing pending: no empty blocks after it


def test_one_of_four_stopped_the_others_commit_and_it_catches_up() -> None:
    net = SimNet(4, seed=3)
    net.start()
    net.stop(3)
    txs = _txs(net, 10, every=1.0)
    assert net.run_until(lambda: all(set(txs) <= set(_included(net, i)) for i in range(3)))
    assert min(net.heights()[:3]) >= 5
    assert net.nodes[3].height == 0
    net.restart(3)
    later = _txs(net, 3, tag="after")
    assert net.run_until(lambda: set(later) <= set(_included(net, 3)), limit=60)
    net.assert_consistent()


def test_two_of_four_stopped_commit_nothing_until_one_returns() -> None:
    net = SimNet(4, seed=5)
    net.start()
    net.stop(2)
    net.stop(3)
    _txs(net, 3)
    net.run_for(60)
    assert net.heights()[:2] == [0, 0]
    net.restart(2)
    assert net.run_until(lambda: min(net.heights()[:3]) >= 1, limit=120)
    net.assert_consistent()


def test_partition_two_two_then_heal() -> None:
    net = SimNet(4, seed=7)
    net.start()
    _txs(net, 2)
    assert net.run_until(lambda: min(net.heights()) >= 1, limit=30)
    net.partition([0, 1], [2, 3])
    before = net.heights()
    _txs(net, 4, tag="split")
    net.run_for(40)
    assert net.heights() == before  # neither half has a quorum
    net.heal()
    _txs(net, 2, tag="healed")
    assert net.run_until(lambda: min(net.heights()) >= before[0] + 2, limit=120)
    net.assert_consistent()


def test_follower_decides_without_signing() -> None:
    net = SimNet(5, members=4)
    net.start()
    _txs(net, 5)
    assert net.run_until(lambda: min(net.heights()) >= 3, limit=60)
    net.assert_consistent()
    assert net.nodes[4].signer.last is None  # never signed anything


def test_equivocating_miner_cannot_break_safety_and_is_proven() -> None:
    net = SimNet(4, seed=9)
    Equivocator(net, 1)
    net.start()
    txs = _txs(net, 8, every=0.7)
    assert net.run_until(lambda: set(txs) <= set(_included(net, 0)), limit=120)
    net.assert_consistent()
    offender = net.nodes[1].address
    for i in (0, 2, 3):
        found = net.nodes[i].evidence
        assert found, f"node {i} found no evidence"
        for ev in found:
            assert ev.offender == offender
            assert ev.evidence.offender(CHAIN_ID) == offender
            a = ev.evidence.first.as_ledger_vote()
            assert a.signer(CHAIN_ID) == offender  # what the contract's slash recovers


def test_invalid_proposal_gets_nil_prevotes_and_is_never_committed() -> None:
    net = SimNet(4, seed=13)
    for node in net.nodes:
        node.validator = lambda raw: b"poison" not in block_txs(raw)
    net.start()
    # only node 0 holds the poison (it never gossips it); when it leads, its block is refused
    net.nodes[0].mempool.append(b"poison")
    txs = _txs(net, 12, every=0.5)
    assert net.run_until(lambda: set(txs) <= set(_included(net, 1)), limit=240)
    net.assert_consistent()
    assert all(b"poison" not in block_txs(b.block) for b in net.nodes[1].chain)
    nil_prevotes = [
        v
        for node in net.nodes[1:]
        for v in node.signer_log
        if v.kind == PREVOTE and v.block_hash == NIL
    ]
    assert nil_prevotes, "someone must have refused node 0's poisoned proposal"
