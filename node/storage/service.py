"""The blob store as a node service: opens the store and garbage-collects it on a schedule."""

from __future__ import annotations

from pathlib import Path

import trio

from ..log import get_logger
from ..service import Service
from .blobstore import BlobStore


class BlobStoreService(Service):
    """Owns the node's :class:`BlobStore`; runs ``gc`` every ``gc_interval_s`` if a budget is set."""

    name = "blobstore"

    def __init__(
        self,
        root: Path,
        *,
        max_blob_size: int,
        gc_budget_bytes: int = 0,
        gc_interval_s: float = 300.0,
    ) -> None:
        self.root = root
        self.max_blob_size = max_blob_size
        self.gc_budget_bytes = gc_budget_bytes
        self.gc_interval_s = gc_interval_s
        self._store: BlobStore | None = None

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            raise RuntimeError("the blob store service is not running")
        return self._store

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log = get_logger("flnode.storage")
        self._store = await trio.to_thread.run_sync(
            lambda: BlobStore(self.root, max_blob_size=self.max_blob_size)
        )
        stats = await trio.to_thread.run_sync(self._store.stat)
        log.info(
            "blob store open",
            root=str(self.root),
            blobs=stats.blobs,
            bytes=stats.bytes,
            quarantined=stats.quarantined,
        )
        task_status.started()
        if self.gc_budget_bytes <= 0:
            await trio.sleep_forever()
        while True:
            await trio.sleep(self.gc_interval_s)
            result = await trio.to_thread.run_sync(self._store.gc, self.gc_budget_bytes)
            if result.removed:
                log.info(
                    "blob store gc",
                    removed=result.removed,
                    freed_bytes=result.freed_bytes,
                    remaining_bytes=result.remaining_bytes,
                )
