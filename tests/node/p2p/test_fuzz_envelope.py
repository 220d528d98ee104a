"""Fuzzing what reaches the P2P layer from peers: envelopes of every registered type (the
consensus' ``bft``/``txs``/``blocks`` wrappers included), the replay guard behind the decoder, and
both sides of fetch-by-CID.

``test_envelope.py`` fuzzes the envelope decoder on raw and mutated bytes and on signed envelopes
with arbitrary header fields; ``test_messages.py`` fuzzes strict CBOR and each payload decoder.
Their strategies and helpers are reused here; what this file adds is *signed* envelopes whose
payload is any value of the CBOR subset, for every type a node registers, and the stateful parts
around the decoders: a rejected envelope leaves the replay guard as it was, a fetch response
that is not the blob leaves no trace but a penalty, and serving never writes to the blob store.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from libp2p.peer.id import ID
from libp2p.request_response import RequestContext

from flnode.cid import Cid, InvalidCidError
from flnode.consensus_net import register_consensus_messages
from flnode.identity import NodeIdentity
from flnode.p2p.envelope import Envelope, EnvelopeCodec, ReplayGuard, Verdict
from flnode.p2p.errors import ENVELOPE_REJECT_REASONS, EnvelopeError
from flnode.p2p.fetch import (
    FETCH_PROTOCOL,
    STATUS_BAD_REQUEST,
    STATUS_FOUND,
    STATUS_NOT_FOUND,
    BlobFetcher,
    FetchError,
)
from flnode.p2p.messages import UINT64_MAX, cbor_encode, default_registry
from flnode.p2p.scoring import PeerScoreBook
from flnode.storage.blobstore import BlobStore

from ...fuzz_profiles import fuzz
from .test_envelope import ALICE, ALICE_SENDER, BOB, BOB_SENDER, NETWORK, NOW, SKEW, forge
from .test_messages import cbor_values


def _registry() -> Any:
    registry = default_registry()
    register_consensus_messages(registry)  # what a node with a ledger registers
    return registry


CODEC = EnvelopeCodec(NETWORK, _registry(), max_skew_ms=SKEW)
TYPES = [spec.name for spec in CODEC.registry]


def decode(raw: bytes) -> Envelope | None:
    try:
        env = CODEC.decode(raw, now_ms=NOW)
    except EnvelopeError as exc:
        assert exc.reason in ENVELOPE_REJECT_REASONS
        assert exc.reason != "internal_error", exc.__cause__  # a decoder bug, caught late
        return None
    assert env.to_bytes() == raw  # one byte form per envelope
    assert CODEC.registry.spec_for(env.message).name == env.type
    return env


def test_every_type_a_node_registers_is_fuzzed() -> None:
    assert {"ping", "peer_exchange", "update", "bft", "txs", "blocks"} <= set(TYPES)


_payloads = (
    cbor_values.map(cbor2.dumps)
    | st.binary(max_size=1, min_size=1).map(lambda b: cbor_encode([b]))  # opaque wrapper, 1 byte
    | st.binary(max_size=200).map(lambda b: cbor_encode([b]))
    | st.lists(st.binary(max_size=20) | st.integers(0, UINT64_MAX), max_size=3).map(cbor_encode)
    | st.binary(max_size=60)
)


@fuzz(300)
@given(
    type_name=st.sampled_from(TYPES),
    payload=_payloads,
    seq=st.integers(0, UINT64_MAX),
    signer=st.sampled_from([ALICE, BOB]),
)
def test_signed_envelopes_with_any_payload_only_raise_envelope_errors(
    type_name: str, payload: bytes, seq: int, signer: NodeIdentity
) -> None:
    sender = ALICE_SENDER if signer is ALICE else BOB_SENDER
    env = decode(forge(type_name=type_name, payload=payload, seq=seq, signer=signer, sender=sender))
    if env is not None:
        assert env.message.to_cbor() == payload  # the payload's one encoding


@fuzz(150)
@given(type_name=st.sampled_from(["bft", "txs", "blocks"]), data=st.binary(min_size=1, max_size=64))
def test_consensus_wrappers_carry_any_nonempty_bytes(type_name: str, data: bytes) -> None:
    env = decode(forge(type_name=type_name, payload=cbor_encode([data])))
    assert env is not None and env.message.data == data  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# The replay guard behind the decoder (the gossip validator's order: decode, then guard)
# ---------------------------------------------------------------------------------------------


def _flip(raw: bytes, pos: int) -> bytes:
    pos %= len(raw)
    return raw[:pos] + bytes([raw[pos] ^ 0x01]) + raw[pos + 1 :]


_events = st.lists(
    st.tuples(st.integers(1, 6), st.sampled_from([ALICE, BOB]), st.integers(-1, 400)),
    min_size=1,
    max_size=25,
)


@fuzz(150)
@given(_events)
def test_rejected_envelopes_leave_the_replay_guard_unchanged(
    events: list[tuple[int, NodeIdentity, int]],
) -> None:
    guard = ReplayGuard(b"me", max_skew_ms=SKEW, window=4)
    seen: dict[tuple[bytes, int], bytes] = {}
    for seq, who, flip in events:
        sender = ALICE_SENDER if who is ALICE else BOB_SENDER
        raw = forge(seq=seq, signer=who, sender=sender, payload=cbor_encode([seq]))
        if flip >= 0:
            raw = _flip(raw, flip)
        before = (len(guard), guard.senders)
        env = decode(raw)
        if env is None:
            assert (len(guard), guard.senders) == before
            continue
        verdict = guard.check(env, now_ms=NOW)
        key = (env.sender, env.seq)
        if verdict is Verdict.NEW:
            assert key not in seen or seen[key] == env.message_id  # forgotten, then seen again
            assert len(guard) <= before[0] + 1
            seen[key] = env.message_id
        else:
            assert (len(guard), guard.senders) == before
            if verdict is Verdict.DUPLICATE:
                assert seen[key] == env.message_id


# ---------------------------------------------------------------------------------------------
# Fetch-by-CID: responses from a provider, requests from a peer
# ---------------------------------------------------------------------------------------------

OWN = NodeIdentity.from_secret(bytes.fromhex("33" * 32))
PROVIDER = ALICE.peer_id
BLOB = bytes(range(256)) * 8
BLOB_CID = Cid.from_data(BLOB)


class _Host:
    """The two host calls fetch makes outside the request/response transport."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def get_id(self) -> ID:
        return ID.from_base58(OWN.peer_id)

    def set_stream_handler(self, protocol: str, handler: Any) -> None:
        self.handlers[protocol] = handler


def _fetcher(source: Any = None, max_size: int = 4096) -> BlobFetcher:
    async def nothing(cid: Cid) -> bytes | None:
        return None

    return BlobFetcher(_Host(), source or nothing, PeerScoreBook(), max_size=max_size)  # type: ignore[arg-type]


_responses = (
    st.binary(max_size=40)
    | st.builds(lambda s, d: bytes([s]) + d, st.integers(0, 255), st.binary(max_size=40))
    | st.just(bytes([STATUS_FOUND]) + BLOB)
    | st.integers(0, len(BLOB)).map(lambda n: bytes([STATUS_FOUND]) + BLOB[:n])
    | st.integers(0, len(BLOB) - 1).map(lambda i: bytes([STATUS_FOUND]) + _flip(BLOB, i))
    | st.just(bytes([STATUS_NOT_FOUND]))
)


@fuzz(200)
@given(_responses)
async def test_fetch_accepts_only_the_blob_and_charges_only_liars(response: bytes) -> None:
    fetcher = _fetcher()

    async def reply(*args: Any, **kwargs: Any) -> bytes:
        return response

    fetcher._rr.send_request = reply  # type: ignore[method-assign]  # the wire, nothing else
    try:
        data = await fetcher.fetch(BLOB_CID, [PROVIDER])
    except FetchError as exc:
        assert response != bytes([STATUS_FOUND]) + BLOB
        (peer, why), *_ = exc.attempts
        assert peer == PROVIDER and why
        offences = dict(fetcher.scores.snapshot(PROVIDER).offences)
        if response[:1] == bytes([STATUS_FOUND]):
            assert offences == {"fetch_cid_mismatch": 1}
        elif not response:
            assert offences == {"fetch_error": 1}
        else:
            assert offences == {}  # "not found" or an unknown status is not an offence
        assert fetcher.stats.failed == 1 and fetcher.stats.fetched == 0
    else:
        assert data == BLOB and hashlib.sha256(data).digest() == BLOB_CID.digest
        assert fetcher.scores.score(PROVIDER) == 0
    assert fetcher._inflight == {}


@pytest.fixture(scope="module")
def store_dir() -> Any:
    with tempfile.TemporaryDirectory(prefix="flnode-fuzz-fetch-") as d:
        store = BlobStore(Path(d) / "blobs")
        store.put(BLOB)
        yield store


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


_requests = (
    st.binary(max_size=70)
    | st.just(BLOB_CID.to_bytes())
    | st.integers(0, 35).map(lambda i: _flip(BLOB_CID.to_bytes(), i))
    | st.integers(0, 35).map(lambda n: BLOB_CID.to_bytes()[:n])
    | st.just(str(BLOB_CID).encode())
    | st.just(Cid.from_data(b"absent").to_bytes())
)


@fuzz(150)
@given(request=_requests)
async def test_serving_answers_any_request_and_never_writes(
    store_dir: BlobStore, request: bytes
) -> None:
    store = store_dir

    async def source(cid: Cid) -> bytes | None:
        return await trio.to_thread.run_sync(lambda: store.get(cid) if store.has(cid) else None)

    fetcher = _fetcher(source)
    before = _tree(store.root)
    context = RequestContext(peer_id=ID.from_base58(PROVIDER), protocol_id=FETCH_PROTOCOL)  # type: ignore[arg-type]
    response = await fetcher._serve(request, context)
    assert _tree(store.root) == before
    try:
        named = Cid.parse(request)  # py-cid also reads a multibase text form given as bytes
    except InvalidCidError:
        named = None
    if named == BLOB_CID:
        assert response == bytes([STATUS_FOUND]) + BLOB
    else:
        assert response in (bytes([STATUS_NOT_FOUND]), bytes([STATUS_BAD_REQUEST]))
        if response == bytes([STATUS_BAD_REQUEST]):
            assert dict(fetcher.scores.snapshot(PROVIDER).offences) == {"malformed": 1}
