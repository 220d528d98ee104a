"""The ledger reads of the federation roles, on a real py-evm chain with the compiled contract."""

from __future__ import annotations

from typing import Any

from eth.db.atomic import AtomicDB
from eth_utils import to_checksum_address

from flnode.cid import Cid
from flnode.consensus.chain import Chain
from flnode.consensus.ledger import LedgerContract
from flnode.consensus.network import new_network
from flnode.federation import ledgerview
from flnode.identity import NodeIdentity

ETHER = 10**18


class _Ledger:
    """One transaction per block, like a busy proposer."""

    def __init__(self) -> None:
        ids = [NodeIdentity.from_secret((9000 + i).to_bytes(32, "big")) for i in range(6)]
        self.owner, self.miner, self.devices = ids[0], ids[1], ids[2:]
        spec = new_network(
            network_id="ledgerview-test",
            chain_id=4343,
            accounts=[(p.address, 1000 * ETHER) for p in ids],
            miners=[(self.miner.address, 2 * ETHER)],
            genesis_timestamp=1_700_000_000,
            min_stake=ETHER,
        )
        self.chain = Chain(spec, AtomicDB())
        self.contract = LedgerContract(spec.ledger_address)
        self.timestamp = 1_700_000_100

    def send(self, who: NodeIdentity, data: bytes, value: int = 0) -> None:
        tx = self.chain.sign_transaction(
            who.private_key, to=self.contract.address, data=data, value=value, gas=3_000_000
        )
        self.chain.add_transaction(tx.encode())
        self.timestamp += 1
        _, built = self.chain.mine(
            self.chain.mempool.pending(), coinbase=self.miner.address, timestamp=self.timestamp
        )
        assert all(o.success for o in built.outcomes), [o.error for o in built.outcomes]

    def create_task(self, rounds: int) -> int:
        before = self.contract.task_count(self.chain.call)
        self.send(
            self.owner,
            self.contract.create_task(
                spec=Cid.from_data(b"spec"),
                model=Cid.from_data(b"model-0"),
                rounds=rounds,
                updates_per_round=len(self.devices),
                reward_per_round=ETHER,
                epsilon=10.0,
                committee=[self.miner.address],
            ),
            value=rounds * ETHER,
        )
        return before + 1

    def run_round(self, task: int, round_: int) -> Cid:
        for i, device in enumerate(self.devices):
            if round_ == 0:
                self.send(device, self.contract.join_task(task))
            cid = Cid.from_data(f"{task}-{round_}-{i}".encode())
            self.send(device, self.contract.submit_update(task, round_, cid, 10 + i))
        aggregate = Cid.from_data(f"aggregate {task}-{round_}".encode())
        accepted = [d.address for d in self.devices]
        self.send(
            self.miner,
            self.contract.commit_round(task, round_, aggregate, accepted, [], [1.0] * 4),
        )
        return aggregate


def _scan_from_genesis(ledger: _Ledger, task: int) -> list[dict[str, object]]:
    """What the history must say, read the slow way: every event from block 0."""
    chain, contract = ledger.chain, ledger.contract
    last: dict[int, int] = {}
    out = []
    for event in contract.decode_logs(chain.logs(0, None, address=contract.address)):
        a = event.args
        if int(a.get("task", -1)) != task:
            continue
        if event.name == "UpdateSubmitted":
            last[int(a["round"])] = int(event.block_number or 0)
        if event.name == "RoundCommitted":
            entry = ledgerview.committed_entry(chain, event)
            out.append({**entry, "last_submission_block": last.get(int(a["round"]))})
    return out


def test_round_history_grows_with_the_chain_and_matches_a_full_scan() -> None:
    ledger = _Ledger()
    chain, contract = ledger.chain, ledger.contract
    first = ledger.create_task(rounds=3)
    assert ledgerview.round_history(chain, contract, first) == []
    agg0 = ledger.run_round(first, 0)
    second = ledger.create_task(rounds=1)
    history = ledgerview.round_history(chain, contract, first)
    assert [h["round"] for h in history] == [0]
    (entry,) = history
    commit_block = entry["block"]
    assert isinstance(commit_block, int)
    assert entry["aggregate"] == str(agg0)
    assert entry["proposer"] == to_checksum_address(ledger.miner.address)
    assert (entry["accepted"], entry["rejected"]) == (len(ledger.devices), 0)
    assert ETHER - 10 <= int(entry["paid_wei"]) <= ETHER  # the round's reward, less rounding
    assert entry["last_submission_block"] == commit_block - 1  # one transaction per block
    assert entry["timestamp"] == chain.block(commit_block).header.timestamp
    assert history == _scan_from_genesis(ledger, first)
    # Blocks added since the last call (another task's round among them) are read on the next.
    ledger.run_round(second, 0)
    ledger.run_round(first, 1)
    for task in (first, second):
        assert ledgerview.round_history(chain, contract, task) == _scan_from_genesis(ledger, task)
    assert [h["round"] for h in ledgerview.round_history(chain, contract, first)] == [0, 1]
    assert ledgerview.round_history(chain, contract, first + 5) == []


def test_round_history_reads_each_block_once() -> None:
    ledger = _Ledger()
    chain, contract = ledger.chain, ledger.contract
    task = ledger.create_task(rounds=2)
    ledger.run_round(task, 0)
    read: list[tuple[int, int | None]] = []
    logs = chain.logs

    def counting_logs(from_block: int = 0, to_block: int | None = None, **kw: Any) -> Any:
        read.append((from_block, to_block))
        return logs(from_block, to_block, **kw)

    chain.logs = counting_logs  # type: ignore[method-assign]
    ledgerview.round_history(chain, contract, task)
    head = chain.head().number
    ledgerview.round_history(chain, contract, task)  # nothing new: no read at all
    ledger.run_round(task, 1)
    assert [h["round"] for h in ledgerview.round_history(chain, contract, task)] == [0, 1]
    assert read[-1] == (head + 1, chain.head().number)
    assert all(start > 0 for start, _ in read[1:])
