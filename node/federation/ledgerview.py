"""What the federation roles read from the ledger: a task's current round and its submissions.

Everything here is synchronous and runs in the chain's worker thread
(``ChainService.run_sync``), so one call sees one consistent head.

A round's *opening block* is the task's ``last_progress_block`` (the block of ``createTask`` or of
the previous ``commitRound``), and its submissions are the ``UpdateSubmitted`` events for
(task, round) from that block to the head, in ledger order: exactly what a ``commitRound`` in the
next block judges, since the proposer puts its ``commitRound`` first in its block.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_checksum_address

from ..cid import Cid
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
        """(task, round, submitted CIDs): two views with equal keys judge the same round."""
        return self.task.id, self.task.round, tuple(str(s.cid) for s in self.submissions)


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


def round_history(chain: Chain, contract: LedgerContract, task_id: int) -> list[dict[str, object]]:
    """Every ``RoundCommitted`` of ``task_id`` (the ledger's own record of its rounds)."""
    head = chain.head()
    out: list[dict[str, object]] = []
    for event in contract.decode_logs(chain.logs(0, head.number, address=contract.address)):
        if event.name == "RoundCommitted" and int(event.args["task"]) == task_id:
            a = event.args
            out.append(
                {
                    "round": int(a["round"]),
                    "aggregate": str(Cid(bytes(a["aggregate"]))),
                    "proposer": to_checksum_address(a["proposer"]),
                    "accepted": int(a["accepted"]),
                    "rejected": int(a["rejected"]),
                    "paid_wei": str(int(a["paid"])),
                    "block": int(event.block_number or 0),
                    "timestamp": int(chain.block(int(event.block_number or 0)).header.timestamp),
                }
            )
    return out
