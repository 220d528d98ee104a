"""The storage seam other layers depend on (see DESIGN.md, "Seams between the layers")."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..cid import Cid
    from .blobstore import GcResult, StoreStats


class BlobStoreAPI(ABC):
    """Immutable blobs named by their CID. Every read is verified against the name."""

    max_blob_size: int

    @abstractmethod
    def put(self, data: bytes | bytearray | memoryview) -> Cid:
        """Store ``data``; return its CID. Raises ``BlobTooLargeError`` above ``max_blob_size``."""

    @abstractmethod
    def get(self, cid: Cid) -> bytes:
        """Return the verified bytes of ``cid``; ``BlobNotFoundError`` / ``CorruptBlobError``."""

    @abstractmethod
    def has(self, cid: Cid) -> bool:
        """Whether ``cid`` is stored."""

    @abstractmethod
    def delete(self, cid: Cid) -> bool:
        """Remove ``cid`` (and its pin); return whether it was present."""

    @abstractmethod
    def pin(self, cid: Cid) -> None:
        """Keep ``cid`` through garbage collection."""

    @abstractmethod
    def unpin(self, cid: Cid) -> None:
        """Allow garbage collection of ``cid`` again."""

    @abstractmethod
    def gc(self, budget_bytes: int) -> GcResult:
        """Remove unpinned blobs until the store holds at most ``budget_bytes`` (pins permitting)."""

    @abstractmethod
    def stat(self) -> StoreStats:
        """Counts and sizes of what is stored."""
