"""Signed envelopes: the wire format, every rejection, replay protection, hostile bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flnode.p2p.envelope as envelope_module
from flnode.cid import Cid
from flnode.identity import NodeIdentity, verify_signature
from flnode.p2p.envelope import (
    DOMAIN,
    ENVELOPE_OVERHEAD,
    MAX_ENVELOPE_SIZE,
    Envelope,
    EnvelopeCodec,
    ReplayGuard,
    SequenceCounter,
    Verdict,
    message_id,
    sender_bytes,
    sender_peer_id,
)
from flnode.p2p.errors import (
    ENVELOPE_ERRORS,
    ENVELOPE_REJECT_REASONS,
    BadSignature,
    EnvelopeError,
    InvalidMessage,
    InvalidPayload,
    MalformedEnvelope,
    OversizedEnvelope,
    SenderMismatch,
    StaleEnvelope,
    UnknownMessageType,
    UnknownVersion,
    WrongNetwork,
)
from flnode.p2p.messages import (
    MAX_MESSAGE_SIZE,
    PING_MAX_SIZE,
    UINT64_MAX,
    MessageRegistry,
    PeerExchange,
    Ping,
    UpdateAnnouncement,
    cbor_encode,
    decode_fields,
    default_registry,
)

NETWORK = "flnode-test"
NOW = 1_760_000_000_000
SKEW = 30_000
ALICE = NodeIdentity.from_secret(bytes.fromhex("11" * 32))
BOB = NodeIdentity.from_secret(bytes.fromhex("22" * 32))
ALICE_SENDER = sender_bytes(ALICE.peer_id)
BOB_SENDER = sender_bytes(BOB.peer_id)
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

BLOB = bytes(range(256)) * 40
INLINE_UPDATE = UpdateAnnouncement(4, 2, str(Cid.from_data(BLOB)), 100, len(BLOB), BLOB)
BIG_UPDATE = UpdateAnnouncement(4, 2, str(Cid.from_data(b"big")), 100, 3 * 2**20)
PEERS = PeerExchange((f"/ip4/10.0.0.2/tcp/4001/p2p/{BOB.peer_id}",))
MESSAGES = [Ping(7), PEERS, INLINE_UPDATE, BIG_UPDATE]


def make_codec(registry: MessageRegistry | None = None, **kw: Any) -> EnvelopeCodec:
    return EnvelopeCodec(NETWORK, registry or default_registry(), max_skew_ms=SKEW, **kw)


CODEC = make_codec()


def seal(message: object = Ping(7), *, identity: NodeIdentity = ALICE, seq: int = 1) -> bytes:
    return CODEC.encode(identity, message, seq=seq, timestamp_ms=NOW)  # type: ignore[arg-type]


def forge(
    *,
    version: object = 1,
    type_name: object = "ping",
    network: object = NETWORK,
    sender: object = ALICE_SENDER,
    seq: object = 1,
    timestamp: object = NOW,
    payload: object = b"\x81\x07",
    signer: NodeIdentity = ALICE,
    signature: bytes | None = None,
    extra: tuple[object, ...] = (),
) -> bytes:
    """An envelope built from the documented format with cbor2 alone, signed as documented."""
    fields = [version, type_name, network, sender, seq, timestamp, payload]
    if signature is None:
        signature = signer.sign(DOMAIN, cbor2.dumps(fields))
    return cbor2.dumps([*fields, signature, *extra])


def decode(raw: bytes, **kw: Any) -> Envelope:
    kw.setdefault("now_ms", NOW)
    return CODEC.decode(raw, **kw)


def rejects(raw: object, error: type[EnvelopeError], reason: str, **kw: Any) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        decode(raw, **kw)  # type: ignore[arg-type]
    assert type(info.value) is error, info.value
    assert info.value.reason == reason
    assert info.value.reason in ENVELOPE_REJECT_REASONS
    return info.value


# ---------------------------------------------------------------------------------------------
# Round trips and the wire format
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    raw = seal(message, seq=42)
    env = decode(raw)
    assert env.message == message
    assert (env.version, env.network_id, env.seq, env.timestamp_ms) == (1, NETWORK, 42, NOW)
    assert env.type == CODEC.registry.spec_for(message).name
    assert env.sender == ALICE_SENDER
    assert env.peer_id == ALICE.peer_id
    assert env.sender_address == ALICE.address
    assert env.to_bytes() == raw
    assert env.message_id == message_id(raw) == hashlib.sha256(raw).digest()
    assert verify_signature(DOMAIN, env.signed_bytes(), env.signature, ALICE.address)


def test_wire_format_is_as_documented() -> None:
    raw = seal(Ping(7), seq=5)
    fields = cbor2.loads(raw)
    assert fields[:7] == [1, "ping", NETWORK, ALICE_SENDER, 5, NOW, b"\x81\x07"]
    signature = fields[7]
    assert len(signature) == 65 and signature[64] in (27, 28)
    # The sender is libp2p's binary peer ID; the signed bytes are the first seven items.
    from libp2p.peer.id import ID

    assert ID.from_base58(ALICE.peer_id).to_bytes() == ALICE_SENDER
    assert sender_peer_id(ALICE_SENDER) == ALICE.peer_id
    assert len(ALICE_SENDER) == 39 and ALICE_SENDER.startswith(bytes.fromhex("002508021221"))
    signed = cbor2.dumps(fields[:7])
    assert signed == b"\x87" + raw[1 : -(2 + 65)]
    assert verify_signature(DOMAIN, signed, signature, ALICE.address)
    assert forge(seq=5) == raw  # an independent implementation of the format gives the same bytes


def test_sealing_is_deterministic() -> None:
    assert seal(INLINE_UPDATE) == seal(INLINE_UPDATE)
    assert seal(Ping(1), seq=1) != seal(Ping(1), seq=2)


def test_repr_leaves_out_the_payload() -> None:
    text = repr(decode(seal(INLINE_UPDATE)))
    assert len(text) < 1000 and "UpdateAnnouncement" in text


def test_bytes_like_input_is_accepted() -> None:
    raw = seal()
    assert decode(bytearray(raw)) == decode(memoryview(raw)) == decode(raw)  # type: ignore


def test_largest_envelope_fits_the_overhead() -> None:
    @dataclass(frozen=True)
    class Blob:
        data: bytes

        def to_cbor(self) -> bytes:
            return cbor_encode([self.data])

        @classmethod
        def from_cbor(cls, data: bytes) -> Blob:
            return cls(*decode_fields(data, 1))

    payload_size = 70_000
    name = "x" * 32
    registry = MessageRegistry()
    registry.register(name, Blob, max_size=payload_size)
    network = "n" * 32
    codec = EnvelopeCodec(network, registry, max_skew_ms=2**63)
    message = Blob(bytes(payload_size - 1 - 5))  # array head, bytes head of 5
    raw = codec.encode(ALICE, message, seq=UINT64_MAX, timestamp_ms=UINT64_MAX)
    assert len(raw) == payload_size + ENVELOPE_OVERHEAD
    assert codec.decode(raw, now_ms=UINT64_MAX).message == message
    assert MAX_ENVELOPE_SIZE == MAX_MESSAGE_SIZE + ENVELOPE_OVERHEAD <= 2**20


# ---------------------------------------------------------------------------------------------
# Rejections: the exact class and reason of each
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bit", [0, 7, 100, 255, 256, 300, 511, 512, 513])
def test_flipped_signature_bit(bit: int) -> None:
    raw = bytearray(seal())
    pos = len(raw) - 65 + bit // 8
    raw[pos] ^= 1 << (bit % 8)
    error = rejects(bytes(raw), BadSignature, "bad_signature")
    assert error.sender == ALICE_SENDER and not error.sender_verified


def test_high_s_twin_signature_is_refused() -> None:
    # (r, n - s) with the other v is a second valid signature of the same digest.
    raw = seal()
    sig = raw[-65:]
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    # flnode.identity refuses high-s signatures too (EIP-2), so the twin is invalid everywhere.
    assert not verify_signature(DOMAIN, decode(raw).signed_bytes(), twin, ALICE.address)
    rejects(raw[:-65] + twin, BadSignature, "bad_signature")


def test_signature_by_another_key_for_the_victim() -> None:
    error = rejects(forge(sender=ALICE_SENDER, signer=BOB), BadSignature, "bad_signature")
    assert error.sender == ALICE_SENDER and not error.sender_verified


@pytest.mark.parametrize("signature", [bytes(65), b"\xff" * 64 + b"\x1b", bytes(64) + b"\x1c"])
def test_malformed_signature_values(signature: bytes) -> None:
    rejects(forge(signature=signature), BadSignature, "bad_signature")


def test_sender_must_match_the_transport() -> None:
    raw = seal()
    assert decode(raw, expected_sender=ALICE_SENDER).sender == ALICE_SENDER
    error = rejects(raw, SenderMismatch, "sender_mismatch", expected_sender=BOB_SENDER)
    assert error.sender == ALICE_SENDER and not error.sender_verified


def test_every_truncation_is_malformed() -> None:
    raw = seal(PEERS)
    for n in range(len(raw)):
        rejects(raw[:n], MalformedEnvelope, "malformed")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00",
        b"hello world",
        b"\xff" * 100,
        bytes(range(256)),
        cbor2.dumps({"version": 1}),
        cbor2.dumps("ping"),
        cbor2.dumps([]),
        cbor2.dumps([1]),
        cbor2.dumps([1, "ping"]),
        cbor2.dumps([1, b"ping", NETWORK, ALICE_SENDER, 1, NOW, b"\x81\x07", bytes(65)]),
        cbor2.dumps([1, "p" * 40, NETWORK, ALICE_SENDER, 1, NOW, b"\x81\x07", bytes(65)]),
        cbor2.dumps([1, "pïng", NETWORK, ALICE_SENDER, 1, NOW, b"\x81\x07", bytes(65)]),
        cbor2.dumps([-1, "ping"]),
        cbor2.dumps(["1", "ping"]),
    ],
)
def test_garbage_is_malformed(raw: bytes) -> None:
    error = rejects(raw, MalformedEnvelope, "malformed")
    assert error.sender is None


@pytest.mark.parametrize("value", [None, "text", 42, [b"\x88"]])
def test_non_bytes_input_is_malformed(value: object) -> None:
    rejects(value, MalformedEnvelope, "malformed")


def test_oversized_raw_input_is_refused_before_parsing() -> None:
    limit = CODEC.registry.max_size + ENVELOPE_OVERHEAD
    rejects(b"\xff" * (limit + 1), OversizedEnvelope, "oversized")  # not even CBOR
    # The limit of the envelope's own type applies too, still before parsing the rest.
    big_ping = forge(payload=cbor2.dumps([b"x" * 500]))
    rejects(big_ping, OversizedEnvelope, "oversized")


def test_payload_over_its_type_limit() -> None:
    payload = cbor2.dumps([b"x" * (PING_MAX_SIZE + 1)])
    raw = forge(payload=payload)
    assert len(raw) <= PING_MAX_SIZE + ENVELOPE_OVERHEAD  # passes the raw check
    error = rejects(raw, OversizedEnvelope, "oversized")
    assert error.sender == ALICE_SENDER


def test_unknown_type() -> None:
    rejects(forge(type_name="consensus.vote"), UnknownMessageType, "unknown_type")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(forge(version=2), id="v2"),
        pytest.param(forge(version=0), id="v0"),
        pytest.param(forge(version=UINT64_MAX), id="vmax"),
        pytest.param(cbor2.dumps([2, "a future format"]), id="v2-other-shape"),
    ],
)
def test_unknown_version(raw: bytes) -> None:
    rejects(raw, UnknownVersion, "unknown_version")


def test_wrong_network() -> None:
    error = rejects(forge(network="flnode-mainnet"), WrongNetwork, "wrong_network")
    assert error.sender == ALICE_SENDER and not error.sender_verified
    rejects(forge(network=NETWORK.encode()), MalformedEnvelope, "malformed")


@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [(NOW - SKEW - 1, "stale"), (0, "stale"), (NOW + SKEW + 1, "future"), (UINT64_MAX, "future")],
)
def test_timestamp_outside_the_skew(timestamp: int, reason: str) -> None:
    rejects(forge(timestamp=timestamp), StaleEnvelope, reason)


def test_timestamp_at_the_skew_edges_is_accepted() -> None:
    for timestamp in (NOW - SKEW, NOW + SKEW):
        assert decode(forge(timestamp=timestamp)).timestamp_ms == timestamp


def test_inline_blob_not_matching_its_cid() -> None:
    other = bytes(len(BLOB))
    payload = cbor2.dumps([4, 2, INLINE_UPDATE.cid, 100, len(other), other])
    error = rejects(forge(type_name="update", payload=payload), InvalidPayload, "cid_mismatch")
    assert error.sender == ALICE_SENDER and error.sender_verified  # the sender signed it: blame it


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x81\xf5", b"\x81\x20", b"\x82\x01\x02", b"\x81\x18\x07", b"\x9f\x07\xff", b"\x07"],
)
def test_payload_not_matching_the_schema(payload: bytes) -> None:
    error = rejects(forge(payload=payload), InvalidPayload, "invalid_payload")
    assert error.sender_verified


@pytest.mark.parametrize(
    ("field", "value", "sender_known"),
    [
        ("seq", -1, True),
        ("seq", True, True),
        ("seq", "1", True),
        ("seq", UINT64_MAX + 1, False),  # cbor2 writes a bignum tag: refused as CBOR
        ("timestamp", float(NOW), False),  # a float: refused as CBOR
        ("timestamp", None, True),
        ("payload", "\x81\x07", True),
        ("payload", [7], False),  # an array in an envelope: nested deeper than allowed
        ("signature", bytes(64), True),
        ("signature", "x" * 65, True),
        ("network", None, True),
    ],
)
def test_fields_of_the_wrong_type(field: str, value: object, sender_known: bool) -> None:
    error = rejects(forge(**{field: value}), MalformedEnvelope, "malformed")
    assert error.sender == (ALICE_SENDER if sender_known else None)
    assert not error.sender_verified


def test_extra_items_are_malformed() -> None:
    rejects(forge(extra=(0,)), MalformedEnvelope, "malformed")


def test_non_canonical_encodings_are_malformed_even_when_signed() -> None:
    raw = seal()
    # seq 1 written in two bytes (0x18 0x01) instead of one: same value, another byte string.
    pos = raw.index(b"\x01" + cbor2.dumps(NOW), 20)
    longer = raw[:pos] + b"\x18\x01" + raw[pos + 1 :]
    assert cbor2.loads(longer) == cbor2.loads(raw)
    rejects(longer, MalformedEnvelope, "malformed")
    # The same items in an indefinite-length array.
    items = cbor2.loads(raw)
    indefinite = b"\x9f" + b"".join(cbor2.dumps(x) for x in items) + b"\xff"
    rejects(indefinite, MalformedEnvelope, "malformed")


@pytest.mark.parametrize(
    "sender",
    [
        pytest.param(ALICE_SENDER[:-1], id="short"),
        pytest.param(ALICE_SENDER + b"\x00", id="long"),
        pytest.param(b"\x00\x25\x08\x01\x12\x21" + ALICE_SENDER[6:], id="not-secp256k1"),
        pytest.param(ALICE_SENDER[:6] + b"\x04" + ALICE_SENDER[7:], id="bad-point-prefix"),
        pytest.param(ALICE_SENDER.hex(), id="text"),
        pytest.param(ALICE.peer_id, id="base58-text"),
        pytest.param(sender_bytes("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"), id="rsa-id"),
    ],
)
def test_bad_sender(sender: object) -> None:
    error = rejects(forge(sender=sender), MalformedEnvelope, "bad_sender")
    assert error.sender is None


def test_sender_key_not_on_the_curve() -> None:
    x = 5  # 5^3 + 7 is not a square modulo p (Euler's criterion): no point has x = 5
    sender = ALICE_SENDER[:7] + x.to_bytes(32, "big")
    error = rejects(forge(sender=sender), MalformedEnvelope, "bad_sender")
    assert error.sender == sender and not error.sender_verified


def test_replayed_envelope() -> None:
    raw = seal(seq=9)
    guard = ReplayGuard(BOB.peer_id, max_skew_ms=SKEW)
    assert guard.check(decode(raw), now_ms=NOW) is Verdict.NEW
    assert guard.check(decode(raw, now_ms=NOW + 1), now_ms=NOW + 1) is Verdict.DUPLICATE
    # Once its timestamp is beyond the skew, the codec refuses it before the guard sees it.
    rejects(raw, StaleEnvelope, "stale", now_ms=NOW + SKEW + 1)


# ---------------------------------------------------------------------------------------------
# Errors, encoding errors, configuration, caching
# ---------------------------------------------------------------------------------------------


def test_error_reasons_are_a_closed_set() -> None:
    assert len(set(ENVELOPE_REJECT_REASONS)) == len(ENVELOPE_REJECT_REASONS)
    for cls in ENVELOPE_ERRORS:
        error = cls("detail")
        assert error.reason == cls.reasons[0]
        assert str(error) == f"{cls.reasons[0]}: detail"
        assert error.sender is None and not error.sender_verified
    with pytest.raises(ValueError, match="no reason"):
        BadSignature("detail", reason="stale")


def test_encode_refuses_bad_input() -> None:
    @dataclass(frozen=True)
    class Unregistered:
        x: int

    with pytest.raises(InvalidMessage, match="not a registered"):
        CODEC.encode(ALICE, Unregistered(1), seq=1)  # type: ignore[arg-type]
    for seq in (-1, UINT64_MAX + 1, True, None):
        with pytest.raises(InvalidMessage, match="seq"):
            CODEC.encode(ALICE, Ping(1), seq=seq)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match="timestamp_ms"):
        CODEC.encode(ALICE, Ping(1), seq=1, timestamp_ms=-5)


def test_encode_uses_the_wall_clock_by_default() -> None:
    before = time.time_ns() // 1_000_000
    env = CODEC.decode(CODEC.encode(ALICE, Ping(1), seq=1))
    assert before <= env.timestamp_ms <= time.time_ns() // 1_000_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"network_id": "Bad Net"},
        {"network_id": ""},
        {"network_id": "a" * 33},
        {"max_skew_ms": 0},
        {"address_cache_size": 0},
    ],
)
def test_codec_configuration_is_checked(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"network_id": NETWORK, "max_skew_ms": SKEW} | kwargs
    with pytest.raises(ValueError):
        EnvelopeCodec(registry=default_registry(), **args)


def test_sender_addresses_are_cached_once_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = envelope_module.address_from_peer_id

    def counting(peer_id: str) -> str:
        calls.append(peer_id)
        return real(peer_id)

    monkeypatch.setattr(envelope_module, "address_from_peer_id", counting)
    codec = make_codec(address_cache_size=2)
    forged = forge(sender=ALICE_SENDER, signer=BOB)
    for _ in range(2):
        with pytest.raises(BadSignature):
            codec.decode(forged, now_ms=NOW)
    assert len(calls) == 2  # a forged sender is not cached
    for seq in range(3):
        codec.decode(seal(seq=seq), now_ms=NOW)
    assert len(calls) == 3
    carol = NodeIdentity.from_secret(bytes.fromhex("33" * 32))
    for identity in (BOB, carol, ALICE):  # a cache of two: Alice was pushed out
        codec.decode(CODEC.encode(identity, Ping(1), seq=1, timestamp_ms=NOW), now_ms=NOW)
    assert calls[3:] == [BOB.peer_id, carol.peer_id, ALICE.peer_id]


def test_another_layer_can_register_a_type() -> None:
    @dataclass(frozen=True)
    class Vote:
        height: int

        def to_cbor(self) -> bytes:
            return cbor_encode([self.height])

        @classmethod
        def from_cbor(cls, data: bytes) -> Vote:
            (height,) = decode_fields(data, 1)
            if type(height) is not int:
                raise InvalidPayload("height must be an int")
            return cls(height)

    registry = default_registry()
    registry.register("consensus.vote", Vote, max_size=16)
    codec = make_codec(registry)
    raw = codec.encode(ALICE, Vote(12), seq=1, timestamp_ms=NOW)
    assert codec.decode(raw, now_ms=NOW).message == Vote(12)
    rejects(raw, UnknownMessageType, "unknown_type")  # a node without that type

    # A bug in another layer's decoder is contained and labelled.
    @dataclass(frozen=True)
    class Broken:
        height: int

        def to_cbor(self) -> bytes:
            return cbor_encode([self.height])

        @classmethod
        def from_cbor(cls, data: bytes) -> Broken:
            raise ZeroDivisionError

    bad_registry = MessageRegistry()
    bad_registry.register("consensus.vote", Broken, max_size=16)
    with pytest.raises(InvalidPayload) as info:
        make_codec(bad_registry).decode(raw, now_ms=NOW)
    assert info.value.reason == "decoder_error" and info.value.sender_verified


def test_decoder_bugs_are_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> bytes:
        raise ZeroDivisionError

    monkeypatch.setattr(envelope_module, "_signed_bytes", broken)
    rejects(seal(), MalformedEnvelope, "internal_error")


def test_announcement_codec_is_fast() -> None:
    """A guard against gross regressions (per-byte Python loops), not a benchmark."""
    blob = bytes(range(256)) * 400  # 100 KiB
    message = UpdateAnnouncement(1, 1, str(Cid.from_data(blob)), 10, len(blob), blob)
    start = time.perf_counter()
    for seq in range(10):
        assert decode(seal(message, seq=seq)).message == message
    assert time.perf_counter() - start < 1.0  # measured ~2 ms per round trip


# ---------------------------------------------------------------------------------------------
# ReplayGuard and SequenceCounter
# ---------------------------------------------------------------------------------------------

BASE = decode(seal())


def env(seq: int, sender: bytes = ALICE_SENDER, content: bytes = b"") -> Envelope:
    """A stand-in for a decoded envelope: the guard reads only sender, seq and message_id."""
    mid = hashlib.sha256(sender + seq.to_bytes(8, "big") + content).digest()
    return dataclasses.replace(BASE, sender=sender, seq=seq, message_id=mid)


def test_guard_new_duplicate_conflict_own() -> None:
    guard = ReplayGuard(BOB.peer_id, max_skew_ms=SKEW)
    assert guard.check(env(1), now_ms=NOW) is Verdict.NEW
    assert guard.check(env(1), now_ms=NOW) is Verdict.DUPLICATE
    assert guard.check(env(1, content=b"other"), now_ms=NOW) is Verdict.CONFLICT
    assert guard.check(env(2), now_ms=NOW) is Verdict.NEW
    assert guard.check(env(1, sender=BOB_SENDER), now_ms=NOW) is Verdict.OWN
    assert ReplayGuard(BOB_SENDER).check(env(1, sender=BOB_SENDER)) is Verdict.OWN
    assert len(guard) == 2 and guard.senders == 1
    assert [v.accepted for v in Verdict] == [True, False, False, False, False]


def test_guard_window_allows_reordering_and_refuses_old_seqs() -> None:
    guard = ReplayGuard(BOB_SENDER, max_skew_ms=SKEW, window=4)
    for seq in (10, 30, 20, 40):  # out of order, within the window
        assert guard.check(env(seq), now_ms=NOW) is Verdict.NEW
    assert guard.check(env(5), now_ms=NOW) is Verdict.REPLAY  # below a full window
    assert guard.check(env(50), now_ms=NOW) is Verdict.NEW  # pushes 10 out
    assert guard.check(env(10), now_ms=NOW) is Verdict.REPLAY
    assert guard.check(env(25), now_ms=NOW) is Verdict.NEW  # a late one still inside
    assert guard.check(env(20), now_ms=NOW) is Verdict.REPLAY  # pushed out by 25
    assert guard.check(env(30), now_ms=NOW) is Verdict.DUPLICATE
    assert len(guard) == 4


def test_guard_forgets_senders_after_twice_the_skew() -> None:
    guard = ReplayGuard(BOB_SENDER, max_skew_ms=SKEW, window=2)
    for seq in (100, 200):
        guard.check(env(seq), now_ms=NOW)
    assert guard.check(env(1), now_ms=NOW + 2 * SKEW) is Verdict.REPLAY
    # Anything Alice sent before is now stale for the codec; a restarted Alice with a clock that
    # stepped back is welcome again.
    assert guard.check(env(1), now_ms=NOW + 2 * SKEW + 1) is Verdict.NEW
    assert len(guard) == 1
    other = ALICE_SENDER[:-1] + b"\x00"
    guard.check(env(1, sender=other), now_ms=NOW + 10 * SKEW)  # expires Alice on the way
    assert guard.senders == 1 and len(guard) == 1


def test_guard_memory_is_bounded() -> None:
    guard = ReplayGuard(BOB_SENDER, max_skew_ms=SKEW, window=8, max_senders=16)
    senders = [ALICE_SENDER[:-2] + i.to_bytes(2, "big") for i in range(100)]
    for i in range(5000):
        sender = senders[(i // 10) % len(senders)]  # ten messages from each, round robin
        assert guard.check(env(i, sender=sender), now_ms=NOW + i) is Verdict.NEW
        assert len(guard) <= 8 * 16 and guard.senders <= 16
    assert guard.senders == 16 and len(guard) == 8 * 16
    # The least recently active senders were forgotten, the latest ones kept.
    last = env(4999, sender=senders[(4999 // 10) % 100])
    assert guard.check(last, now_ms=NOW + 5000) is Verdict.DUPLICATE
    assert guard.check(env(0, sender=senders[0]), now_ms=NOW + 5000) is Verdict.NEW


def test_guard_configuration_is_checked() -> None:
    for kwargs in ({"window": 0}, {"max_senders": 0}, {"max_skew_ms": 0}):
        with pytest.raises(ValueError):
            ReplayGuard(BOB_SENDER, **kwargs)


def test_sequence_counter() -> None:
    clock = [1_000]
    counter = SequenceCounter(lambda: clock[0])
    assert [counter.next() for _ in range(3)] == [1_000, 1_001, 1_002]  # a stuck clock
    clock[0] = 5_000
    assert counter.next() == 5_000
    clock[0] = 10  # stepped back: still increasing
    assert counter.next() == 5_001
    restarted = SequenceCounter(lambda: 6_000)
    assert restarted.next() > 5_001
    assert SequenceCounter().next() >= time.time_ns() - 10**9
    with pytest.raises(OverflowError):
        SequenceCounter(lambda: UINT64_MAX + 1).next()


# ---------------------------------------------------------------------------------------------
# Hostile bytes: only EnvelopeError, and nothing but the original bytes decodes
# ---------------------------------------------------------------------------------------------

VALID = [seal(Ping(3)), seal(PEERS, seq=2), seal(INLINE_UPDATE, seq=3)]
HEADER = b"\x88\x01\x64ping"


def decode_or_error(raw: bytes) -> Envelope | None:
    try:
        return decode(raw)
    except EnvelopeError as exc:
        assert exc.reason != "internal_error", exc.__cause__
        return None


@settings(max_examples=500)
@given(st.binary(max_size=300) | st.binary(max_size=300).map(lambda tail: HEADER + tail))
def test_arbitrary_bytes_only_raise_envelope_errors(raw: bytes) -> None:
    assert decode_or_error(raw) is None


def _mutate(draw: Callable[..., Any]) -> tuple[bytes, bytes]:
    original = draw(st.sampled_from(VALID))
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif not data:
            continue
        elif op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[pos]
        else:
            del data[pos:]
    return original, bytes(data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.composite(_mutate)())
def test_mutated_envelopes_never_decode_to_something_else(case: tuple[bytes, bytes]) -> None:
    original, mutated = case
    env = decode_or_error(mutated)
    if env is not None:  # only possible if the mutations cancelled out
        assert mutated == original
        assert env == decode(original)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "version": st.integers(0, 3),
            "type_name": st.sampled_from(["ping", "update", "peer_exchange", "nope", ""]),
            "seq": st.integers(-5, 2**65) | st.booleans() | st.none(),
            "timestamp": st.integers(NOW - 2 * SKEW, NOW + 2 * SKEW) | st.text(max_size=3),
            "payload": st.binary(max_size=40)
            | st.lists(st.integers(0, 2**70) | st.binary(max_size=8), max_size=7).map(cbor2.dumps),
            "signer": st.sampled_from([ALICE, BOB]),
        },
    )
)
def test_signed_but_arbitrary_fields_only_raise_envelope_errors(fields: dict[str, Any]) -> None:
    decode_or_error(forge(**fields))
