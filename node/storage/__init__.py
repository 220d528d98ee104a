"""Content-addressed blob store (CIDv1 raw sha2-256); later also the chain DB and node state."""

from ..cid import Cid as Cid
from ..cid import InvalidCidError as InvalidCidError
from .abc import BlobStoreAPI as BlobStoreAPI
from .blobstore import DEFAULT_MAX_BLOB_SIZE as DEFAULT_MAX_BLOB_SIZE
from .blobstore import BlobStore as BlobStore
from .blobstore import GcResult as GcResult
from .blobstore import StoreStats as StoreStats
from .errors import BlobNotFoundError as BlobNotFoundError
from .errors import BlobTooLargeError as BlobTooLargeError
from .errors import CorruptBlobError as CorruptBlobError
from .errors import StorageError as StorageError

__all__ = [
    "DEFAULT_MAX_BLOB_SIZE",
    "BlobNotFoundError",
    "BlobStore",
    "BlobStoreAPI",
    "BlobTooLargeError",
    "Cid",
    "CorruptBlobError",
    "GcResult",
    "InvalidCidError",
    "StorageError",
    "StoreStats",
]
