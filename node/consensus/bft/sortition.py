"""Algorand-style sortition: who leads a consensus round, provably and unpredictably.

Credential
    ``credential = sign(miner key, "flnode/sortition/v1", rlp([chain_id, seed, height, round]))``,
    a :mod:`flnode.identity` signature. Signatures there are deterministic (RFC 6979) and low-s
    only, so each miner has exactly **one** valid credential per (seed, height, round): it cannot
    grind for a better one, yet nobody else can compute it before the miner reveals it, and
    anyone can check it from the miner's address (``recover_signer``). This is the VRF of Algorand
    built from an ordinary deterministic signature.

Priority (stake-weighted)
    A miner holds ``units = clamp(stake // unit_stake, 1, MAX_UNITS)`` lottery tickets, where
    ``unit_stake`` is the smallest stake in the committee; ticket ``i`` is
    ``keccak256(credential ‖ i as 2 bytes)`` read as an integer, and the miner's priority is its
    lowest ticket. **The lowest priority leads the round** (ties, which need a hash collision, go
    to the lower address). A miner with k tickets wins with probability k / Σk, which is
    Algorand's sub-user rule made exact with integers (no floating point, so every node ranks
    identically). Voting power is *not* stake-weighted: each committee member has one vote, so
    the BFT bound is f < n/3 members (see ARCHITECTURE.md, Consensus).

Seed
    ``seed(0) = keccak256("flnode/seed/genesis" ‖ 0 ‖ genesis hash)`` and, for the block at
    height h with coinbase c, ``seed(h) = keccak256(seed(h-1) ‖ seed_proof(h))`` where
    ``seed_proof(h) = sign(c, "flnode/seed/v1", rlp([chain_id, seed(h-1), h]))``. The proof is
    again a unique deterministic signature, carried in the proposal and in the commit certificate,
    so the proposer of block h cannot grind the seed of height h+1 by choosing transactions or a
    timestamp (it could only decline to propose). Credentials for height h+1 use ``seed(h)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import rlp
from eth_utils import keccak, to_checksum_address

from ...errors import IdentityError
from ...identity import NodeIdentity, recover_signer
from .errors import InvalidConsensusMessage

CREDENTIAL_DOMAIN = b"flnode/sortition/v1"
SEED_DOMAIN = b"flnode/seed/v1"
MAX_UNITS = 64
"""Most lottery tickets one miner holds (bounds the hashing per credential check)."""


def genesis_seed(genesis_hash: bytes) -> bytes:
    """The seed of height 1's sortition, derived from the network's genesis hash."""
    return keccak(b"flnode/seed/genesis\x00" + genesis_hash)


def credential_payload(chain_id: int, seed: bytes, height: int, round_: int) -> bytes:
    return rlp.encode([chain_id, seed, height, round_])


def seed_proof_payload(chain_id: int, prev_seed: bytes, height: int) -> bytes:
    return rlp.encode([chain_id, prev_seed, height])


def next_seed(prev_seed: bytes, seed_proof: bytes) -> bytes:
    """The seed after a block whose coinbase made ``seed_proof``."""
    return keccak(prev_seed + seed_proof)


def make_credential(
    identity: NodeIdentity, chain_id: int, seed: bytes, height: int, round_: int
) -> bytes:
    return identity.sign(CREDENTIAL_DOMAIN, credential_payload(chain_id, seed, height, round_))


def make_seed_proof(identity: NodeIdentity, chain_id: int, prev_seed: bytes, height: int) -> bytes:
    return identity.sign(SEED_DOMAIN, seed_proof_payload(chain_id, prev_seed, height))


def credential_signer(
    credential: bytes, chain_id: int, seed: bytes, height: int, round_: int
) -> str:
    """The address whose credential this is; ``InvalidConsensusMessage`` if it is malformed."""
    try:
        return recover_signer(
            CREDENTIAL_DOMAIN, credential_payload(chain_id, seed, height, round_), credential
        )
    except IdentityError as exc:
        raise InvalidConsensusMessage("bad-credential", str(exc)) from None


def seed_proof_signer(seed_proof: bytes, chain_id: int, prev_seed: bytes, height: int) -> str:
    try:
        return recover_signer(
            SEED_DOMAIN, seed_proof_payload(chain_id, prev_seed, height), seed_proof
        )
    except IdentityError as exc:
        raise InvalidConsensusMessage("bad-seed-proof", str(exc)) from None


def priority(credential: bytes, units: int) -> int:
    """The lowest of the miner's ``units`` tickets (lower is better; see module docstring)."""
    return min(
        int.from_bytes(keccak(credential + i.to_bytes(2, "big")), "big") for i in range(units)
    )


@dataclass(frozen=True)
class Committee:
    """The miners that may propose and vote at one height, with their stakes.

    Members are checksummed addresses, sorted; thresholds count members (one vote each):
    ``quorum`` = n − ⌊(n−1)/3⌋ (2f+1 when n = 3f+1) and ``weak`` = ⌊(n−1)/3⌋ + 1 (f+1).
    """

    stakes: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, stakes: Mapping[str, int] | Iterable[tuple[str, int]]) -> Committee:
        items = stakes.items() if isinstance(stakes, Mapping) else stakes
        merged = {to_checksum_address(a): int(s) for a, s in items if int(s) > 0}
        return cls(tuple(sorted(merged.items())))

    def __post_init__(self) -> None:
        if not self.stakes:
            raise ValueError("a committee needs at least one staked miner")

    @cached_property
    def members(self) -> frozenset[str]:
        return frozenset(a for a, _ in self.stakes)

    @property
    def size(self) -> int:
        return len(self.stakes)

    @property
    def faulty(self) -> int:
        """f: the most faulty members the committee tolerates."""
        return (self.size - 1) // 3

    @property
    def quorum(self) -> int:
        return self.size - self.faulty

    @property
    def weak(self) -> int:
        return self.faulty + 1

    @cached_property
    def _units(self) -> dict[str, int]:
        unit = min(s for _, s in self.stakes)
        return {a: max(1, min(MAX_UNITS, s // unit)) for a, s in self.stakes}

    def __contains__(self, address: object) -> bool:
        return address in self.members

    def units(self, address: str) -> int:
        return self._units[address]

    def priority(self, address: str, credential: bytes) -> int:
        return priority(credential, self._units[address])
