"""Fuzzing the ledger's decoders: transactions (mempool), blocks (import), network files.

A transaction from the API or gossip goes through :meth:`Mempool.add`; a block from a proposal
or block sync through :meth:`Chain.import_block` (and :func:`inspect_block` first); a network
file through :func:`load_network`. Whatever the bytes, each either accepts or raises its own
error (``TransactionRejected``, ``BlockRejected``, ``InvalidConsensusMessage``,
``NetworkFileError``), and a rejection changes nothing: the same pending transactions, the same
head, the same state.

The inputs are real transactions and blocks of a real chain (py-evm, the compiled ledger
contract), mutated byte by byte and field by field (RLP items replaced, dropped, added).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rlp
import tomli_w
from eth.db.atomic import AtomicDB
from hypothesis import given
from hypothesis import strategies as st

from flnode.consensus.bft.chainlink import inspect_block
from flnode.consensus.bft.errors import InvalidConsensusMessage
from flnode.consensus.chain import Chain
from flnode.consensus.errors import BlockRejected, NetworkFileError, TransactionRejected
from flnode.consensus.network import NetworkSpec, load_network

from ...fuzz_profiles import fuzz
from .conftest import ETHER, make_cast, make_spec

CAST = make_cast()
SPEC = make_spec(CAST)
ALICE, BOB, CAROL = CAST.devices[:3]
MINER = CAST.miners[0]
T0 = 1_700_000_100


def fresh_chain() -> Chain:
    return Chain(SPEC, AtomicDB(), mempool_max_txs=8, max_tx_size=4096)


def _txs(chain: Chain) -> list[bytes]:
    """A transfer and a call of the ledger contract with calldata (EIP-1559, two senders)."""
    transfer = chain.sign_transaction(ALICE.private_key, to=BOB.address, value=ETHER, gas=21_000)
    call = chain.sign_transaction(
        BOB.private_key, to=SPEC.ledger_address, data=b"\x12\x34\x56\x78" + bytes(32), gas=100_000
    )
    return [transfer.encode(), call.encode()]


def _block() -> bytes:
    """A block of two transactions built (not imported) by a miner on a chain at genesis."""
    builder = fresh_chain()
    for raw in _txs(builder):
        builder.add_transaction(raw)
    built = builder.build_block(builder.mempool.pending(), coinbase=MINER.address, timestamp=T0)
    return rlp.encode(built.block)


BASE = fresh_chain()
TXS = _txs(BASE)
BLOCK = _block()


# ---------------------------------------------------------------------------------------------
# Mutations: bytes, and RLP items (a typed transaction is one type byte + an RLP list)
# ---------------------------------------------------------------------------------------------


def _byte_mutation(draw: st.DrawFn, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate"]))
        if op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif op == "delete":
            del data[pos]
        else:
            del data[pos:]
    return bytes(data)


_leaf = (
    st.binary(max_size=40)
    | st.sampled_from([b"", b"\x00", b"\x01", b"\xff" * 32, b"\x00" * 20, (2**256).to_bytes(33)])
    | st.integers(0, 2**64).map(lambda i: i.to_bytes((i.bit_length() + 7) // 8, "big"))
)


def _paths(item: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = [prefix]
    if isinstance(item, list):
        for i, child in enumerate(item):
            out += _paths(child, (*prefix, i))
    return out


def _replace(item: Any, path: tuple[int, ...], new: Any) -> Any:
    if not path:
        return new
    copy = list(item)
    copy[path[0]] = _replace(copy[path[0]], path[1:], new)
    return copy


def _item_mutation(draw: st.DrawFn, item: Any) -> Any:
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(item)))
        op = draw(st.sampled_from(["tweak", "tweak", "tweak", "leaf", "list", "drop", "add"]))
        target = _get(item, path)
        if op == "tweak" and isinstance(target, bytes):
            # Keep the type, change the value: most fields then still decode, and the checks
            # behind decoding (signatures, roots, gas, nonces) get their turn.
            value = int.from_bytes(target, "big")
            value = draw(st.sampled_from([value + 1, max(value - 1, 0), 0, value ^ 1, value * 2]))
            width = max(len(target), (value.bit_length() + 7) // 8)
            tweaked = value.to_bytes(width, "big") if value else b""
            item = _replace(item, path, tweaked if len(target) != 32 else tweaked.rjust(32, b"\0"))
        elif op == "leaf":
            item = _replace(item, path, draw(_leaf))
        elif op == "list":
            item = _replace(item, path, [draw(_leaf)] if draw(st.booleans()) else [])
        elif path and op == "drop":
            parent = _get(item, path[:-1])
            item = _replace(item, path[:-1], parent[: path[-1]] + parent[path[-1] + 1 :])
        elif op == "add":
            target = _get(item, path)
            if isinstance(target, list):
                item = _replace(item, path, [*target, draw(_leaf)])
    return item


def _get(item: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        item = item[i]
    return item


@st.composite
def mutated_tx(draw: st.DrawFn) -> bytes:
    raw = draw(st.sampled_from(TXS))
    if draw(st.booleans()):
        return _byte_mutation(draw, raw)
    tx_type, body = raw[:1], rlp.decode(raw[1:])
    new_type = draw(
        st.sampled_from([tx_type, tx_type, b"\x00", b"\x01", b"\x03", b"\x04", b"\x7f"])
    )
    return new_type + rlp.encode(_item_mutation(draw, body))


@st.composite
def mutated_block(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 2)) == 0:
        return _byte_mutation(draw, BLOCK)
    return rlp.encode(_item_mutation(draw, rlp.decode(BLOCK)))


# ---------------------------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------------------------


POOL_CHAIN = fresh_chain()


def _pool_state(chain: Chain) -> tuple[Any, ...]:
    pool = chain.mempool
    return (
        [tx.hash for tx in pool.pending()],
        {who.address: pool.next_nonce(bytes.fromhex(who.address[2:])) for who in CAST.everyone},
        dict(pool._cost),
        chain.head().hash,
    )


@fuzz(120)
@given(st.lists(mutated_tx() | st.binary(max_size=60) | st.sampled_from(TXS), max_size=4))
def test_any_transaction_bytes_are_added_or_rejected_without_a_trace(txs: list[bytes]) -> None:
    global POOL_CHAIN
    if len(POOL_CHAIN.mempool):  # start each example from an empty pool (most add nothing)
        POOL_CHAIN = fresh_chain()
    chain = POOL_CHAIN
    for raw in txs:
        before = _pool_state(chain)
        try:
            tx_hash = chain.mempool.add(raw)
        except TransactionRejected as exc:
            assert exc.reason and exc.detail
            assert _pool_state(chain) == before
            continue
        assert tx_hash in chain.mempool
        assert len(chain.mempool) == len(before[0]) + 1
        assert chain.decode_transaction(raw).hash == tx_hash  # what was checked is what was sent


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------

IMPORTER = fresh_chain()
GENESIS_HEAD = IMPORTER.head()


def _state(chain: Chain) -> tuple[Any, ...]:
    return (chain.head(), len(chain.mempool), chain.balance(ALICE.address))


@fuzz(200)
@given(mutated_block() | st.binary(max_size=80))
def test_any_block_bytes_are_imported_or_rejected_without_a_trace(raw: bytes) -> None:
    global IMPORTER
    chain = IMPORTER
    before = _state(chain)
    with contextlib.suppress(InvalidConsensusMessage):
        info = inspect_block(raw)  # what consensus reads first; its own error only
        assert len(info.hash) == 32
    try:
        head = chain.import_block(raw)
    except BlockRejected as exc:
        assert str(exc)
        assert _state(chain) == before
        return
    # A mutation can leave a valid block (e.g. another extra_data): it is then the new head.
    assert head.number == 1 and head.parent_hash == GENESIS_HEAD.hash
    IMPORTER = fresh_chain()


def test_the_unmutated_block_is_imported() -> None:
    chain = fresh_chain()
    assert chain.import_block(BLOCK).number == 1
    with pytest.raises(BlockRejected):
        chain.import_block(BLOCK)  # no longer extends the head


# ---------------------------------------------------------------------------------------------
# Network files (TOML, or JSON by name)
# ---------------------------------------------------------------------------------------------

NETWORK_DOC = SPEC.to_dict()
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["0x" + "00" * 20, "0x", "1" * 80, "-1", "1e18", ALICE.address]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def network_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = json.loads(json.dumps(NETWORK_DOC))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*sorted(doc), "extra"]))
        op = draw(st.sampled_from(["set", "drop", "item"]))
        if op == "drop":
            doc.pop(key, None)
        elif op == "item" and isinstance(doc.get(key), list) and doc[key]:
            entries = doc[key]
            i = draw(st.integers(0, len(entries) - 1))
            if isinstance(entries[i], dict):
                field = draw(st.sampled_from([*sorted(entries[i]), "x"]))
                entries[i][field] = draw(_values)
            else:
                entries[i] = draw(_values)
        else:
            doc[key] = draw(_values)
    return doc


def _write(doc_or_text: Any, suffix: str) -> Callable[[], Any]:
    def load() -> Any:
        with tempfile.TemporaryDirectory(prefix="flnode-fuzz-net-") as d:
            path = Path(d) / f"network{suffix}"
            if isinstance(doc_or_text, bytes):
                path.write_bytes(doc_or_text)
            elif suffix == ".json":
                path.write_text(json.dumps(doc_or_text))
            else:
                path.write_text(tomli_w.dumps(_toml_safe(doc_or_text)))
            return load_network(path)

    return load


def _toml_safe(value: Any) -> Any:
    """TOML has no null and no integers beyond 64 bits: write those as text."""
    if isinstance(value, dict):
        return {k: _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_toml_safe(v) for v in value if v is not None]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return str(value)
    return value


def test_the_unmutated_network_file_loads_in_both_formats() -> None:
    for suffix in (".toml", ".json"):
        assert _write(NETWORK_DOC, suffix)() == SPEC


@fuzz(150)
@given(doc=network_documents(), suffix=st.sampled_from([".toml", ".json"]))
def test_any_network_file_loads_or_raises_network_file_error(doc: Any, suffix: str) -> None:
    try:
        spec = _write(doc, suffix)()
    except NetworkFileError as exc:
        assert str(exc)
        return
    assert isinstance(spec, NetworkSpec)
    assert spec.derive_genesis_hash() == spec.genesis_hash  # only self-consistent files load


@fuzz(100)
@given(raw=st.binary(max_size=120), suffix=st.sampled_from([".toml", ".json"]))
def test_any_network_file_bytes_load_or_raise_network_file_error(raw: bytes, suffix: str) -> None:
    with contextlib.suppress(NetworkFileError):
        _write(raw, suffix)()


def test_a_deeply_nested_json_network_file_is_a_network_file_error() -> None:
    """Found by fuzzing, fixed in flnode.strictjson: JSON nested 100,000 deep killed the process
    (SIGSEGV, py-evm's recursion limit) or raised ``RecursionError``."""
    with pytest.raises(NetworkFileError, match="nested"):
        _write(b"[" * 100_000, ".json")()


def test_a_deeply_nested_toml_network_file_is_a_network_file_error() -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # py-evm sets 100,000; then it takes a 200 KB file, same error
    try:
        with pytest.raises(NetworkFileError):
            _write(b"a = " + b"[" * 3000 + b"]" * 3000, ".toml")()
    finally:
        sys.setrecursionlimit(limit)


# ---------------------------------------------------------------------------------------------
# Found by fuzzing, fixed in node/consensus/chain.py
# ---------------------------------------------------------------------------------------------


def _block_with_bad_y_parity() -> bytes:
    """The block, with its second transaction's signature y-parity set to 2 (valid RLP)."""
    item = rlp.decode(BLOCK)
    tx = item[1][1]
    fields = rlp.decode(tx[1:])
    fields[-3] = b"\x02"  # y_parity, before r and s
    item[1][1] = tx[:1] + rlp.encode(fields)
    return rlp.encode(item)


def test_the_mempool_refuses_that_transaction() -> None:
    fields = rlp.decode(TXS[1][1:])
    fields[-3] = b"\x02"
    with pytest.raises(TransactionRejected, match="bad-signature"):
        fresh_chain().mempool.add(TXS[1][:1] + rlp.encode(fields))


def test_a_block_with_a_bad_signature_is_block_rejected() -> None:
    chain = fresh_chain()
    head = chain.head()
    try:
        with pytest.raises(BlockRejected):
            chain.import_block(_block_with_bad_y_parity())
    finally:
        assert chain.head() == head


def test_re_executing_a_proposal_with_a_bad_signature_is_block_rejected() -> None:
    chain = fresh_chain()
    block = chain.decode_block(_block_with_bad_y_parity())
    with pytest.raises(BlockRejected):
        chain.build_block(list(block.transactions), coinbase=block.header.coinbase, timestamp=T0)
