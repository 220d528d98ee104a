"""The mempool: transactions checked against the head state and waiting for a block.

Every transaction from outside (the API, gossip) comes in as raw bytes and passes, in this order,
the cheap checks before the expensive ones:

==================  ==========================================================================
reason              check
==================  ==========================================================================
oversize            raw size ≤ ``max_tx_size``
malformed           decodes as a transaction of the chain's fork
wrong-chain-id      typed: ``chain_id`` equals the network's; legacy: EIP-155 with that chain id
bad-signature       the signature is valid and recovers a sender
known               not already in the pool
gas                 intrinsic gas ≤ gas ≤ block gas limit
fee-too-low         max fee per gas ≥ the head's base fee
nonce-too-low       nonce ≥ the sender's account nonce
nonce-gap           nonce = account nonce + the sender's pending transactions (no gaps, no replacing)
insufficient-funds  balance covers value + gas × max fee of this and the sender's pending txs
mempool-full        fewer than ``max_txs`` waiting
==================  ==========================================================================

A rejected transaction raises :class:`TransactionRejected` with the reason label and changes
nothing. Pending transactions are handed out in arrival order, which keeps each sender's nonces in
sequence; after every imported block the pool drops what the block included or made stale.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from eth.abc import SignedTransactionAPI

from .errors import TransactionRejected

if TYPE_CHECKING:
    from .chain import Chain


class Mempool:
    """Pending, checked transactions of one chain (used from the chain's worker thread only)."""

    def __init__(self, chain: Chain, *, max_txs: int, max_tx_size: int) -> None:
        self._chain = chain
        self.max_txs = max_txs
        self.max_tx_size = max_tx_size
        self._txs: dict[bytes, SignedTransactionAPI] = {}  # hash → tx, in arrival order
        self._by_sender: dict[bytes, list[SignedTransactionAPI]] = defaultdict(list)
        self._cost: dict[bytes, int] = {}
        """Per sender: the most its pending transactions can cost (value + gas × max fee)."""
        self.added = 0
        """How many transactions were ever admitted: a reader in another thread polls it to
        learn cheaply that something new arrived (an int read is atomic)."""

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._txs

    def next_nonce(self, sender: bytes) -> int:
        """The nonce a new transaction from ``sender`` must carry."""
        return self._chain.nonce(sender) + len(self._by_sender.get(sender, ()))

    def pending(self, limit: int | None = None) -> list[SignedTransactionAPI]:
        txs = list(self._txs.values())
        return txs if limit is None else txs[:limit]

    def next_in_line(self) -> list[SignedTransactionAPI]:
        """Each sender's first pending transaction: the ones the next block can include as
        they are (their nonces are the senders' current ones)."""
        return [queued[0] for queued in self._by_sender.values() if queued]

    def add(self, tx: bytes | SignedTransactionAPI) -> bytes:
        if isinstance(tx, bytes | bytearray | memoryview):
            raw = bytes(tx)
            if len(raw) > self.max_tx_size:
                raise TransactionRejected(
                    "oversize", f"{len(raw)} bytes is over the limit of {self.max_tx_size}"
                )
            try:
                tx = self._chain.decode_transaction(raw)
            except Exception as exc:  # rlp and py-evm raise many types on bad bytes
                raise TransactionRejected("malformed", f"cannot decode: {exc}") from None
        else:
            raw = tx.encode()
            if len(raw) > self.max_tx_size:
                raise TransactionRejected(
                    "oversize", f"{len(raw)} bytes is over the limit of {self.max_tx_size}"
                )
        self._check_chain_id(tx)
        try:
            tx.check_signature_validity()
            sender = tx.sender
            tx.validate()
        except Exception as exc:  # eth-keys/py-evm: BadSignature, ValidationError, ...
            raise TransactionRejected(
                "bad-signature", f"invalid signature or fields: {exc}"
            ) from None
        if tx.hash in self._txs:
            raise TransactionRejected("known", f"0x{tx.hash.hex()} is already pending")
        head = self._chain.head_header()
        intrinsic = tx.intrinsic_gas
        if tx.gas < intrinsic:
            raise TransactionRejected(
                "gas", f"gas {tx.gas} is below the intrinsic gas {intrinsic} of this transaction"
            )
        if tx.gas > head.gas_limit:
            raise TransactionRejected(
                "gas", f"gas {tx.gas} is above the block gas limit {head.gas_limit}"
            )
        max_fee = tx.max_fee_per_gas
        if max_fee < head.base_fee_per_gas:
            raise TransactionRejected(
                "fee-too-low",
                f"max fee per gas {max_fee} is below the base fee {head.base_fee_per_gas}",
            )
        account_nonce = self._chain.nonce(sender)
        queued = self._by_sender.get(sender, [])
        if tx.nonce < account_nonce:
            raise TransactionRejected(
                "nonce-too-low", f"nonce {tx.nonce} was used; the account is at {account_nonce}"
            )
        expected = account_nonce + len(queued)
        if tx.nonce != expected:
            raise TransactionRejected(
                "nonce-gap", f"nonce {tx.nonce} is not the next one for this sender ({expected})"
            )
        cost = self._cost.get(sender, 0) + tx.value + tx.gas * max_fee
        balance = self._chain.balance(sender)
        if cost > balance:
            raise TransactionRejected(
                "insufficient-funds",
                f"needs up to {cost} wei with the sender's pending transactions, has {balance}",
            )
        if len(self._txs) >= self.max_txs:
            raise TransactionRejected("mempool-full", f"{self.max_txs} transactions are waiting")
        self._txs[tx.hash] = tx
        self._by_sender[sender].append(tx)
        self._cost[sender] = cost
        self.added += 1
        return tx.hash

    def _check_chain_id(self, tx: SignedTransactionAPI) -> None:
        chain_id = getattr(tx, "chain_id", None)
        if chain_id != self._chain.chain_id:
            raise TransactionRejected(
                "wrong-chain-id",
                f"chain id {chain_id} is not this network's {self._chain.chain_id}"
                + (" (legacy transactions must be EIP-155 signed)" if chain_id is None else ""),
            )

    def prune(self) -> int:
        """Drop transactions that the head made stale (included, or nonce now too low)."""
        dropped = 0
        for sender, queued in list(self._by_sender.items()):
            nonce = self._chain.nonce(sender)
            keep = [t for t in queued if t.nonce >= nonce]
            for t in queued:
                if t.nonce < nonce:
                    del self._txs[t.hash]
                    dropped += 1
            self._keep(sender, keep)
        return dropped

    def remove(self, tx_hashes: set[bytes]) -> None:
        """Forget transactions (e.g. ones a proposer could not fit); later nonces go too."""
        for sender, queued in list(self._by_sender.items()):
            cut = next((i for i, t in enumerate(queued) if t.hash in tx_hashes), None)
            if cut is None:
                continue
            for t in queued[cut:]:
                self._txs.pop(t.hash, None)
            self._keep(sender, queued[:cut])

    def _keep(self, sender: bytes, queued: list[SignedTransactionAPI]) -> None:
        """Make ``queued`` the sender's pending transactions (and their cost)."""
        if queued:
            self._by_sender[sender] = queued
            self._cost[sender] = sum(_max_cost(t) for t in queued)
        else:
            self._by_sender.pop(sender, None)
            self._cost.pop(sender, None)


def _max_cost(tx: SignedTransactionAPI) -> int:
    return tx.value + tx.gas * tx.max_fee_per_gas
