"""The consensus layer's seam (DESIGN.md, "Seams between the layers"): what others may rely on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio

    from .chain import Head, Log, Receipt


class LedgerAPI(ABC):
    """The node's ledger: submit transactions, read state, follow committed blocks."""

    @abstractmethod
    async def head(self) -> Head:
        """The canonical head."""

    @abstractmethod
    async def submit(self, raw_tx: bytes) -> bytes:
        """Check a raw signed transaction and queue it; its hash, or ``TransactionRejected``."""

    @abstractmethod
    async def send(self, to: bytes | str | None, data: bytes, *, value: int = 0) -> bytes:
        """Build, sign with the node key and queue a transaction; its hash."""

    @abstractmethod
    async def call(self, to: bytes | str, data: bytes) -> bytes:
        """A read-only call on the head state; raises ``ContractReverted``."""

    @abstractmethod
    async def receipt(self, tx_hash: bytes) -> Receipt:
        """The receipt of an included transaction; raises ``NotFound``."""

    @abstractmethod
    async def logs(
        self, from_block: int, to_block: int | None = None, *, address: bytes | str | None = None
    ) -> list[Log]:
        """Logs in a block range."""

    @abstractmethod
    def subscribe_blocks(self) -> trio.MemoryReceiveChannel[Head]:
        """A channel receiving every head this node imports from now on."""
