"""The chain database: py-evm's key-value store on SQLite (WAL), one SQLite transaction per batch.

py-evm 0.12 ships only in-memory databases, so flnode supplies its own ``BaseAtomicDB``. py-evm
writes a block through ``atomic_batch()``: the batch collects every write in memory and this class
commits it as one SQLite transaction (``BEGIN IMMEDIATE`` … ``COMMIT``). A process killed at any
instant therefore leaves the file either without the batch or with all of it: WAL mode makes a
commit atomic against crashes, and ``synchronous=NORMAL`` keeps it durable against a killed process
(only a power cut can lose the last commits, never corrupt earlier ones).

Writes outside a batch (py-evm makes a few) are single-statement transactions, atomic on their own.
The connection is shared by one worker thread (the chain service's), hence ``check_same_thread=False``;
the object itself is not thread-safe and must not be used from two threads at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eth.abc import AtomicWriteBatchAPI
from eth.db.atomic import AtomicDBWriteBatch
from eth.db.backends.base import BaseAtomicDB

from .errors import StorageError

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID"


class ChainDBError(StorageError):
    """The chain database file cannot be opened or is not a chain database."""


class SqliteAtomicDB(BaseAtomicDB):
    """A py-evm atomic key-value database in one SQLite file."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        try:
            if read_only:
                if not self.path.exists():
                    raise ChainDBError(f"no chain database at {self.path}")
                self._conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute(_SCHEMA)
            self._conn.execute("SELECT count(*) FROM kv LIMIT 1").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ChainDBError(f"cannot open chain database {self.path}: {exc}") from None
        self._outer: AtomicDBWriteBatch | None = None

    def close(self) -> None:
        self._conn.close()

    def __getitem__(self, key: bytes) -> bytes:
        row = self._conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._conn.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))

    def __delitem__(self, key: bytes) -> None:
        if self._conn.execute("DELETE FROM kv WHERE k = ?", (key,)).rowcount == 0:
            raise KeyError(key)

    def _exists(self, key: bytes) -> bool:
        return self._conn.execute("SELECT 1 FROM kv WHERE k = ?", (key,)).fetchone() is not None

    @contextmanager
    def atomic_batch(self) -> Iterator[AtomicWriteBatchAPI]:
        """Collect writes in memory; commit them in one SQLite transaction unless the body raises."""
        if self._outer is not None:
            # A nested batch commits into the outer one, which owns the SQLite transaction.
            with AtomicDBWriteBatch._commit_unless_raises(self._outer) as nested:
                yield nested
            return
        batch = AtomicDBWriteBatch(self)
        self._outer = batch
        try:
            yield batch
            diff = batch._diff()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", diff.pending_items()
                )
                self._conn.executemany(
                    "DELETE FROM kv WHERE k = ?", ((k,) for k in diff.deleted_keys())
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        finally:
            batch._track_diff = None  # type: ignore[assignment]  # close the batch for good
            self._outer = None

    def statistics(self) -> dict[str, int]:
        """Keys stored and file size in bytes."""
        (keys,) = self._conn.execute("SELECT count(*) FROM kv").fetchone()
        size = self.path.stat().st_size if self.path.exists() else 0
        return {"keys": int(keys), "bytes": size}
