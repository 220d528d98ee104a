"""The chain as a node service: one :class:`Chain`, touched by one worker thread only.

py-evm's chain is not thread-safe and its work is CPU-bound (a 200-transaction import takes about
0.3 s), so every call runs in a worker thread behind one ``trio.CapacityLimiter(1)``: calls are
serialised, and the event loop never waits on the EVM. The database is opened by a factory the
node passes in (the SQLite DB lives in ``flnode.storage``, which this layer may not import).

Until the BFT consensus (issue #8) proposes blocks, ``dev_mine_interval_s`` > 0 lets a node act as
the single proposer of a development chain: it seals the mempool's transactions into a block at
that interval (never used by a network with a committee running consensus).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from eth.db.backends.base import BaseAtomicDB

from ..identity import NodeIdentity
from ..log import get_logger
from ..service import Service
from .abc import LedgerAPI
from .chain import BuiltBlock, Chain, Head, Log, Receipt, as_address
from .errors import GenesisMismatchError
from .ledger import LedgerContract
from .network import NetworkSpec, load_network

T = TypeVar("T")

NETWORK_COPY = "network.toml"  # the network file, copied into the data dir at first start
CHAIN_DB_FILE = "chain.sqlite"


def adopt_network(datadir: Path, spec: NetworkSpec) -> None:
    """Keep a copy of the network file in the data dir (for ``flnode chain``); refuse another one."""
    copy = datadir / NETWORK_COPY
    if copy.exists():
        existing = load_network(copy)
        if existing.genesis_hash != spec.genesis_hash:
            raise GenesisMismatchError(
                f"data dir {datadir} belongs to network {existing.network_id!r} (genesis "
                f"{existing.genesis_hash}), not {spec.network_id!r} (genesis {spec.genesis_hash}); "
                "use a fresh data dir for another network"
            )
        return
    spec.save(copy)


class ChainService(Service, LedgerAPI):
    """Owns a node's :class:`Chain`; the async face of the ledger."""

    name = "chain"

    def __init__(
        self,
        spec: NetworkSpec,
        open_db: Callable[[], BaseAtomicDB],
        identity: NodeIdentity,
        *,
        mempool_max_txs: int = 10_000,
        max_tx_size: int = 128 * 1024,
        dev_mine_interval_s: float = 0.0,
        on_close: Callable[[BaseAtomicDB], None] | None = None,
    ) -> None:
        self.spec = spec
        self.identity = identity
        self._open_db = open_db
        self._on_close = on_close
        self._mempool_max_txs = mempool_max_txs
        self._max_tx_size = max_tx_size
        self.dev_mine_interval_s = dev_mine_interval_s
        self._limiter = trio.CapacityLimiter(1)
        self._chain: Chain | None = None
        self._subscribers: list[trio.MemorySendChannel[Head]] = []
        self.contract = LedgerContract(spec.ledger_address)
        self._head: Head | None = None

    @property
    def chain(self) -> Chain:
        """The synchronous chain; only for code already running in the chain's worker thread."""
        if self._chain is None:
            raise RuntimeError("the chain service is not running")
        return self._chain

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the chain's worker thread (serialised with every other call)."""
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self._limiter)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log = get_logger("flnode.chain")
        db: BaseAtomicDB | None = None
        try:
            db = await self.run_sync(self._open_db)
            self._chain = await self.run_sync(
                lambda: Chain(
                    self.spec,
                    db,  # type: ignore[arg-type]
                    mempool_max_txs=self._mempool_max_txs,
                    max_tx_size=self._max_tx_size,
                )
            )
            self._head = head = await self.run_sync(self._chain.head)
            log.info(
                "chain open",
                network=self.spec.network_id,
                chain_id=self.spec.chain_id,
                genesis=self.spec.genesis_hash,
                head=head.number,
                head_hash="0x" + head.hash.hex(),
            )
            task_status.started()
            if self.dev_mine_interval_s <= 0:
                await trio.sleep_forever()
            while True:
                await trio.sleep(self.dev_mine_interval_s)
                if not await self.run_sync(len, self._chain.mempool):
                    continue
                built = await self.build_block()
                if built.outcomes:  # nothing that fits: no empty block
                    head = await self.import_block(built.block)
                    log.info("block sealed (dev proposer)", number=head.number, txs=head.tx_count)
        finally:
            with trio.CancelScope(shield=True):
                for send in self._subscribers:
                    send.close()
                if db is not None and self._on_close is not None:
                    await self.run_sync(self._on_close, db)
                self._chain = None

    def describe(self) -> dict[str, object]:
        return {
            "chain_id": self.spec.chain_id,
            "genesis_hash": self.spec.genesis_hash,
            "ledger_address": self.spec.ledger_address,
        }

    # -- LedgerAPI --------------------------------------------------------------------------------

    async def head(self) -> Head:
        return await self.run_sync(self.chain.head)

    async def submit(self, raw_tx: bytes) -> bytes:
        return await self.run_sync(self.chain.add_transaction, raw_tx)

    async def send(
        self, to: bytes | str | None, data: bytes, *, value: int = 0, gas: int | None = None
    ) -> bytes:
        def sign_and_add() -> bytes:
            tx = self.chain.sign_transaction(
                self.identity.private_key, to=to, data=data, value=value, gas=gas
            )
            return self.chain.add_transaction(tx)

        return await self.run_sync(sign_and_add)

    async def call(self, to: bytes | str, data: bytes) -> bytes:
        return await self.run_sync(partial(self.chain.call, to, data))

    async def view(self, name: str, *args: Any) -> Any:
        """Read a ledger-contract view by name (e.g. ``view("reputationOf", addr)``)."""
        return await self.run_sync(lambda: self.contract.view(self.chain.call, name, *args))

    async def receipt(self, tx_hash: bytes) -> Receipt:
        return await self.run_sync(self.chain.receipt, tx_hash)

    async def logs(
        self, from_block: int, to_block: int | None = None, *, address: bytes | str | None = None
    ) -> list[Log]:
        return await self.run_sync(
            lambda: list(self.chain.logs(from_block, to_block, address=address))
        )

    async def balance(self, address: bytes | str) -> int:
        return await self.run_sync(self.chain.balance, as_address(address))

    async def build_block(
        self, *, max_txs: int | None = None, first: Sequence[bytes] = ()
    ) -> BuiltBlock:
        """As proposer: seal ``first`` (raw signed transactions that bypass the mempool, e.g. the
        proposer's own ``commitRound``) and then the mempool's transactions on top of the head
        (not imported)."""

        def build() -> BuiltBlock:
            own = [self.chain.decode_transaction(raw) for raw in first]
            hashes = {tx.hash for tx in own}
            pending = [tx for tx in self.chain.mempool.pending(max_txs) if tx.hash not in hashes]
            return self.chain.build_block(own + pending, coinbase=self.identity.address_bytes)

        return await self.run_sync(build)

    async def import_block(self, block: Any) -> Head:
        head = await self.run_sync(self.chain.import_block, block)
        self._publish(head)
        return head

    async def mine_pending(self) -> Head:
        """Build and import a block of pending transactions (dev proposer and tests)."""
        built = await self.build_block()
        return await self.import_block(built.block)

    @property
    def latest_head(self) -> Head | None:
        """The last head announced to block subscribers (no trip to the chain's thread)."""
        return self._head

    def subscribe_blocks(self, buffer: int = 64) -> trio.MemoryReceiveChannel[Head]:
        send, receive = trio.open_memory_channel[Head](buffer)
        self._subscribers.append(send)
        return receive

    def _publish(self, head: Head) -> None:
        self._head = head
        for send in list(self._subscribers):
            try:
                send.send_nowait(head)
            except trio.WouldBlock:
                pass  # a slow subscriber misses heads; it can read the chain to catch up
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._subscribers.remove(send)
