"""What the consensus asks of the ledger: inspect, build, validate and commit blocks; certificates.

:class:`ChainLink` wraps the node's :class:`~flnode.consensus.service.ChainService` (every call
in the chain's one worker thread) and adds the consensus' own records to the chain database:

* ``flnode/bft/certified/<height>``: the certified block (:class:`CertifiedBlock`, RLP) and
  ``flnode/bft/seed/<height>``: the sortition seed after that block. Both are written in **one**
  atomic batch *before* the block is imported, so a node killed in between finds, on restart, a
  certified block above its head and imports it (:meth:`ChainLink.recover`); the seed of the
  head is always there. Block sync serves these records. (The block bytes are stored twice, in
  py-evm's tables and here; serving sync from one copy is left for later.)
* **Validation** of a proposal without importing it: the block must extend the head, carry a
  timestamp at most ``max_future_s`` ahead of our clock (or its parent's plus one second, the
  least it may be), and **re-building** it from its own
  transactions, coinbase and timestamp on our head must give the same hash (same execution,
  same roots, same header fields); then the node's application validator (the
  ``BlockValidator`` hook, e.g. re-checking a ``commitRound`` aggregate) has the last word.
* The **committee** of the next height is read from the ledger contract at the head: every
  miner that is active there (staked at least the minimum stake, not leaving), with its stake.
  The candidates are the network file's miners plus every address a ``MinerRegistered`` event
  named in a block up to the head, found by scanning only the blocks added since the last scan
  (header blooms skip the rest); so a miner that registers after genesis joins the committee
  from the height after its registration, and a slashed or leaving miner drops out of it then.
  Every node reads the same candidates and the same state at the same head, so all agree.
  The contract changes a miner's stake or leaving mark only in functions that log one of
  :data:`MEMBERSHIP_EVENTS`, so the same scan tells whether the committee can have changed: when
  no new block logged one, the last committee read stands (a read is two contract calls per
  candidate, which every node paid on every block: a few per cent of a device's CPU).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Any

import rlp
from eth.abc import BlockAPI
from eth.vm.forks import PragueVM
from eth_utils import to_checksum_address

from ...log import get_logger
from ..chain import Head, TxOutcome
from ..errors import BlockRejected
from ..service import ChainService
from .certificate import BlockInfo
from .errors import InvalidConsensusMessage
from .messages import MAX_BLOCK_SIZE, CertifiedBlock, decode_message, encode_message
from .sortition import Committee, genesis_seed

CERT_PREFIX = b"flnode/bft/certified/"
SEED_PREFIX = b"flnode/bft/seed/"
DEFAULT_MAX_FUTURE_S = 15.0
MEMBERSHIP_EVENTS = ("MinerRegistered", "MinerLeaving", "MinerLeft", "MinerSlashed")
"""The ledger's events that change a miner's stake or leaving mark (all its writes to them)."""

BlockValidator = Callable[[BlockAPI, Sequence[TxOutcome]], Awaitable[bool]]
"""The node's application check of a proposed block (after it executed validly on our head)."""

log = get_logger("flnode.consensus")


def inspect_block(raw: bytes) -> BlockInfo:
    """Decode an Ethereum (Prague) block's RLP into the fields consensus needs."""
    if len(raw) > MAX_BLOCK_SIZE:
        raise InvalidConsensusMessage("oversize", f"a block may be {MAX_BLOCK_SIZE} bytes")
    try:
        block = rlp.decode(raw, sedes=PragueVM.get_block_class())
        header = block.header
        return BlockInfo(
            hash=header.hash,
            parent_hash=header.parent_hash,
            number=int(header.block_number),
            coinbase=to_checksum_address(header.coinbase),
            timestamp=int(header.timestamp),
        )
    except Exception as exc:  # rlp/py-evm raise several types on malformed input
        raise InvalidConsensusMessage("bad-block", f"not a block: {type(exc).__name__}") from None


def _key(prefix: bytes, height: int) -> bytes:
    return prefix + height.to_bytes(8, "big")


class ChainLink:
    """The consensus' view of the ledger (see the module docstring)."""

    def __init__(
        self,
        chain: ChainService,
        *,
        validator: BlockValidator | None = None,
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.chain = chain
        self.validator = validator
        self.max_future_s = max_future_s
        self._clock = clock
        self._committee: tuple[bytes, Committee] | None = None
        self._last_read: tuple[int, Committee] | None = None  # (height, committee) read there
        self._candidates: dict[str, None] = {m.address: None for m in chain.spec.miners}
        self._scanned = 0  # MinerRegistered events of blocks 1.._scanned are in _candidates
        self.committee_reads = 0  # how often the committee was read from the contract

    @property
    def chain_id(self) -> int:
        return self.chain.spec.chain_id

    async def head(self) -> Head:
        return await self.chain.head()

    async def pending(self) -> int:
        return await self.chain.run_sync(lambda: len(self.chain.chain.mempool))

    def pending_hint(self) -> int:
        """How many transactions are pending, read without the worker thread (may be stale by
        the transactions being added right now; use it only to skip work when there is none)."""
        return len(self.chain.chain.mempool)

    async def pending_raw(
        self, limit: int, skip: Container[bytes] = ()
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """How many transactions are pending, and (hash, raw bytes) of up to ``limit`` of them
        whose hash is not in ``skip``, in mempool order (only those are encoded)."""

        def read() -> tuple[int, list[tuple[bytes, bytes]]]:
            pending = self.chain.chain.mempool.pending()
            out = []
            for tx in pending:
                if tx.hash in skip:
                    continue
                out.append((tx.hash, tx.encode()))
                if len(out) >= limit:
                    break
            return len(pending), out

        return await self.chain.run_sync(read)

    async def committee(self, head: Head) -> Committee:
        """The active staked miners at ``head`` (read again only after a membership event)."""
        cached = self._committee
        if cached is not None and cached[0] == head.hash:
            return cached[1]
        contract = self.chain.contract

        def read() -> Committee:
            # Scan, reuse and record in the worker thread, one call after another: a read for
            # a newer head must see every event since the read it reuses.
            chain = self.chain.chain
            changed = self._scan_membership(head.number)
            last = self._last_read
            if last is not None and not changed and last[0] <= head.number:
                return last[1]  # no block since that read logged a change of stake
            self.committee_reads += 1
            stakes = {}
            for miner in self._candidates:
                if contract.is_active_miner(chain.call, miner):
                    stakes[miner] = contract.stake(chain.call, miner)
            if not stakes:
                raise InvalidConsensusMessage(
                    "no-committee", f"no active staked miner at block #{head.number}"
                )
            committee = Committee.of(stakes)
            if last is None or head.number >= last[0]:
                self._last_read = (head.number, committee)
            return committee

        committee = await self.chain.run_sync(read)
        self._committee = (head.hash, committee)
        return committee

    def _scan_membership(self, upto: int) -> bool:
        """Scan blocks ``_scanned+1 .. upto`` (in the chain's worker thread) for the events that
        change a stake: add the miners named by ``MinerRegistered`` to the candidates, and say
        whether any such event was logged. Registrations are never forgotten: whether a
        candidate sits on the committee is the contract's answer at the head."""
        if upto <= self._scanned:
            return upto < self._scanned  # an older head than the last scan: read it afresh
        contract = self.chain.contract
        changed = False
        for name in MEMBERSHIP_EVENTS:
            topic = contract.event_topic(name)
            for entry in self.chain.chain.logs(
                self._scanned + 1, upto, address=contract.address, topics=[topic]
            ):
                changed = True
                if name == "MinerRegistered" and len(entry.topics) > 1:
                    self._candidates.setdefault(to_checksum_address(entry.topics[1][-20:]), None)
        self._scanned = upto
        return changed

    async def build(self, max_txs: int, *, first: Sequence[bytes] = ()) -> bytes:
        built = await self.chain.build_block(max_txs=max_txs, first=first)
        return built.encode()

    async def validate(self, raw: bytes) -> bool:
        """Whether a proposed block is valid on our head (see the module docstring)."""
        now = self._clock()

        def check() -> tuple[bool, str, Any]:
            chain = self.chain.chain
            try:
                block = chain.decode_block(raw)
            except BlockRejected as exc:
                return False, str(exc), None
            head = chain.head()
            header = block.header
            if header.parent_hash != head.hash:
                return False, "does not extend the head", None
            # Ethereum timestamps are whole seconds and must grow, so a chain of several blocks a
            # second runs ahead of the clock: parent + 1 is always acceptable.
            if header.timestamp > max(now + self.max_future_s, head.timestamp + 1):
                return False, f"timestamp {header.timestamp} is in the future", None
            try:
                rebuilt = chain.build_block(
                    list(block.transactions),
                    coinbase=header.coinbase,
                    timestamp=header.timestamp,
                )
            except BlockRejected as exc:
                return False, str(exc), None
            if rebuilt.hash != block.hash:
                return False, "re-executing its transactions gives another block", None
            return True, "", (block, rebuilt.outcomes)

        ok, why, result = await self.chain.run_sync(check)
        if not ok:
            log.warning("proposed block invalid", reason=why)
            return False
        if self.validator is not None:
            block, outcomes = result
            try:
                if not await self.validator(block, outcomes):
                    log.warning("proposed block refused by the application validator")
                    return False
            except Exception as exc:  # the hook must not take the consensus down
                log.error("application validator failed", error=repr(exc))
                return False
        return True

    async def commit(self, certified: CertifiedBlock, seed: bytes) -> Head:
        """Record the certified block and its seed, then import it (see the module docstring)."""
        height = certified.height
        encoded = encode_message(certified)

        def store() -> None:
            with self.chain.chain.db.atomic_batch() as batch:
                batch[_key(CERT_PREFIX, height)] = encoded
                batch[_key(SEED_PREFIX, height)] = seed

        def forget() -> None:
            with self.chain.chain.db.atomic_batch() as batch:
                del batch[_key(CERT_PREFIX, height)]
                del batch[_key(SEED_PREFIX, height)]

        await self.chain.run_sync(store)
        try:
            return await self.chain.import_block(certified.block)
        except BlockRejected:
            await self.chain.run_sync(forget)  # never leave a record recover() would replay
            raise

    async def certified(self, first: int, count: int, max_bytes: int) -> list[CertifiedBlock]:
        """Stored certified blocks from ``first`` on (consecutive, at most ``max_bytes``)."""

        def read() -> list[bytes]:
            db = self.chain.chain.db
            out: list[bytes] = []
            size = 0
            for height in range(first, first + count):
                key = _key(CERT_PREFIX, height)
                if key not in db:
                    break
                raw = db[key]
                if out and size + len(raw) > max_bytes:
                    break
                size += len(raw)
                out.append(raw)
            return out

        blocks = []
        for raw in await self.chain.run_sync(read):
            message = decode_message(bytes(raw), max_size=2 * MAX_BLOCK_SIZE)
            assert isinstance(message, CertifiedBlock)
            blocks.append(message)
        return blocks

    async def seed(self, height: int) -> bytes:
        """The sortition seed after block ``height`` (genesis: from the genesis hash)."""
        if height == 0:
            return genesis_seed(self.chain.chain.genesis_hash)

        def read() -> bytes | None:
            key = _key(SEED_PREFIX, height)
            db = self.chain.chain.db
            return bytes(db[key]) if key in db else None

        seed = await self.chain.run_sync(read)
        if seed is None:
            raise InvalidConsensusMessage(
                "no-seed",
                f"block #{height} has no recorded consensus seed: this chain database was "
                "written without consensus (e.g. by the dev proposer); use a fresh data dir",
            )
        return seed

    async def recover(self) -> Head:
        """Import a certified block stored above the head by a run killed before importing it."""
        head = await self.head()
        stored = await self.certified(head.number + 1, 1, 2 * MAX_BLOCK_SIZE)
        if stored:
            log.info("importing a certified block left by the previous run", number=head.number + 1)
            head = await self.chain.import_block(stored[0].block)
        return head
