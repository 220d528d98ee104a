"""The double-sign guard: a miner signs at most one proposal/vote per (height, round, step).

Signing two different prevotes (or precommits) for one (height, round) is equivocation: the
ledger contract's ``slash`` takes the miner's whole stake for it. An honest node can only do that
by forgetting what it signed, i.e. after a restart (or with two daemons on one key, which the
data dir lock prevents). So before anything is signed, the guard compares the new
``(height, round, step)`` with the last one it signed (steps: 1 proposal, 2 prevote,
3 precommit):

* greater: the new position and a hash of the signed payload are written to
  ``<datadir>/consensus/signer.json`` with :func:`flnode.fsutil.write_file_atomically` (fsync,
  rename, fsync of the directory) and only then is the message signed and returned;
* equal, with the same payload: signed again (signatures are deterministic, so this is the very
  message already sent: re-sending it is safe);
* anything else: :class:`DoubleSignRefused`.

A crash between the write and the send loses at most that one message, never safety. With
``path=None`` the state lives in memory only (in-process tests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from eth_utils import keccak

from ...fsutil import write_file_atomically
from ...identity import NodeIdentity
from .errors import DoubleSignRefused, SignerStateError
from .messages import PROPOSAL_DOMAIN, Proposal, VoteMessage, proposal_payload
from .sortition import make_credential, make_seed_proof

STEP_PROPOSE = 1
STEP_PREVOTE = 2
STEP_PRECOMMIT = 3
STATE_FILE = "signer.json"


@dataclass(frozen=True, slots=True)
class SignedPosition:
    """The last (height, round, step) signed, and the keccak256 of what was signed there."""

    height: int
    round: int
    step: int
    payload_hash: bytes

    @property
    def hrs(self) -> tuple[int, int, int]:
        return (self.height, self.round, self.step)


class GuardedSigner:
    """Signs consensus messages for one key and chain, never twice differently at one position."""

    def __init__(self, identity: NodeIdentity, chain_id: int, path: Path | None = None) -> None:
        self.identity = identity
        self.address = identity.address
        self.chain_id = chain_id
        self.path = path
        self.last: SignedPosition | None = self._load() if path is not None else None
        self.refused = 0

    def _load(self) -> SignedPosition | None:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SignerStateError(f"cannot read {self.path}: {exc}") from None
        try:
            data = json.loads(raw)
            return SignedPosition(
                int(data["height"]),
                int(data["round"]),
                int(data["step"]),
                bytes.fromhex(data["payload_hash"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SignerStateError(
                f"{self.path} is corrupt ({exc}); the node refuses to sign without knowing what "
                "it signed last"
            ) from None

    def _claim(self, height: int, round_: int, step: int, payload: bytes) -> None:
        digest = keccak(payload)
        new = SignedPosition(height, round_, step, digest)
        last = self.last
        if last is not None:
            if new.hrs < last.hrs:
                self.refused += 1
                raise DoubleSignRefused(
                    f"refusing to sign at {new.hrs}: already signed at the later {last.hrs}"
                )
            if new.hrs == last.hrs:
                if digest == last.payload_hash:
                    return
                self.refused += 1
                raise DoubleSignRefused(
                    f"refusing to sign a second, different message at {new.hrs}"
                )
        if self.path is not None:
            write_file_atomically(
                self.path,
                json.dumps(
                    {
                        "height": height,
                        "round": round_,
                        "step": step,
                        "payload_hash": digest.hex(),
                    }
                ).encode(),
                mode=0o600,
            )
        self.last = new

    def vote(self, height: int, round_: int, kind: int, block_hash: bytes) -> VoteMessage:
        step = STEP_PREVOTE if kind == 1 else STEP_PRECOMMIT
        self._claim(height, round_, step, bytes([kind]) + block_hash)
        return VoteMessage.sign(self.identity, self.chain_id, height, round_, kind, block_hash)

    def proposal(
        self,
        height: int,
        round_: int,
        pol_round: int,
        block: bytes,
        block_hash: bytes,
        seed_proof: bytes,
        credential: bytes,
    ) -> Proposal:
        payload = proposal_payload(
            self.chain_id, height, round_, pol_round, block_hash, seed_proof, credential
        )
        self._claim(height, round_, STEP_PROPOSE, payload)
        signature = self.identity.sign(PROPOSAL_DOMAIN, payload)
        return Proposal(height, round_, pol_round, block, seed_proof, credential, signature)

    def credential(self, seed: bytes, height: int, round_: int) -> bytes:
        """Unique per (seed, height, round) by construction: no guard needed."""
        return make_credential(self.identity, self.chain_id, seed, height, round_)

    def seed_proof(self, prev_seed: bytes, height: int) -> bytes:
        return make_seed_proof(self.identity, self.chain_id, prev_seed, height)
