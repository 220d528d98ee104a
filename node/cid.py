"""Content identifiers: CIDv1, codec ``raw``, multihash sha2-256, written in base32.

This is exactly what ``ipfs add --cid-version 1 --raw-leaves`` prints for a single-block file, so
any IPFS tool computes the same name for the same bytes. Parsing and encoding go through py-cid and
py-multihash (the reference Python implementations); hashing uses hashlib, which is as fast as it
gets and lets files be hashed in chunks.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cid as pycid
import multihash

from .errors import FLNodeError

RAW_CODEC = "raw"
HASH_NAME = "sha2-256"
DIGEST_SIZE = 32
_CHUNK = 1 << 20


class InvalidCidError(FLNodeError, ValueError):
    """A string or byte string is not a CIDv1 raw sha2-256 identifier."""


@dataclass(frozen=True, slots=True, order=True)
class Cid:
    """A CIDv1 (raw, sha2-256): the name of a blob, derived from its bytes alone.

    Only the 32-byte digest is stored; the text form (``bafkrei...``) and the binary form are
    derived from it. Ordering is by digest, which is also the order of the text form.
    """

    digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            raise InvalidCidError(f"a sha2-256 digest must be {DIGEST_SIZE} bytes")

    @classmethod
    def from_data(cls, data: bytes | bytearray | memoryview) -> Cid:
        """The CID of ``data``."""
        return cls(hashlib.sha256(data).digest())

    @classmethod
    def from_stream(cls, stream: BinaryIO) -> Cid:
        """The CID of everything left in a binary stream, read in 1 MiB chunks."""
        h = hashlib.sha256()
        while chunk := stream.read(_CHUNK):
            h.update(chunk)
        return cls(h.digest())

    @classmethod
    def from_file(cls, path: str | Path) -> Cid:
        """The CID of a file's bytes, without loading the whole file into memory."""
        with open(path, "rb") as f:
            return cls.from_stream(f)

    @classmethod
    def parse(cls, text: str | bytes) -> Cid:
        """Parse a CID from its text form (any multibase) or its binary form.

        Raises :class:`InvalidCidError` for anything that is not a CIDv1 with codec ``raw`` and a
        sha2-256 multihash, including CIDv0 and other codecs, since the store holds raw blocks only.
        """
        try:
            if isinstance(text, bytes):
                parsed = pycid.from_bytes(text)
            else:
                parsed = pycid.from_string(text.strip())
            decoded = multihash.decode(parsed.multihash)
        except Exception as exc:  # py-cid raises a zoo of types on bad input
            raise InvalidCidError(f"not a valid CID: {text!r:.80}") from exc
        if parsed.version != 1:
            raise InvalidCidError(
                f"only CIDv1 is supported, got CIDv{parsed.version}: {text!r:.80}"
            )
        if parsed.codec != RAW_CODEC:
            raise InvalidCidError(f"only the 'raw' codec is supported, got {parsed.codec!r}")
        if decoded.name != HASH_NAME or len(decoded.digest) != DIGEST_SIZE:
            raise InvalidCidError(f"only sha2-256 multihashes are supported, got {decoded.name!r}")
        return cls(bytes(decoded.digest))

    def to_bytes(self) -> bytes:
        """The binary CID (36 bytes: version, codec, multihash)."""
        return _BINARY_PREFIX + self.digest

    def verify(self, data: bytes | bytearray | memoryview) -> bool:
        """Whether ``data`` hashes to this CID."""
        return hashlib.sha256(data).digest() == self.digest

    def __str__(self) -> str:
        return _text_form(self.digest)

    def __repr__(self) -> str:
        return f"Cid({self})"


# Binary CIDv1 prefix: version 1, codec raw (0x55), multihash sha2-256 (0x12) of 32 bytes (0x20).
_BINARY_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])


def _text_form(digest: bytes) -> str:
    # Multibase base32 ("b" + RFC 4648 lower case, no padding), done directly: blobs are named on
    # every store operation and the py-cid round trip costs ~0.1 ms. tests/node/test_cid.py
    # checks that both give the same text.
    return "b" + base64.b32encode(_BINARY_PREFIX + digest).decode("ascii").lower().rstrip("=")
