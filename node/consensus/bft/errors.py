"""Errors of the BFT consensus (wire messages, certificates, the double-sign guard)."""

from __future__ import annotations

from ..errors import ConsensusError


class BftError(ConsensusError):
    """Base class of the BFT consensus errors."""


class InvalidConsensusMessage(BftError):
    """A consensus message or certificate failed a check; ``reason`` is a short fixed label.

    Raised for anything that arrives from outside (gossip, block sync): the message is dropped
    and ``reason`` is what the sender's peer score is charged with.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"invalid consensus message ({self.reason}): {self.detail}"


class DoubleSignRefused(BftError):
    """The signer refused to sign: it already signed something else at this height/round/step.

    Never an operational error to "fix": it means the node would otherwise equivocate (typically
    after a restart, or two daemons sharing one key). The stored message can be re-sent instead.
    """


class SignerStateError(BftError):
    """The persisted signer state is unreadable; restore it or move it away only if you are sure
    this key never signed on this network since (otherwise it may double-sign and be slashed)."""
