"""One secp256k1 key: peer ID, chain address, signatures."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from eth_keys import keys

from flnode.errors import IdentityError
from flnode.identity import (
    NodeIdentity,
    address_from_peer_id,
    recover_signer,
    signing_digest,
    verify_signature,
)

# A fixed key and the identities standard tools derive from it.
SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
ADDRESS = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"  # eth_keys / web3 docs example key


def test_address_matches_ethereum_derivation() -> None:
    ident = NodeIdentity.from_secret(SECRET)
    assert ident.address == ADDRESS
    assert ident.address == keys.PrivateKey(SECRET).public_key.to_checksum_address()


def test_peer_id_is_secp256k1_and_maps_back_to_address() -> None:
    ident = NodeIdentity.from_secret(SECRET)
    assert ident.peer_id.startswith("16Uiu2")
    assert address_from_peer_id(ident.peer_id) == ident.address


def test_peer_id_matches_libp2p_key_pair() -> None:
    from libp2p.peer.id import ID

    ident = NodeIdentity.generate()
    assert ID.from_pubkey(ident.libp2p_key_pair().public_key).to_base58() == ident.peer_id


def test_address_from_peer_id_rejects_other_keys() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    ed = ID.from_pubkey(create_new_key_pair().public_key).to_base58()
    with pytest.raises(IdentityError, match="secp256k1"):
        address_from_peer_id(ed)
    with pytest.raises(IdentityError):
        address_from_peer_id("not-a-peer-id")


def test_save_load_roundtrip_mode_0600(tmp_path: Path) -> None:
    ident = NodeIdentity.generate()
    path = tmp_path / "node.key"
    ident.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert NodeIdentity.load(path).address == ident.address


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = NodeIdentity.generate()
    first.save(path)
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        NodeIdentity.generate().save(path)
    assert NodeIdentity.load(path).address == first.address
    second = NodeIdentity.generate()
    second.save(path, overwrite=True)
    assert NodeIdentity.load(path).address == second.address


@pytest.mark.parametrize(
    "content, message",
    [("zz" * 32, "not hex"), ("ab" * 31, "32 bytes"), ("00" * 32, "not a valid secp256k1")],
)
def test_load_rejects_bad_key_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "node.key"
    path.write_text(content)
    with pytest.raises(IdentityError, match=message):
        NodeIdentity.load(path)


def test_load_missing_key_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="flnode init"):
        NodeIdentity.load(tmp_path / "node.key")


def test_sign_and_recover() -> None:
    ident = NodeIdentity.from_secret(SECRET)
    sig = ident.sign(b"flnode/test", b"payload")
    assert len(sig) == 65 and sig[64] in (27, 28)
    assert recover_signer(b"flnode/test", b"payload", sig) == ADDRESS
    assert verify_signature(b"flnode/test", b"payload", sig, ADDRESS)


def test_signatures_are_deterministic() -> None:
    ident = NodeIdentity.from_secret(SECRET)
    assert ident.sign(b"d", b"m") == ident.sign(b"d", b"m")


def test_domain_separation() -> None:
    ident = NodeIdentity.from_secret(SECRET)
    sig = ident.sign(b"flnode/vote", b"payload")
    assert not verify_signature(b"flnode/envelope", b"payload", sig, ADDRESS)
    assert not verify_signature(b"flnode/vote", b"payload2", sig, ADDRESS)
    assert not verify_signature(b"flnode/vote", b"payload", sig, NodeIdentity.generate().address)


def test_digest_is_eip191_over_domain_hash() -> None:
    """The digest is what eth_account's encode_defunct would sign, so Ethereum tools can verify."""
    from eth_utils import keccak

    message_hash = keccak(b"flnode/test\x00payload")
    expected = keccak(b"\x19Ethereum Signed Message:\n32" + message_hash)
    assert signing_digest(b"flnode/test", b"payload") == expected


def test_malformed_signatures_are_rejected() -> None:
    ident = NodeIdentity.from_secret(SECRET)
    sig = ident.sign(b"d", b"m")
    with pytest.raises(IdentityError, match="65 bytes"):
        recover_signer(b"d", b"m", sig[:64])
    with pytest.raises(IdentityError, match="v must be 27 or 28"):
        recover_signer(b"d", b"m", sig[:64] + b"\x05")
    assert not verify_signature(b"d", b"m", b"\xff" * 65, ADDRESS)


def test_bad_domains() -> None:
    with pytest.raises(ValueError):
        signing_digest(b"", b"x")
    with pytest.raises(ValueError):
        signing_digest(b"a\x00b", b"x")


def test_high_s_twin_of_a_signature_is_rejected() -> None:
    """(r, n - s, v ^ 1) recovers the same key; only the low-s form is accepted (EIP-2)."""
    from flnode.identity import SECP256K1_N

    ident = NodeIdentity.from_secret(SECRET)
    sig = ident.sign(b"d", b"m")
    s = int.from_bytes(sig[32:64], "big")
    assert s <= SECP256K1_N // 2  # we only ever produce low-s
    twin = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(IdentityError, match="low-s"):
        recover_signer(b"d", b"m", twin)
    assert not verify_signature(b"d", b"m", twin, ADDRESS)
