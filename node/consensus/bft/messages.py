"""The consensus wire messages: frozen dataclasses with one canonical RLP encoding each.

Every message is ``rlp([tag, field, ...])`` (Ethereum RLP, as blocks and transactions already
are). Integers are RLP big-endian without leading zeros; the decoder refuses anything whose
re-encoding is not byte-identical, so each message has exactly one byte form. Constructors
validate field types and bounds (raising :class:`InvalidConsensusMessage`), so a message that
exists is well formed whether built locally or decoded; *signatures* are checked by the consensus
core against the committee of the height, since only it knows who may sign.

=====  ===================  ==================================================================
tag    message              fields
=====  ===================  ==================================================================
1      :class:`Credential`  height, round, credential (65)
2      :class:`Proposal`    height, round, pol_round + 1 (0 = none), block RLP, seed proof
                            (65), credential (65), signature (65)
3      :class:`VoteMessage` height, round, kind (1 prevote, 2 precommit), block hash (32,
                            zero = nil), signature (65)
4      :class:`Evidence`    two conflicting votes, each as a vote's fields without the tag
5      :class:`CertifiedBlock`  block RLP, certificate [height, round, block hash, seed proof,
                            [signature, ...]]
6      :class:`TxBatch`     [raw transaction, ...]
7      :class:`SyncRequest` first height, count
8      :class:`SyncResponse`  [certified block (as tag 5 without the tag), ...]
9      :class:`RoundRequest`  height, round
10     :class:`RoundResponse`  [encoded credential, proposal or vote, ...]
=====  ===================  ==================================================================

Signatures (all :mod:`flnode.identity`, domain-separated):

* a vote is signed exactly as the ledger contract's ``slash`` verifies it
  (:class:`flnode.consensus.ledger.Vote`, domain ``flnode/vote/v1``, ABI-encoded with the chain
  id), so two conflicting votes are slashing evidence as they are;
* a proposal: domain ``flnode/proposal/v1`` over ``rlp([chain_id, height, round, pol_round + 1,
  block hash, keccak(seed proof), keccak(credential)])``;
* credentials and seed proofs: see :mod:`.sortition`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import rlp
from eth_utils import keccak

from ...errors import IdentityError
from ...identity import SIGNATURE_SIZE, NodeIdentity, recover_signer
from ..ledger import VOTE_DOMAIN, SignedVote, Vote
from .errors import InvalidConsensusMessage

PREVOTE = 1
PRECOMMIT = 2
NIL = b"\x00" * 32
PROPOSAL_DOMAIN = b"flnode/proposal/v1"

MAX_HEIGHT = 2**63 - 1
MAX_ROUND = 2**16
MAX_BLOCK_SIZE = 1_000_000  # a proposal must fit one gossip message (p2p caps them at ~1 MiB)
MAX_CERT_SIGNATURES = 256
MAX_TX_BATCH = 512
MAX_TX_SIZE = 128 * 1024
MAX_TX_BATCH_BYTES = 1_000_000
MAX_SYNC_BLOCKS = 64
MAX_MESSAGE_SIZE = 1_040_000  # the largest encoding of any message (a full proposal)
MAX_SYNC_RESPONSE_SIZE = 16 * 2**20

TAG_CREDENTIAL = 1
TAG_PROPOSAL = 2
TAG_VOTE = 3
TAG_EVIDENCE = 4
TAG_CERTIFIED_BLOCK = 5
TAG_TX_BATCH = 6
TAG_SYNC_REQUEST = 7
TAG_SYNC_RESPONSE = 8
TAG_ROUND_REQUEST = 9
TAG_ROUND_RESPONSE = 10
MAX_ROUND_MESSAGES = 4096


def _bad(detail: str, reason: str = "malformed") -> InvalidConsensusMessage:
    return InvalidConsensusMessage(reason, detail)


def _uint(value: object, name: str, *, minimum: int = 0, maximum: int = MAX_HEIGHT) -> int:
    if type(value) is not int or not minimum <= value <= maximum:
        raise _bad(f"{name} must be an integer in [{minimum}, {maximum}]. Got: {value!r:.40}")
    return value


def _bytes(value: object, name: str, *, size: int | None = None, max_size: int = 0) -> bytes:
    if type(value) is not bytes:
        raise _bad(f"{name} must be bytes. Got: {type(value).__name__}")
    if size is not None and len(value) != size:
        raise _bad(f"{name} must be {size} bytes. Got: {len(value)}")
    if size is None and len(value) > max_size:
        raise _bad(f"{name} may be {max_size} bytes. Got: {len(value)}", "oversize")
    return value


def _dec_uint(item: object, name: str) -> int:
    """An RLP integer: bytes without leading zeros (the empty string is 0)."""
    if type(item) is not bytes:
        raise _bad(f"{name} must be an RLP string")
    if item[:1] == b"\x00":
        raise _bad(f"{name} has leading zero bytes")
    if len(item) > 8:
        raise _bad(f"{name} is wider than 64 bits")
    return int.from_bytes(item, "big")


def _dec_list(item: object, name: str, count: int | None = None) -> list[Any]:
    if type(item) is not list or (count is not None and len(item) != count):
        raise _bad(f"{name} must be a list of {count if count is not None else 'n'} items")
    return item


def _recover(domain: bytes, payload: bytes, signature: bytes, reason: str) -> str:
    try:
        return recover_signer(domain, payload, signature)
    except IdentityError as exc:
        raise InvalidConsensusMessage(reason, str(exc)) from None


@dataclass(frozen=True)
class Credential:
    """A miner's sortition credential for (height, round), revealed at the round's start."""

    height: int
    round: int
    credential: bytes

    TAG = TAG_CREDENTIAL

    def __post_init__(self) -> None:
        _uint(self.height, "height", minimum=1)
        _uint(self.round, "round", maximum=MAX_ROUND)
        _bytes(self.credential, "credential", size=SIGNATURE_SIZE)

    def fields(self) -> list[Any]:
        return [self.height, self.round, self.credential]

    @classmethod
    def from_fields(cls, f: list[Any]) -> Credential:
        _dec_list(f, "credential", 3)
        return cls(_dec_uint(f[0], "height"), _dec_uint(f[1], "round"), f[2])


@dataclass(frozen=True)
class VoteMessage:
    """A signed prevote or precommit (``block_hash`` = :data:`NIL` for a nil vote)."""

    height: int
    round: int
    kind: int
    block_hash: bytes
    signature: bytes

    TAG = TAG_VOTE

    def __post_init__(self) -> None:
        _uint(self.height, "height", minimum=1)
        _uint(self.round, "round", maximum=MAX_ROUND)
        if self.kind not in (PREVOTE, PRECOMMIT):
            raise _bad(f"vote kind must be 1 (prevote) or 2 (precommit). Got: {self.kind!r:.20}")
        _bytes(self.block_hash, "block_hash", size=32)
        _bytes(self.signature, "signature", size=SIGNATURE_SIZE)

    @classmethod
    def sign(
        cls,
        identity: NodeIdentity,
        chain_id: int,
        height: int,
        round_: int,
        kind: int,
        block_hash: bytes,
    ) -> VoteMessage:
        signed = Vote(height, round_, kind, block_hash).sign(identity, chain_id)
        return cls(height, round_, kind, block_hash, signed.signature)

    @property
    def is_nil(self) -> bool:
        return self.block_hash == NIL

    def as_ledger_vote(self) -> SignedVote:
        """The form the ledger contract's ``slash`` takes."""
        return SignedVote(Vote(self.height, self.round, self.kind, self.block_hash), self.signature)

    def signer(self, chain_id: int) -> str:
        payload = Vote(self.height, self.round, self.kind, self.block_hash).payload(chain_id)
        return _recover(VOTE_DOMAIN, payload, self.signature, "bad-signature")

    def fields(self) -> list[Any]:
        return [self.height, self.round, self.kind, self.block_hash, self.signature]

    @classmethod
    def from_fields(cls, f: list[Any]) -> VoteMessage:
        _dec_list(f, "vote", 5)
        return cls(
            _dec_uint(f[0], "height"),
            _dec_uint(f[1], "round"),
            _dec_uint(f[2], "kind"),
            f[3],
            f[4],
        )


def proposal_payload(
    chain_id: int,
    height: int,
    round_: int,
    pol_round: int,
    block_hash: bytes,
    seed_proof: bytes,
    credential: bytes,
) -> bytes:
    return rlp.encode(
        [
            chain_id,
            height,
            round_,
            pol_round + 1,
            block_hash,
            keccak(seed_proof),
            keccak(credential),
        ]
    )


@dataclass(frozen=True)
class Proposal:
    """A round leader's block: the block RLP, its credential and its signature.

    ``pol_round`` is -1 for a fresh block, else the round in which 2f+1 prevoted this block (a
    re-proposal of a valid block, Tendermint's proof-of-lock round). ``seed_proof`` is the
    block coinbase's seed proof for this height (see :mod:`.sortition`).
    """

    height: int
    round: int
    pol_round: int
    block: bytes = field(repr=False)
    seed_proof: bytes
    credential: bytes
    signature: bytes

    TAG = TAG_PROPOSAL

    def __post_init__(self) -> None:
        _uint(self.height, "height", minimum=1)
        _uint(self.round, "round", maximum=MAX_ROUND)
        if type(self.pol_round) is not int or not -1 <= self.pol_round < self.round:
            raise _bad(f"pol_round must be -1 or below the round. Got: {self.pol_round!r:.20}")
        _bytes(self.block, "block", max_size=MAX_BLOCK_SIZE)
        if not self.block:
            raise _bad("block must not be empty")
        _bytes(self.seed_proof, "seed_proof", size=SIGNATURE_SIZE)
        _bytes(self.credential, "credential", size=SIGNATURE_SIZE)
        _bytes(self.signature, "signature", size=SIGNATURE_SIZE)

    def signing_payload(self, chain_id: int, block_hash: bytes) -> bytes:
        return proposal_payload(
            chain_id,
            self.height,
            self.round,
            self.pol_round,
            block_hash,
            self.seed_proof,
            self.credential,
        )

    def signer(self, chain_id: int, block_hash: bytes) -> str:
        return _recover(
            PROPOSAL_DOMAIN,
            self.signing_payload(chain_id, block_hash),
            self.signature,
            "bad-signature",
        )

    def fields(self) -> list[Any]:
        return [
            self.height,
            self.round,
            self.pol_round + 1,
            self.block,
            self.seed_proof,
            self.credential,
            self.signature,
        ]

    @classmethod
    def from_fields(cls, f: list[Any]) -> Proposal:
        _dec_list(f, "proposal", 7)
        return cls(
            _dec_uint(f[0], "height"),
            _dec_uint(f[1], "round"),
            _dec_uint(f[2], "pol_round") - 1,
            f[3],
            f[4],
            f[5],
            f[6],
        )


@dataclass(frozen=True)
class Evidence:
    """Two votes by one miner for the same (height, round, kind) and different blocks."""

    first: VoteMessage
    second: VoteMessage

    TAG = TAG_EVIDENCE

    def __post_init__(self) -> None:
        a, b = self.first, self.second
        if not isinstance(a, VoteMessage) or not isinstance(b, VoteMessage):
            raise _bad("evidence holds two votes")
        if (a.height, a.round, a.kind) != (b.height, b.round, b.kind):
            raise _bad("evidence votes must share height, round and kind", "bad-evidence")
        if a.block_hash == b.block_hash:
            raise _bad("evidence votes must be for different blocks", "bad-evidence")

    def offender(self, chain_id: int) -> str:
        """The miner who signed both votes; ``InvalidConsensusMessage`` if they differ."""
        signer = self.first.signer(chain_id)
        if self.second.signer(chain_id) != signer:
            raise _bad("evidence votes are signed by different keys", "bad-evidence")
        return signer

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.first.height, self.first.round, self.first.kind)

    def fields(self) -> list[Any]:
        return [self.first.fields(), self.second.fields()]

    @classmethod
    def from_fields(cls, f: list[Any]) -> Evidence:
        _dec_list(f, "evidence", 2)
        return cls(VoteMessage.from_fields(f[0]), VoteMessage.from_fields(f[1]))


@dataclass(frozen=True)
class CommitCertificate:
    """2f+1 precommits for one block at (height, round), plus the block's seed proof.

    Only the precommit signatures travel: every precommit of a certificate is the same vote
    ``(height, round, PRECOMMIT, block_hash)``. They are sorted by signer address (checked when a
    certificate is verified), so a certificate has one byte form per signer set.
    """

    height: int
    round: int
    block_hash: bytes
    seed_proof: bytes
    signatures: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _uint(self.height, "height", minimum=1)
        _uint(self.round, "round", maximum=MAX_ROUND)
        _bytes(self.block_hash, "block_hash", size=32)
        if self.block_hash == NIL:
            raise _bad("a certificate cannot certify nil", "bad-certificate")
        _bytes(self.seed_proof, "seed_proof", size=SIGNATURE_SIZE)
        if type(self.signatures) is not tuple or not 1 <= len(self.signatures) <= (
            MAX_CERT_SIGNATURES
        ):
            raise _bad(f"a certificate holds 1 to {MAX_CERT_SIGNATURES} signatures")
        for sig in self.signatures:
            _bytes(sig, "signature", size=SIGNATURE_SIZE)

    def precommits(self) -> list[VoteMessage]:
        return [
            VoteMessage(self.height, self.round, PRECOMMIT, self.block_hash, s)
            for s in self.signatures
        ]

    def fields(self) -> list[Any]:
        return [self.height, self.round, self.block_hash, self.seed_proof, list(self.signatures)]

    @classmethod
    def from_fields(cls, f: list[Any]) -> CommitCertificate:
        _dec_list(f, "certificate", 5)
        sigs = _dec_list(f[4], "signatures")
        return cls(
            _dec_uint(f[0], "height"),
            _dec_uint(f[1], "round"),
            f[2],
            f[3],
            tuple(sigs),
        )


@dataclass(frozen=True)
class CertifiedBlock:
    """A committed block with its certificate: what block sync serves and commits announce."""

    block: bytes = field(repr=False)
    certificate: CommitCertificate

    TAG = TAG_CERTIFIED_BLOCK

    def __post_init__(self) -> None:
        _bytes(self.block, "block", max_size=MAX_BLOCK_SIZE)
        if not isinstance(self.certificate, CommitCertificate):
            raise _bad("certificate must be a CommitCertificate")

    @property
    def height(self) -> int:
        return self.certificate.height

    def fields(self) -> list[Any]:
        return [self.block, self.certificate.fields()]

    @classmethod
    def from_fields(cls, f: list[Any]) -> CertifiedBlock:
        _dec_list(f, "certified block", 2)
        return cls(f[0], CommitCertificate.from_fields(f[1]))


@dataclass(frozen=True)
class TxBatch:
    """Raw signed transactions, gossiped between mempools."""

    txs: tuple[bytes, ...]

    TAG = TAG_TX_BATCH

    def __post_init__(self) -> None:
        if type(self.txs) is not tuple or not 1 <= len(self.txs) <= MAX_TX_BATCH:
            raise _bad(f"a transaction batch holds 1 to {MAX_TX_BATCH} transactions")
        total = 0
        for tx in self.txs:
            _bytes(tx, "transaction", max_size=MAX_TX_SIZE)
            total += len(tx)
        if total > MAX_TX_BATCH_BYTES:
            raise _bad(f"a transaction batch may hold {MAX_TX_BATCH_BYTES} bytes", "oversize")

    def fields(self) -> list[Any]:
        return [list(self.txs)]

    @classmethod
    def from_fields(cls, f: list[Any]) -> TxBatch:
        _dec_list(f, "transaction batch", 1)
        return cls(tuple(_dec_list(f[0], "transactions")))


@dataclass(frozen=True)
class SyncRequest:
    """Ask a peer for the certified blocks ``first .. first + count - 1``."""

    first: int
    count: int

    TAG = TAG_SYNC_REQUEST

    def __post_init__(self) -> None:
        _uint(self.first, "first", minimum=1)
        _uint(self.count, "count", minimum=1, maximum=MAX_SYNC_BLOCKS)

    def fields(self) -> list[Any]:
        return [self.first, self.count]

    @classmethod
    def from_fields(cls, f: list[Any]) -> SyncRequest:
        _dec_list(f, "sync request", 2)
        return cls(_dec_uint(f[0], "first"), _dec_uint(f[1], "count"))


@dataclass(frozen=True)
class SyncResponse:
    """Consecutive certified blocks from the requested first height (fewer at the head)."""

    blocks: tuple[CertifiedBlock, ...]

    TAG = TAG_SYNC_RESPONSE

    def __post_init__(self) -> None:
        if type(self.blocks) is not tuple or len(self.blocks) > MAX_SYNC_BLOCKS:
            raise _bad(f"a sync response holds at most {MAX_SYNC_BLOCKS} blocks")
        for i, b in enumerate(self.blocks):
            if not isinstance(b, CertifiedBlock):
                raise _bad("a sync response holds certified blocks")
            if i and b.height != self.blocks[i - 1].height + 1:
                raise _bad("a sync response's blocks must be consecutive")

    def fields(self) -> list[Any]:
        return [[b.fields() for b in self.blocks]]

    @classmethod
    def from_fields(cls, f: list[Any]) -> SyncResponse:
        _dec_list(f, "sync response", 1)
        return cls(tuple(CertifiedBlock.from_fields(b) for b in _dec_list(f[0], "blocks")))


@dataclass(frozen=True)
class RoundRequest:
    """Ask a peer for every consensus message it holds for (height, round) of its current height.

    Gossip does not retransmit, and a lossy mesh can starve a round; a node whose round makes no
    progress pulls the messages directly (Tendermint's peers gossip round state the same way).
    """

    height: int
    round: int

    TAG = TAG_ROUND_REQUEST

    def __post_init__(self) -> None:
        _uint(self.height, "height", minimum=1)
        _uint(self.round, "round", maximum=MAX_ROUND)

    def fields(self) -> list[Any]:
        return [self.height, self.round]

    @classmethod
    def from_fields(cls, f: list[Any]) -> RoundRequest:
        _dec_list(f, "round request", 2)
        return cls(_dec_uint(f[0], "height"), _dec_uint(f[1], "round"))


@dataclass(frozen=True)
class RoundResponse:
    """Encoded credentials, proposals and votes (each a message of its own, checked as such)."""

    messages: tuple[bytes, ...]

    TAG = TAG_ROUND_RESPONSE

    def __post_init__(self) -> None:
        if type(self.messages) is not tuple or len(self.messages) > MAX_ROUND_MESSAGES:
            raise _bad(f"a round response holds at most {MAX_ROUND_MESSAGES} messages")
        for m in self.messages:
            _bytes(m, "message", max_size=MAX_MESSAGE_SIZE)

    def fields(self) -> list[Any]:
        return [list(self.messages)]

    @classmethod
    def from_fields(cls, f: list[Any]) -> RoundResponse:
        _dec_list(f, "round response", 1)
        return cls(tuple(_dec_list(f[0], "messages")))


Message = (
    Credential
    | Proposal
    | VoteMessage
    | Evidence
    | CertifiedBlock
    | TxBatch
    | SyncRequest
    | SyncResponse
    | RoundRequest
    | RoundResponse
)

_BY_TAG: dict[int, Any] = {
    cls.TAG: cls
    for cls in (
        Credential,
        Proposal,
        VoteMessage,
        Evidence,
        CertifiedBlock,
        TxBatch,
        SyncRequest,
        SyncResponse,
        RoundRequest,
        RoundResponse,
    )
}


def encode_message(message: Message) -> bytes:
    """The canonical bytes of a message: ``rlp([tag, *fields])``."""
    return rlp.encode([message.TAG, *message.fields()])


def decode_message(data: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> Message:
    """Parse and validate one message; raises only :class:`InvalidConsensusMessage`."""
    if type(data) is not bytes:
        raise _bad("a message must be bytes")
    if len(data) > max_size:
        raise _bad(f"a message may be {max_size} bytes, got {len(data)}", "oversize")
    try:
        items = rlp.decode(data, strict=True)
    except Exception as exc:  # pyrlp raises several types on bad input
        raise _bad(f"not RLP: {type(exc).__name__}") from None
    if type(items) is not list or not items:
        raise _bad("a message is a non-empty RLP list")
    tag = _dec_uint(items[0], "tag")
    cls = _BY_TAG.get(tag)
    if cls is None:
        raise _bad(f"unknown message tag {tag}", "unknown-type")
    try:
        message = cls.from_fields(items[1:])
    except InvalidConsensusMessage:
        raise
    except Exception as exc:  # a decoder bug must not escape to the network loop
        raise _bad(f"cannot decode: {type(exc).__name__}") from None
    if encode_message(message) != data:
        raise _bad("not in canonical form")
    return message  # type: ignore[no-any-return]
