"""Fuzzing the blob store with what peers send: blobs of any size, CIDs in any form, corruption.

Fetched updates, aggregates and task specs are stored as they arrive; CIDs arrive as text or
binary (gossip, API, ledger). Whatever the input, the store raises only its own errors
(:class:`StorageError` subclasses, :class:`InvalidCidError` for a malformed name), a rejected
``put`` writes nothing (not even a temp file), a blob that no longer hashes to its CID is never
returned, and the store always agrees with a plain dict kept beside it.
"""

from __future__ import annotations

import array
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flnode.cid import Cid, InvalidCidError
from flnode.storage.blobstore import BlobStore
from flnode.storage.errors import (
    BlobNotFoundError,
    BlobTooLargeError,
    CorruptBlobError,
    StorageError,
)

from ...fuzz_profiles import fuzz

MAX = 64


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }


_blobs = st.binary(max_size=MAX + 8) | st.sampled_from([b"", b"x" * MAX, b"x" * (MAX + 1)])
_cid_texts = (
    st.text(max_size=60)
    | st.binary(max_size=40)
    | _blobs.map(lambda b: str(Cid.from_data(b)))
    | _blobs.map(lambda b: Cid.from_data(b).to_bytes())
    | _blobs.map(lambda b: str(Cid.from_data(b)).upper())
    | st.sampled_from(
        [
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # CIDv0
            "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",  # dag-pb
            "../../etc/passwd",
            "bafkrei" + "a" * 52,
        ]
    )
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _blobs),
        st.tuples(st.just("put_view"), st.integers(0, 3 * MAX)),
        st.tuples(st.just("get"), _cid_texts),
        st.tuples(st.just("pin"), _cid_texts),
        st.tuples(st.just("unpin"), _cid_texts),
        st.tuples(st.just("delete"), _cid_texts),
        st.tuples(st.just("corrupt"), st.integers(0, 7)),
        st.tuples(st.just("gc"), st.integers(0, 4 * MAX)),
    ),
    max_size=10,
)


@fuzz(80)
@given(_ops)
def test_the_store_raises_only_its_errors_and_agrees_with_a_dict(
    ops: list[tuple[str, Any]],
) -> None:
    with tempfile.TemporaryDirectory(prefix="flnode-fuzz-blobs-") as d:
        store = BlobStore(Path(d) / "store", max_blob_size=MAX)
        model: dict[Cid, bytes] = {}  # what the store holds, as far as a reader can tell
        for op, arg in ops:
            _apply(store, model, op, arg)
            assert set(store) == set(model)
            assert not any((store.root / "tmp").iterdir())  # no temp file left behind


def _apply(store: BlobStore, model: dict[Cid, bytes], op: str, arg: Any) -> None:
    before = tree(store.root)
    if op == "put":
        try:
            cid = store.put(arg)
        except BlobTooLargeError:
            assert len(arg) > MAX and tree(store.root) == before
            return
        assert cid == Cid.from_data(arg) and len(arg) <= MAX
        model[cid] = arg
    elif op == "put_view":
        # A typed buffer (8-byte items): its size is its bytes, not its number of items.
        view = memoryview(array.array("q", range(arg // 8)))
        data = view.tobytes()
        try:
            cid = store.put(view)
        except BlobTooLargeError:
            assert len(data) > MAX and tree(store.root) == before
            return
        assert len(data) <= MAX and store.get(cid) == data
        model[cid] = data
    elif op == "corrupt":
        if not model:
            return
        cid = sorted(model)[arg % len(model)]
        name = str(cid)
        (store.root / "blobs" / name[-3:-1] / name).write_bytes(b"tampered" + bytes([arg]))
        with pytest.raises(CorruptBlobError):
            store.get(cid)
        del model[cid]  # quarantined: gone for readers
        assert not store.has(cid)
    elif op == "gc":
        result = store.gc(arg)
        for cid in list(model):
            if not store.has(cid):
                del model[cid]
        assert result.remaining_bytes == sum(map(len, model.values()))
    else:
        try:
            cid = Cid.parse(arg)
        except InvalidCidError:
            return
        try:
            if op == "get":
                assert store.get(cid) == model[cid]
            elif op == "pin":
                store.pin(cid)
                assert cid in model and store.is_pinned(cid)
            elif op == "unpin":
                store.unpin(cid)
                assert not store.is_pinned(cid)
            else:
                assert store.delete(cid) == (cid in model)
                model.pop(cid, None)
        except BlobNotFoundError:
            assert cid not in model and tree(store.root) == before
        except StorageError as exc:  # any other refusal is the store's own, and changes nothing
            assert tree(store.root) == before, exc


def test_a_typed_buffer_is_measured_in_bytes() -> None:
    """Found by fuzzing: ``put`` compared ``len(data)`` with the limit, which for a memoryview of
    8-byte items is an eighth of its size, so a blob 8 times over the limit was stored."""
    with tempfile.TemporaryDirectory() as d:
        store = BlobStore(Path(d), max_blob_size=100)
        view = memoryview(array.array("q", range(100)))  # 100 items, 800 bytes
        with pytest.raises(BlobTooLargeError) as info:
            store.put(view)
        assert info.value.size == 800
        assert list(store) == []
        small = memoryview(array.array("q", range(12)))  # 96 bytes
        assert store.get(store.put(small)) == small.tobytes()
