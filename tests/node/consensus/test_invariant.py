"""The deposit invariant under random sequences of calls (hypothesis, real chain and contract).

After every transaction, whether it succeeded or reverted:
  contract balance ≥ total owed + task deposits + stakes   (it can always pay everything it owes)
  total owed = Σ owed over every account that could have been credited
  task deposits = Σ remaining deposit of every task
"""

from __future__ import annotations

from eth.db.atomic import AtomicDB
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flnode.cid import Cid
from flnode.consensus.chain import Chain
from flnode.consensus.ledger import LedgerContract, Vote

from .conftest import ETHER, Ledger, make_cast, make_spec

CAST = make_cast()
SPEC = make_spec(CAST)
OPS = (
    "create",
    "join",
    "submit",
    "commit",
    "close",
    "withdraw",
    "register",
    "leave",
    "slash",
    "idle",
)

step = st.tuples(
    st.sampled_from(OPS),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 2 * ETHER),
)


def _apply(ledger: Ledger, op: str, i: int, j: int, amount: int) -> None:
    c, k = ledger.cast, ledger.contract
    tasks = k.task_count(ledger.call)
    task = (j % tasks) + 1 if tasks else 1
    device = c.devices[i % len(c.devices)]
    miner = c.miners[i % len(c.miners)]
    if op == "create":
        rounds = 1 + i % 3
        reward = amount // 3
        data = k.create_task(
            spec=Cid.from_data(b"s"),
            model=Cid.from_data(b"m"),
            rounds=rounds,
            updates_per_round=1 + j,
            reward_per_round=reward,
            epsilon=1.0,
            committee=[m.address for m in c.miners[: 1 + j % 2]],
        )
        ledger.send(c.owner, data, value=rounds * reward + (amount % ETHER) * (j % 2))
    elif op == "join":
        ledger.send(device, k.join_task(task))
    elif op == "submit":
        info = k.task(ledger.call, task)
        round_ = info.round if info else 0
        ledger.send(
            device, k.submit_update(task, round_, Cid.from_data(bytes([i, j])), 1 + amount % 1000)
        )
    elif op == "commit":
        info = k.task(ledger.call, task)
        if info is None:
            return
        pending = [
            d.address
            for d in c.devices
            if k.submission(ledger.call, task, info.round, d.address).status == "pending"
        ]
        cut = amount % (len(pending) + 1)
        accepted, rejected = pending[:cut], pending[cut:]
        scores = [((amount >> n) % 1001) / 1000 for n in range(len(accepted))]
        data = k.commit_round(task, info.round, Cid.from_data(b"agg"), accepted, rejected, scores)
        ledger.send(miner, data, coinbase=miner)
    elif op == "close":
        ledger.send(c.owner, k.close_task(task))
    elif op == "withdraw":
        who = [c.owner, *c.miners, *c.devices, c.outsider][(i + j) % 8]
        ledger.send(who, k.withdraw())
    elif op == "register":
        ledger.send(c.outsider, k.register_miner(), value=amount)
    elif op == "leave":
        ledger.send(miner, k.request_leave() if j % 2 else k.leave())
    elif op == "slash":
        a = Vote(1, 0, 0, b"\x01" * 32).sign(miner, SPEC.chain_id)
        b = Vote(1, 0, 0, b"\x02" * 32 if j else b"\x01" * 32).sign(miner, SPEC.chain_id)
        ledger.send(c.devices[0], k.slash(a, b))
    elif op == "idle":
        for _ in range(j + 1):
            ledger.mine(c.miners[0])


def _check(ledger: Ledger) -> None:
    k, c = ledger.contract, ledger.cast
    totals = k.totals(ledger.call)
    balance = ledger.chain.balance(k.address)
    assert balance >= totals["owed"] + totals["deposits"] + totals["staked"]
    people = [c.owner, *c.miners, *c.devices, c.outsider]
    assert sum(k.owed(ledger.call, p.address) for p in people) == totals["owed"]
    deposits = 0
    for task in range(1, k.task_count(ledger.call) + 1):
        info = k.task(ledger.call, task)
        assert info is not None
        deposits += info.deposit
        assert info.round <= info.rounds
    assert deposits == totals["deposits"]
    stakes = sum(k.stake(ledger.call, p.address) for p in people)
    assert stakes == totals["staked"]


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(step, min_size=4, max_size=20))
def test_deposit_invariant_holds_for_random_call_sequences(steps: list) -> None:
    ledger = Ledger(Chain(SPEC, AtomicDB()), LedgerContract(SPEC.ledger_address), CAST)
    for op, i, j, amount in steps:
        _apply(ledger, op, i, j, amount)
        _check(ledger)
