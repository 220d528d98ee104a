"""The blob store in one process: put/get/pin/gc, corruption, oversize, threads."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from flnode.storage import (
    BlobNotFoundError,
    BlobStore,
    BlobTooLargeError,
    Cid,
    CorruptBlobError,
)


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "store", max_blob_size=1 << 20)


def _blob_path(store: BlobStore, cid: Cid) -> Path:
    name = str(cid)
    return store.root / "blobs" / name[-3:-1] / name


def test_put_get_roundtrip(store: BlobStore) -> None:
    cid = store.put(b"hello world")
    assert str(cid) == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    assert store.has(cid)
    assert store.get(cid) == b"hello world"
    assert store.size(cid) == 11


def test_put_is_idempotent(store: BlobStore) -> None:
    a = store.put(b"same")
    b = store.put(b"same")
    assert a == b
    assert store.stat().blobs == 1


def test_blobs_are_sharded_by_next_to_last_two_chars(store: BlobStore) -> None:
    cid = store.put(b"x")
    path = _blob_path(store, cid)
    assert path.is_file()
    assert path.parent.name == str(cid)[-3:-1]


def test_get_missing_raises(store: BlobStore) -> None:
    missing = Cid.from_data(b"never stored")
    with pytest.raises(BlobNotFoundError, match="not in the store"):
        store.get(missing)
    assert not store.has(missing)


def test_oversize_put_is_rejected_and_stores_nothing(store: BlobStore) -> None:
    with pytest.raises(BlobTooLargeError, match="exceeds the maximum blob size") as info:
        store.put(b"\0" * ((1 << 20) + 1))
    assert info.value.size == (1 << 20) + 1
    assert info.value.limit == 1 << 20
    assert store.stat().blobs == 0
    assert list((store.root / "tmp").iterdir()) == []


def test_blob_at_exact_limit_is_accepted(store: BlobStore) -> None:
    cid = store.put(b"\1" * (1 << 20))
    assert store.size(cid) == 1 << 20


def test_corrupted_blob_is_quarantined_never_returned(store: BlobStore) -> None:
    cid = store.put(b"precious bytes")
    path = _blob_path(store, cid)
    path.write_bytes(b"precious bytez")
    with pytest.raises(CorruptBlobError, match="corrupt"):
        store.get(cid)
    assert not path.exists()
    assert not store.has(cid)
    quarantined = list((store.root / "quarantine").iterdir())
    assert len(quarantined) == 1
    assert quarantined[0].name.startswith(str(cid))
    assert store.stat().quarantined == 1
    # A fresh put of the true bytes heals the store.
    store.put(b"precious bytes")
    assert store.get(cid) == b"precious bytes"


def test_truncated_blob_is_detected(store: BlobStore) -> None:
    cid = store.put(b"0123456789" * 100)
    path = _blob_path(store, cid)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CorruptBlobError):
        store.get(cid)


def test_pin_unpin_and_gc(store: BlobStore) -> None:
    cids = []
    for i in range(5):
        cids.append(store.put(bytes([i]) * 1000))
        # mtimes order the blobs for gc; make the order unambiguous
        os.utime(_blob_path(store, cids[-1]), (time.time() + i, time.time() + i))
    store.pin(cids[0])
    assert store.is_pinned(cids[0])
    result = store.gc(budget_bytes=2500)
    # oldest unpinned first: cids[1], cids[2], cids[3] go; pinned cids[0] and newest cids[4] stay
    assert result.removed == 3
    assert result.freed_bytes == 3000
    assert result.remaining_bytes == 2000
    assert [store.has(c) for c in cids] == [True, False, False, False, True]
    store.unpin(cids[0])
    assert not store.is_pinned(cids[0])
    result = store.gc(budget_bytes=0)
    assert result.removed == 2
    assert store.stat().blobs == 0


def test_gc_never_removes_pins_even_over_budget(store: BlobStore) -> None:
    a = store.put(b"a" * 100)
    b = store.put(b"b" * 100)
    store.pin(a)
    store.pin(b)
    result = store.gc(budget_bytes=0)
    assert result.removed == 0
    assert result.remaining_bytes == 200
    assert store.has(a) and store.has(b)


def test_pin_missing_blob_fails(store: BlobStore) -> None:
    with pytest.raises(BlobNotFoundError):
        store.pin(Cid.from_data(b"nope"))


def test_delete(store: BlobStore) -> None:
    cid = store.put(b"gone soon")
    store.pin(cid)
    assert store.delete(cid) is True
    assert not store.has(cid)
    assert not store.is_pinned(cid)
    assert store.delete(cid) is False


def test_stat_counts(store: BlobStore) -> None:
    a = store.put(b"a" * 10)
    store.put(b"b" * 20)
    store.pin(a)
    stats = store.stat()
    assert (stats.blobs, stats.bytes, stats.pinned_blobs, stats.pinned_bytes) == (2, 30, 1, 10)
    assert stats.max_blob_size == 1 << 20


def test_iter_lists_every_cid(store: BlobStore) -> None:
    cids = {store.put(bytes([i])) for i in range(20)}
    assert set(store) == cids


def test_reopen_removes_orphans_of_dead_writers(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "s")
    orphan = tmp_path / "s" / "tmp" / "999999999.deadbeef.part"  # no such pid
    orphan.write_bytes(b"partial")
    BlobStore(tmp_path / "s")
    assert not orphan.exists()
    assert store.stat().blobs == 0


def test_invalid_max_blob_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_blob_size must be positive"):
        BlobStore(tmp_path, max_blob_size=0)


def test_concurrent_writer_threads(store: BlobStore) -> None:
    """Eight threads write overlapping sets of blobs; every blob ends up whole and verifiable."""
    payloads = [os.urandom(2048 + i) for i in range(40)]
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for i in range(len(payloads)):
                data = payloads[(i + offset) % len(payloads)]
                cid = store.put(data)
                assert store.get(cid) == data
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k * 5,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.stat().blobs == len(payloads)
    for data in payloads:
        assert store.get(Cid.from_data(data)) == data
    assert list((store.root / "tmp").iterdir()) == []
