"""Hostile input to one agreement instance: each bad message is dropped and reported with a reason."""

from __future__ import annotations

import pytest

from flnode.consensus.bft.certificate import HeightContext, verify_certified_block
from flnode.consensus.bft.core import Agreement, Broadcast, Offence, TimeoutKind, ValidateBlock
from flnode.consensus.bft.errors import InvalidConsensusMessage
from flnode.consensus.bft.messages import (
    NIL,
    PREVOTE,
    CertifiedBlock,
    CommitCertificate,
    Credential,
    Proposal,
    VoteMessage,
    decode_message,
    encode_message,
)
from flnode.consensus.bft.signer import GuardedSigner
from flnode.consensus.bft.sortition import Committee, genesis_seed, make_credential
from flnode.identity import NodeIdentity

from .simnet import CHAIN_ID, GENESIS, fake_block, identities, inspect_fake

MEMBERS = identities(4)
OUTSIDER = identities(1, seed=99)[0]
SEED = genesis_seed(GENESIS)
COMMITTEE = Committee.of({m.address: 10**18 for m in MEMBERS})
CTX = HeightContext(1, GENESIS, SEED, COMMITTEE)


def _core(index: int = 0) -> Agreement:
    core = Agreement(GuardedSigner(MEMBERS[index], CHAIN_ID), inspect_fake)
    core.start_height(CTX, has_work=True)
    return core


def _offences(actions: list[object]) -> list[str]:
    return [a.reason for a in actions if isinstance(a, Offence)]


def _proposal(
    who: NodeIdentity, *, round_: int = 0, cred_of: NodeIdentity | None = None
) -> Proposal:
    block = fake_block(GENESIS, 1, who.address, 1, [b"tx"])
    signer = GuardedSigner(who, CHAIN_ID)
    info = inspect_fake(block)
    return signer.proposal(
        1,
        round_,
        -1,
        block,
        info.hash,
        signer.seed_proof(SEED, 1),
        make_credential(cred_of or who, CHAIN_ID, SEED, 1, round_),
    )


def test_vote_from_a_non_member_is_rejected() -> None:
    core = _core()
    vote = VoteMessage.sign(OUTSIDER, CHAIN_ID, 1, 0, PREVOTE, NIL)
    assert _offences(core.on_message(vote, "peer")) == ["non-member"]
    assert OUTSIDER.address not in core.votes(0, PREVOTE)


def test_vote_signed_for_another_chain_does_not_count() -> None:
    core = _core()
    vote = VoteMessage.sign(MEMBERS[1], CHAIN_ID + 1, 1, 0, PREVOTE, NIL)
    assert _offences(core.on_message(vote, "peer")) == ["non-member"]  # recovers to a stranger
    assert core.votes(0, PREVOTE).keys() <= {MEMBERS[0].address}


def test_vote_with_high_s_signature_is_rejected() -> None:
    core = _core()
    vote = VoteMessage.sign(MEMBERS[1], CHAIN_ID, 1, 0, PREVOTE, NIL)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(vote.signature[32:64], "big")
    flipped = vote.signature[:32] + (n - s).to_bytes(32, "big") + bytes([55 - vote.signature[64]])
    forged = VoteMessage(1, 0, PREVOTE, NIL, flipped)
    assert _offences(core.on_message(forged, "peer")) == ["bad-signature"]


def test_forged_credential_is_rejected() -> None:
    core = _core()
    # a member's credential for round 1 presented as round 0: recovers to nobody we know
    wrong = Credential(1, 0, make_credential(MEMBERS[1], CHAIN_ID, SEED, 1, 1))
    assert _offences(core.on_message(wrong, "peer")) == ["non-member"]
    garbage = Credential(1, 0, b"\x01" * 64 + b"\x1b")
    assert _offences(core.on_message(garbage, "peer"))[0] in ("bad-credential", "non-member")


def test_proposal_with_someone_elses_credential_is_rejected() -> None:
    core = _core()
    stolen = _proposal(MEMBERS[1], cred_of=MEMBERS[2])
    assert _offences(core.on_message(stolen, "peer")) == ["bad-credential"]


def test_proposal_from_a_non_member_is_rejected() -> None:
    core = _core()
    assert _offences(core.on_message(_proposal(OUTSIDER), "peer")) == ["non-member"]


def test_proposal_from_a_non_leader_is_flagged_and_not_prevoted() -> None:
    core = _core(0)
    prios = {
        m.address: COMMITTEE.priority(m.address, make_credential(m, CHAIN_ID, SEED, 1, 0))
        for m in MEMBERS
    }
    ranked = sorted(MEMBERS[1:], key=lambda m: prios[m.address])
    leader, other = ranked[0], ranked[-1]
    core.on_message(Credential(1, 0, make_credential(leader, CHAIN_ID, SEED, 1, 0)), "a")
    actions = core.on_message(_proposal(other), "b")
    assert "not-leader" in _offences(actions)
    sent = [a.message for a in actions if isinstance(a, Broadcast)]
    assert not any(isinstance(m, VoteMessage) for m in sent)  # waits for the leader's block
    # the leader's proposal then gets our prevote (if we are not lower than it ourselves)
    actions = core.on_message(_proposal(leader), "a")
    (check,) = [a for a in actions if isinstance(a, ValidateBlock)]
    actions = core.block_validated(1, check.block_hash, True)
    if prios[MEMBERS[0].address] > prios[leader.address]:
        votes = [a.message for a in actions if isinstance(a, Broadcast)]
        assert any(isinstance(v, VoteMessage) and v.block_hash != NIL for v in votes)


def test_proposal_on_the_wrong_parent_is_rejected() -> None:
    core = _core()
    block = fake_block(b"\x11" * 32, 1, MEMBERS[1].address, 1, [])
    signer = GuardedSigner(MEMBERS[1], CHAIN_ID)
    p = signer.proposal(
        1,
        0,
        -1,
        block,
        inspect_fake(block).hash,
        signer.seed_proof(SEED, 1),
        make_credential(MEMBERS[1], CHAIN_ID, SEED, 1, 0),
    )
    assert _offences(core.on_message(p, "peer")) == ["wrong-parent"]


def test_propose_timeout_gives_a_nil_prevote() -> None:
    core = _core()
    actions = core.on_timeout(TimeoutKind.PROPOSE, 1, 0)
    votes = [a.message for a in actions if isinstance(a, Broadcast)]
    assert [(v.kind, v.block_hash) for v in votes] == [(PREVOTE, NIL)]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc0",
        b"\x81\x00",
        bytes.fromhex("c3820001"),  # an integer with a leading zero byte
        bytes.fromhex("c109"),  # unknown tag
        encode_message(Credential(1, 0, b"\x00" * 65)) + b"\x00",  # trailing byte
    ],
)
def test_malformed_bytes_raise_only_invalid_consensus_message(raw: bytes) -> None:
    with pytest.raises(InvalidConsensusMessage):
        decode_message(raw)


def test_every_message_round_trips() -> None:
    p = _proposal(MEMBERS[1])
    vote = VoteMessage.sign(MEMBERS[1], CHAIN_ID, 1, 0, PREVOTE, NIL)
    for message in (p, vote, Credential(1, 0, p.credential)):
        assert decode_message(encode_message(message)) == message


def test_certificate_below_quorum_or_unsorted_is_refused() -> None:
    block = fake_block(GENESIS, 1, MEMBERS[0].address, 1, [])
    info = inspect_fake(block)
    seed_proof = GuardedSigner(MEMBERS[0], CHAIN_ID).seed_proof(SEED, 1)
    precommits = {m.address: VoteMessage.sign(m, CHAIN_ID, 1, 0, 2, info.hash) for m in MEMBERS}
    ordered = [
        precommits[a].signature for a in sorted(precommits, key=lambda a: bytes.fromhex(a[2:]))
    ]

    def check(sigs: list[bytes]) -> None:
        cert = CommitCertificate(1, 0, info.hash, seed_proof, tuple(sigs))
        verify_certified_block(
            CertifiedBlock(block, cert), CTX, chain_id=CHAIN_ID, inspect=inspect_fake
        )

    check(ordered[:3])  # a quorum, sorted: fine
    with pytest.raises(InvalidConsensusMessage, match="quorum"):
        check(ordered[:2])
    with pytest.raises(InvalidConsensusMessage, match="increasing"):
        check([ordered[1], ordered[0], ordered[2]])
    with pytest.raises(InvalidConsensusMessage, match="increasing"):
        check([ordered[0], ordered[0], ordered[1]])
    outsider = VoteMessage.sign(OUTSIDER, CHAIN_ID, 1, 0, 2, info.hash).signature
    with pytest.raises(InvalidConsensusMessage, match="non-member"):
        check([*ordered[:3], outsider])
