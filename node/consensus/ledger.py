"""Typed Python wrapper of the ledger contract: calldata in, dataclasses out.

:class:`LedgerContract` turns Python values (``Cid``, addresses, ε as a float) into calldata with
eth-abi and decodes results and events; it executes nothing itself. Reads go through any ``call``
function ``(to, data) -> bytes`` (a :class:`~flnode.consensus.chain.Chain`'s ``call``, or the chain
service's), so the same wrapper serves the synchronous chain, the service and tests.

Votes and slashing evidence are defined here because the contract verifies them: a vote is the
ABI encoding of ``(chain_id, height, round, kind, block_hash)`` signed with
:meth:`flnode.identity.NodeIdentity.sign` under the domain ``flnode/vote/v1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import eth_abi
from eth_utils import to_canonical_address, to_checksum_address

from ..cid import Cid
from ..identity import NodeIdentity, recover_signer
from .abi import AbiCodec, DecodedEvent
from .artifact import LedgerArtifact, load_artifact
from .chain import Log

VOTE_DOMAIN = b"flnode/vote/v1"
SCALE = 10**6  # fixed point of reputation and scores (1.0)
MAX_COMMITTEE = 16
MAX_UPDATES = 128

Caller = Callable[[bytes, bytes], bytes]

# Why a credit was made (RewardCredited.kind).
CREDIT_KINDS = {0: "device", 1: "leader", 2: "committee", 3: "refund", 4: "stake", 5: "reporter"}


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as the registry holds it."""

    id: int
    owner: str
    spec: Cid
    model: Cid
    rounds: int
    updates_per_round: int
    reward_per_round: int
    epsilon: float
    deposit: int
    round: int
    submitted: int
    last_progress_block: int
    closed: bool

    @property
    def finished(self) -> bool:
        return self.round >= self.rounds


@dataclass(frozen=True, slots=True)
class Submission:
    """A device's submission in one round, as the contract stores it (the CID is in the event)."""

    n_samples: int
    status: str  # none, pending, accepted, rejected


_STATUS = {0: "none", 1: "pending", 2: "accepted", 3: "rejected"}


@dataclass(frozen=True, slots=True)
class Vote:
    """A consensus vote; two votes by one miner for the same (height, round, kind) conflict."""

    height: int
    round: int
    kind: int
    block_hash: bytes

    def payload(self, chain_id: int) -> bytes:
        return eth_abi.encode(
            ["uint256", "uint256", "uint256", "uint256", "bytes32"],
            [chain_id, self.height, self.round, self.kind, self.block_hash],
        )

    def sign(self, identity: NodeIdentity, chain_id: int) -> SignedVote:
        return SignedVote(self, identity.sign(VOTE_DOMAIN, self.payload(chain_id)))

    def as_tuple(self) -> tuple[int, int, int, bytes]:
        return (self.height, self.round, self.kind, self.block_hash)


@dataclass(frozen=True, slots=True)
class SignedVote:
    vote: Vote
    signature: bytes

    def signer(self, chain_id: int) -> str:
        return recover_signer(VOTE_DOMAIN, self.vote.payload(chain_id), self.signature)


def _addr(value: str | bytes) -> str:
    return to_checksum_address(value)


class LedgerContract:
    """Encoder/decoder for the ledger contract deployed at ``address``."""

    def __init__(self, address: str | bytes, artifact: LedgerArtifact | None = None) -> None:
        self.address = to_canonical_address(address)
        self.artifact = artifact or load_artifact()
        self.codec = AbiCodec(self.artifact.abi)

    # -- transactions (calldata) ----------------------------------------------------------------

    def create_task(
        self,
        *,
        spec: Cid,
        model: Cid,
        rounds: int,
        updates_per_round: int,
        reward_per_round: int,
        epsilon: float,
        committee: Sequence[str | bytes],
    ) -> bytes:
        """Calldata of ``createTask``; send it with value ≥ rounds × reward_per_round."""
        return self.codec.encode_call(
            "createTask",
            spec.digest,
            model.digest,
            rounds,
            updates_per_round,
            reward_per_round,
            round(epsilon * 1000),
            [_addr(a) for a in committee],
        )

    def join_task(self, task: int) -> bytes:
        return self.codec.encode_call("joinTask", task)

    def submit_update(self, task: int, round_: int, cid: Cid, n_samples: int) -> bytes:
        return self.codec.encode_call("submitUpdate", task, round_, cid.digest, n_samples)

    def commit_round(
        self,
        task: int,
        round_: int,
        aggregate: Cid,
        accepted: Sequence[str | bytes],
        rejected: Sequence[str | bytes],
        scores: Sequence[float],
    ) -> bytes:
        """Calldata of ``commitRound``; ``scores`` are in [0, 1], one per accepted device."""
        return self.codec.encode_call(
            "commitRound",
            task,
            round_,
            aggregate.digest,
            [_addr(a) for a in accepted],
            [_addr(a) for a in rejected],
            [round(s * SCALE) for s in scores],
        )

    def close_task(self, task: int) -> bytes:
        return self.codec.encode_call("closeTask", task)

    def withdraw(self) -> bytes:
        return self.codec.encode_call("withdraw")

    def register_miner(self) -> bytes:
        return self.codec.encode_call("registerMiner")

    def request_leave(self) -> bytes:
        return self.codec.encode_call("requestLeave")

    def leave(self) -> bytes:
        return self.codec.encode_call("leave")

    def slash(self, a: SignedVote, b: SignedVote) -> bytes:
        return self.codec.encode_call(
            "slash", a.vote.as_tuple(), a.signature, b.vote.as_tuple(), b.signature
        )

    # -- reads ----------------------------------------------------------------------------------

    def view(self, call: Caller, name: str, *args: Any) -> Any:
        return self.codec.decode_output(
            name, call(self.address, self.codec.encode_call(name, *args))
        )

    def task(self, call: Caller, task: int) -> TaskInfo | None:
        raw = self.view(call, "tasks", task)
        owner = raw[0]
        if int(owner, 16) == 0:
            return None
        return TaskInfo(
            id=task,
            owner=_addr(owner),
            spec=Cid(raw[1]),
            model=Cid(raw[2]),
            rounds=raw[3],
            updates_per_round=raw[4],
            reward_per_round=raw[5],
            epsilon=raw[6] / 1000,
            deposit=raw[7],
            round=raw[8],
            submitted=raw[9],
            last_progress_block=raw[10],
            closed=raw[11],
        )

    def task_count(self, call: Caller) -> int:
        return int(self.view(call, "task_count"))

    def committee(self, call: Caller, task: int) -> tuple[str, ...]:
        return tuple(self.view(call, "getCommittee", task))

    def submission(self, call: Caller, task: int, round_: int, device: str | bytes) -> Submission:
        word = int(self.view(call, "submissions", task, round_, _addr(device)))
        return Submission(word >> 8, _STATUS.get(word & 0xFF, str(word & 0xFF)))

    def reputation(self, call: Caller, device: str | bytes) -> float:
        """The device's score in [0, 1] (0.5 for a device never judged)."""
        return int(self.view(call, "reputationOf", _addr(device))) / SCALE

    def evidence(self, call: Caller, device: str | bytes) -> tuple[float, float, int]:
        """(positive evidence, negative evidence, judgements) behind a reputation."""
        good = self.view(call, "good", _addr(device)) / SCALE
        bad = self.view(call, "bad", _addr(device)) / SCALE
        return good, bad, int(self.view(call, "judgements", _addr(device)))

    def owed(self, call: Caller, account: str | bytes) -> int:
        return int(self.view(call, "owed", _addr(account)))

    def stake(self, call: Caller, miner: str | bytes) -> int:
        return int(self.view(call, "stake", _addr(miner)))

    def is_active_miner(self, call: Caller, miner: str | bytes) -> bool:
        return bool(self.view(call, "isActiveMiner", _addr(miner)))

    def totals(self, call: Caller) -> dict[str, int]:
        """What the contract owes, holds as task deposits and holds as stakes."""
        return {
            "owed": int(self.view(call, "total_owed")),
            "deposits": int(self.view(call, "total_deposits")),
            "staked": int(self.view(call, "total_staked")),
        }

    # -- events ---------------------------------------------------------------------------------

    def decode_logs(self, logs: Iterable[Log]) -> list[DecodedEvent]:
        """Events of this contract among ``logs`` (others are skipped)."""
        out = []
        for log in logs:
            if log.address != self.address:
                continue
            event = self.codec.decode_event(
                log.address,
                log.topics,
                log.data,
                block_number=log.block_number,
                tx_hash=log.tx_hash,
                log_index=log.log_index,
            )
            if event is not None:
                out.append(event)
        return out

    def event_topic(self, name: str) -> bytes:
        return self.codec.event_topic(name)
