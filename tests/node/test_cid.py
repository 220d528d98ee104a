"""CIDs: known values, parsing, and agreement with py-cid's own encoder."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import cid as pycid
import multihash
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flnode.cid import Cid, InvalidCidError

HELLO_WORLD_CID = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
# `ipfs add --cid-version 1 --raw-leaves` of an empty file.
EMPTY_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_hello_world_matches_reference() -> None:
    assert str(Cid.from_data(b"hello world")) == HELLO_WORLD_CID


def test_empty_blob_matches_reference() -> None:
    assert str(Cid.from_data(b"")) == EMPTY_CID


@given(st.binary(max_size=2048))
def test_text_form_agrees_with_py_cid(data: bytes) -> None:
    reference = pycid.make_cid(1, "raw", multihash.digest(data, "sha2-256").encode())
    ours = Cid.from_data(data)
    assert str(ours) == reference.encode("base32").decode()
    assert ours.to_bytes() == bytes(reference.buffer)
    assert Cid.parse(str(ours)) == ours
    assert Cid.parse(ours.to_bytes()) == ours


def test_from_file_and_stream_match_from_data(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 1 MiB, so several chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert Cid.from_file(path) == Cid.from_data(data)
    assert Cid.from_stream(io.BytesIO(data)) == Cid.from_data(data)


def test_parse_accepts_other_multibase_of_same_cid() -> None:
    base58 = pycid.from_string(HELLO_WORLD_CID).encode("base58btc").decode()
    assert Cid.parse(base58) == Cid.parse(HELLO_WORLD_CID)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "not a valid CID"),
        ("hello", "not a valid CID"),
        ("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n", "CIDv1"),  # a CIDv0
        # dag-pb codec instead of raw
        ("bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", "'raw' codec"),
    ],
)
def test_parse_rejects_what_the_store_cannot_hold(text: str, reason: str) -> None:
    with pytest.raises(InvalidCidError, match=reason):
        Cid.parse(text)


def test_parse_rejects_other_hash_functions() -> None:
    other = pycid.make_cid(1, "raw", multihash.digest(b"x", "blake2b-256").encode())
    with pytest.raises(InvalidCidError, match="sha2-256"):
        Cid.parse(other.encode("base32").decode())


@given(st.binary(max_size=64) | st.text(max_size=64))
def test_parse_raises_only_invalid_cid_error(junk: bytes | str) -> None:
    with contextlib.suppress(InvalidCidError):
        Cid.parse(junk)


def test_digest_must_be_32_bytes() -> None:
    with pytest.raises(InvalidCidError):
        Cid(b"short")


def test_verify() -> None:
    cid = Cid.from_data(b"abc")
    assert cid.verify(b"abc")
    assert not cid.verify(b"abd")
    assert cid.digest == hashlib.sha256(b"abc").digest()
