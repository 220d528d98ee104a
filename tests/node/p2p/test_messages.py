"""Strict CBOR, the message registry and the built-in message types."""

from __future__ import annotations

from dataclasses import dataclass

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flnode.cid import Cid, InvalidCidError
from flnode.identity import NodeIdentity
from flnode.p2p.errors import CborFormatError, InvalidMessage, InvalidPayload, OversizedEnvelope
from flnode.p2p.messages import (
    INLINE_BLOB_LIMIT,
    MAX_MESSAGE_SIZE,
    MAX_MULTIADDR_LEN,
    MAX_PEER_ADDRS,
    PEER_EXCHANGE_MAX_SIZE,
    PING_MAX_SIZE,
    UINT32_MAX,
    UINT64_MAX,
    UPDATE_ANNOUNCEMENT_MAX_SIZE,
    MessageRegistry,
    PeerExchange,
    Ping,
    UpdateAnnouncement,
    cbor_decode,
    cbor_encode,
    check_multiaddr,
    cid_digest,
    decode_fields,
    default_registry,
)

PEER = NodeIdentity.from_secret(bytes(range(1, 33))).peer_id
BLOB = b"a model update" * 100
BLOB_CID = str(Cid.from_data(BLOB))

# ---------------------------------------------------------------------------------------------
# Strict CBOR
# ---------------------------------------------------------------------------------------------

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=UINT64_MAX)
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5),
    max_leaves=25,
)


def _same(a: object, b: object) -> bool:
    """Equality that also tells True from 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@given(cbor_values)
def test_cbor_round_trip(value: object) -> None:
    data = cbor_encode(value)
    assert _same(cbor_decode(data, max_depth=64, max_items=10_000), value)
    assert data == cbor2.dumps(value)  # the subset's deterministic encoding is cbor2's default


def _mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(cbor_encode(draw(cbor_values)))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif data and pos < len(data):
            if op == "set":
                data[pos] = draw(st.integers(0, 255))
            else:
                del data[pos]
    return bytes(data)


@settings(max_examples=400)
@given(st.binary(max_size=64) | st.composite(_mutations)())
def test_cbor_accepts_only_the_unique_encoding(data: bytes) -> None:
    try:
        value = cbor_decode(data, max_depth=64, max_items=10_000)
    except CborFormatError:
        return
    assert cbor_encode(value) == data


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x9f\x01\xff", id="indefinite-array"),
        pytest.param(b"\x5f\x41\x00\xff", id="indefinite-bytes"),
        pytest.param(b"\x7f\x61a\xff", id="indefinite-text"),
        pytest.param(b"\x18\x05", id="int-not-shortest-1"),
        pytest.param(b"\x19\x00\xff", id="int-not-shortest-2"),
        pytest.param(b"\x1a\x00\x00\xff\xff", id="int-not-shortest-4"),
        pytest.param(b"\x1b\x00\x00\x00\x00\xff\xff\xff\xff", id="int-not-shortest-8"),
        pytest.param(b"\x38\x01", id="negint-not-shortest"),
        pytest.param(b"\x58\x01\x00", id="length-not-shortest"),
        pytest.param(b"\x98\x01\x00", id="array-length-not-shortest"),
        pytest.param(b"\xa1\x01\x02", id="map"),
        pytest.param(b"\xc1\x01", id="tag-epoch"),
        pytest.param(b"\xc2\x41\x01", id="tag-bignum"),
        pytest.param(b"\xd8\x23\x61a", id="tag-regex"),
        pytest.param(b"\xd8\x1c\x81\xd8\x1d\x00", id="tag-shared-ref"),
        pytest.param(b"\xf9\x00\x00", id="half-float"),
        pytest.param(b"\xfb" + bytes(8), id="double"),
        pytest.param(b"\xf7", id="undefined"),
        pytest.param(b"\xf0", id="simple-16"),
        pytest.param(b"\xf8\x20", id="simple-32"),
        pytest.param(b"\x1c", id="reserved"),
        pytest.param(b"\x01\x00", id="trailing-byte"),
        pytest.param(b"\x82\x01", id="truncated-array"),
        pytest.param(b"\x43ab", id="truncated-bytes"),
        pytest.param(b"\x19\x01", id="truncated-head"),
        pytest.param(b"\x9b" + b"\xff" * 8, id="huge-array-length"),
        pytest.param(b"\x5b\x7f" + b"\xff" * 7, id="huge-bytes-length"),
        pytest.param(b"\x62\xff\xfe", id="text-not-utf8"),
        pytest.param(b"\x81" * 10_000 + b"\x00", id="deep-nesting"),
    ],
)
def test_cbor_rejects_outside_the_subset(data: bytes) -> None:
    with pytest.raises(CborFormatError):
        cbor_decode(data)


def test_cbor_bounds_depth_and_items() -> None:
    nested = b"\x81\x81\x81\x00"
    assert cbor_decode(nested, max_depth=3) == [[[0]]]
    with pytest.raises(CborFormatError, match="deeper"):
        cbor_decode(nested, max_depth=2)
    flat = b"\x83\x01\x02\x03"  # 4 items: the array and its elements
    assert cbor_decode(flat, max_items=4) == [1, 2, 3]
    with pytest.raises(CborFormatError, match="items"):
        cbor_decode(flat, max_items=3)


def test_cbor_rejects_non_bytes() -> None:
    with pytest.raises(CborFormatError):
        cbor_decode("\x01")  # type: ignore[arg-type]


def test_decode_fields_checks_arity_and_shape() -> None:
    assert decode_fields(b"\x82\x01\x02", 2) == [1, 2]
    for data in (b"\x81\x01", b"\x83\x01\x02\x03", b"\x01", b"\x82\x81\x01\x02", b"\xff"):
        with pytest.raises(InvalidPayload) as info:
            decode_fields(data, 2)
        assert info.value.reason == "invalid_payload"


# ---------------------------------------------------------------------------------------------
# Ping
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nonce", [0, 1, 23, 24, 2**32, UINT64_MAX])
def test_ping_round_trip(nonce: int) -> None:
    data = Ping(nonce).to_cbor()
    assert len(data) <= PING_MAX_SIZE
    assert Ping.from_cbor(data) == Ping(nonce)


@pytest.mark.parametrize("nonce", [-1, UINT64_MAX + 1, True, 1.0, "1", None])
def test_ping_rejects_bad_nonce(nonce: object) -> None:
    with pytest.raises(InvalidMessage):
        Ping(nonce)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data", [b"\x81\xf5", b"\x81\x20", b"\x80", b"\x82\x01\x02", b"\x01", b"\x81\x41\x01"]
)
def test_ping_from_cbor_rejects(data: bytes) -> None:
    with pytest.raises(InvalidPayload) as info:
        Ping.from_cbor(data)
    assert info.value.reason == "invalid_payload"


# ---------------------------------------------------------------------------------------------
# PeerExchange
# ---------------------------------------------------------------------------------------------

GOOD_ADDRS = (
    f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}",
    f"/ip4/10.0.0.255/tcp/65535/p2p/{PEER}",
    f"/ip6/::1/tcp/4001/p2p/{PEER}",
    f"/ip6/2001:db8::7/tcp/1/p2p/{PEER}",
    f"/dns4/node-1.example.org/tcp/4001/p2p/{PEER}",
    f"/dns/localhost/tcp/4001/p2p/{PEER}",
    "/ip4/1.2.3.4/tcp/4001/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
    "/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
)


def test_peer_exchange_round_trip() -> None:
    msg = PeerExchange(GOOD_ADDRS)
    assert PeerExchange.from_cbor(msg.to_cbor()) == msg
    assert PeerExchange.from_cbor(PeerExchange(()).to_cbor()) == PeerExchange(())


@pytest.mark.parametrize(
    "addr",
    [
        "",
        f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}/",
        f"/ip4/127.0.0.1/tcp/4001/{PEER}",
        "/ip4/127.0.0.1/tcp/4001",
        f"/ip4/256.0.0.1/tcp/4001/p2p/{PEER}",
        f"/ip4/01.2.3.4/tcp/4001/p2p/{PEER}",
        f"/ip4/::1/tcp/4001/p2p/{PEER}",
        f"/ip6/0:0:0:0:0:0:0:1/tcp/4001/p2p/{PEER}",  # not canonical (::1)
        f"/ip6/fe80::1%eth0/tcp/4001/p2p/{PEER}",
        f"/ip4/127.0.0.1/tcp/0/p2p/{PEER}",
        f"/ip4/127.0.0.1/tcp/65536/p2p/{PEER}",
        f"/ip4/127.0.0.1/tcp/04001/p2p/{PEER}",
        f"/ip4/127.0.0.1/udp/4001/p2p/{PEER}",
        "/ip4/127.0.0.1/tcp/4001/p2p/0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl",  # not base58
        "/ip4/127.0.0.1/tcp/4001/p2p/short",
        f"/dns4/-bad-.example/tcp/4001/p2p/{PEER}",
        f"/dns4/bücher.example/tcp/4001/p2p/{PEER}",
        f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}\n",
        f"/dns4/{'a' * 250}/tcp/4001/p2p/{PEER}",  # longer than 256 characters
    ],
)
def test_peer_exchange_rejects_bad_addr(addr: str) -> None:
    with pytest.raises(InvalidMessage):
        check_multiaddr(addr)
    with pytest.raises(InvalidMessage):
        PeerExchange((addr,))
    with pytest.raises(InvalidPayload):
        PeerExchange.from_cbor(cbor2.dumps([[addr]]))


def _long_addr(length: int) -> str:
    fixed = f"/dns4//tcp/4001/p2p/{PEER}"
    host_len = length - len(fixed)
    labels = []
    while host_len > 0:
        label = "a" * min(63, host_len)
        labels.append(label)
        host_len -= len(label) + 1  # the dot after it
    host = ".".join(labels)
    if len(host) < length - len(fixed):  # the last dot took one character too many
        host = host[:-1] + "bb"
    return f"/dns4/{host}/tcp/4001/p2p/{PEER}"


def test_peer_exchange_bounds() -> None:
    longest = _long_addr(MAX_MULTIADDR_LEN)
    assert len(longest) == MAX_MULTIADDR_LEN
    fullest = PeerExchange((longest,) * MAX_PEER_ADDRS)
    data = fullest.to_cbor()
    assert len(data) <= PEER_EXCHANGE_MAX_SIZE
    assert PeerExchange.from_cbor(data) == fullest
    with pytest.raises(InvalidMessage):
        PeerExchange((GOOD_ADDRS[0],) * (MAX_PEER_ADDRS + 1))
    with pytest.raises(InvalidPayload):
        PeerExchange.from_cbor(cbor2.dumps([[GOOD_ADDRS[0]] * (MAX_PEER_ADDRS + 1)]))


@pytest.mark.parametrize(
    "addrs", [[GOOD_ADDRS[0]], (GOOD_ADDRS[0], 7), (b"/ip4/1.2.3.4",), GOOD_ADDRS[0]]
)
def test_peer_exchange_rejects_bad_types(addrs: object) -> None:
    with pytest.raises(InvalidMessage):
        PeerExchange(addrs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", [GOOD_ADDRS[0], [[GOOD_ADDRS[0]]], [7], None, [GOOD_ADDRS[0].encode()]]
)
def test_peer_exchange_from_cbor_rejects_bad_shapes(value: object) -> None:
    with pytest.raises(InvalidPayload):
        PeerExchange.from_cbor(cbor2.dumps([value]))


# ---------------------------------------------------------------------------------------------
# UpdateAnnouncement
# ---------------------------------------------------------------------------------------------


HELLO_WORLD_CID = (
    "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"  # ipfs add --raw-leaves
)


@given(st.binary(max_size=256))
def test_cid_digest_agrees_with_the_storage_cid(data: bytes) -> None:
    cid = Cid.from_data(data)
    assert cid_digest(str(cid)) == cid.digest


def _storage_accepts(text: str) -> bytes | None:
    try:
        cid = Cid.parse(text)
    except InvalidCidError:
        return None
    return cid.digest if str(cid) == text else None


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.integers(0, 58), st.sampled_from("abcdefghijklmnopqrstuvwxyz234567ABZ01=z ")),
        max_size=2,
    ),
    st.integers(55, 60),
)
def test_cid_digest_accepts_exactly_the_canonical_texts(
    edits: list[tuple[int, str]], length: int
) -> None:
    text = list(HELLO_WORLD_CID)
    for pos, char in edits:
        text[pos] = char
    candidate = "".join(text)[:length]
    try:
        ours: bytes | None = cid_digest(candidate)
    except InvalidMessage:
        ours = None
    assert ours == _storage_accepts(candidate)


@pytest.mark.parametrize(
    "text",
    [
        HELLO_WORLD_CID[:-1] + "f",  # same bytes, but an unused trailing bit set
        HELLO_WORLD_CID.upper(),
        "B" + HELLO_WORLD_CID[1:],
        "zb2rhj7crUKTQYRGCRATFaQ6YFLTde2YzdqbbhAASkL9uRDXn",  # the same CID in base58btc
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # CIDv0
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",  # dag-pb codec
        HELLO_WORLD_CID + "a",
        HELLO_WORLD_CID[:-1],
        f" {HELLO_WORLD_CID[:-1]}",
        "b" + "é" * 58,
        b"bafkrei",
        None,
    ],
)
def test_cid_digest_rejects_other_forms(text: object) -> None:
    with pytest.raises(InvalidMessage, match="canonical base32 text of a CIDv1"):
        cid_digest(text)


def test_update_announcement_inline_round_trip() -> None:
    msg = UpdateAnnouncement(7, 3, BLOB_CID, 600, len(BLOB), BLOB)
    assert msg.inline
    assert UpdateAnnouncement.from_cbor(msg.to_cbor()) == msg
    assert "blob" not in repr(msg)  # a 256 KiB blob has no place in a log line


def test_update_announcement_by_cid_round_trip() -> None:
    msg = UpdateAnnouncement(7, 3, BLOB_CID, 600, INLINE_BLOB_LIMIT + 1)
    assert not msg.inline
    assert UpdateAnnouncement.from_cbor(msg.to_cbor()) == msg


def test_update_announcement_largest_inline_fits() -> None:
    blob = bytes(INLINE_BLOB_LIMIT)
    msg = UpdateAnnouncement(
        UINT64_MAX, UINT64_MAX, str(Cid.from_data(blob)), UINT32_MAX, len(blob), blob
    )
    data = msg.to_cbor()
    assert len(data) <= UPDATE_ANNOUNCEMENT_MAX_SIZE
    assert UpdateAnnouncement.from_cbor(data) == msg


def test_update_announcement_cid_mismatch() -> None:
    other = b"another update" * 100
    with pytest.raises(InvalidMessage) as local:
        UpdateAnnouncement(1, 1, BLOB_CID, 10, len(other), other)
    assert local.value.reason == "cid_mismatch"
    data = cbor2.dumps([1, 1, BLOB_CID, 10, len(other), other])
    with pytest.raises(InvalidPayload) as received:
        UpdateAnnouncement.from_cbor(data)
    assert received.value.reason == "cid_mismatch"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ((1, 1, BLOB_CID, 10, len(BLOB) + 1, BLOB), "size"),
        ((1, 1, BLOB_CID, 10, len(BLOB), None), "inline"),
        ((1, 1, BLOB_CID, 10, INLINE_BLOB_LIMIT, None), "inline"),
        ((1, 1, BLOB_CID, 10, INLINE_BLOB_LIMIT + 1, BLOB), "blob"),
        ((1, 1, BLOB_CID, 0, len(BLOB), BLOB), "n_samples"),
        ((1, 1, BLOB_CID, UINT32_MAX + 1, len(BLOB), BLOB), "n_samples"),
        ((-1, 1, BLOB_CID, 10, len(BLOB), BLOB), "task_id"),
        ((1, True, BLOB_CID, 10, len(BLOB), BLOB), "round"),
        ((1, 1, BLOB_CID, 10, 0, b""), "size"),
        ((1, 1, BLOB_CID.upper(), 10, len(BLOB), BLOB), "canonical"),
        ((1, 1, f" {BLOB_CID}", 10, len(BLOB), BLOB), "canonical"),
        ((1, 1, "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", 10, len(BLOB), BLOB), "CIDv1"),
        ((1, 1, "not a cid", 10, len(BLOB), BLOB), "CID"),
        ((1, 1, Cid.from_data(BLOB), 10, len(BLOB), BLOB), "cid"),
        ((1, 1, BLOB_CID, 10, len(BLOB), bytearray(BLOB)), "blob"),
    ],
)
def test_update_announcement_rejects(fields: tuple[object, ...], match: str) -> None:
    with pytest.raises(InvalidMessage, match=match):
        UpdateAnnouncement(*fields)  # type: ignore[arg-type]


def test_update_announcement_from_cbor_rejects_bad_fields() -> None:
    for fields in (
        [1, 1, BLOB_CID, 10, len(BLOB)],
        [1, 1, BLOB_CID.encode(), 10, len(BLOB), BLOB],
        [1, 1, BLOB_CID, 10, len(BLOB), BLOB.decode()],
        [1, 1, Cid.from_data(BLOB).to_bytes(), 10, len(BLOB), BLOB],
    ):
        with pytest.raises(InvalidPayload) as info:
            UpdateAnnouncement.from_cbor(cbor2.dumps(fields))
        assert info.value.reason == "invalid_payload"


# ---------------------------------------------------------------------------------------------
# Any bytes: only InvalidPayload, or a value whose encoding is exactly those bytes
# ---------------------------------------------------------------------------------------------

SAMPLES = {
    Ping: Ping(5).to_cbor(),
    PeerExchange: PeerExchange(GOOD_ADDRS[:3]).to_cbor(),
    UpdateAnnouncement: UpdateAnnouncement(7, 3, BLOB_CID, 600, len(BLOB), BLOB).to_cbor(),
}


@settings(max_examples=300)
@given(
    cls=st.sampled_from(sorted(SAMPLES, key=lambda c: c.__name__)),
    data=st.data(),
)
def test_from_cbor_on_hostile_bytes(cls: type, data: st.DataObject) -> None:
    sample = SAMPLES[cls]
    raw = data.draw(
        st.binary(max_size=80)
        | st.builds(
            lambda pos, value: sample[:pos] + bytes([value]) + sample[pos + 1 :],
            st.integers(0, len(sample) - 1),
            st.integers(0, 255),
        )
        | st.integers(0, len(sample) - 1).map(lambda n: sample[:n])
    )
    try:
        message = cls.from_cbor(raw)
    except InvalidPayload:
        return
    assert message.to_cbor() == raw


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_default_registry() -> None:
    registry = default_registry()
    assert [spec.name for spec in registry] == ["ping", "peer_exchange", "update"]
    assert len(registry) == 3
    assert "update" in registry and "nope" not in registry
    spec = registry.get("update")
    assert spec is not None
    assert spec.cls is UpdateAnnouncement and spec.max_size == UPDATE_ANNOUNCEMENT_MAX_SIZE
    assert registry.spec_for(Ping(1)).name == "ping"
    assert registry.max_size == UPDATE_ANNOUNCEMENT_MAX_SIZE
    assert default_registry() is not registry  # each caller gets its own


@dataclass(frozen=True, slots=True)
class Vote:
    """A type another layer might register."""

    height: int

    def to_cbor(self) -> bytes:
        return cbor_encode([self.height])

    @classmethod
    def from_cbor(cls, data: bytes) -> Vote:
        return cls(*decode_fields(data, 1))


def test_register_a_new_type() -> None:
    registry = default_registry()
    spec = registry.register("consensus.vote", Vote, max_size=16)
    assert registry.get("consensus.vote") is spec
    assert spec.decode(spec.encode(Vote(9))) == Vote(9)


def test_register_refuses_bad_registrations() -> None:
    registry = default_registry()

    @dataclass
    class Mutable:
        x: int

        def to_cbor(self) -> bytes:
            return b""

        @classmethod
        def from_cbor(cls, data: bytes) -> Mutable:
            return cls(0)

    @dataclass(frozen=True)
    class NoCodec:
        x: int

    with pytest.raises(ValueError, match="already"):
        registry.register("ping", Vote, max_size=16)
    with pytest.raises(ValueError, match="already"):
        registry.register("ping2", Ping, max_size=16)
    for name in ("", "Vote", "1vote", "a" * 33, "vote!", "vöte"):
        with pytest.raises(ValueError, match="name"):
            registry.register(name, Vote, max_size=16)
    for size in (0, -1, MAX_MESSAGE_SIZE + 1, 1.5):
        with pytest.raises(ValueError, match="max_size"):
            registry.register("vote", Vote, max_size=size)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="frozen"):
        registry.register("mutable", Mutable, max_size=16)
    with pytest.raises(TypeError, match="frozen"):
        registry.register("str", str, max_size=16)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="from_cbor"):
        registry.register("nocodec", NoCodec, max_size=16)  # type: ignore[arg-type]
    assert len(registry) == 3


def test_spec_encode_checks_class_and_size() -> None:
    registry = MessageRegistry()
    spec = registry.register("vote", Vote, max_size=3)
    assert spec.encode(Vote(1)) == b"\x81\x01"
    with pytest.raises(InvalidMessage, match="payload may be 3 bytes"):
        spec.encode(Vote(2**32))
    with pytest.raises(InvalidMessage):
        spec.encode(Ping(1))  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match="not a registered"):
        registry.spec_for(Ping(1))


def test_spec_decode_contains_decoder_bugs() -> None:
    @dataclass(frozen=True)
    class Buggy:
        x: int

        def to_cbor(self) -> bytes:
            return b"\x01"

        @classmethod
        def from_cbor(cls, data: bytes) -> Buggy:
            if data == b"\x01":
                raise KeyError("bug")
            if data == b"\x02":
                return Ping(2)  # type: ignore[return-value]
            if data == b"\x03":
                raise InvalidMessage("bad field", reason="not_a_payload_reason")
            return cls(0)

    registry = MessageRegistry()
    spec = registry.register("buggy", Buggy, max_size=8)
    for data, reason in ((b"\x01", "decoder_error"), (b"\x02", "decoder_error")):
        with pytest.raises(InvalidPayload) as info:
            spec.decode(data)
        assert info.value.reason == reason
    with pytest.raises(InvalidPayload) as info:
        spec.decode(b"\x03")
    assert info.value.reason == "invalid_payload"
    with pytest.raises(OversizedEnvelope):
        spec.decode(bytes(9))
    assert spec.decode(b"\x00") == Buggy(0)
