"""Importing blocks: one's own built blocks without re-execution, anybody else's re-executed."""

from __future__ import annotations

from pathlib import Path

import pytest
import rlp
from eth.db.atomic import AtomicDB
from eth.vm.forks import PragueVM

from flnode.cid import Cid
from flnode.consensus import chain as chain_module
from flnode.consensus.chain import Chain
from flnode.consensus.errors import BlockRejected
from flnode.consensus.ledger import LedgerContract
from flnode.consensus.network import NetworkSpec
from flnode.storage.chaindb import SqliteAtomicDB

from .conftest import ETHER, Cast


def _calls(chain: Chain, cast: Cast) -> list:  # type: ignore[type-arg]
    contract = LedgerContract(chain.spec.ledger_address)
    txs = []
    for i, d in enumerate(cast.devices):
        txs.append(
            chain.sign_transaction(
                d.private_key,
                to=contract.address,
                data=contract.register_miner(),
                value=ETHER,
                gas=200_000,
            )
        )
        txs.append(
            chain.sign_transaction(
                d.private_key,
                to=cast.outsider.address,
                value=i + 1,
                gas=21_000,
                nonce=chain.nonce(d.address) + 1,
            )
        )
    return txs


def _count_executions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = chain_module.LedgerVM.import_block

    def counting(self, block):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(self, block)

    monkeypatch.setattr(chain_module.LedgerVM, "import_block", counting)
    return calls


def test_own_block_is_stored_without_re_execution_and_replicas_agree(
    spec: NetworkSpec, cast: Cast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executions = _count_executions(monkeypatch)
    proposer = Chain(spec, SqliteAtomicDB(tmp_path / "p.sqlite"))
    replica = Chain(spec, SqliteAtomicDB(tmp_path / "r.sqlite"))
    for round_ in range(3):
        built = proposer.build_block(
            _calls(proposer, cast),
            coinbase=cast.miners[0].address,
            timestamp=1_700_000_100 + round_,
        )
        assert all(o.success for o in built.outcomes)
        head = proposer.import_block(built.encode() if round_ % 2 else built.block)
        assert executions[0] == round_  # the proposer's own import executed nothing
        assert replica.import_block(built.encode()) == head
        assert executions[0] == round_ + 1  # the replica's did
        assert head.tx_count == len(built.outcomes) and head.hash == built.hash
    assert proposer.balance(cast.outsider.address) == replica.balance(cast.outsider.address)
    assert proposer.receipts(2) == replica.receipts(2)
    assert proposer.verify_state() and replica.verify_state()
    # both reopen at the same head, with every transaction and receipt readable
    proposer.db.close()  # type: ignore[attr-defined]
    reopened = Chain(spec, SqliteAtomicDB(tmp_path / "p.sqlite"))
    assert reopened.head() == replica.head()
    assert reopened.receipts(3) == replica.receipts(3)
    assert reopened.verify_state()


def test_own_block_with_another_body_is_executed_and_rejected(
    spec: NetworkSpec, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    executions = _count_executions(monkeypatch)
    chain = Chain(spec, AtomicDB())
    built = chain.build_block(_calls(chain, cast), coinbase=cast.miners[0].address)
    block = rlp.decode(built.encode(), sedes=PragueVM.get_block_class())
    swapped = block.copy(transactions=list(reversed(block.transactions)))
    assert swapped.hash == built.hash  # the header alone does not cover the body
    before = chain.head()
    with pytest.raises(BlockRejected):
        chain.import_block(rlp.encode(swapped))
    assert executions[0] == 1 and chain.head() == before
    # the real block still goes in (executed now: the shortcut is used at most once)
    assert chain.import_block(built.encode()).hash == built.hash


def test_stale_own_block_is_refused(spec: NetworkSpec, cast: Cast) -> None:
    chain = Chain(spec, AtomicDB())
    first = chain.build_block([], coinbase=cast.miners[0].address, timestamp=1_700_000_100)
    other = chain.build_block([], coinbase=cast.miners[0].address, timestamp=1_700_000_101)
    chain.import_block(other.block)
    with pytest.raises(BlockRejected, match="does not extend the head"):
        chain.import_block(first.block)


def test_submit_update_block_replicates(spec: NetworkSpec, cast: Cast) -> None:
    """The benchmark's workload, small: a task, joins, one round of submitUpdate calls."""
    a, b = Chain(spec, AtomicDB()), Chain(spec, AtomicDB())
    contract = LedgerContract(spec.ledger_address)
    t = [1_700_000_100]

    def block(txs: list) -> None:  # type: ignore[type-arg]
        t[0] += 1
        built = a.build_block(txs, coinbase=cast.miners[0].address, timestamp=t[0])
        assert all(o.success for o in built.outcomes), built.outcomes
        assert a.import_block(built.block) == b.import_block(built.encode())

    block(
        [
            a.sign_transaction(
                cast.owner.private_key,
                to=contract.address,
                value=ETHER,
                gas=1_000_000,
                data=contract.create_task(
                    spec=Cid.from_data(b"s"),
                    model=Cid.from_data(b"m"),
                    rounds=1,
                    updates_per_round=len(cast.devices),
                    reward_per_round=ETHER,
                    epsilon=1.0,
                    committee=[cast.miners[0].address],
                ),
            )
        ]
    )
    block(
        [
            a.sign_transaction(d.private_key, to=contract.address, data=contract.join_task(1))
            for d in cast.devices
        ]
    )
    block(
        [
            a.sign_transaction(
                d.private_key,
                to=contract.address,
                gas=150_000,
                data=contract.submit_update(1, 0, Cid.from_data(bytes([i])), 10 + i),
            )
            for i, d in enumerate(cast.devices)
        ]
    )
    assert a.head().state_root == b.head().state_root
