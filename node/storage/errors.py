"""Errors of the blob store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FLNodeError

if TYPE_CHECKING:
    from ..cid import Cid


class StorageError(FLNodeError):
    """Base class of the blob store's errors."""


class BlobNotFoundError(StorageError, KeyError):
    """No blob with this CID is stored."""

    def __init__(self, cid: Cid) -> None:
        super().__init__(cid)
        self.cid = cid

    def __str__(self) -> str:
        return f"blob {self.cid} is not in the store"


class BlobTooLargeError(StorageError, ValueError):
    """A blob is larger than the store's configured maximum."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(size, limit)
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return (
            f"blob of {self.size} bytes exceeds the maximum blob size of {self.limit} bytes "
            "(storage.max_blob_size)"
        )


class CorruptBlobError(StorageError):
    """A stored blob's bytes no longer hash to its CID; the file was moved to quarantine."""

    def __init__(self, cid: Cid, path: Path) -> None:
        super().__init__(cid, path)
        self.cid = cid
        self.path = path

    def __str__(self) -> str:
        return (
            f"blob {self.cid} is corrupt (its bytes do not hash to its CID); "
            f"moved {self.path.name} to quarantine"
        )
