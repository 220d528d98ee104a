"""Commit certificates: how one is made from precommits, and how anyone checks one.

A certified block is final: a node imports a block only with a certificate that verifies against
the committee of that height, so committed blocks are never reorganised (py-evm's longest-chain
rule never gets a say, see ARCHITECTURE.md, Ledger). The checks, in order:

1. the block decodes (the node's :data:`BlockInspector`) and its hash is the certified hash;
2. its number is the height and its parent is the local head (``parent_hash``);
3. its coinbase is a committee member and the seed proof is the coinbase's for this height;
4. every signature is a precommit for (height, round, hash) by a distinct member, the signers in
   strictly increasing address order (one byte form per signer set), and there are at least
   ``quorum`` (2f+1) of them.

Why the coinbase must be a member: the ledger contract lets only ``block.coinbase`` commit a
training round, so consensus must certify only blocks built by a miner who led a round of that
height. Honest members prevote only a block proposed by the round's leader (or re-proposed with a
proof of lock, see :mod:`.core`), and a certificate needs f+1 honest precommits, each preceded by
2f+1 prevotes, so the coinbase of a certified block did lead a round at that height.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from eth_utils import to_checksum_address

from .errors import InvalidConsensusMessage
from .messages import CertifiedBlock, CommitCertificate, VoteMessage
from .sortition import Committee, next_seed, seed_proof_signer


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """What consensus needs to know of a block (the application's block format stays opaque)."""

    hash: bytes
    parent_hash: bytes
    number: int
    coinbase: str  # checksummed address
    timestamp: int = 0


BlockInspector = Callable[[bytes], BlockInfo]
"""Decodes a block's bytes into a :class:`BlockInfo`; raises ``InvalidConsensusMessage``."""


@dataclass(frozen=True, slots=True)
class HeightContext:
    """Everything the agreement at one height depends on, fixed by the chain before it starts."""

    height: int
    parent_hash: bytes
    seed: bytes
    committee: Committee


def make_certificate(
    height: int,
    round_: int,
    block_hash: bytes,
    seed_proof: bytes,
    precommits: Iterable[tuple[str, VoteMessage]],
) -> CommitCertificate:
    """A certificate from (signer, precommit) pairs, sorted by signer address."""
    ordered = sorted(precommits, key=lambda p: bytes.fromhex(p[0][2:]))
    return CommitCertificate(
        height, round_, block_hash, seed_proof, tuple(v.signature for _, v in ordered)
    )


def verify_certified_block(
    certified: CertifiedBlock,
    ctx: HeightContext,
    *,
    chain_id: int,
    inspect: BlockInspector,
) -> tuple[BlockInfo, bytes]:
    """Check ``certified`` against the height's context; returns the block info and next seed.

    Raises :class:`InvalidConsensusMessage` (reason ``bad-certificate`` or the inspector's).
    """
    cert = certified.certificate
    info = inspect(certified.block)

    def bad(detail: str) -> InvalidConsensusMessage:
        return InvalidConsensusMessage("bad-certificate", detail)

    if info.hash != cert.block_hash:
        raise bad("the block is not the certified one")
    if cert.height != ctx.height or info.number != ctx.height:
        raise bad(f"certificate for height {cert.height}, block {info.number}, not {ctx.height}")
    if info.parent_hash != ctx.parent_hash:
        raise bad("the block does not extend the local head")
    committee = ctx.committee
    coinbase = to_checksum_address(info.coinbase)
    if coinbase not in committee:
        raise bad(f"coinbase {coinbase} is not a committee member")
    if seed_proof_signer(cert.seed_proof, chain_id, ctx.seed, ctx.height) != coinbase:
        raise bad("the seed proof is not the coinbase's")
    previous = b""
    for vote in cert.precommits():
        signer = vote.signer(chain_id)
        if signer not in committee:
            raise bad(f"precommit by non-member {signer}")
        key = bytes.fromhex(signer[2:])
        if key <= previous:
            raise bad("precommit signers must be distinct and in increasing address order")
        previous = key
    if len(cert.signatures) < committee.quorum:
        raise bad(f"{len(cert.signatures)} precommits; a quorum is {committee.quorum}")
    return info, next_seed(ctx.seed, cert.seed_proof)
