"""Fuzzing the consensus wire messages and the checks of what they carry.

Every consensus message from a peer (gossip on ``bft``/``txs``/``blocks``, block-sync and round
responses) goes through :func:`decode_message`, and a certified block through
:func:`verify_certified_block` with the real block inspector before anything is imported. Both
must raise only :class:`InvalidConsensusMessage` (whose ``reason`` is what the sender is charged
with), and what they accept must be exactly what was signed: a mutated certificate never
verifies, a mutated message never decodes to a different one.

The samples are real: a Prague block built by a real chain, votes, proposals, credentials and
seed proofs signed by the network's miners, a certificate of their precommits.
"""

from __future__ import annotations

import contextlib
from typing import Any

import rlp
from eth.db.atomic import AtomicDB
from hypothesis import given
from hypothesis import strategies as st

from flnode.consensus.bft.certificate import HeightContext, make_certificate, verify_certified_block
from flnode.consensus.bft.chainlink import inspect_block
from flnode.consensus.bft.errors import InvalidConsensusMessage
from flnode.consensus.bft.messages import (
    NIL,
    PRECOMMIT,
    PREVOTE,
    CertifiedBlock,
    CommitCertificate,
    Credential,
    Evidence,
    Proposal,
    RoundRequest,
    RoundResponse,
    SyncRequest,
    SyncResponse,
    TxBatch,
    VoteMessage,
    decode_message,
    encode_message,
)
from flnode.consensus.bft.sortition import (
    Committee,
    credential_signer,
    genesis_seed,
    make_credential,
    make_seed_proof,
)
from flnode.consensus.chain import Chain

from ....fuzz_profiles import fuzz
from ..conftest import make_cast, make_spec
from ..test_fuzz_decoders import _byte_mutation, _item_mutation

CAST = make_cast()
SPEC = make_spec(CAST)
CHAIN_ID = SPEC.chain_id
MINERS = CAST.miners
CHAIN = Chain(SPEC, AtomicDB())
GENESIS = CHAIN.head().hash
SEED = genesis_seed(GENESIS)
COMMITTEE = Committee.of({m.address: 2 * 10**18 for m in MINERS})
T0 = 1_700_000_100
CTX = HeightContext(1, GENESIS, SEED, COMMITTEE)

_tx = CHAIN.sign_transaction(
    CAST.devices[0].private_key, to=CAST.devices[1].address, value=1, gas=21_000
)
CHAIN.add_transaction(_tx.encode())
_built = CHAIN.build_block(CHAIN.mempool.pending(), coinbase=MINERS[0].address, timestamp=T0)
BLOCK = rlp.encode(_built.block)
BLOCK_HASH = _built.hash

SEED_PROOF = make_seed_proof(MINERS[0], CHAIN_ID, SEED, 1)
CREDENTIAL = make_credential(MINERS[0], CHAIN_ID, SEED, 1, 0)
PRECOMMITS = [VoteMessage.sign(m, CHAIN_ID, 1, 0, PRECOMMIT, BLOCK_HASH) for m in MINERS]
CERTIFIED = CertifiedBlock(
    BLOCK,
    make_certificate(
        1,
        0,
        BLOCK_HASH,
        SEED_PROOF,
        [(m.address, v) for m, v in zip(MINERS, PRECOMMITS, strict=True)],
    ),
)


def _proposal() -> Proposal:
    from flnode.consensus.bft.signer import GuardedSigner

    return GuardedSigner(MINERS[0], CHAIN_ID).proposal(
        1, 0, -1, BLOCK, BLOCK_HASH, SEED_PROOF, CREDENTIAL
    )


PROPOSAL = _proposal()
PREVOTES = [
    VoteMessage.sign(m, CHAIN_ID, 1, 0, PREVOTE, h)
    for m, h in zip(MINERS, [BLOCK_HASH, NIL], strict=True)
]
EVIDENCE = Evidence(
    VoteMessage.sign(MINERS[1], CHAIN_ID, 1, 0, PREVOTE, BLOCK_HASH),
    VoteMessage.sign(MINERS[1], CHAIN_ID, 1, 0, PREVOTE, NIL),
)
SAMPLES = [
    Credential(1, 0, CREDENTIAL),
    PROPOSAL,
    *PREVOTES,
    PRECOMMITS[0],
    EVIDENCE,
    CERTIFIED,
    TxBatch((_tx.encode(), b"\x02\xc0")),
    SyncRequest(1, 3),
    SyncResponse((CERTIFIED,)),
    RoundRequest(1, 0),
    RoundResponse(tuple(encode_message(m) for m in (PROPOSAL, *PREVOTES))),
]
ENCODED = [encode_message(m) for m in SAMPLES]
SIGNED_VOTES = {*PREVOTES, *PRECOMMITS, EVIDENCE.first, EVIDENCE.second}


def test_the_samples_are_valid() -> None:
    for message, raw in zip(SAMPLES, ENCODED, strict=True):
        assert decode_message(raw, max_size=2**24) == message
    assert verify_certified_block(CERTIFIED, CTX, chain_id=CHAIN_ID, inspect=inspect_block)
    assert EVIDENCE.offender(CHAIN_ID) == MINERS[1].address
    assert PROPOSAL.signer(CHAIN_ID, BLOCK_HASH) == MINERS[0].address
    assert credential_signer(CREDENTIAL, CHAIN_ID, SEED, 1, 0) == MINERS[0].address


def decode(raw: bytes) -> Any:
    try:
        message = decode_message(raw, max_size=2**24)
    except InvalidConsensusMessage as exc:
        assert exc.reason and exc.detail
        return None
    assert encode_message(message) == raw  # one byte form per message
    return message


@st.composite
def mutated_message(draw: st.DrawFn) -> bytes:
    raw = draw(st.sampled_from(ENCODED))
    if draw(st.booleans()):
        return _byte_mutation(draw, raw)
    return rlp.encode(_item_mutation(draw, rlp.decode(raw)))


_rlp_items = st.recursive(
    st.binary(max_size=70)
    | st.integers(0, 2**70).map(
        lambda i: rlp.encode(i)[1:] if i > 127 else bytes([i]) if i else b""
    ),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=20,
)


@fuzz(200)
@given(
    mutated_message()
    | st.binary(max_size=100)
    | st.tuples(st.integers(0, 12), st.lists(_rlp_items, max_size=8)).map(
        lambda t: rlp.encode([t[0], *t[1]])
    )
)
def test_any_bytes_decode_to_a_valid_message_or_raise_invalid_consensus_message(raw: bytes) -> None:
    message = decode(raw)
    if message is None or raw in ENCODED:
        return
    # A message that decodes from mutated bytes is a different, well-formed message; whatever it
    # claims is checked against signatures, never taken on trust: no vote, proposal or evidence
    # recovers to a miner unless that miner signed exactly it.
    miners = {m.address for m in MINERS}
    if isinstance(message, VoteMessage):
        with contextlib.suppress(InvalidConsensusMessage):
            if message.signer(CHAIN_ID) in miners:
                assert message in SIGNED_VOTES
    elif isinstance(message, Evidence):
        with contextlib.suppress(InvalidConsensusMessage):
            assert message.offender(CHAIN_ID) not in miners or message == EVIDENCE
    elif isinstance(message, Proposal):
        with contextlib.suppress(InvalidConsensusMessage):
            info = inspect_block(message.block)
            if message.signer(CHAIN_ID, info.hash) in miners:
                assert (message.height, message.round, info.hash) == (1, 0, BLOCK_HASH)


# ---------------------------------------------------------------------------------------------
# Certified blocks (gossip on "blocks", block sync): verify or raise, never accept a forgery
# ---------------------------------------------------------------------------------------------


@st.composite
def mutated_certified(draw: st.DrawFn) -> CertifiedBlock | None:
    fields = CERTIFIED.fields()
    if draw(st.integers(0, 3)) == 0:  # the block bytes alone
        if draw(st.booleans()):
            block = _byte_mutation(draw, BLOCK)
        else:
            block = rlp.encode(_item_mutation(draw, rlp.decode(BLOCK)))
        fields = [block, fields[1]]
    else:
        fields = _item_mutation(draw, fields)
    try:
        return CertifiedBlock.from_fields(fields)
    except InvalidConsensusMessage:
        return None


@fuzz(200)
@given(mutated_certified())
def test_mutated_certified_blocks_never_verify(certified: CertifiedBlock | None) -> None:
    if certified is None:
        return
    try:
        info, _seed = verify_certified_block(
            certified, CTX, chain_id=CHAIN_ID, inspect=inspect_block
        )
    except InvalidConsensusMessage as exc:
        assert exc.reason
        return
    # Only the certified block itself verifies (maybe in another byte form of the same block).
    assert info.hash == BLOCK_HASH
    assert certified.certificate == CERTIFIED.certificate


def _corrupt(sig: bytes, pos: int, mask: int) -> bytes:
    return sig[:pos] + bytes([sig[pos] ^ mask]) + sig[pos + 1 :]


_signatures = st.binary(min_size=65, max_size=65) | st.builds(
    _corrupt, st.sampled_from([CREDENTIAL, SEED_PROOF]), st.integers(0, 64), st.integers(1, 255)
)


@fuzz(150)
@given(st.sampled_from(["credential", "seed", "vote", "proposal"]), _signatures)
def test_any_65_signature_bytes_recover_or_raise_invalid_consensus_message(
    kind: str, signature: bytes
) -> None:
    cert = CERTIFIED.certificate
    try:
        if kind == "credential":
            credential_signer(signature, CHAIN_ID, SEED, 1, 0)
        elif kind == "seed":
            forged = CommitCertificate(1, 0, BLOCK_HASH, signature, cert.signatures)
            verify_certified_block(
                CertifiedBlock(BLOCK, forged), CTX, chain_id=CHAIN_ID, inspect=inspect_block
            )
            assert signature == SEED_PROOF
        elif kind == "vote":
            VoteMessage(1, 0, PREVOTE, BLOCK_HASH, signature).signer(CHAIN_ID)
        else:
            proposal = Proposal(1, 0, -1, BLOCK, SEED_PROOF, CREDENTIAL, signature)
            proposal.signer(CHAIN_ID, BLOCK_HASH)
    except InvalidConsensusMessage as exc:
        assert exc.reason
