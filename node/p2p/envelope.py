"""Signed gossip envelopes: the wire format, the codec that checks them, and replay protection.

Wire format (version 1)
-----------------------
An envelope is one CBOR array of 8 items, in flnode's strict, deterministic CBOR subset
(:mod:`flnode.p2p.messages`: shortest forms, definite lengths, no maps, tags or floats)::

    [ version       uint      1
      type          text      registered message type name, [a-z][a-z0-9_.-]{0,31}
      network_id    text      the network's name, [a-z0-9][a-z0-9-]{0,31} (as in the config)
      sender        bytes     the sender's libp2p peer ID in binary form (``ID.to_bytes()``),
                              39 bytes: 00 25 08 02 12 21 || 33-byte compressed secp256k1 key
      seq           uint64    the sender's sequence number (see "Sequence numbers")
      timestamp_ms  uint64    the sender's wall clock, milliseconds since the Unix epoch
      payload       bytes     the message: a CBOR array of its fields (see the registry)
      signature     bytes     65 bytes r || s || v, v in {27, 28}, s in the lower half ]

``signature = NodeIdentity.sign(DOMAIN, signed_bytes)`` with ``DOMAIN = b"flnode/envelope/v1"``,
where ``signed_bytes`` is the CBOR array of the first seven items (the same items, with the head
``0x87`` instead of ``0x88``). :mod:`flnode.identity` defines the signature (keccak256, EIP-191,
deterministic nonces); it recovers to the chain address that the sender's peer ID embeds. The
sender is binary rather than base58 text: 39 bytes instead of 53 characters, and only one form.

A given message therefore has exactly one encoding: the CBOR subset is deterministic, the sender
has one binary form, and a signature with a high ``s`` (the other valid signature of the same
digest) is refused. Hence :func:`message_id` (sha256 of the bytes) names an envelope, and nobody
but the sender can produce a second valid encoding of its message.

Checks on decode, in this order (cheap ones first; each failure raises the
:class:`~flnode.p2p.errors.EnvelopeError` subclass named, with a ``reason`` label):

1. raw size, before any parsing: at most the largest registered payload plus
   :data:`ENVELOPE_OVERHEAD` (``OversizedEnvelope``);
2. the heads of the array and of its first two items: an unsigned version
   (``MalformedEnvelope``), version 1 (``UnknownVersion``), 8 items, then a registered type
   (``UnknownMessageType``), and the raw size again against that type's own limit;
3. the whole envelope: strict CBOR, field types and bounds (``MalformedEnvelope``; reason
   ``bad_sender`` if the sender is not the peer ID of a secp256k1 key);
4. ``network_id`` is ours (``WrongNetwork``); the sender is the one the transport names, if the
   caller passes it (``SenderMismatch``); ``timestamp_ms`` is within ``max_skew_ms`` of our clock
   (``StaleEnvelope``, reason ``stale`` or ``future``); the payload fits its type
   (``OversizedEnvelope``);
5. the signature, by the sender's key (``BadSignature``); the sender's address is cached;
6. the payload decodes to its registered type (``InvalidPayload``).

Until step 5 passes, an error's ``sender`` is an unverified claim (``sender_verified`` is False).
:meth:`EnvelopeCodec.decode` raises nothing but ``EnvelopeError`` subclasses, whatever the input.

Sequence numbers and replays
----------------------------
``seq`` increases strictly with every envelope a node sends (gaps are fine). It must also keep
increasing across restarts, or peers would take the new messages for replays: use
:class:`SequenceCounter`, which starts from the wall clock in nanoseconds.

A decoded envelope is authentic and recent, but it may be a duplicate (gossip legitimately
delivers one message along several mesh paths) or a replay. :class:`ReplayGuard`, fed only with
envelopes that decoded successfully, classifies each one (see :class:`Verdict`).
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import IdentityError
from ..identity import SIGNATURE_SIZE, NodeIdentity, address_from_peer_id, recover_signer
from .errors import (
    BadSignature,
    CborFormatError,
    EnvelopeError,
    InvalidMessage,
    MalformedEnvelope,
    OversizedEnvelope,
    SenderMismatch,
    StaleEnvelope,
    UnknownMessageType,
    UnknownVersion,
    WrongNetwork,
)
from .messages import (
    MAJOR_ARRAY,
    MAJOR_TEXT,
    MAJOR_UINT,
    MAX_MESSAGE_SIZE,
    MAX_TYPE_NAME_LEN,
    UINT64_MAX,
    MessageRegistry,
    MessageSpec,
    WireMessage,
    cbor_decode,
    cbor_encode,
    cbor_head,
)

VERSION = 1
DOMAIN = b"flnode/envelope/v1"
ENVELOPE_FIELDS = 8
DEFAULT_MAX_SKEW_MS = 60_000

NETWORK_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")  # the rule of [node] network_id
MAX_NETWORK_ID_LEN = 32

# A secp256k1 peer ID in binary form: an identity multihash (0x00, length 0x25) of the protobuf
# PublicKey {Type: Secp256k1 (0x08 0x02), Data: 33 bytes (0x12 0x21)} of the compressed key.
SENDER_PREFIX = bytes.fromhex("002508021221")
SENDER_SIZE = len(SENDER_PREFIX) + 33

_SECP256K1_HALF_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2

# The largest envelope minus its payload: the array head, the version, the type and network id at
# their longest (2-byte heads), the sender, seq and timestamp at 9 bytes, a payload head of up to
# 5 bytes (payloads are below 4 GiB) and the signature.
ENVELOPE_OVERHEAD = (
    1 + 1 + (2 + MAX_TYPE_NAME_LEN) + (2 + MAX_NETWORK_ID_LEN) + (2 + SENDER_SIZE) + 9 + 9 + 5
) + (2 + SIGNATURE_SIZE)
MAX_ENVELOPE_SIZE = MAX_MESSAGE_SIZE + ENVELOPE_OVERHEAD
assert MAX_ENVELOPE_SIZE <= 2**20  # fits py-libp2p's default 1 MiB gossip RPC limit


def wall_clock_ms() -> int:
    """The wall clock in milliseconds since the Unix epoch (the clock of ``timestamp_ms``)."""
    return time.time_ns() // 1_000_000


def message_id(raw: bytes) -> bytes:
    """The 32-byte name of an envelope: sha256 of its bytes (usable as a gossip message ID)."""
    return hashlib.sha256(raw).digest()


def sender_bytes(peer_id: str) -> bytes:
    """The binary form of a base58 peer ID, as envelopes carry it."""
    from libp2p.peer.id import ID

    return ID.from_base58(peer_id).to_bytes()


def sender_peer_id(sender: bytes) -> str:
    """The base58 text form of a binary peer ID."""
    from libp2p.peer.id import ID

    return ID(sender).to_base58()


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified envelope: the eight wire fields, the decoded message and what was derived.

    ``sender_address`` is the sender's EIP-55 chain address; ``message_id`` is
    :func:`message_id` of the envelope's bytes.
    """

    version: int
    type: str
    network_id: str
    sender: bytes
    seq: int
    timestamp_ms: int
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    message: WireMessage
    sender_address: str
    message_id: bytes

    @property
    def peer_id(self) -> str:
        """The sender's peer ID in base58 (``16Uiu2...``)."""
        return sender_peer_id(self.sender)

    def _fields(self) -> tuple[int, str, str, bytes, int, int, bytes]:
        return (
            self.version,
            self.type,
            self.network_id,
            self.sender,
            self.seq,
            self.timestamp_ms,
            self.payload,
        )

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers."""
        return _signed_bytes(*self._fields())

    def to_bytes(self) -> bytes:
        """The wire form: the very bytes this envelope was decoded from."""
        return cbor_encode([*self._fields(), self.signature])


def _signed_bytes(
    version: int,
    type_name: str,
    network_id: str,
    sender: bytes,
    seq: int,
    timestamp_ms: int,
    payload: bytes,
) -> bytes:
    return cbor_encode([version, type_name, network_id, sender, seq, timestamp_ms, payload])


class EnvelopeCodec:
    """Seals messages into signed envelopes and opens (verifies) received ones, for one network.

    ``max_skew_ms`` bounds the difference between an envelope's timestamp and our clock, both
    ways; it also sets how long :class:`ReplayGuard` must remember a sender (pass it the same).
    Sender addresses are cached (deriving one costs about as much as checking a signature); only
    senders whose signature verified are cached, at most ``address_cache_size`` of them.
    """

    def __init__(
        self,
        network_id: str,
        registry: MessageRegistry,
        *,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        address_cache_size: int = 1024,
    ) -> None:
        if type(network_id) is not str or NETWORK_ID_PATTERN.fullmatch(network_id) is None:
            raise ValueError(f"network_id must match {NETWORK_ID_PATTERN.pattern}: {network_id!r}")
        if type(max_skew_ms) is not int or max_skew_ms <= 0:
            raise ValueError(f"max_skew_ms must be a positive int. Got: {max_skew_ms!r}")
        if address_cache_size < 1:
            raise ValueError(f"address_cache_size must be positive. Got: {address_cache_size}")
        self.network_id = network_id
        self.registry = registry
        self.max_skew_ms = max_skew_ms
        self._cache_size = address_cache_size
        self._addresses: OrderedDict[bytes, str] = OrderedDict()
        self._own_senders: dict[bytes, bytes] = {}  # address bytes -> sender bytes, for encode

    # -- sending ------------------------------------------------------------------------------

    def encode(
        self,
        identity: NodeIdentity,
        message: WireMessage,
        *,
        seq: int,
        timestamp_ms: int | None = None,
    ) -> bytes:
        """Seal ``message`` into an envelope signed by ``identity``.

        ``timestamp_ms`` defaults to :func:`wall_clock_ms`. Raises :class:`InvalidMessage` if the
        message type is not registered, its payload is too large, or ``seq`` or ``timestamp_ms``
        is not a uint64.
        """
        spec = self.registry.spec_for(message)
        payload = spec.encode(message)
        if timestamp_ms is None:
            timestamp_ms = wall_clock_ms()
        for name, value in (("seq", seq), ("timestamp_ms", timestamp_ms)):
            if type(value) is not int or not 0 <= value <= UINT64_MAX:
                raise InvalidMessage(f"{name} must be an integer in [0, 2**64 - 1]")
        sender = self._sender_of(identity)
        fields = [VERSION, spec.name, self.network_id, sender, seq, timestamp_ms, payload]
        signature = identity.sign(DOMAIN, cbor_encode(fields))
        return cbor_encode([*fields, signature])

    def _sender_of(self, identity: NodeIdentity) -> bytes:
        key = identity.address_bytes
        sender = self._own_senders.get(key)
        if sender is None:
            if len(self._own_senders) >= 16:
                self._own_senders.clear()
            sender = self._own_senders[key] = sender_bytes(identity.peer_id)
        return sender

    # -- receiving ----------------------------------------------------------------------------

    def decode(
        self,
        raw: bytes,
        *,
        now_ms: int | None = None,
        expected_sender: bytes | None = None,
    ) -> Envelope:
        """Verify a received envelope (see the module docstring for the checks and their order).

        ``now_ms`` defaults to the wall clock. ``expected_sender``, if given, is the binary peer
        ID of the envelope's author according to the transport (e.g. the ``from`` field of a
        signed pubsub message); a different sender raises :class:`SenderMismatch`.

        Raises only subclasses of :class:`~flnode.p2p.errors.EnvelopeError`, for any input.
        """
        try:
            return self._decode(raw, now_ms, expected_sender)
        except EnvelopeError:
            raise
        except Exception as exc:  # a bug here must not take the gossip service down
            raise MalformedEnvelope(
                f"decoder bug: {type(exc).__name__}", reason="internal_error"
            ) from exc

    def _decode(self, raw: object, now: int | None, expected_sender: bytes | None) -> Envelope:
        if not isinstance(raw, bytes):
            if not isinstance(raw, bytearray | memoryview):
                raise MalformedEnvelope(f"an envelope is bytes, not {type(raw).__name__}")
            raw = bytes(raw)
        if len(raw) > self.registry.max_size + ENVELOPE_OVERHEAD:
            raise OversizedEnvelope(f"{len(raw)} bytes is larger than any message type allows")
        spec = self._peek_spec(raw)
        if len(raw) > spec.max_size + ENVELOPE_OVERHEAD:
            raise OversizedEnvelope(f"{len(raw)} bytes is too large for a {spec.name!r} envelope")

        try:
            fields = cbor_decode(raw, max_depth=1, max_items=1 + ENVELOPE_FIELDS)
        except CborFormatError as exc:
            raise MalformedEnvelope(str(exc)) from None
        if type(fields) is not list or len(fields) != ENVELOPE_FIELDS:  # the heads said so
            raise MalformedEnvelope(f"an envelope is an array of {ENVELOPE_FIELDS} items")
        version, type_name, network_id, sender, seq, timestamp_ms, payload, signature = fields

        if (
            type(sender) is not bytes
            or len(sender) != SENDER_SIZE
            or not sender.startswith(SENDER_PREFIX)
            or sender[len(SENDER_PREFIX)] not in (2, 3)
        ):
            raise MalformedEnvelope(
                "the sender is not the binary peer ID of a secp256k1 key", reason="bad_sender"
            )
        if type(seq) is not int or not 0 <= seq <= UINT64_MAX:
            raise MalformedEnvelope("seq must be a uint64", sender=sender)
        if type(timestamp_ms) is not int or not 0 <= timestamp_ms <= UINT64_MAX:
            raise MalformedEnvelope("timestamp_ms must be a uint64", sender=sender)
        if type(payload) is not bytes:
            raise MalformedEnvelope("the payload must be a byte string", sender=sender)
        if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
            raise MalformedEnvelope(f"the signature must be {SIGNATURE_SIZE} bytes", sender=sender)
        if type(network_id) is not str:
            raise MalformedEnvelope("network_id must be a text string", sender=sender)

        if network_id != self.network_id:
            raise WrongNetwork(
                f"network {network_id[:MAX_NETWORK_ID_LEN]!r}, not {self.network_id!r}",
                sender=sender,
            )
        if expected_sender is not None and sender != expected_sender:
            raise SenderMismatch(
                "the envelope's sender is not the peer that sent it", sender=sender
            )
        if now is None:
            now = wall_clock_ms()
        if timestamp_ms < now - self.max_skew_ms:
            raise StaleEnvelope(f"{now - timestamp_ms} ms old", reason="stale", sender=sender)
        if timestamp_ms > now + self.max_skew_ms:
            raise StaleEnvelope(
                f"{timestamp_ms - now} ms in the future", reason="future", sender=sender
            )
        if len(payload) > spec.max_size:
            raise OversizedEnvelope(
                f"a {spec.name!r} payload may be {spec.max_size} bytes, got {len(payload)}",
                sender=sender,
            )

        signed = _signed_bytes(version, type_name, network_id, sender, seq, timestamp_ms, payload)
        address = self._verify_signature(sender, signed, signature)

        try:
            message = spec.decode(payload)
        except EnvelopeError as exc:  # InvalidPayload, or OversizedEnvelope (checked above)
            exc.sender, exc.sender_verified = sender, True
            raise
        return Envelope(
            version=version,
            type=type_name,
            network_id=network_id,
            sender=sender,
            seq=seq,
            timestamp_ms=timestamp_ms,
            payload=payload,
            signature=signature,
            message=message,
            sender_address=address,
            message_id=message_id(raw),
        )

    def _peek_spec(self, raw: bytes) -> MessageSpec:
        """Read the version and the type from the first heads, to size-check before parsing."""
        try:
            major, count, pos = cbor_head(raw, 0)
            if major != MAJOR_ARRAY or count == 0:
                raise MalformedEnvelope("an envelope is a CBOR array")
            major, version, pos = cbor_head(raw, pos)
            if major != MAJOR_UINT:
                raise MalformedEnvelope("the version must be an unsigned integer")
            if version != VERSION:
                raise UnknownVersion(f"envelope version {version}; this node speaks {VERSION}")
            if count != ENVELOPE_FIELDS:
                raise MalformedEnvelope(f"an envelope is an array of {ENVELOPE_FIELDS} items")
            major, length, pos = cbor_head(raw, pos)
        except CborFormatError as exc:
            raise MalformedEnvelope(str(exc)) from None
        if major != MAJOR_TEXT or length > MAX_TYPE_NAME_LEN or pos + length > len(raw):
            raise MalformedEnvelope(f"the type must be a text of at most {MAX_TYPE_NAME_LEN} bytes")
        name = raw[pos : pos + length]
        if not name.isascii():
            raise MalformedEnvelope("the type name must be ASCII")
        spec = self.registry.get(name.decode("ascii"))
        if spec is None:
            raise UnknownMessageType(f"unknown message type {name.decode('ascii')!r}")
        return spec

    def _verify_signature(self, sender: bytes, signed: bytes, signature: bytes) -> str:
        """The sender's address, if ``signature`` is its signature of ``signed``."""
        if int.from_bytes(signature[32:64], "big") > _SECP256K1_HALF_N:
            raise BadSignature("the signature is not in low-s form", sender=sender)
        address = self._addresses.get(sender)
        if address is None:
            try:
                address = address_from_peer_id(sender_peer_id(sender))
            except IdentityError:
                raise MalformedEnvelope(
                    "the sender's key is not a secp256k1 point", reason="bad_sender", sender=sender
                ) from None
        else:
            self._addresses.move_to_end(sender)
        try:
            signer = recover_signer(DOMAIN, signed, signature)
        except IdentityError:
            raise BadSignature("the signature is malformed", sender=sender) from None
        if signer != address:
            raise BadSignature("the signature is not the sender's", sender=sender)
        if sender not in self._addresses:
            self._addresses[sender] = address
            if len(self._addresses) > self._cache_size:
                self._addresses.popitem(last=False)
        return address


class SequenceCounter:
    """Sequence numbers for the envelopes a node sends.

    Each :meth:`next` is larger than the previous one, and at least the wall clock in nanoseconds,
    so the numbers keep increasing across restarts (as long as the clock does not step back by
    more than the time between the last message before the restart and the first after it).
    """

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, self._clock_ns())
        if self._last > UINT64_MAX:
            raise OverflowError("sequence numbers are exhausted")
        return self._last


class Verdict(enum.Enum):
    """What :meth:`ReplayGuard.check` says about a verified envelope. ``value`` is a metrics label.

    - ``NEW``: deliver it.
    - ``DUPLICATE``: the same envelope again (same sender, seq and bytes). Gossip does this
      legitimately (several mesh paths); drop it and count it, do not penalise anyone.
    - ``REPLAY``: a seq older than everything in the sender's window, so it cannot be told from a
      replay; drop it and penalise the peer it came from (not the sender: anyone can relay an old
      signed message). An honest relay that is very late looks the same, so weigh it lightly.
    - ``CONFLICT``: the sender signed two different envelopes with one seq. Only the sender's key
      can do that: drop it and penalise the *sender* (verified).
    - ``OWN``: our own envelope coming back; drop it silently.
    """

    NEW = "new"
    DUPLICATE = "duplicate"
    REPLAY = "replay"
    CONFLICT = "conflict"
    OWN = "own"

    @property
    def accepted(self) -> bool:
        return self is Verdict.NEW


class _SenderWindow:
    __slots__ = ("heap", "ids", "last_new_ms")

    def __init__(self) -> None:
        self.ids: dict[int, bytes] = {}  # seq -> message id
        self.heap: list[int] = []  # the same seqs, smallest first
        self.last_new_ms = 0


class ReplayGuard:
    """Tells new envelopes from duplicates and replays, in bounded memory.

    For each sender the guard keeps the ``window`` highest sequence numbers it accepted (with
    their message IDs). A seq in the window is a ``DUPLICATE`` (same bytes) or a ``CONFLICT``
    (different bytes). A seq below the whole window, once the window is full, is a ``REPLAY``. Any
    other seq is ``NEW`` and enters the window, pushing out the smallest: messages may arrive out of
    order, as long as fewer than ``window`` newer ones from the same sender came first.

    A sender's window is dropped once it has sent nothing new for ``2 * max_skew_ms``: by then every
    envelope in it has a timestamp the codec rejects as stale, so forgetting it lets no replay
    through (and a sender whose clock stepped back is not locked out). Give the guard the codec's
    ``max_skew_ms`` and the same clock. At most ``max_senders`` senders are tracked; beyond that the
    least recently active one is forgotten early, and a replay of its last messages within the skew
    would then be taken as new. Flooding the guard so needs ``max_senders`` keys sending valid
    envelopes within ``2 * max_skew_ms``; layers above must in any case be idempotent.

    Memory: at most ``window * max_senders`` (sender, seq) entries, ~150 bytes each.
    Feed it only envelopes that :meth:`EnvelopeCodec.decode` accepted: an unverified
    (sender, seq) could block a genuine message.
    """

    def __init__(
        self,
        own_peer_id: bytes | str,
        *,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        window: int = 128,
        max_senders: int = 1024,
    ) -> None:
        if window < 1 or max_senders < 1 or max_skew_ms <= 0:
            raise ValueError("window, max_senders and max_skew_ms must be positive")
        self._own = sender_bytes(own_peer_id) if isinstance(own_peer_id, str) else own_peer_id
        self._ttl_ms = 2 * max_skew_ms
        self._window = window
        self._max_senders = max_senders
        self._senders: OrderedDict[bytes, _SenderWindow] = OrderedDict()  # least recent first
        self._entries = 0

    def check(self, envelope: Envelope, *, now_ms: int | None = None) -> Verdict:
        """Classify ``envelope`` and, if it is ``NEW``, remember it."""
        if envelope.sender == self._own:
            return Verdict.OWN
        now = wall_clock_ms() if now_ms is None else now_ms
        self._expire(now)
        state = self._senders.get(envelope.sender)
        if state is not None:
            if now - state.last_new_ms > self._ttl_ms:  # _expire stops at the first live one
                self._drop(envelope.sender)
                state = None
            else:
                known = state.ids.get(envelope.seq)
                if known is not None:
                    return Verdict.DUPLICATE if known == envelope.message_id else Verdict.CONFLICT
                if len(state.ids) >= self._window and envelope.seq < state.heap[0]:
                    return Verdict.REPLAY
        if state is None:
            while len(self._senders) >= self._max_senders:
                self._drop(next(iter(self._senders)))
            state = self._senders[envelope.sender] = _SenderWindow()
        state.ids[envelope.seq] = envelope.message_id
        heapq.heappush(state.heap, envelope.seq)
        self._entries += 1
        if len(state.ids) > self._window:
            del state.ids[heapq.heappop(state.heap)]
            self._entries -= 1
        state.last_new_ms = now
        self._senders.move_to_end(envelope.sender)
        return Verdict.NEW

    def _expire(self, now: int) -> None:
        while self._senders:
            sender, state = next(iter(self._senders.items()))
            if now - state.last_new_ms <= self._ttl_ms:
                return
            self._drop(sender)

    def _drop(self, sender: bytes) -> None:
        self._entries -= len(self._senders.pop(sender).ids)

    @property
    def senders(self) -> int:
        """How many senders are tracked."""
        return len(self._senders)

    def __len__(self) -> int:
        """How many (sender, seq) entries are remembered."""
        return self._entries
