"""The ledger contract, compiled from contracts/*.vy, on a real py-evm chain: every function's
success path and its reverts."""

from __future__ import annotations

import pytest
from eth_utils import keccak, to_canonical_address

from flnode.cid import Cid
from flnode.consensus.ledger import SCALE, Vote

from .conftest import ETHER, STAKE, Ledger

AGG = Cid.from_data(b"aggregate-1")


def reputation_score(good: float, bad: float) -> float:
    """The documented rule, in floating point: E[Beta(good + 1, bad + 1)]."""
    return (good + 1) / (good + bad + 2)


# -- createTask ----------------------------------------------------------------------------------


def test_create_task_records_everything_and_takes_the_deposit(ledger: Ledger) -> None:
    before = ledger.chain.balance(ledger.contract.address)
    task = ledger.create_task(rounds=3, reward=ETHER)
    info = ledger.contract.task(ledger.call, task)
    assert info is not None
    assert info.owner == ledger.cast.owner.address
    assert (info.spec, info.model) == (Cid.from_data(b"spec"), Cid.from_data(b"model-0"))
    assert (info.rounds, info.updates_per_round, info.reward_per_round) == (3, 10, ETHER)
    assert info.epsilon == 10.0 and info.deposit == 3 * ETHER and info.round == 0
    assert not info.closed
    assert ledger.contract.committee(ledger.call, task) == tuple(
        m.address for m in ledger.cast.miners
    )
    assert ledger.chain.balance(ledger.contract.address) == before + 3 * ETHER
    assert ledger.contract.totals(ledger.call)["deposits"] == 3 * ETHER
    assert ledger.contract.task_count(ledger.call) == 1
    assert ledger.contract.task(ledger.call, 99) is None


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"value": 2 * ETHER - 1}, "deposit too small"),
        ({"rounds": 0}, "at least one round"),
        ({"per_round": 0}, "updates per round"),
        ({"per_round": 129}, "updates per round"),
        ({"committee": []}, "needs a committee"),
    ],
)
def test_create_task_reverts(ledger: Ledger, kwargs: dict, reason: str) -> None:
    with pytest.raises(AssertionError, match=reason):
        ledger.create_task(**kwargs)


def test_create_task_committee_must_be_distinct_active_miners(ledger: Ledger) -> None:
    c = ledger.cast
    for committee, reason in (
        ([c.miners[0], c.outsider], "not an active miner"),
        ([c.miners[0], c.miners[0]], "listed twice"),
    ):
        with pytest.raises(AssertionError, match=reason):
            ledger.create_task(committee=committee)


# -- joinTask / submitUpdate ----------------------------------------------------------------------


def test_join_and_submit(ledger: Ledger) -> None:
    task = ledger.create_task()
    d = ledger.cast.devices[0]
    receipt = ledger.ok(d, ledger.contract.join_task(task))
    assert ledger.events(receipt) == [("TaskJoined", {"task": task, "device": d.address})]
    cid = Cid.from_data(b"update")
    receipt = ledger.ok(d, ledger.contract.submit_update(task, 0, cid, 123))
    assert ledger.events(receipt) == [
        (
            "UpdateSubmitted",
            {"task": task, "round": 0, "device": d.address, "cid": cid.digest, "n_samples": 123},
        )
    ]
    sub = ledger.contract.submission(ledger.call, task, 0, d.address)
    assert (sub.n_samples, sub.status) == (123, "pending")


def test_join_reverts(ledger: Ledger) -> None:
    task = ledger.create_task()
    d = ledger.cast.devices[0]
    ledger.reverts(d, ledger.contract.join_task(task + 1), "no such task")
    ledger.ok(d, ledger.contract.join_task(task))
    ledger.reverts(d, ledger.contract.join_task(task), "already joined")


def test_submit_reverts(ledger: Ledger) -> None:
    task = ledger.create_task(per_round=1)
    d0, d1 = ledger.cast.devices[:2]
    cid = Cid.from_data(b"u")
    ledger.reverts(d0, ledger.contract.submit_update(task, 0, cid, 1), "join the task first")
    ledger.ok(d0, ledger.contract.join_task(task))
    ledger.ok(d1, ledger.contract.join_task(task))
    ledger.reverts(d0, ledger.contract.submit_update(task, 1, cid, 1), "wrong round")
    ledger.reverts(d0, ledger.contract.submit_update(task, 0, cid, 0), "n_samples")
    ledger.reverts(d0, ledger.contract.submit_update(task, 0, cid, 2**32 + 1), "n_samples")
    ledger.ok(d0, ledger.contract.submit_update(task, 0, cid, 1))
    ledger.reverts(d0, ledger.contract.submit_update(task, 0, cid, 1), "already submitted")
    ledger.reverts(d1, ledger.contract.submit_update(task, 0, cid, 1), "round is full")


# -- commitRound ------------------------------------------------------------------------------------


def test_commit_round_judges_rewards_and_advances(ledger: Ledger) -> None:
    c = ledger.cast
    task = ledger.create_task(rounds=2, reward=ETHER)
    d0, d1, d2 = c.devices[:3]
    ledger.join_and_submit(task, 0, [d0, d1, d2])  # n_samples 100, 200, 300
    leader, other = c.miners
    receipt = ledger.ok(
        leader,
        ledger.contract.commit_round(
            task, 0, AGG, [d0.address, d1.address], [d2.address], [1.0, 0.5]
        ),
        coinbase=leader,
    )
    names = [name for name, _ in ledger.events(receipt)]
    assert names.count("ReputationUpdated") == 3
    assert names.count("RewardCredited") == 2 + 2 + 1  # devices, committee, leader
    assert names[-1] == "RoundCommitted"
    committed = ledger.events(receipt)[-1][1]
    assert committed["proposer"] == leader.address and committed["paid"] == ETHER
    # reputation: accepted devices 2/3, the rejected one (0 + 1) / (2 + 2) = 1/4
    assert ledger.contract.reputation(ledger.call, d0.address) == pytest.approx(2 / 3, abs=1e-6)
    assert ledger.contract.reputation(ledger.call, d2.address) == pytest.approx(0.25, abs=1e-6)
    assert ledger.contract.reputation(ledger.call, c.devices[3].address) == 0.5
    # rewards: 10 % leader, 10 % committee (5 % each), 80 % devices by rep × n × score
    # d0: 2/3 × 100 × 1.0 and d1: 2/3 × 200 × 0.5 weigh the same, so 0.4 ether each
    owed = lambda who: ledger.contract.owed(ledger.call, who.address)  # noqa: E731
    assert owed(leader) == ETHER // 10 + ETHER // 20
    assert owed(other) == ETHER // 20
    assert owed(d0) == owed(d1) == 4 * ETHER // 10
    assert owed(d2) == 0
    info = ledger.contract.task(ledger.call, task)
    assert info is not None
    assert (info.round, info.model, info.deposit, info.submitted) == (1, AGG, ETHER, 0)
    statuses = [
        ledger.contract.submission(ledger.call, task, 0, d.address).status for d in (d0, d1, d2)
    ]
    assert statuses == ["accepted", "accepted", "rejected"]
    totals = ledger.contract.totals(ledger.call)
    assert totals["owed"] == ETHER and totals["deposits"] == ETHER


def test_commit_round_with_nobody_accepted_keeps_the_device_share(ledger: Ledger) -> None:
    task = ledger.create_task(rounds=1)
    d0 = ledger.cast.devices[0]
    ledger.join_and_submit(task, 0, [d0])
    leader = ledger.cast.miners[0]
    ledger.ok(
        leader, ledger.contract.commit_round(task, 0, AGG, [], [d0.address], []), coinbase=leader
    )
    info = ledger.contract.task(ledger.call, task)
    assert info is not None and info.deposit == ETHER - ETHER // 5 and info.finished


def test_commit_round_reverts(ledger: Ledger) -> None:
    c = ledger.cast
    task = ledger.create_task()
    d0, d1 = c.devices[:2]
    ledger.join_and_submit(task, 0, [d0])
    leader, other = c.miners
    commit = lambda *a: ledger.contract.commit_round(task, *a)  # noqa: E731
    good = (0, AGG, [d0.address], [], [1.0])
    # unauthorised: a transaction in a block someone else proposed
    ledger.reverts(leader, commit(*good), "only the block's proposer", coinbase=other)
    ledger.reverts(c.outsider, commit(*good), "only the block's proposer", coinbase=leader)
    # the proposer of its own block, but not on the committee
    ledger.reverts(c.outsider, commit(*good), "not on the task's committee", coinbase=c.outsider)
    ledger.reverts(leader, commit(1, AGG, [d0.address], [], [1.0]), "wrong round", coinbase=leader)
    ledger.reverts(
        leader, commit(0, AGG, [d1.address], [], [1.0]), "no pending submission", coinbase=leader
    )
    ledger.reverts(
        leader,
        commit(0, AGG, [d0.address, d0.address], [], [1.0, 1.0]),
        "no pending",
        coinbase=leader,
    )
    ledger.reverts(
        leader, commit(0, AGG, [], [d0.address, d0.address], []), "no pending", coinbase=leader
    )
    ledger.reverts(leader, commit(0, AGG, [d0.address], [], []), "one score per", coinbase=leader)
    ledger.reverts(
        leader,
        ledger.contract.codec.encode_call(
            "commitRound", task, 0, AGG.digest, [d0.address], [], [SCALE + 1]
        ),
        "a score is at most",
        coinbase=leader,
    )
    # a miner that asked to leave may no longer commit
    ledger.ok(leader, ledger.contract.request_leave())
    ledger.reverts(leader, commit(*good), "not an active miner", coinbase=leader)
    # nothing above changed the task
    info = ledger.contract.task(ledger.call, task)
    assert info is not None and info.round == 0 and info.deposit == 2 * ETHER


def test_reputation_follows_the_documented_rule_with_decay(ledger: Ledger) -> None:
    task = ledger.create_task(rounds=6, reward=ETHER)
    d0 = ledger.cast.devices[0]
    leader = ledger.cast.miners[0]
    good = bad = 0.0
    for round_, accepted in enumerate([True, True, False, True, False, True]):
        ledger.join_and_submit(task, round_, [d0])
        data = ledger.contract.commit_round(
            task,
            round_,
            AGG,
            [d0.address] if accepted else [],
            [] if accepted else [d0.address],
            [1.0] if accepted else [],
        )
        ledger.ok(leader, data, coinbase=leader)
        good, bad = good * 0.95 + (1 if accepted else 0), bad * 0.95 + (0 if accepted else 2)
        got_good, got_bad, judged = ledger.contract.evidence(ledger.call, d0.address)
        assert (got_good, got_bad, judged) == (
            pytest.approx(good, abs=1e-5),
            pytest.approx(bad, abs=1e-5),
            round_ + 1,
        )
        assert ledger.contract.reputation(ledger.call, d0.address) == pytest.approx(
            reputation_score(good, bad), abs=2e-6
        )


# -- closeTask -------------------------------------------------------------------------------------


def test_close_task_refunds_the_rest_once_finished(ledger: Ledger) -> None:
    c = ledger.cast
    task = ledger.create_task(rounds=1, reward=ETHER, value=3 * ETHER)
    ledger.join_and_submit(task, 0, [c.devices[0]])
    ledger.reverts(c.owner, ledger.contract.close_task(task), "still running")
    ledger.reverts(c.outsider, ledger.contract.close_task(task), "only the task owner")
    leader = c.miners[0]
    ledger.ok(
        leader,
        ledger.contract.commit_round(task, 0, AGG, [c.devices[0].address], [], [1.0]),
        coinbase=leader,
    )
    ledger.reverts(c.devices[1], ledger.contract.join_task(task), "finished all its rounds")
    receipt = ledger.ok(c.owner, ledger.contract.close_task(task))
    assert ("TaskClosed", {"task": task, "refund": 2 * ETHER}) in ledger.events(receipt)
    assert ledger.contract.owed(ledger.call, c.owner.address) == 2 * ETHER
    ledger.reverts(c.owner, ledger.contract.close_task(task), "task is closed")
    ledger.reverts(c.owner, ledger.contract.close_task(task + 5), "no such task")
    assert ledger.contract.totals(ledger.call)["deposits"] == 0


def test_close_task_when_idle(ledger: Ledger) -> None:
    c = ledger.cast
    task = ledger.create_task(rounds=5)
    ledger.reverts(c.owner, ledger.contract.close_task(task), "still running")
    for _ in range(5):  # idle_close_blocks = 5 in the test network
        ledger.mine(c.miners[0])
    ledger.ok(c.owner, ledger.contract.close_task(task))
    assert ledger.contract.owed(ledger.call, c.owner.address) == 5 * ETHER
    ledger.reverts(c.devices[0], ledger.contract.join_task(task), "task is closed")


# -- withdraw ---------------------------------------------------------------------------------------


def test_withdraw_pays_what_is_owed_once(ledger: Ledger) -> None:
    c = ledger.cast
    task = ledger.create_task(rounds=1)
    ledger.join_and_submit(task, 0, [c.devices[0]])
    leader = c.miners[0]
    ledger.ok(
        leader,
        ledger.contract.commit_round(task, 0, AGG, [c.devices[0].address], [], [1.0]),
        coinbase=leader,
    )
    d = c.devices[0]
    owed = ledger.contract.owed(ledger.call, d.address)
    assert owed == 8 * ETHER // 10
    before = ledger.chain.balance(d.address)
    receipt = ledger.ok(d, ledger.contract.withdraw(), coinbase=c.miners[1])
    assert ("Withdrawn", {"account": d.address, "amount": owed}) in ledger.events(receipt)
    fee = ledger.chain.block(receipt.block_number).header.base_fee_per_gas * receipt.gas_used
    tip = 10**9 * receipt.gas_used
    assert ledger.chain.balance(d.address) == before + owed - fee - tip
    assert ledger.contract.owed(ledger.call, d.address) == 0
    ledger.reverts(d, ledger.contract.withdraw(), "nothing to withdraw")


ATTACKER = """
# pragma version ~=0.4.3
interface Ledger:
    def joinTask(task: uint256): nonpayable
    def submitUpdate(task: uint256, round: uint256, cid: bytes32, n_samples: uint256): nonpayable
    def withdraw(): nonpayable

ledger: public(address)
entered: public(uint256)
reentry_failed: public(uint256)

@deploy
def __init__(target: address):
    self.ledger = target

@external
def join_and_submit(task: uint256, cid: bytes32):
    extcall Ledger(self.ledger).joinTask(task)
    extcall Ledger(self.ledger).submitUpdate(task, 0, cid, 100)

@external
def attack():
    extcall Ledger(self.ledger).withdraw()

@external
@payable
def __default__():
    # Re-enter withdraw while the first withdrawal is paying us.
    if self.entered == 0:
        self.entered = 1
        ok: bool = raw_call(self.ledger, method_id("withdraw()"), revert_on_failure=False)
        if not ok:
            self.reentry_failed += 1
"""


def test_withdraw_resists_reentrancy(ledger: Ledger) -> None:
    import eth_abi
    import rlp
    import vyper

    from flnode.consensus.abi import AbiCodec

    c = ledger.cast
    out = vyper.compile_code(ATTACKER, output_formats=["abi", "bytecode"])
    attacker_abi = AbiCodec(out["abi"])
    init = bytes.fromhex(out["bytecode"][2:]) + eth_abi.encode(
        ["address"], [ledger.contract.address]
    )
    deployer = c.outsider
    nonce = ledger.chain.nonce(deployer.address)
    tx = ledger.chain.sign_transaction(deployer.private_key, to=None, data=init, gas=3_000_000)
    ledger.chain.add_transaction(tx)
    ledger.mine(c.miners[0])
    attacker = keccak(rlp.encode([to_canonical_address(deployer.address), nonce]))[12:]
    assert ledger.chain.code(attacker)

    task = ledger.create_task(rounds=1)
    ledger.ok(
        deployer, attacker_abi.encode_call("join_and_submit", task, b"\x11" * 32), to=attacker
    )
    leader = c.miners[0]
    ledger.ok(
        leader, ledger.contract.commit_round(task, 0, AGG, [attacker], [], [1.0]), coinbase=leader
    )
    owed = ledger.contract.owed(ledger.call, attacker)
    assert owed == 8 * ETHER // 10
    ledger_before = ledger.chain.balance(ledger.contract.address)

    ledger.ok(deployer, attacker_abi.encode_call("attack"), to=attacker)
    assert (
        attacker_abi.decode_output(
            "entered", ledger.chain.call(attacker, attacker_abi.encode_call("entered"))
        )
        == 1
    )
    assert (
        attacker_abi.decode_output(
            "reentry_failed",
            ledger.chain.call(attacker, attacker_abi.encode_call("reentry_failed")),
        )
        == 1
    )
    assert ledger.chain.balance(attacker) == owed  # paid exactly once
    assert ledger.chain.balance(ledger.contract.address) == ledger_before - owed
    assert ledger.contract.owed(ledger.call, attacker) == 0


# -- miners ---------------------------------------------------------------------------------------


def test_register_miner(ledger: Ledger) -> None:
    o = ledger.cast.outsider
    ledger.reverts(o, ledger.contract.register_miner(), "needs a stake")
    ledger.reverts(o, ledger.contract.register_miner(), "below the minimum stake", value=ETHER - 1)
    receipt = ledger.ok(o, ledger.contract.register_miner(), value=ETHER)
    assert ledger.events(receipt) == [("MinerRegistered", {"miner": o.address, "stake": ETHER})]
    assert ledger.contract.is_active_miner(ledger.call, o.address)
    ledger.ok(o, ledger.contract.register_miner(), value=1)  # top-ups of any size
    assert ledger.contract.stake(ledger.call, o.address) == ETHER + 1
    assert ledger.contract.totals(ledger.call)["staked"] == 2 * STAKE + ETHER + 1


def test_leave_after_the_delay(ledger: Ledger) -> None:
    m = ledger.cast.miners[1]
    ledger.reverts(ledger.cast.outsider, ledger.contract.request_leave(), "not a miner")
    ledger.reverts(m, ledger.contract.leave(), "call requestLeave first")
    receipt = ledger.ok(m, ledger.contract.request_leave())
    ((name, args),) = ledger.events(receipt)
    assert name == "MinerLeaving" and args["leave_at_block"] == receipt.block_number + 3
    assert not ledger.contract.is_active_miner(ledger.call, m.address)
    ledger.reverts(m, ledger.contract.leave(), "delay has not passed")  # block + 1
    ledger.reverts(m, ledger.contract.request_leave(), "already leaving")
    ledger.reverts(m, ledger.contract.register_miner(), "miner is leaving", value=ETHER)
    receipt = ledger.ok(m, ledger.contract.leave())
    assert ("MinerLeft", {"miner": m.address, "stake": STAKE}) in ledger.events(receipt)
    assert ledger.contract.stake(ledger.call, m.address) == 0
    assert ledger.contract.owed(ledger.call, m.address) == STAKE


def _votes(
    ledger: Ledger,
    signer_a,
    signer_b=None,
    *,
    hash_b: bytes = b"\xbb" * 32,
    height_b: int = 7,
    chain_id: int | None = None,
):  # type: ignore[no-untyped-def]
    chain_id = ledger.chain.chain_id if chain_id is None else chain_id
    a = Vote(height=7, round=0, kind=1, block_hash=b"\xaa" * 32).sign(signer_a, chain_id)
    b = Vote(height=height_b, round=0, kind=1, block_hash=hash_b).sign(
        signer_b or signer_a, chain_id
    )
    return a, b


def test_slash_on_conflicting_votes(ledger: Ledger) -> None:
    c = ledger.cast
    m = c.miners[1]
    a, b = _votes(ledger, m)
    assert a.signer(ledger.chain.chain_id) == m.address
    burn_before = ledger.chain.balance(b"\x00" * 20)
    receipt = ledger.ok(c.outsider, ledger.contract.slash(a, b))
    (slashed,) = [args for name, args in ledger.events(receipt) if name == "MinerSlashed"]
    assert slashed["miner"] == m.address and slashed["reporter"] == c.outsider.address
    assert (slashed["burnt"], slashed["reward"]) == (STAKE * 9 // 10, STAKE // 10)
    assert ledger.contract.stake(ledger.call, m.address) == 0
    assert not ledger.contract.is_active_miner(ledger.call, m.address)
    assert ledger.contract.owed(ledger.call, c.outsider.address) == STAKE // 10
    assert ledger.chain.balance(b"\x00" * 20) >= burn_before + STAKE * 9 // 10
    ledger.reverts(c.outsider, ledger.contract.slash(a, b), "no stake")


def test_slash_rejects_bad_evidence(ledger: Ledger) -> None:
    c = ledger.cast
    m, other = c.miners[1], c.miners[0]
    cases = [
        (_votes(ledger, m, hash_b=b"\xaa" * 32), "do not conflict"),
        (_votes(ledger, m, height_b=8), "different heights"),
        (_votes(ledger, m, other), "different keys"),  # forged: b is another miner's vote
        (_votes(ledger, c.outsider), "no stake"),
        (_votes(ledger, m, chain_id=1), "different keys"),  # signed for another chain
    ]
    for (a, b), reason in cases:
        ledger.reverts(c.outsider, ledger.contract.slash(a, b), reason)
    a, b = _votes(ledger, m)
    bad_v = type(b)(b.vote, b.signature[:64] + bytes([29]))
    ledger.reverts(c.outsider, ledger.contract.slash(a, bad_v), "v must be 27 or 28")
    high_s = (2**256 - 1).to_bytes(32, "big")
    ledger.reverts(
        c.outsider,
        ledger.contract.slash(a, type(b)(b.vote, b.signature[:32] + high_s + b.signature[64:])),
        "low-s",
    )
    short = type(b)(b.vote, b.signature[:64])
    ledger.reverts(c.outsider, ledger.contract.slash(a, short), "65 bytes")
    assert ledger.contract.stake(ledger.call, m.address) == STAKE
