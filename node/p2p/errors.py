"""Errors of the p2p package.

``P2PError`` is the root of the package. Decoding a received envelope fails only with a subclass of
:class:`EnvelopeError`, whatever the input (see :meth:`flnode.p2p.envelope.EnvelopeCodec.decode`).
Each of these errors carries:

- ``reason``: a short, fixed label from the class's ``reasons`` (use it as a metrics label;
  :data:`ENVELOPE_REJECT_REASONS` lists them all, e.g. to pre-register the label values);
- ``sender``: the sender's peer ID bytes as written in the envelope, or ``None`` when the envelope
  was not parsed far enough to read it;
- ``sender_verified``: whether the signature was checked and made by ``sender``. Until then
  ``sender`` is only a *claim*: penalise the peer the bytes came from (the gossip hop), never an
  unverified sender, or anyone could get an honest node's score lowered by forging its ID.

Locally built messages that are invalid (a field out of range, an unregistered class) raise
:class:`InvalidMessage`, which is a ``ValueError``: that is a bug of the caller, not hostile input.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import FLNodeError


class P2PError(FLNodeError):
    """Base class for the errors of the p2p package."""


class InvalidMessage(P2PError, ValueError):
    """A message or envelope built locally is invalid; ``reason`` is forwarded on decode."""

    def __init__(self, detail: str, *, reason: str = "invalid_payload") -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


class CborFormatError(P2PError, ValueError):
    """Bytes that are not one item of flnode's strict CBOR subset (see ``flnode.p2p.messages``)."""


class EnvelopeError(P2PError):
    """A received envelope was rejected. ``reason`` is one of the class's ``reasons``."""

    reasons: ClassVar[tuple[str, ...]] = ("rejected",)

    def __init__(
        self,
        detail: str,
        *,
        reason: str | None = None,
        sender: bytes | None = None,
        sender_verified: bool = False,
    ) -> None:
        reason = self.reasons[0] if reason is None else reason
        if reason not in self.reasons:  # keeps the metrics label set closed
            raise ValueError(f"{type(self).__name__} has no reason {reason!r}")
        super().__init__(detail)
        self.detail = detail
        self.reason = reason
        self.sender = sender
        self.sender_verified = sender_verified

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class MalformedEnvelope(EnvelopeError):
    """Not a well-formed, canonical envelope (CBOR, structure, field types or bounds).

    ``bad_sender``: the sender is not the canonical peer ID bytes of a secp256k1 key.
    ``internal_error``: a bug in the decoder was caught; it should never be seen.
    """

    reasons = ("malformed", "bad_sender", "internal_error")


class OversizedEnvelope(EnvelopeError):
    """The raw envelope or its payload is larger than its message type allows."""

    reasons = ("oversized",)


class UnknownVersion(EnvelopeError):
    """The envelope's format version is not one this node speaks."""

    reasons = ("unknown_version",)


class UnknownMessageType(EnvelopeError):
    """The message type is not in the registry."""

    reasons = ("unknown_type",)


class WrongNetwork(EnvelopeError):
    """The envelope belongs to another network."""

    reasons = ("wrong_network",)


class StaleEnvelope(EnvelopeError):
    """The timestamp is older (``stale``) or newer (``future``) than the allowed clock skew."""

    reasons = ("stale", "future")


class BadSignature(EnvelopeError):
    """The signature is malformed, not low-s, or not made by the sender's key."""

    reasons = ("bad_signature",)


class SenderMismatch(EnvelopeError):
    """The envelope's sender is not the peer the transport says it came from."""

    reasons = ("sender_mismatch",)


class InvalidPayload(EnvelopeError):
    """The payload does not decode to its type's schema.

    ``cid_mismatch``: an inline blob does not hash to the announced CID.
    ``decoder_error``: a registered decoder failed in an unexpected way (a bug in that decoder).
    """

    reasons = ("invalid_payload", "cid_mismatch", "decoder_error")


ENVELOPE_ERRORS: tuple[type[EnvelopeError], ...] = (
    MalformedEnvelope,
    OversizedEnvelope,
    UnknownVersion,
    UnknownMessageType,
    WrongNetwork,
    StaleEnvelope,
    BadSignature,
    SenderMismatch,
    InvalidPayload,
)

ENVELOPE_REJECT_REASONS: tuple[str, ...] = tuple(r for cls in ENVELOPE_ERRORS for r in cls.reasons)
