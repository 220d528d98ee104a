"""Gossip message types, their registry, and the strict CBOR they are written in.

Strict CBOR
-----------
Envelopes and payloads use a small subset of CBOR (RFC 8949), in its deterministic encoding:

- unsigned and negative integers (major types 0 and 1, so at most 64 bits: no bignum tags),
  byte strings, UTF-8 text strings, arrays, ``false``, ``true`` and ``null``;
- every length and integer in its shortest form, definite lengths only;
- no maps, tags, floats, ``undefined`` or other simple values; no trailing bytes.

:func:`cbor_decode` checks this with a walk over the item heads (no per-byte Python loop: strings
are skipped by their length) that also bounds the nesting depth and the number of items, *before*
``cbor2`` builds any object; cbor2 alone would accept tags (regular expressions, shared references,
bignums...), indefinite lengths and non-shortest forms. Inside the subset the encoding is unique:
``cbor_encode(cbor_decode(b)) == b`` for every accepted ``b``, so an envelope has exactly one byte
form and a hash of the bytes names it.

Message types
-------------
A message type is a frozen dataclass with ``to_cbor() -> bytes`` and a classmethod
``from_cbor(data) -> Self``. Its payload is a CBOR array of its fields, in declaration order, with
no field names. The constructor validates every field (raising :class:`InvalidMessage`), so a value
that exists is valid, whether built locally or decoded. ``from_cbor`` raises :class:`InvalidPayload`
for any input that is not such an encoding.

A :class:`MessageRegistry` maps a type name (``[a-z][a-z0-9_.-]{0,31}``, written in every envelope)
to its class and the maximum size of its encoded payload. :func:`default_registry` returns a new
registry holding the types defined here; other layers register their own (votes, blocks, txs) on it:

- ``ping`` (:class:`Ping`): ``[nonce: uint64]``; at most 64 bytes.
- ``peer_exchange`` (:class:`PeerExchange`): ``[[multiaddr: text, ...]]``, at most 64 addresses of
  at most 256 characters; at most 32 KiB.
- ``update`` (:class:`UpdateAnnouncement`): ``[task_id: uint64, round: uint64, cid: text,
  n_samples: uint32, size: uint32, blob: bytes or null]``; at most 260 KiB.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, TypeVar

import cbor2

from .errors import CborFormatError, InvalidMessage, InvalidPayload, OversizedEnvelope

# ---------------------------------------------------------------------------------------------
# Strict CBOR
# ---------------------------------------------------------------------------------------------

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

# Major types (RFC 8949 section 3.1).
MAJOR_UINT = 0
MAJOR_NEGINT = 1
MAJOR_BYTES = 2
MAJOR_TEXT = 3
MAJOR_ARRAY = 4
MAJOR_MAP = 5
MAJOR_TAG = 6
MAJOR_SIMPLE = 7
_FALSE, _TRUE, _NULL = 20, 21, 22

DEFAULT_MAX_DEPTH = 8
DEFAULT_MAX_ITEMS = 4096

CborValue = int | bool | bytes | str | list["CborValue"] | tuple["CborValue", ...] | None


def cbor_head(data: bytes, pos: int) -> tuple[int, int, int]:
    """Read the head of the item at ``pos``: ``(major type, argument, position after the head)``.

    The argument is the value of an integer, the length of a string or array, or the simple value
    (20, 21 or 22) of ``false``/``true``/``null``. Raises :class:`CborFormatError` for a truncated
    head, an indefinite length, a reserved value, a float or another simple value, and for an
    argument that is not in its shortest form.
    """
    if pos >= len(data):
        raise CborFormatError("truncated: an item is missing")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    if major == MAJOR_SIMPLE:
        if info in (_FALSE, _TRUE, _NULL):
            return major, info, pos + 1
        raise CborFormatError(f"simple value or float 0x{initial:02x} is not allowed")
    if info < 24:
        return major, info, pos + 1
    if info > 27:
        raise CborFormatError(f"indefinite length or reserved value 0x{initial:02x}")
    size = 1 << (info - 24)
    end = pos + 1 + size
    if end > len(data):
        raise CborFormatError("truncated: an item head is cut off")
    argument = int.from_bytes(data[pos + 1 : end], "big")
    if argument < (24 if size == 1 else 1 << (4 * size)):
        raise CborFormatError("an integer or length is not in its shortest form")
    return major, argument, end


def cbor_check(
    data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, max_items: int = DEFAULT_MAX_ITEMS
) -> None:
    """Check that ``data`` is exactly one item of the strict CBOR subset, within the bounds.

    Arrays deeper than ``max_depth`` (a flat array has depth 1) and more than ``max_items`` items
    in all (containers included) are refused. UTF-8 validity of text is left to the decoder.
    """
    end = len(data)
    pos = 0
    items = 0
    pending = [1]  # items still to read in each open array; the first entry is the top level
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        items += 1
        if items > max_items:
            raise CborFormatError(f"more than {max_items} items")
        major, argument, pos = cbor_head(data, pos)
        if major in (MAJOR_BYTES, MAJOR_TEXT):
            if argument > end - pos:
                raise CborFormatError("truncated: a string is cut off")
            pos += argument
        elif major == MAJOR_ARRAY:
            if argument:
                if len(pending) > max_depth:
                    raise CborFormatError(f"arrays nested deeper than {max_depth}")
                if argument > end - pos:  # every item takes at least one byte
                    raise CborFormatError("truncated: an array is cut off")
                pending.append(argument)
        elif major in (MAJOR_MAP, MAJOR_TAG):
            raise CborFormatError("maps and tags are not allowed")
    if pos != end:
        raise CborFormatError(f"{end - pos} trailing bytes after the item")


def cbor_decode(
    data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, max_items: int = DEFAULT_MAX_ITEMS
) -> Any:
    """Decode one item of the strict CBOR subset. Arrays come back as lists.

    Raises :class:`CborFormatError`, and nothing else, for any other input.
    """
    if not isinstance(data, bytes):
        raise CborFormatError(f"expected bytes, got {type(data).__name__}")
    cbor_check(data, max_depth=max_depth, max_items=max_items)
    try:
        return cbor2.loads(data)
    except Exception as exc:  # the walk leaves only bad UTF-8 to fail, but this is hostile input
        raise CborFormatError(f"undecodable CBOR: {type(exc).__name__}: {exc}"[:200]) from None


def cbor_encode(value: CborValue) -> bytes:
    """The deterministic encoding of a value of the subset (tuples are written as arrays).

    The caller bounds its integers to 64 bits (cbor2 would write a bignum tag for larger ones).
    """
    return cbor2.dumps(value, canonical=True)


# ---------------------------------------------------------------------------------------------
# Field checks, shared by message types (here and in other layers)
# ---------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    """A short description of a rejected value: never its full content (it may be huge)."""
    if type(value) is int:
        return str(value) if value.bit_length() <= 64 else f"an int of {value.bit_length()} bits"
    if isinstance(value, bytes | str | list | tuple):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__}"


def check_uint(value: object, name: str, *, minimum: int = 0, maximum: int = UINT64_MAX) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) in ``[minimum, maximum]``."""
    if type(value) is not int or not minimum <= value <= maximum:
        raise InvalidMessage(
            f"{name} must be an integer in [{minimum}, {maximum}]. Got: {_describe(value)}"
        )
    return value


def check_text(
    value: object, name: str, *, max_len: int, pattern: re.Pattern[str] | None = None
) -> str:
    """``value`` if it is a ``str`` of at most ``max_len`` characters that ``pattern`` matches."""
    if type(value) is not str or len(value) > max_len:
        raise InvalidMessage(
            f"{name} must be a string of at most {max_len} characters. Got: {_describe(value)}"
        )
    if pattern is not None and pattern.fullmatch(value) is None:
        raise InvalidMessage(f"{name} has an invalid form: {value[:80]!r}")
    return value


def check_bytes(value: object, name: str, *, max_len: int, min_len: int = 0) -> bytes:
    """``value`` if it is ``bytes`` of a length in ``[min_len, max_len]``."""
    if type(value) is not bytes or not min_len <= len(value) <= max_len:
        raise InvalidMessage(
            f"{name} must be {min_len} to {max_len} bytes. Got: {_describe(value)}"
        )
    return value


def decode_fields(
    data: bytes, count: int, *, max_depth: int = 1, max_items: int | None = None
) -> list[Any]:
    """Decode a payload that must be a CBOR array of exactly ``count`` fields.

    ``max_items`` defaults to ``count + 1`` (a flat array). Raises :class:`InvalidPayload`.
    """
    try:
        fields = cbor_decode(
            data, max_depth=max_depth, max_items=count + 1 if max_items is None else max_items
        )
    except CborFormatError as exc:
        raise InvalidPayload(str(exc)) from None
    if type(fields) is not list or len(fields) != count:
        raise InvalidPayload(f"the payload must be an array of {count} fields")
    return fields


M = TypeVar("M")


def construct(cls: type[M], *fields: Any) -> M:
    """``cls(*fields)``, turning the ``InvalidMessage`` of a bad field into ``InvalidPayload``."""
    try:
        return cls(*fields)
    except InvalidMessage as exc:
        raise InvalidPayload(exc.detail, reason=_payload_reason(exc.reason)) from None


def _payload_reason(reason: str) -> str:
    return reason if reason in InvalidPayload.reasons else InvalidPayload.reasons[0]


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

MAX_TYPE_NAME_LEN = 32
TYPE_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
# The largest payload a type may declare: the envelope around it must still fit the default 1 MiB
# gossip RPC limit of py-libp2p (outbound it cannot be raised without a patch), with room to spare
# for the envelope's other fields and the pubsub protobuf framing.
MAX_MESSAGE_SIZE = 2**20 - 4096


class WireMessage(Protocol):
    """What a registered message class provides (besides being a frozen dataclass)."""

    def to_cbor(self) -> bytes:
        """The payload: a CBOR array of the fields."""
        ...

    @classmethod
    def from_cbor(cls, data: bytes) -> Self:
        """Parse and validate a payload; raise ``InvalidPayload`` for anything else."""
        ...


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """One registered message type: its wire name, class and largest encoded payload."""

    name: str
    cls: type[WireMessage]
    max_size: int

    def encode(self, message: WireMessage) -> bytes:
        """The payload of ``message``; :class:`InvalidMessage` if it exceeds ``max_size``."""
        if type(message) is not self.cls:
            raise InvalidMessage(f"{self.name!r} messages are {self.cls.__name__} objects")
        data = message.to_cbor()
        if len(data) > self.max_size:
            raise InvalidMessage(
                f"a {self.name!r} payload may be {self.max_size} bytes; this one is {len(data)}"
            )
        return data

    def decode(self, data: bytes) -> WireMessage:
        """Parse a received payload. Raises only ``InvalidPayload`` and ``OversizedEnvelope``."""
        if len(data) > self.max_size:
            raise OversizedEnvelope(
                f"a {self.name!r} payload may be {self.max_size} bytes, got {len(data)}"
            )
        try:
            message = self.cls.from_cbor(data)
        except InvalidPayload:
            raise
        except InvalidMessage as exc:
            raise InvalidPayload(exc.detail, reason=_payload_reason(exc.reason)) from None
        except Exception as exc:  # a bug in a registered decoder must not escape to the network
            raise InvalidPayload(
                f"the {self.name!r} decoder failed: {type(exc).__name__}", reason="decoder_error"
            ) from exc
        if type(message) is not self.cls:
            raise InvalidPayload(
                f"the {self.name!r} decoder returned a {type(message).__name__}",
                reason="decoder_error",
            )
        return message


class MessageRegistry:
    """Message types by wire name and by class. Register at start-up, before decoding."""

    def __init__(self) -> None:
        self._by_name: dict[str, MessageSpec] = {}
        self._by_cls: dict[type, MessageSpec] = {}
        self._max_size = 0

    def register(self, name: str, cls: type[WireMessage], *, max_size: int) -> MessageSpec:
        """Add a type. ``max_size`` bounds its encoded payload (at most ``MAX_MESSAGE_SIZE``)."""
        if type(name) is not str or TYPE_NAME_PATTERN.fullmatch(name) is None:
            raise ValueError(
                f"a message type name must match {TYPE_NAME_PATTERN.pattern}: {name!r}"
            )
        if name in self._by_name:
            raise ValueError(f"message type {name!r} is already registered")
        if cls in self._by_cls:
            raise ValueError(f"{cls.__name__} is already registered as {self._by_cls[cls].name!r}")
        params = getattr(cls, "__dataclass_params__", None)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and params.frozen):
            raise TypeError(f"a message type must be a frozen dataclass: {cls!r}")
        if not callable(getattr(cls, "to_cbor", None)) or not callable(
            getattr(cls, "from_cbor", None)
        ):
            raise TypeError(f"{cls.__name__} needs to_cbor() and a from_cbor() classmethod")
        if type(max_size) is not int or not 1 <= max_size <= MAX_MESSAGE_SIZE:
            raise ValueError(f"max_size must be in [1, {MAX_MESSAGE_SIZE}]. Got: {max_size!r}")
        spec = MessageSpec(name, cls, max_size)
        self._by_name[name] = spec
        self._by_cls[cls] = spec
        self._max_size = max(self._max_size, max_size)
        return spec

    def get(self, name: str) -> MessageSpec | None:
        """The type registered as ``name``, if any."""
        return self._by_name.get(name)

    def spec_for(self, message: object) -> MessageSpec:
        """The type of a message object; :class:`InvalidMessage` if its class is not registered."""
        spec = self._by_cls.get(type(message))
        if spec is None:
            raise InvalidMessage(f"{type(message).__name__} is not a registered message type")
        return spec

    @property
    def max_size(self) -> int:
        """The largest ``max_size`` of all registered types (0 when empty)."""
        return self._max_size

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[MessageSpec]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)


# ---------------------------------------------------------------------------------------------
# Message types
# ---------------------------------------------------------------------------------------------

PING_TYPE = "ping"
PING_MAX_SIZE = 64


@dataclass(frozen=True, slots=True)
class Ping:
    """A liveness probe (and the smallest message, handy in tests)."""

    nonce: int

    def __post_init__(self) -> None:
        check_uint(self.nonce, "nonce")

    def to_cbor(self) -> bytes:
        return cbor_encode([self.nonce])

    @classmethod
    def from_cbor(cls, data: bytes) -> Ping:
        return construct(cls, *decode_fields(data, 1))


PEER_EXCHANGE_TYPE = "peer_exchange"
PEER_EXCHANGE_MAX_SIZE = 32 * 1024
MAX_PEER_ADDRS = 64
MAX_MULTIADDR_LEN = 256

_MULTIADDR = re.compile(
    r"/(?P<proto>ip4|ip6|dns|dns4|dns6)/(?P<host>[^/]+)"
    r"/tcp/(?P<port>[1-9][0-9]{0,4})"
    r"/p2p/(?P<peer>[1-9A-HJ-NP-Za-km-z]{32,128})"  # a base58btc peer ID
)
_DNS_NAME = re.compile(
    r"(?=.{1,253}\Z)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?"
)


def check_multiaddr(addr: object) -> str:
    """``addr`` if it is ``/{ip4,ip6,dns,dns4,dns6}/<host>/tcp/<port>/p2p/<peer id>``.

    The address must be written canonically: IP addresses as Python's ``ipaddress`` prints them
    (no leading zeros, compressed IPv6, no zone), ports 1-65535 without leading zeros.
    """
    text = check_text(addr, "a multiaddr", max_len=MAX_MULTIADDR_LEN)
    match = _MULTIADDR.fullmatch(text) if text.isascii() else None
    if match is None:
        raise InvalidMessage(f"not a /<ip or dns>/<host>/tcp/<port>/p2p/<id> address: {text!r}")
    proto, host, port = match["proto"], match["host"], int(match["port"])
    if port > 65535:
        raise InvalidMessage(f"port out of range in {text!r}")
    if proto in ("ip4", "ip6"):
        if "%" in host:
            raise InvalidMessage(f"zoned IPv6 addresses are not allowed: {text!r}")
        try:
            ip = ipaddress.IPv4Address(host) if proto == "ip4" else ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidMessage(f"invalid {proto} address in {text!r}") from None
        if str(ip) != host:
            raise InvalidMessage(f"{proto} address not in canonical form in {text!r}")
    elif _DNS_NAME.fullmatch(host) is None:
        raise InvalidMessage(f"invalid DNS name in {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class PeerExchange:
    """Addresses of peers a node knows, shared for discovery (at most 64)."""

    addrs: tuple[str, ...]

    def __post_init__(self) -> None:
        if type(self.addrs) is not tuple or len(self.addrs) > MAX_PEER_ADDRS:
            raise InvalidMessage(
                f"addrs must be a tuple of at most {MAX_PEER_ADDRS} multiaddrs. "
                f"Got: {_describe(self.addrs)}"
            )
        for addr in self.addrs:
            check_multiaddr(addr)

    def to_cbor(self) -> bytes:
        return cbor_encode([list(self.addrs)])

    @classmethod
    def from_cbor(cls, data: bytes) -> PeerExchange:
        (addrs,) = decode_fields(data, 1, max_depth=2, max_items=2 + MAX_PEER_ADDRS)
        if type(addrs) is not list:
            raise InvalidPayload("addrs must be an array")
        return construct(cls, tuple(addrs))


UPDATE_ANNOUNCEMENT_TYPE = "update"
INLINE_BLOB_LIMIT = 256 * 1024
UPDATE_ANNOUNCEMENT_MAX_SIZE = 260 * 1024
MAX_ANNOUNCED_SIZE = UINT32_MAX  # the fetcher applies its blob store's (smaller) limit on top

# A CIDv1 (version 0x01, codec raw 0x55, multihash sha2-256 0x12 of 32 bytes 0x20) in multibase
# base32: "b" and 58 lower-case RFC 4648 characters without padding. This is the one text form
# that flnode.cid.Cid prints; p2p checks it here because layers do not import each other
# (tests/node/p2p/test_messages.py checks that both agree).
_CID_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])
CID_TEXT_LEN = 59


def cid_digest(text: object) -> bytes:
    """The sha2-256 digest named by ``text``, the canonical text of a CIDv1 (raw, sha2-256).

    Any other form (another multibase, upper case, CIDv0, another codec or hash) raises
    :class:`InvalidMessage`: a CID has one text form on the wire.
    """
    error = InvalidMessage(
        f"cid must be the canonical base32 text of a CIDv1 (raw, sha2-256). Got: {_describe(text)}"
    )
    if type(text) is not str or len(text) != CID_TEXT_LEN or not text.isascii():
        raise error
    if text[0] != "b" or not text[1:].islower():
        raise error
    try:
        binary = base64.b32decode(text[1:].upper() + "======")
    except ValueError:
        raise error from None
    if not binary.startswith(_CID_PREFIX) or _cid_text(binary) != text:  # unused bits must be 0
        raise error
    return binary[len(_CID_PREFIX) :]


def _cid_text(binary: bytes) -> str:
    return "b" + base64.b32encode(binary).decode("ascii").lower().rstrip("=")


@dataclass(frozen=True, slots=True)
class UpdateAnnouncement:
    """A device's model update for one round of a task: inline if small, else by CID only.

    ``cid`` is the canonical text form (``bafkrei...``) of the update's CID and ``size`` its length
    in bytes. An update of at most :data:`INLINE_BLOB_LIMIT` bytes travels in ``blob`` (which must
    hash to ``cid``: else the reason is ``cid_mismatch``); a larger one has ``blob=None`` and is
    fetched by CID. ``n_samples`` is the number of training samples behind the update.
    """

    task_id: int
    round: int
    cid: str
    n_samples: int
    size: int
    blob: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_uint(self.task_id, "task_id")
        check_uint(self.round, "round")
        check_uint(self.n_samples, "n_samples", minimum=1, maximum=UINT32_MAX)
        check_uint(self.size, "size", minimum=1, maximum=MAX_ANNOUNCED_SIZE)
        digest = cid_digest(self.cid)
        if self.blob is None:
            if self.size <= INLINE_BLOB_LIMIT:
                raise InvalidMessage(
                    f"an update of at most {INLINE_BLOB_LIMIT} bytes must be sent inline"
                )
            return
        check_bytes(self.blob, "blob", min_len=1, max_len=INLINE_BLOB_LIMIT)
        if len(self.blob) != self.size:
            raise InvalidMessage(f"blob has {len(self.blob)} bytes but size says {self.size}")
        if hashlib.sha256(self.blob).digest() != digest:
            raise InvalidMessage(
                f"the inline blob does not hash to {self.cid}", reason="cid_mismatch"
            )

    @property
    def inline(self) -> bool:
        """Whether the update itself is in the message."""
        return self.blob is not None

    def to_cbor(self) -> bytes:
        return cbor_encode(
            [self.task_id, self.round, self.cid, self.n_samples, self.size, self.blob]
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> UpdateAnnouncement:
        return construct(cls, *decode_fields(data, 6))


BUILTIN_TYPES: tuple[tuple[str, type[WireMessage], int], ...] = (
    (PING_TYPE, Ping, PING_MAX_SIZE),
    (PEER_EXCHANGE_TYPE, PeerExchange, PEER_EXCHANGE_MAX_SIZE),
    (UPDATE_ANNOUNCEMENT_TYPE, UpdateAnnouncement, UPDATE_ANNOUNCEMENT_MAX_SIZE),
)


def default_registry() -> MessageRegistry:
    """A new registry holding the message types of this module."""
    registry = MessageRegistry()
    for name, cls, max_size in BUILTIN_TYPES:
        registry.register(name, cls, max_size=max_size)
    return registry
