"""The chain on SQLite: reopen, replicate, reject tampered blocks, refuse another genesis."""

from __future__ import annotations

from pathlib import Path

import pytest
import rlp
from eth.db.atomic import AtomicDB

from flnode.cid import Cid
from flnode.consensus.chain import Chain
from flnode.consensus.errors import (
    BlockRejected,
    ContractReverted,
    GenesisMismatchError,
    NotFound,
)
from flnode.consensus.ledger import LedgerContract
from flnode.consensus.network import NetworkSpec
from flnode.storage.chaindb import ChainDBError, SqliteAtomicDB

from .conftest import ETHER, Cast, make_spec


def _fill(
    chain: Chain, cast: Cast, blocks: int, per_block: int, t0: int = 1_700_000_100
) -> list[bytes]:
    """Mine ``blocks`` blocks of transfers and contract calls; return them RLP-encoded."""
    contract = LedgerContract(chain.spec.ledger_address)
    out = []
    for b in range(blocks):
        for n in range(per_block):
            who = cast.devices[n % len(cast.devices)]
            if n % 2:
                tx = chain.sign_transaction(
                    who.private_key, to=cast.outsider.address, value=n + 1, gas=21_000
                )
            else:
                tx = chain.sign_transaction(
                    who.private_key,
                    to=contract.address,
                    data=contract.register_miner(),
                    value=ETHER,
                    gas=200_000,
                )
            chain.add_transaction(tx)
        _, built = chain.mine(
            chain.mempool.pending(), coinbase=cast.miners[0].address, timestamp=t0 + b + 1
        )
        out.append(built.encode())
    return out


def test_sqlite_chain_reopens_at_its_head(spec: NetworkSpec, cast: Cast, tmp_path: Path) -> None:
    db = SqliteAtomicDB(tmp_path / "chain.sqlite")
    chain = Chain(spec, db)
    _fill(chain, cast, 3, 4)
    head = chain.head()
    balance = chain.balance(cast.outsider.address)
    db.close()
    again = Chain(spec, SqliteAtomicDB(tmp_path / "chain.sqlite"))
    assert again.head() == head
    assert again.balance(cast.outsider.address) == balance
    assert again.verify_state()
    ro = Chain(spec, SqliteAtomicDB(tmp_path / "chain.sqlite", read_only=True), read_only=True)
    assert ro.head() == head


def test_a_data_dir_of_another_network_is_refused(
    spec: NetworkSpec, cast: Cast, tmp_path: Path
) -> None:
    db = SqliteAtomicDB(tmp_path / "chain.sqlite")
    Chain(spec, db)
    other = make_spec(cast, chain_id=999)
    with pytest.raises(GenesisMismatchError, match="use the network file"):
        Chain(other, db)


def test_chaindb_errors(tmp_path: Path) -> None:
    with pytest.raises(ChainDBError, match="no chain database"):
        SqliteAtomicDB(tmp_path / "nope.sqlite", read_only=True)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ChainDBError, match="cannot open"):
        SqliteAtomicDB(tmp_path / "junk.sqlite")


def test_sqlite_batch_is_all_or_nothing(tmp_path: Path) -> None:
    db = SqliteAtomicDB(tmp_path / "kv.sqlite")
    db[b"a"] = b"1"
    with pytest.raises(RuntimeError), db.atomic_batch() as batch:
        batch[b"b"] = b"2"
        del batch[b"a"]
        raise RuntimeError("crash in the middle")
    assert db[b"a"] == b"1" and b"b" not in db
    with db.atomic_batch() as batch:
        batch[b"b"] = b"2"
        del batch[b"a"]
        with db.atomic_batch() as nested:  # nested batches join the outer transaction
            nested[b"c"] = b"3"
    assert b"a" not in db and db[b"b"] == b"2" and db[b"c"] == b"3"


def test_replica_reaches_the_same_state(spec: NetworkSpec, cast: Cast) -> None:
    a, b = Chain(spec, AtomicDB()), Chain(spec, AtomicDB())
    blocks = _fill(a, cast, 4, 6)
    for raw in blocks:
        b.import_block(raw)
    assert b.head() == a.head()
    assert b.head().state_root == a.head().state_root
    assert b.balance(cast.outsider.address) == a.balance(cast.outsider.address)


def test_gas_limit_stays_at_the_networks(spec: NetworkSpec, cast: Cast) -> None:
    chain = Chain(spec, AtomicDB())
    for t in range(1, 6):
        head, _ = chain.mine([], coinbase=cast.miners[0].address, timestamp=1_700_000_000 + t)
        assert head.gas_limit == spec.gas_limit


def test_build_block_does_not_move_the_head(spec: NetworkSpec, cast: Cast) -> None:
    chain = Chain(spec, AtomicDB())
    tx = chain.sign_transaction(
        cast.devices[0].private_key, to=cast.outsider.address, value=5, gas=21_000
    )
    chain.add_transaction(tx)
    before = chain.head()
    built = chain.build_block(chain.mempool.pending(), coinbase=cast.miners[0].address)
    assert chain.head() == before and len(chain.mempool) == 1
    assert built.outcomes[0].success and built.outcomes[0].gas_used == 21_000
    head = chain.import_block(built.encode())
    assert head.number == 1 and head.hash == built.hash and len(chain.mempool) == 0


def test_build_block_skips_what_cannot_go_in(spec: NetworkSpec, cast: Cast) -> None:
    chain = Chain(spec, AtomicDB())
    d0, d1, d2 = (d.private_key for d in cast.devices[:3])
    to = cast.outsider.address
    good = chain.sign_transaction(d0, to=to, value=1, gas=21_000)
    gap = chain.sign_transaction(d1, to=to, value=1, gas=21_000, nonce=3)
    cheap = chain.sign_transaction(
        d2, to=to, value=1, gas=21_000, max_fee_per_gas=7, max_priority_fee_per_gas=1
    )
    broke = chain.sign_transaction(d0, to=to, value=10**30, gas=21_000)  # nonce 1 after good
    huge = chain.sign_transaction(d1, to=to, gas=spec.gas_limit - 21_000, nonce=0)
    too_big = chain.sign_transaction(d2, to=to, gas=21_001, nonce=0)
    built = chain.build_block(
        [good, gap, cheap, broke, huge, huge, too_big], coinbase=cast.miners[0].address
    )
    assert [o.tx_hash for o in built.outcomes] == [good.hash, huge.hash]


def _tamper(raw: bytes, **header_changes: object) -> bytes:
    from eth.vm.forks import PragueVM

    block = rlp.decode(raw, sedes=PragueVM.get_block_class())
    return rlp.encode(block.copy(header=block.header.copy(**header_changes)))


def test_tampered_blocks_are_rejected_and_change_nothing(spec: NetworkSpec, cast: Cast) -> None:
    a, b = Chain(spec, AtomicDB()), Chain(spec, AtomicDB())
    (raw,) = _fill(a, cast, 1, 4)
    head = b.head()
    bad = [
        _tamper(raw, state_root=b"\x01" * 32),
        _tamper(raw, coinbase=cast.outsider.address_bytes),  # fees credited elsewhere
        _tamper(raw, gas_used=1),
        _tamper(raw, parent_hash=b"\x02" * 32),
        raw[:-10],
        b"\xc0",
        b"\x00" * (4 * 2**20 + 1),
    ]
    from eth.vm.forks import PragueVM

    block = rlp.decode(raw, sedes=PragueVM.get_block_class())
    bad.append(rlp.encode(block.copy(transactions=list(reversed(block.transactions)))))
    for blob in bad:
        with pytest.raises(BlockRejected):
            b.import_block(blob)
        assert b.head() == head
    b.import_block(raw)
    assert b.head() == a.head()
    with pytest.raises(BlockRejected, match="does not extend the head"):
        b.import_block(raw)


def test_receipts_logs_and_reads(spec: NetworkSpec, cast: Cast) -> None:
    chain = Chain(spec, AtomicDB())
    contract = LedgerContract(spec.ledger_address)
    d = cast.devices[0]
    t1 = chain.sign_transaction(d.private_key, to=cast.outsider.address, value=1, gas=21_000)
    chain.add_transaction(t1)
    t2 = chain.sign_transaction(
        d.private_key, to=contract.address, data=contract.register_miner(), value=ETHER
    )
    chain.add_transaction(t2)
    chain.mine(chain.mempool.pending(), coinbase=cast.miners[0].address)
    r1, r2 = chain.receipt(t1.hash), chain.receipt(t2.hash)
    assert r1.gas_used == 21_000 and r2.cumulative_gas_used == 21_000 + r2.gas_used
    assert r2.success and r2.sender == d.address and r2.to == spec.ledger_address
    (log,) = r2.logs
    assert log.topics[0] == contract.event_topic("MinerRegistered")
    assert all(isinstance(t, bytes) and len(t) == 32 for t in log.topics)
    assert list(chain.logs(0, address=contract.address)) == [log]
    assert list(chain.logs(0, topics=[contract.event_topic("Withdrawn")])) == []
    assert list(chain.logs(0, topics=[contract.event_topic("MinerRegistered")])) == [log]
    assert list(chain.logs(0, address=cast.outsider.address)) == []
    assert list(chain.logs(2)) == []
    assert chain.transaction(t1.hash).hash == t1.hash
    assert chain.nonce(d.address) == 2
    with pytest.raises(NotFound):
        chain.receipt(b"\x00" * 32)
    with pytest.raises(NotFound):
        chain.block(99)
    with pytest.raises(ContractReverted, match="nothing to withdraw"):
        chain.call(contract.address, contract.withdraw(), sender=d.address)
    with pytest.raises(ContractReverted, match="nothing to withdraw"):
        chain.sign_transaction(d.private_key, to=contract.address, data=contract.withdraw())
    # estimate as the block's proposer: commitRound checks block.coinbase
    assert contract.is_active_miner(chain.call, d.address)
    assert chain.receipts(1)[1] == r2
    assert Cid.from_data(b"x")  # keep the import honest


def test_state_reads_follow_the_head(spec: NetworkSpec, cast: Cast) -> None:
    """Reads reuse one state object per head state root: a new head must be read afresh."""
    chain = Chain(spec, AtomicDB())
    sender, receiver = cast.devices[0].address, cast.outsider.address
    before = (chain.balance(receiver), chain.nonce(sender))  # caches the genesis state
    tx = chain.sign_transaction(cast.devices[0].private_key, to=receiver, value=7, gas=21_000)
    chain.add_transaction(tx)
    built = chain.build_block(chain.mempool.pending(), coinbase=cast.miners[0].address)
    assert (chain.balance(receiver), chain.nonce(sender)) == before  # building moves no head
    chain.import_block(built.encode())
    assert chain.balance(receiver) == before[0] + 7
    assert chain.nonce(sender) == before[1] + 1


def test_gas_estimates_cover_the_exact_need_with_the_documented_margin(ledger) -> None:  # type: ignore[no-untyped-def]
    """Two executions instead of py-evm's binary search: the estimate is the exact need (found by
    that search) plus 10 % and 5,000, and a transaction sent with it succeeds."""
    from eth.estimators.gas import binary_gas_search_exact
    from eth.vm.spoof import SpoofTransaction

    chain, contract = ledger.chain, ledger.contract
    task = ledger.create_task(per_round=3)
    d = ledger.cast.devices[0]
    for data in (
        contract.join_task(task),
        contract.submit_update(task, 0, Cid.from_data(b"u"), 123),
    ):
        estimate = chain.estimate_gas(d.address_bytes, contract.address, data)
        vm = chain._chain.get_vm()
        utx = vm.create_unsigned_transaction(
            nonce=chain.nonce(d.address),
            gas_price=0,
            gas=chain.head_header().gas_limit,
            to=contract.address,
            value=0,
            data=data,
        )
        with vm.in_costless_state() as state:
            exact = binary_gas_search_exact(state, SpoofTransaction(utx, from_=d.address_bytes))
        assert estimate == exact + exact // 10 + 5_000, (estimate, exact)
        tx = chain.sign_transaction(d.private_key, to=contract.address, data=data, gas=estimate)
        chain.add_transaction(tx)
        (outcome,) = [o for o in ledger.mine(ledger.cast.miners[0]) if o.tx_hash == tx.hash]
        assert outcome.success, outcome.error
    with pytest.raises(ContractReverted, match="already joined"):
        chain.estimate_gas(d.address_bytes, contract.address, contract.join_task(task))
