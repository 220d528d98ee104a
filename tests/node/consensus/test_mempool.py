"""Mempool checks: every bad transaction is refused with its reason and changes nothing."""

from __future__ import annotations

import pytest
import rlp
from eth.db.atomic import AtomicDB

from flnode.consensus.chain import Chain
from flnode.consensus.errors import TransactionRejected
from flnode.consensus.network import NetworkSpec

from .conftest import Cast


@pytest.fixture
def chain(spec: NetworkSpec) -> Chain:
    return Chain(spec, AtomicDB(), mempool_max_txs=3, max_tx_size=4096)


def _rejected(chain: Chain, tx: object, reason: str) -> TransactionRejected:
    before = chain.mempool.pending()
    with pytest.raises(TransactionRejected) as info:
        chain.add_transaction(tx)  # type: ignore[arg-type]
    assert info.value.reason == reason, str(info.value)
    assert chain.mempool.pending() == before
    return info.value


def test_a_good_transaction_is_accepted(chain: Chain, cast: Cast) -> None:
    tx = chain.sign_transaction(
        cast.devices[0].private_key, to=cast.outsider.address, value=1, gas=21_000
    )
    assert chain.add_transaction(tx.encode()) == tx.hash
    assert tx.hash in chain.mempool
    _rejected(chain, tx.encode(), "known")


def test_size_and_encoding(chain: Chain, cast: Cast) -> None:
    key = cast.devices[0].private_key
    big = chain.sign_transaction(key, to=cast.outsider.address, data=b"\x01" * 5000, gas=200_000)
    _rejected(chain, big.encode(), "oversize")
    _rejected(chain, b"\x02\xf8garbage", "malformed")
    _rejected(chain, b"", "malformed")


def test_wrong_chain_id(chain: Chain, cast: Cast) -> None:
    key = cast.devices[0].private_key
    vm = chain._chain.get_vm()
    builder = vm.get_transaction_builder()
    other = builder.new_unsigned_dynamic_fee_transaction(
        chain_id=1,
        nonce=0,
        max_priority_fee_per_gas=1,
        max_fee_per_gas=10**10,
        gas=21_000,
        to=cast.outsider.address_bytes,
        value=1,
        data=b"",
        access_list=(),
    ).as_signed_transaction(key)
    _rejected(chain, other.encode(), "wrong-chain-id")
    legacy = vm.create_unsigned_transaction(
        nonce=0, gas_price=10**10, gas=21_000, to=cast.outsider.address_bytes, value=1, data=b""
    )
    pre_eip155 = legacy.as_signed_transaction(key)  # no chain id at all
    err = _rejected(chain, rlp.encode(pre_eip155), "wrong-chain-id")
    assert "EIP-155" in str(err)
    ok_legacy = legacy.as_signed_transaction(key, chain_id=chain.chain_id)
    chain.add_transaction(rlp.encode(ok_legacy))


def test_bad_signature(chain: Chain, cast: Cast) -> None:
    tx = chain.sign_transaction(
        cast.devices[0].private_key, to=cast.outsider.address, value=1, gas=21_000
    )
    forged = tx.copy(r=tx.r ^ 1)  # does not recover, or recovers someone else with no funds
    with pytest.raises(TransactionRejected) as info:
        chain.add_transaction(forged.encode())
    assert info.value.reason in {"bad-signature", "insufficient-funds"}
    _rejected(chain, tx.copy(s=0).encode(), "bad-signature")
    _rejected(chain, tx.copy(y_parity=7).encode(), "bad-signature")


def test_gas_and_fees(chain: Chain, cast: Cast) -> None:
    key = cast.devices[0].private_key
    to = cast.outsider.address
    _rejected(chain, chain.sign_transaction(key, to=to, gas=20_999), "gas")
    _rejected(chain, chain.sign_transaction(key, to=to, data=b"\x01" * 100, gas=21_000), "gas")
    _rejected(chain, chain.sign_transaction(key, to=to, gas=chain.head().gas_limit + 1), "gas")
    _rejected(
        chain,
        chain.sign_transaction(
            key, to=to, gas=21_000, max_fee_per_gas=1, max_priority_fee_per_gas=1
        ),
        "fee-too-low",
    )


def test_nonces(chain: Chain, cast: Cast) -> None:
    key = cast.devices[0].private_key
    to = cast.outsider.address
    first = chain.sign_transaction(key, to=to, value=1, gas=21_000)
    chain.add_transaction(first)
    _rejected(
        chain, chain.sign_transaction(key, to=to, value=2, gas=21_000, nonce=0), "nonce-gap"
    )  # pending already
    _rejected(chain, chain.sign_transaction(key, to=to, value=2, gas=21_000, nonce=5), "nonce-gap")
    chain.add_transaction(chain.sign_transaction(key, to=to, value=3, gas=21_000))  # nonce 1
    chain.mine(chain.mempool.pending(), coinbase=cast.miners[0].address)
    assert len(chain.mempool) == 0 and chain.nonce(cast.devices[0].address) == 2
    _rejected(
        chain, chain.sign_transaction(key, to=to, value=2, gas=21_000, nonce=1), "nonce-too-low"
    )


def test_funds_and_capacity(chain: Chain, cast: Cast) -> None:
    poor = cast.devices[1]
    balance = chain.balance(poor.address)
    _rejected(
        chain,
        chain.sign_transaction(
            poor.private_key, to=cast.outsider.address, value=balance, gas=21_000
        ),
        "insufficient-funds",
    )
    for d in cast.devices[:3]:
        chain.add_transaction(
            chain.sign_transaction(d.private_key, to=cast.outsider.address, value=1, gas=21_000)
        )
    _rejected(
        chain,
        chain.sign_transaction(
            cast.devices[3].private_key, to=cast.outsider.address, value=1, gas=21_000
        ),
        "mempool-full",
    )
