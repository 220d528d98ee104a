"""The node's one key: a secp256k1 key that is both its libp2p peer ID and its chain account.

Key file: ``<datadir>/node.key`` holds the 32-byte secret as hex (the format of geth's ``nodekey``),
mode 0600.

Signatures (used by gossip envelopes, votes and anything else a node signs)::

    message_hash = keccak256(domain || 0x00 || payload)          # domain: an ASCII tag without NUL
    digest       = keccak256("\\x19Ethereum Signed Message:\\n32" || message_hash)   # EIP-191 (0x45)
    signature    = r || s || v   (65 bytes, v in {27, 28}, s ≤ n/2; RFC 6979 deterministic nonces)

The domain tag keeps a signature made for one purpose (say, a vote) from being replayed as another
(say, an envelope). The EIP-191 wrapping makes every signature checkable by standard Ethereum tooling
(``eth_account.messages.encode_defunct(primitive=message_hash)``) and by a contract with ``ecrecover``
over a fixed-length prefix. Nonces are deterministic (coincurve implements RFC 6979), which the
consensus sortition relies on: a miner's credential is its signature, so it must be unique.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from eth_keys import keys
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import keccak, to_checksum_address

from .errors import IdentityError

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

KEY_FILE = "node.key"
SIGNATURE_SIZE = 65
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_EIP191_PREFIX_32 = b"\x19Ethereum Signed Message:\n32"


def signing_digest(domain: bytes, payload: bytes) -> bytes:
    """The 32-byte digest that :meth:`NodeIdentity.sign` signs for ``payload`` under ``domain``."""
    if not domain or b"\x00" in domain:
        raise ValueError("a signing domain must be a non-empty tag without NUL bytes")
    message_hash = keccak(domain + b"\x00" + payload)
    return keccak(_EIP191_PREFIX_32 + message_hash)


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """A node's secp256k1 key and the identities derived from it."""

    private_key: keys.PrivateKey

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(keys.PrivateKey(secrets.token_bytes(32)))

    @classmethod
    def from_secret(cls, secret: bytes) -> NodeIdentity:
        try:
            return cls(keys.PrivateKey(secret))
        except (ValidationError, ValueError) as exc:
            raise IdentityError(f"not a valid secp256k1 secret key: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> NodeIdentity:
        """Read a key file written by :meth:`save`."""
        path = Path(path)
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise IdentityError(
                f"no node key at {path}; create one with `flnode init --datadir {path.parent}`"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise IdentityError(f"cannot read node key {path}: {exc}") from None
        text = text.removeprefix("0x")
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            raise IdentityError(f"node key {path} is not hex") from None
        if len(secret) != 32:
            raise IdentityError(f"node key {path} must hold 32 bytes, found {len(secret)}")
        return cls.from_secret(secret)

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the key file with mode 0600 (atomically; refuses to replace one unless told)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise IdentityError(f"a node key already exists at {path}; refusing to overwrite it")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(self.private_key.to_hex().removeprefix("0x") + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    @property
    def public_key(self) -> keys.PublicKey:
        return self.private_key.public_key

    @property
    def address(self) -> str:
        """The chain account, EIP-55 checksummed."""
        return self.public_key.to_checksum_address()

    @property
    def address_bytes(self) -> bytes:
        return self.public_key.to_canonical_address()

    @property
    def peer_id(self) -> str:
        """The libp2p peer ID (base58, ``16Uiu2...`` for secp256k1 keys)."""
        from libp2p.peer.id import ID

        return ID.from_pubkey(self.libp2p_key_pair().public_key).to_base58()

    def libp2p_key_pair(self) -> KeyPair:
        """The same key as a libp2p key pair, for the host."""
        from libp2p.crypto.secp256k1 import create_new_key_pair

        return create_new_key_pair(self.private_key.to_bytes())

    def sign(self, domain: bytes, payload: bytes) -> bytes:
        """A 65-byte recoverable signature of ``payload`` under ``domain`` (see module docstring)."""
        sig = self.private_key.sign_msg_hash(signing_digest(domain, payload))
        r, s, v = sig.rs[0], sig.rs[1], sig.v
        return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v + 27])


def recover_signer(domain: bytes, payload: bytes, signature: bytes) -> str:
    """The checksummed address that made ``signature``; raises ``IdentityError`` if malformed."""
    if len(signature) != SIGNATURE_SIZE:
        raise IdentityError(f"a signature must be {SIGNATURE_SIZE} bytes, got {len(signature)}")
    v = signature[64]
    if v not in (27, 28):
        raise IdentityError(f"signature v must be 27 or 28, got {v}")
    # Only low-s signatures (EIP-2): otherwise (r, n - s) with v flipped is a second valid form of
    # every signature, and a signature could not serve as a unique sortition credential.
    if int.from_bytes(signature[32:64], "big") > SECP256K1_N // 2:
        raise IdentityError("signature s is in the upper half of the curve order (not low-s)")
    try:
        sig = keys.Signature(signature[:64] + bytes([v - 27]))
        pub = sig.recover_public_key_from_msg_hash(signing_digest(domain, payload))
    except (BadSignature, ValidationError, ValueError) as exc:
        raise IdentityError(f"invalid signature: {exc}") from None
    return pub.to_checksum_address()


def verify_signature(domain: bytes, payload: bytes, signature: bytes, address: str) -> bool:
    """Whether ``signature`` over ``payload`` under ``domain`` was made by ``address``."""
    try:
        return recover_signer(domain, payload, signature) == to_checksum_address(address)
    except (IdentityError, ValueError):
        return False


def address_from_peer_id(peer_id: str) -> str:
    """The chain address of a secp256k1 libp2p peer ID, computed from the ID alone."""
    import coincurve
    from libp2p.peer.id import ID

    try:
        public = ID.from_base58(peer_id).extract_public_key()
    except Exception as exc:  # libp2p raises several types for malformed IDs
        raise IdentityError(f"cannot extract a public key from peer ID {peer_id!r}") from exc
    if public is None or type(public).__name__ != "Secp256k1PublicKey":
        raise IdentityError(f"peer ID {peer_id!r} does not embed a secp256k1 key")
    uncompressed = coincurve.PublicKey(public.to_bytes()).format(compressed=False)[1:]
    return keys.PublicKey(uncompressed).to_checksum_address()
