"""A content-addressed blob store on the local file system.

Layout under the store's root::

    blobs/<shard>/<cid>     one file per blob, named by its CID text; shard = cid[-3:-1]
    pins/<cid>              an empty marker file per pinned blob
    tmp/                    files being written (same file system, so rename is atomic)
    quarantine/<cid>.<ns>   blobs whose bytes no longer hash to their name
    LOCK                    flock()ed by pin/unpin/delete/gc, so gc never removes a blob being pinned

Why it is crash- and concurrency-safe:

* A blob is written to a fresh file in ``tmp/``, fsynced, then ``os.replace``d onto its final name
  and the shard directory fsynced. A reader sees either no blob or the whole blob; a process killed
  mid-write leaves at most an orphan in ``tmp/`` (removed when a store is next opened).
* Two writers of the same CID write the same bytes, so whichever rename lands last is harmless.
* Every read re-hashes the bytes. A blob that fails is moved to ``quarantine/`` and never returned.

The shard function is IPFS flatfs' ``next-to-last/2``, which spreads base32 CIDs evenly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..cid import Cid
from ..fsutil import write_file_atomically
from .abc import BlobStoreAPI
from .errors import BlobNotFoundError, BlobTooLargeError, CorruptBlobError

DEFAULT_MAX_BLOB_SIZE = 64 * 2**20
# Temp files of a live writer older than this are removed too when a store is opened.
_TMP_ORPHAN_AGE_S = 3600.0


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of what a store holds."""

    blobs: int
    bytes: int
    pinned_blobs: int
    pinned_bytes: int
    quarantined: int
    max_blob_size: int


@dataclass(frozen=True, slots=True)
class GcResult:
    """What one garbage collection did."""

    removed: int
    freed_bytes: int
    remaining_bytes: int
    budget_bytes: int


class BlobStore(BlobStoreAPI):
    """Blobs named by their CIDv1 (raw, sha2-256), stored as files under ``root``.

    Safe to share between threads and between processes that open the same ``root``.
    """

    def __init__(self, root: str | Path, *, max_blob_size: int = DEFAULT_MAX_BLOB_SIZE) -> None:
        if max_blob_size <= 0:
            raise ValueError(f"max_blob_size must be positive. Got: {max_blob_size}")
        self.root = Path(root)
        self.max_blob_size = max_blob_size
        self._blobs = self.root / "blobs"
        self._pins = self.root / "pins"
        self._tmp = self.root / "tmp"
        self._quarantine = self.root / "quarantine"
        for d in (self._blobs, self._pins, self._tmp, self._quarantine):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / "LOCK"
        self._lock_path.touch(exist_ok=True)
        self._remove_orphans()

    # -- paths -------------------------------------------------------------------------------

    def _path(self, cid: Cid) -> Path:
        name = str(cid)
        return self._blobs / name[-3:-1] / name

    def _iter_blob_files(self) -> Iterator[Path]:
        for shard in self._blobs.iterdir():
            if shard.is_dir():
                yield from shard.iterdir()

    # -- writing -----------------------------------------------------------------------------

    def put(self, data: bytes | bytearray | memoryview) -> Cid:
        """Store ``data`` and return its CID; storing the same bytes twice is a no-op."""
        size = memoryview(data).nbytes  # len() of a typed buffer counts items, not bytes
        if size > self.max_blob_size:
            raise BlobTooLargeError(size, self.max_blob_size)
        cid = Cid.from_data(data)
        final = self._path(cid)
        if final.exists():
            return cid
        # The temp file lives in tmp/ and names its writer's pid, so that the orphans of a killed
        # writer can be recognised and removed when a store is opened.
        tmp = self._tmp / f"{os.getpid()}.{uuid.uuid4().hex}.part"
        write_file_atomically(final, data, tmp=tmp)
        return cid

    # -- reading -----------------------------------------------------------------------------

    def get(self, cid: Cid) -> bytes:
        """The bytes of ``cid``, verified against it.

        Raises :class:`BlobNotFoundError` if absent and :class:`CorruptBlobError` if the stored
        bytes no longer hash to ``cid`` (the file is then moved to ``quarantine/``).
        """
        path = self._path(cid)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise BlobNotFoundError(cid) from None
        if not cid.verify(data):
            self._quarantine_file(path, cid)
            raise CorruptBlobError(cid, path)
        return data

    def has(self, cid: Cid) -> bool:
        """Whether a blob named ``cid`` is present (its bytes are verified only by :meth:`get`)."""
        return self._path(cid).exists()

    def size(self, cid: Cid) -> int:
        """The stored size of ``cid`` in bytes."""
        try:
            return self._path(cid).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(cid) from None

    def __iter__(self) -> Iterator[Cid]:
        """Every stored CID (names are parsed, bytes are not verified)."""
        for path in self._iter_blob_files():
            try:
                yield Cid.parse(path.name)
            except ValueError:
                continue

    # -- pins, deletion, gc ------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def pin(self, cid: Cid) -> None:
        """Protect ``cid`` from :meth:`gc`. The blob must be present."""
        with self._locked():
            if not self.has(cid):
                raise BlobNotFoundError(cid)
            (self._pins / str(cid)).touch(exist_ok=True)

    def unpin(self, cid: Cid) -> None:
        """Let :meth:`gc` remove ``cid`` again; unpinning an unpinned blob is a no-op."""
        with self._locked():
            (self._pins / str(cid)).unlink(missing_ok=True)

    def is_pinned(self, cid: Cid) -> bool:
        return (self._pins / str(cid)).exists()

    def delete(self, cid: Cid) -> bool:
        """Remove ``cid`` and its pin; returns whether a blob was removed."""
        with self._locked():
            (self._pins / str(cid)).unlink(missing_ok=True)
            try:
                self._path(cid).unlink()
            except FileNotFoundError:
                return False
            return True

    def gc(self, budget_bytes: int) -> GcResult:
        """Remove unpinned blobs, least recently written first, until the store fits the budget.

        Pinned blobs are never removed, so the store can stay above the budget if pins alone
        exceed it.
        """
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0. Got: {budget_bytes}")
        with self._locked():
            pinned = {p.name for p in self._pins.iterdir()}
            entries: list[tuple[float, int, Path]] = []
            total = 0
            for path in self._iter_blob_files():
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                total += st.st_size
                if path.name not in pinned:
                    entries.append((st.st_mtime, st.st_size, path))
            entries.sort()
            removed = freed = 0
            for _, size, path in entries:
                if total - freed <= budget_bytes:
                    break
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed += 1
                freed += size
            return GcResult(removed, freed, total - freed, budget_bytes)

    def stat(self) -> StoreStats:
        pinned = {p.name for p in self._pins.iterdir()}
        blobs = total = pinned_blobs = pinned_bytes = 0
        for path in self._iter_blob_files():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            blobs += 1
            total += size
            if path.name in pinned:
                pinned_blobs += 1
                pinned_bytes += size
        quarantined = sum(1 for _ in self._quarantine.iterdir())
        return StoreStats(blobs, total, pinned_blobs, pinned_bytes, quarantined, self.max_blob_size)

    # -- housekeeping ------------------------------------------------------------------------

    def _quarantine_file(self, path: Path, cid: Cid) -> None:
        target = self._quarantine / f"{cid}.{time.time_ns()}"
        with contextlib.suppress(FileNotFoundError):  # another reader quarantined it first
            os.replace(path, target)

    def _remove_orphans(self) -> None:
        """Remove temp files left by writers that died (named ``<pid>.<random>.part``)."""
        cutoff = time.time() - _TMP_ORPHAN_AGE_S
        for path in self._tmp.iterdir():
            pid_text = path.name.split(".", 1)[0]
            writer_dead = not pid_text.isdigit() or not _process_alive(int(pid_text))
            try:
                if writer_dead or path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                continue


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
