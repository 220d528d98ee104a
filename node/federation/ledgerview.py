"""What the federation roles read from the ledger: a task's current round and its submissions.

Everything here is synchronous and runs in the chain's worker thread
(``ChainService.run_sync``), so one call sees one consistent head.

A round's *opening block* is the task's ``last_progress_block`` (the block of ``createTask`` or of
the previous ``commitRound``), and its submissions are the ``UpdateSubmitted`` events for
(task, round) from that block to the head, in ledger order. A ``commitRound`` judges those plus
the submissions its own block records before it (:func:`in_block_submissions`): a proposer puts
either its ``commitRound`` first, or the round's last submissions and then the commit.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from eth_utils import to_checksum_address

from ..cid import Cid
from ..consensus.abi import DecodedEvent
from ..consensus.chain import Chain
from ..consensus.ledger import LedgerContract, TaskInfo


@dataclass(frozen=True, slots=True)
class SubmittedUpdate:
    """One ``UpdateSubmitted`` event."""

    device: str
    cid: Cid
    n_samples: int
    block: int


@dataclass(frozen=True, slots=True)
class RoundView:
    """A task's open round as of one head."""

    task: TaskInfo
    head_number: int
    head_timestamp: int
    opened_block: int
    opened_at: int
    """Timestamp of the opening block (block time, seconds)."""
    submissions: tuple[SubmittedUpdate, ...]

    @property
    def round(self) -> int:
        return self.task.round

    def deadline(self, deadline_s: float) -> float:
        return self.opened_at + deadline_s

    def closable(self, at: float, deadline_s: float) -> bool:
        """Whether a block with timestamp ``at`` may close this round."""
        return len(self.submissions) >= self.task.updates_per_round or at >= self.deadline(
            deadline_s
        )

    @property
    def key(self) -> tuple[int, int, tuple[str, ...]]:
        """(task, round, each submission's device, CID and sample count, in ledger order): two
        views with equal keys judge the same round (the order matters: of two byte copies, the
        first stands)."""
        return (
            self.task.id,
            self.task.round,
            tuple(f"{s.device.lower()}:{s.cid}:{s.n_samples}" for s in self.submissions),
        )

    def extended(self, extra: Sequence[SubmittedUpdate]) -> RoundView:
        """This view with ``extra`` submissions recorded after the head's (e.g. in the block
        that commits the round)."""
        return replace(self, submissions=self.submissions + tuple(extra))


def tasks(chain: Chain, contract: LedgerContract) -> list[TaskInfo]:
    """Every task on the ledger, oldest first."""
    count = contract.task_count(chain.call)
    out = []
    for i in range(1, count + 1):
        task = contract.task(chain.call, i)
        if task is not None:
            out.append(task)
    return out


def round_view(chain: Chain, contract: LedgerContract, task_id: int) -> RoundView | None:
    """The open round of ``task_id`` at the head (None: no such task)."""
    task = contract.task(chain.call, task_id)
    if task is None:
        return None
    head = chain.head()
    opened = task.last_progress_block
    opened_at = int(chain.block(opened).header.timestamp)
    subs: list[SubmittedUpdate] = []
    if not task.finished and not task.closed:
        for event in contract.decode_logs(
            chain.logs(opened, head.number, address=contract.address)
        ):
            if event.name != "UpdateSubmitted":
                continue
            args = event.args
            if int(args["task"]) != task_id or int(args["round"]) != task.round:
                continue
            subs.append(
                SubmittedUpdate(
                    device=to_checksum_address(args["device"]),
                    cid=Cid(bytes(args["cid"])),
                    n_samples=int(args["n_samples"]),
                    block=int(event.block_number or 0),
                )
            )
    return RoundView(task, head.number, head.timestamp, opened, opened_at, tuple(subs))


@dataclass(slots=True)
class _RoundIndex:
    """What :func:`round_history` needs from every block up to ``scanned``, read once.

    Committed blocks are final (the consensus never reorganises them, and a :class:`Chain`
    keeps its database for life), so the index only ever grows at the head.
    """

    scanned: int = -1
    last_submission: dict[tuple[int, int], int] = field(default_factory=dict)
    committed: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


_round_indexes: weakref.WeakKeyDictionary[Chain, dict[bytes, _RoundIndex]] = (
    weakref.WeakKeyDictionary()
)
_round_indexes_lock = threading.Lock()


def _round_index(chain: Chain, contract: LedgerContract) -> _RoundIndex:
    """``contract``'s round index on ``chain``, brought up to the head."""
    by_contract = _round_indexes.setdefault(chain, {})
    index = by_contract.setdefault(contract.address, _RoundIndex())
    head = chain.head_header()
    if head.block_number <= index.scanned:
        return index
    for event in contract.decode_logs(
        chain.logs(index.scanned + 1, head.block_number, address=contract.address)
    ):
        a = event.args
        if event.name == "UpdateSubmitted":
            index.last_submission[(int(a["task"]), int(a["round"]))] = int(event.block_number or 0)
        elif event.name == "RoundCommitted":
            index.committed.setdefault(int(a["task"]), []).append(committed_entry(chain, event))
    index.scanned = head.block_number
    return index


def committed_entry(chain: Chain, event: DecodedEvent) -> dict[str, Any]:
    """A ``RoundCommitted`` event as :func:`round_history` reports it (less the round's last
    submission block, which other events give)."""
    a = event.args
    block = int(event.block_number or 0)
    return {
        "round": int(a["round"]),
        "aggregate": str(Cid(bytes(a["aggregate"]))),
        "proposer": to_checksum_address(a["proposer"]),
        "accepted": int(a["accepted"]),
        "rejected": int(a["rejected"]),
        "paid_wei": str(int(a["paid"])),
        "block": block,
        "timestamp": int(chain.block(block).header.timestamp),
    }


def round_history(chain: Chain, contract: LedgerContract, task_id: int) -> list[dict[str, object]]:
    """Every ``RoundCommitted`` of ``task_id`` (the ledger's own record of its rounds), with the
    block of the round's last ``UpdateSubmitted`` (the commit's own block when one height
    recorded the round's last updates and closed it).

    Each call reads only the blocks added since the previous one (:class:`_RoundIndex`): miners
    and the ``round_status`` API ask every round, and a scan from the genesis grew with the chain.
    """
    with _round_indexes_lock:
        index = _round_index(chain, contract)
        return [
            {
                **entry,
                "last_submission_block": index.last_submission.get((task_id, int(entry["round"]))),
            }
            for entry in index.committed.get(task_id, [])
        ]


def decode_submission(contract: LedgerContract, tx: Any) -> tuple[int, int, SubmittedUpdate] | None:
    """(task, round, the submission) a signed ``submitUpdate`` transaction to the ledger would
    record if it succeeds; None for any other transaction (or undecodable call data)."""
    data = bytes(tx.data)
    if tx.to is None or bytes(tx.to) != contract.address:
        return None
    if data[:4] != contract.codec.selector("submitUpdate"):
        return None
    try:
        task, round_, digest, n_samples = contract.codec.decode_call("submitUpdate", data)
        cid = Cid(bytes(digest))
    except Exception:  # a malformed call reverts on chain as well
        return None
    sub = SubmittedUpdate(to_checksum_address(tx.sender), cid, int(n_samples), -1)
    return int(task), int(round_), sub


def in_block_submissions(
    contract: LedgerContract,
    transactions: Sequence[Any],
    succeeded: Sequence[bool],
    task_id: int,
    round_: int,
    block: int,
) -> list[SubmittedUpdate]:
    """The submissions to (task, round) that ``transactions`` (a block's, up to some point, each
    with whether it succeeded) recorded, in order: what their ``UpdateSubmitted`` events say."""
    out = []
    for tx, ok in zip(transactions, succeeded, strict=True):
        if not ok:
            continue
        decoded = decode_submission(contract, tx)
        if decoded is not None and decoded[:2] == (task_id, round_):
            out.append(replace(decoded[2], block=block))
    return out
