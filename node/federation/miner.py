"""The miner's part in training: judge each round, propose its commit, check others' commits.

For every open task, a miner follows the ledger head by head (proposing is for the task's
committee only, since the contract takes a ``commitRound`` from them only; judging and checking
is for every miner, so that a task committee with a faulty majority cannot commit a wrong round
past a BFT quorum of honest miners):

1. **Collect**: each ``UpdateSubmitted`` of the open round names an update by CID; the miner
   fetches it (from the submitting device first, then any peer) as soon as it appears, and so
   it does for each ``submitUpdate`` still waiting in its mempool.
2. **Judge**: once the round may close — ``updates_per_round`` submissions are in, or the block
   time has passed the spec's ``deadline_s`` after the round's opening block — and every fetch
   has finished, it runs :func:`~flnode.learning.federated.judge_round` (shape/dtype/finite/norm
   checks, then the task's robust rule) and stores the aggregate in its blob store. It also
   judges, ahead of time, the round as the pending submissions would complete it (their senders
   in address order, as many as the round still takes; never when two of them are byte copies,
   since the first copy in ledger order stands).
3. **Propose**: through the consensus' :class:`~flnode.consensus.bft.abc.ProposalSource` hook,
   the miner that leads a height puts its own signed ``commitRound`` in its block (the contract
   accepts it only from the block's coinbase): first, when the head's round is closable; or,
   when pending submissions complete the round, after those submissions, so that **one height
   records the round's last updates and commits it** (the leader waits briefly for that
   judgment; only in consensus round 0, so that a submission that reverts after all costs one
   round, not liveness). A closable round also wakes an idle height, so a round closes on its
   deadline even when no other transaction is pending.
4. **Validate**: before prevoting on a proposal, every miner recomputes the round (the
   submissions of the parent block's view plus those the proposed block records before the
   commit) and prevotes nil unless the proposal carries the same accepted and rejected devices
   and the same aggregate (equal CID, or equal within
   :data:`~flnode.learning.aggregation.AGGREGATE_TOLERANCE` after fetching it), and unless the
   block's timestamp really closes the round.
5. **Record**: after a commit, the miner evaluates the new global model on the spec's validation
   set (the test split's first ``eval_size`` images) and writes the round to
   ``<datadir>/federation/task-<id>.json`` (also served by ``round_status``).

``federation.fault = "wrong-aggregate"`` makes this miner propose a perturbed aggregate (for the
fault-tolerance test and demonstrations): honest miners refuse it and the next leader commits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio
from eth.abc import BlockAPI
from eth_utils import to_checksum_address

from ..cid import Cid
from ..consensus.chain import TxOutcome
from ..consensus.ledger import MAX_COMMITTEE
from ..learning.aggregation import aggregates_match
from ..learning.federated import (
    RoundDecision,
    Submission,
    evaluate_model,
    judge_round,
    load_weights,
    network_config,
)
from ..learning.serialization import weights_to_bytes
from ..learning.taskspec import LearningTaskSpec
from . import ledgerview
from .context import BACKGROUND_NICE, FederationContext, FederationError, run_low_priority

_VALIDATE_WAIT_S = 20.0
_MEMPOOL_POLL_S = 0.05
_RECORD_FETCH_ATTEMPTS = 24
_RECORD_FETCH_RETRY_S = 5.0
"""A committed model this miner could not fetch is tried again every 5 s for 2 minutes."""
RoundKey = tuple[int, int, tuple[str, ...]]
_FETCH_ATTEMPTS = 3  # an update nobody can serve after this is rejected as unfetchable


@dataclass
class _Round:
    """A miner's working state for one task's open round."""

    task: int
    round: int
    spec: LearningTaskSpec
    model: Cid
    opened_at: int
    fetched: dict[str, bytes | None] = field(default_factory=dict)
    """CID → bytes (None: the fetch failed)."""
    fetching: set[str] = field(default_factory=set)
    fetch_s: dict[str, float] = field(default_factory=dict)
    decisions: dict[RoundKey, tuple[RoundDecision, Cid]] = field(default_factory=dict)
    """Judged views of the round, by key (the head's view, and views that add submissions
    still pending or recorded in a proposed block)."""
    judging: set[RoundKey] = field(default_factory=set)
    wanted: dict[RoundKey, ledgerview.RoundView] = field(default_factory=dict)
    """Views a proposal asks this miner to check, judged as soon as their updates arrive."""
    wanted_at: float | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    # Wall-clock moments of the round as this miner saw them (for the round report/benchmark).
    seen_open_at: float = field(default_factory=time.time)
    closable_at: float | None = None
    fetched_at: float | None = None
    judged_at: float | None = None
    commit_seen_at: float | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    """A ``submitUpdate`` waiting in the mempool, next in line for its sender."""

    task: int
    round: int
    sub: ledgerview.SubmittedUpdate
    raw: bytes


class MinerRole:
    """Judges, proposes and validates rounds (see the module docstring)."""

    def __init__(self, ctx: FederationContext) -> None:
        self.ctx = ctx
        self.log = ctx.log.bind(role="miner")
        self._rounds: dict[int, _Round] = {}
        self._views: dict[int, ledgerview.RoundView] = {}
        self._nursery: trio.Nursery | None = None
        self._limiter = trio.CapacityLimiter(1)  # evaluations, one at a time, low priority
        self._judge_limiter = trio.CapacityLimiter(1)
        self._evaluated: set[tuple[int, int]] = set()
        self._locks: dict[int, trio.Lock] = {}
        self._unusable: dict[int, str] = {}
        self._backfilled: set[int] = set()
        self._committee_of: dict[int, bool] = {}  # task → whether we sit on its committee
        self._pending: dict[str, _Pending] = {}  # sender (lower case) → its pending submission
        self._pending_marker: tuple[int, int] | None = None  # (mempool admissions, head) read
        self.fault = ctx.config.federation.fault == "wrong-aggregate"

    # -- the consensus hooks ------------------------------------------------------------------

    def wants_block(self) -> bool:
        # Only a view of the current head counts: right after a round's commit the old view
        # still looks ready until the next refresh, and would ask for an empty block.
        head = self.ctx.chain.latest_head
        return head is not None and any(
            view.head_number == head.number
            and self._committee_of.get(view.task.id, False)
            and self._closing(view, prospective=True) is not None
            for view in self._views.values()
        )

    def _closing(
        self, view: ledgerview.RoundView, *, prospective: bool
    ) -> tuple[ledgerview.RoundView, list[_Pending], RoundDecision, Cid] | None:
        """What a block on ``view``'s head can commit for its task, judged already: the head's
        view (the block starts with the commit), or else, when ``prospective``, the view that
        the mempool's pending submissions complete (the block starts with those submissions,
        then the commit: one height records and closes the round)."""
        state = self._rounds.get(view.task.id)
        if state is None or state.round != view.round:
            return None
        judged = state.decisions.get(view.key)
        if judged is not None:
            return view, [], *judged
        if not prospective:
            return None
        completed = self._prospective(view)
        if completed is None:
            return None
        full, pending = completed
        judged = state.decisions.get(full.key)
        return None if judged is None else (full, pending, *judged)

    def _prospective(
        self, view: ledgerview.RoundView
    ) -> tuple[ledgerview.RoundView, list[_Pending]] | None:
        """The round completed by submissions still in the mempool, with their transactions:
        the senders' next-in-line ``submitUpdate`` for this round, in address order (every miner
        picks the same ones, and the leader puts them in its block in that order), as many as the
        round still takes. None when too few are pending, or two of them carry the same CID."""
        need = view.task.updates_per_round - len(view.submissions)
        if need <= 0:
            return None
        have = {s.device.lower() for s in view.submissions}
        pending = sorted(
            (
                p
                for sender, p in self._pending.items()
                if p.task == view.task.id and p.round == view.round and sender not in have
            ),
            key=lambda p: p.sub.device.lower(),
        )
        if len(pending) < need:
            return None
        chosen = pending[:need]
        if len({p.sub.cid for p in chosen}) < len(chosen):
            # Of two byte copies the first in ledger order stands. Address order would hand that
            # to whoever has the lower address (a copier can pick its key): let a block record
            # them in arrival order first, and close the round in the next.
            return None
        extra = [replace(p.sub, block=view.head_number + 1) for p in chosen]
        return view.extended(extra), chosen

    async def prepare(self, head_number: int, round_: int) -> None:
        """Before leading a block at consensus round 0: when pending submissions complete a
        round, wait until this miner follows the head and has judged the completed round, so
        that the block can record them and commit the round at once (the consensus bounds the
        wait; a block without the commit is the fallback, and the next one commits)."""
        if round_ != 0:
            return
        # The transaction that woke this height may be newer than the last look at the mempool.
        await self._rescan_mempool()
        while True:
            waiting: _Round | None = None
            for task_id, view in list(self._views.items()):
                state = self._rounds.get(task_id)
                if state is None or not self._committee_of.get(task_id, False):
                    continue
                if not any(p.task == task_id for p in self._pending.values()):
                    continue
                if view.head_number < head_number:
                    waiting = state  # the view of the new head is still being read
                    break
                if view.head_number != head_number or view.key in state.decisions:
                    continue
                completed = self._prospective(view)
                if completed is not None and completed[0].key not in state.decisions:
                    waiting = state
                    break
            if waiting is None:
                return
            await waiting.changed.wait()

    async def transactions(self, head_number: int, round_: int = 0) -> list[bytes]:
        out: list[bytes] = []
        ours = 0  # our transactions in the block so far: each takes the next nonce
        me = self.ctx.address.lower()
        for task_id, view in list(self._views.items()):
            if view.head_number != head_number:
                continue
            if not self._committee_of.get(task_id, False):
                continue  # the contract takes a task's commitRound from its committee only
            # Pending submissions only in round 0: should one of them revert after all, the
            # other miners refuse the commit, and the next round's leader commits without them.
            closing = self._closing(view, prospective=round_ == 0)
            if closing is None:
                continue
            full, pending, decision, cid = closing
            raws = [p.raw for p in pending if p.raw not in out]
            ours_here = sum(1 for p in pending if p.sub.device.lower() == me and p.raw in raws)
            data = self.ctx.contract.commit_round(
                task_id,
                full.round,
                cid,
                decision.accepted,
                decision.rejected,
                [1.0] * len(decision.accepted),
            )
            key = self.ctx.identity.private_key

            gas = commit_gas(len(decision.accepted), len(decision.rejected))

            def sign(
                data: bytes = data, key: Any = key, offset: int = ours + ours_here, gas: int = gas
            ) -> bytes:
                chain = self.ctx.chain.chain
                nonce = chain.nonce(self.ctx.identity.address_bytes) + offset
                tx = chain.sign_transaction(
                    key,
                    to=self.ctx.contract.address,
                    data=data,
                    nonce=nonce,
                    gas=min(gas, int(chain.head_header().gas_limit)),
                )
                return tx.encode()

            try:
                signed = await self.ctx.chain.run_sync(sign)
            except Exception as exc:  # a broken key or database: no commit from us this time
                self.log.warning("cannot sign a round commit", task=task_id, error=str(exc))
                continue
            out.extend(raws)
            out.append(signed)
            ours += ours_here + 1
            self.log.info(
                "proposing round commit",
                task=task_id,
                round=view.round,
                height=head_number + 1,
                consensus_round=round_,
                aggregate=str(cid),
                accepted=len(decision.accepted),
                rejected=len(decision.rejected),
                with_submissions=len(raws),
            )
        return out

    async def validate(self, block: BlockAPI, outcomes: Sequence[TxOutcome]) -> bool:
        """The application check of a proposed block (``BlockValidator``)."""
        contract = self.ctx.contract
        selector = contract.codec.selector("commitRound")
        txs = list(block.transactions)
        for index, tx in enumerate(txs):
            if bytes(tx.to) != contract.address or bytes(tx.data[:4]) != selector:
                continue
            args = contract.codec.decode_call("commitRound", bytes(tx.data))
            task_id, round_, aggregate = int(args[0]), int(args[1]), Cid(bytes(args[2]))
            accepted = tuple(a.lower() for a in args[3])
            rejected = tuple(a.lower() for a in args[4])
            if task_id in self._unusable:
                continue  # nobody can judge it (its spec is unusable); the contract's rules hold
            # What the block recorded for the round before this commit, which judges it too.
            earlier = ledgerview.in_block_submissions(
                contract,
                txs[:index],
                [o.success for o in outcomes[:index]],
                task_id,
                round_,
                int(block.header.block_number),
            )
            # Every miner checks every commitRound, not only the task committee's members: the
            # contract accepts one from any committee member, so a task committee whose honest
            # members are fewer than a BFT quorum would otherwise be at its faulty members' mercy.
            ok = await self._check_commit(
                task_id,
                round_,
                aggregate,
                accepted,
                rejected,
                int(block.header.timestamp),
                earlier,
                proposer=to_checksum_address(tx.sender),
            )
            if not ok:
                return False
        return True

    async def _is_member(self, task_id: int) -> bool:
        return bool(await self._membership(task_id))

    async def _membership(self, task_id: int) -> bool | None:
        """Whether this miner sits on the task's committee (None: the ledger could not say)."""

        def read() -> bool:
            committee = self.ctx.contract.committee(self.ctx.chain.chain.call, task_id)
            return self.ctx.address.lower() in {m.lower() for m in committee}

        try:
            return await self.ctx.chain.run_sync(read)
        except Exception as exc:
            self.log.warning("cannot read a task's committee", task=task_id, error=repr(exc))
            return None

    async def _check_commit(
        self,
        task_id: int,
        round_: int,
        aggregate: Cid,
        accepted: tuple[str, ...],
        rejected: tuple[str, ...],
        timestamp: int,
        earlier: Sequence[ledgerview.SubmittedUpdate] = (),
        *,
        proposer: str,
    ) -> bool:
        refetched = False
        while True:
            judged = await self._judgment_for(task_id, round_, timestamp, earlier)
            if judged is None:
                return False
            state, target, decision, mine = judged
            if (
                tuple(a.lower() for a in decision.accepted) == accepted
                and tuple(a.lower() for a in decision.rejected) == rejected
            ):
                break
            # An update this miner failed to fetch (a busy or briefly unreachable device) is
            # rejected here but may be valid: fetch those again, once, and judge again, rather
            # than hold out for a judgment that only a local failure made.
            if not refetched and self._forget_unfetched(state, target):
                refetched = True
                self.log.info("fetching updates again to check a proposal", task=task_id)
                continue
            self.log.warning(
                "proposed commit judges the updates differently",
                task=task_id,
                round=round_,
                proposed_accepted=len(accepted),
                mine_accepted=len(decision.accepted),
                proposed_rejected=len(rejected),
                mine_rejected=len(decision.rejected),
            )
            return False
        if aggregate == mine:
            return True
        # The miner that sent the commit holds its aggregate; among many peers it might not be
        # one of the few a plain fetch asks.
        try:
            theirs = await self.ctx.fetch(aggregate, prefer=[proposer])
        except FederationError as exc:
            self.log.warning("cannot fetch the proposed aggregate", error=str(exc))
            return False
        cfg = network_config(state.spec, 1)

        def compare() -> bool:
            try:
                return aggregates_match(
                    load_weights(cfg, decision.weights), load_weights(cfg, theirs)
                )
            except Exception:
                return False

        same = await trio.to_thread.run_sync(compare)
        if not same:
            self.log.warning(
                "proposed aggregate differs from mine",
                task=task_id,
                round=round_,
                proposed=str(aggregate),
            )
        return same

    async def _judgment_for(
        self,
        task_id: int,
        round_: int,
        timestamp: int,
        earlier: Sequence[ledgerview.SubmittedUpdate],
    ) -> tuple[_Round, ledgerview.RoundView, RoundDecision, Cid] | None:
        """This miner's judgment of the round a proposed commit closes (the head's view plus
        ``earlier``, what the block records before the commit), waiting for it if need be; None
        (logged) when the proposal cannot be right or no judgment came in time."""
        with trio.move_on_after(_VALIDATE_WAIT_S):
            while True:
                view = self._views.get(task_id)
                head = self.ctx.chain.latest_head
                if view is None or head is None or view.head_number != head.number:
                    await self.refresh_task(task_id)  # a proposal builds on the latest head
                view = self._views.get(task_id)
                state = self._rounds.get(task_id)
                if view is None or state is None or view.round != round_:
                    self.log.warning(
                        "proposed commit is for another round", task=task_id, round=round_
                    )
                    return None
                target = view.extended(earlier) if earlier else view
                if not target.closable(timestamp, state.spec.round.deadline_s):
                    self.log.warning(
                        "proposed commit closes a round early",
                        task=task_id,
                        round=round_,
                        submissions=len(target.submissions),
                    )
                    return None
                judged = state.decisions.get(target.key)
                if judged is not None:
                    return state, target, *judged
                state.wanted[target.key] = target
                self._maybe_judge(task_id)
                await state.changed.wait()
        self.log.warning("could not judge the proposed round in time", task=task_id, round=round_)
        return None

    def _forget_unfetched(self, state: _Round, view: ledgerview.RoundView) -> bool:
        """Forget the failed fetches among ``view``'s updates and every judgment that counted
        them, so that they are fetched and judged again; whether there were any."""
        failed = {
            str(s.cid) for s in view.submissions if state.fetched.get(str(s.cid), b"") is None
        }
        if not failed:
            return False
        for cid in failed:
            del state.fetched[cid]
        for key in [k for k in state.decisions if any(e.split(":")[1] in failed for e in k[2])]:
            del state.decisions[key]
        return True

    # -- following the ledger -----------------------------------------------------------------

    async def run(self) -> None:
        heads = self.ctx.chain.subscribe_blocks()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._clock)
            nursery.start_soon(self._watch_mempool)
            with heads:
                await self._refresh_guarded()
                async for _head in heads:
                    await self._refresh_guarded()

    async def _refresh_guarded(self) -> None:
        try:
            await self.refresh_all()
        except Exception as exc:  # the miner must outlive a bad step; the next head retries
            self.log.error("following the ledger failed", error=repr(exc))

    async def _clock(self) -> None:
        """Deadlines pass between blocks: re-check open rounds every second."""
        while True:
            await trio.sleep(1.0)
            for task_id in list(self._views):
                self._maybe_judge(task_id)

    async def _watch_mempool(self) -> None:
        """Keep :attr:`_pending` (each sender's next-in-line ``submitUpdate``) current, polling
        the mempool's admission counter and the head: a round's last updates are fetched and
        judged while their transactions still wait for a block."""
        while True:
            await trio.sleep(_MEMPOOL_POLL_S)
            await self._rescan_mempool()

    async def _rescan_mempool(self) -> None:
        head = self.ctx.chain.latest_head
        if not self._views or head is None:
            return
        marker = (self.ctx.chain.chain.mempool.added, head.number)
        if marker == self._pending_marker:
            return
        self._pending_marker = marker
        contract = self.ctx.contract

        def scan() -> dict[str, _Pending]:
            out = {}
            for tx in self.ctx.chain.chain.mempool.next_in_line():
                decoded = ledgerview.decode_submission(contract, tx)
                if decoded is not None:
                    task, round_, sub = decoded
                    out[sub.device.lower()] = _Pending(task, round_, sub, tx.encode())
            return out

        pending = await self.ctx.chain.run_sync(scan)
        changed = pending.keys() != self._pending.keys()
        self._pending = pending
        if changed:
            for task_id in list(self._views):
                self._maybe_judge(task_id)
                state = self._rounds.get(task_id)
                if state is not None:
                    self._wake(state)

    async def refresh_all(self) -> None:
        tasks = await self.ctx.chain.run_sync(
            ledgerview.tasks, self.ctx.chain.chain, self.ctx.contract
        )
        for task in tasks:
            if task.closed or task.finished:
                self._views.pop(task.id, None)
                if task.id in self._rounds:
                    await self._committed(task.id)
                    self._rounds.pop(task.id, None)
                elif task.id not in self._backfilled and task.id not in self._unusable:
                    # Finished while this miner was down: record what it missed, if its committee.
                    self._backfilled.add(task.id)
                    if await self._is_member(task.id):
                        await self._backfill(task.id, task.spec, task.owner, task.rounds)
                continue
            if task.id in self._unusable:
                continue
            if task.id not in self._committee_of:
                member = await self._membership(task.id)
                if member is not None:  # a task's committee is fixed when it is created
                    self._committee_of[task.id] = member
            try:
                await self.refresh_task(task.id)
            except FederationError as exc:  # e.g. its spec cannot be fetched yet: try again later
                self.log.warning("cannot follow task yet", task=task.id, error=str(exc))
            except ValueError as exc:  # a spec that does not parse, or a mode the network lacks
                self._unusable[task.id] = str(exc)
                self._views.pop(task.id, None)
                self.log.error("task cannot be judged; ignoring it", task=task.id, error=str(exc))

    async def refresh_task(self, task_id: int) -> None:
        async with self._locks.setdefault(task_id, trio.Lock()):
            await self._refresh_task(task_id)

    async def _refresh_task(self, task_id: int) -> None:
        view = await self.ctx.chain.run_sync(
            ledgerview.round_view, self.ctx.chain.chain, self.ctx.contract, task_id
        )
        if view is None:
            return
        previous = self._views.get(task_id)
        self._views[task_id] = view
        state = self._rounds.get(task_id)
        if state is None or state.round != view.round:
            if state is not None:
                await self._committed(task_id)
            spec = await self.ctx.spec(view.task.spec, prefer=[view.task.owner])
            if state is None and task_id not in self._backfilled:
                self._backfilled.add(task_id)
                await self._backfill(task_id, view.task.spec, view.task.owner, view.round)
            state = _Round(task_id, view.round, spec, view.task.model, view.opened_at)
            self._rounds[task_id] = state
            self.ctx.publish(
                "round_started", task=task_id, round=view.round, model=str(view.task.model)
            )
            self.log.info("round open", task=task_id, round=view.round, model=str(view.task.model))
            # Make sure we hold the global model (the aggregate judged against it).
            self._start(self._fetch_model, state, view.task.owner)
        for sub in view.submissions:
            self._fetch_soon(state, sub)
        if previous is None or (previous.key, previous.head_number) != (view.key, view.head_number):
            self._wake(state)
        self._maybe_judge(task_id)

    def _start(self, fn: Any, *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    @staticmethod
    def _wake(state: _Round) -> None:
        state.changed.set()
        state.changed = trio.Event()

    async def _fetch_model(self, state: _Round, owner: str) -> None:
        """The round's global model: the owner published the first, the committee holds the
        others. Retried until it arrives (a round cannot be judged without it)."""
        committee = await self.ctx.chain.run_sync(
            self.ctx.contract.committee, self.ctx.chain.chain.call, state.task
        )
        delay = 1.0
        while self._rounds.get(state.task) is state:
            try:
                await self.ctx.fetch(state.model, prefer=[owner, *committee], pin=True)
                break
            except FederationError as exc:
                self.log.warning(
                    "cannot fetch the round's global model yet", task=state.task, error=str(exc)
                )
            await trio.sleep(delay)
            delay = min(2 * delay, 15.0)
        self._maybe_judge(state.task)

    async def _fetch_update(self, state: _Round, sub: ledgerview.SubmittedUpdate) -> None:
        t0 = time.perf_counter()
        key = str(sub.cid)
        data: bytes | None = None
        for attempt in range(_FETCH_ATTEMPTS):
            try:
                data = await self.ctx.fetch(sub.cid, prefer=[sub.device])
                self.ctx.publish(
                    "update_received",
                    task=state.task,
                    round=state.round,
                    device=sub.device,
                    cid=key,
                )
                break
            except FederationError as exc:
                self.log.warning(
                    "cannot fetch an update",
                    device=sub.device,
                    cid=key,
                    attempt=attempt + 1,
                    error=str(exc),
                )
                await trio.sleep(2.0 * (attempt + 1))
        state.fetch_s[key] = time.perf_counter() - t0
        state.fetched[key] = data
        state.fetching.discard(key)
        self._maybe_judge(state.task)

    def _maybe_judge(self, task_id: int) -> None:
        """Judge every view of the open round that a block may commit, once its updates are
        here: the head's (when closable), the one pending submissions complete, and those that
        proposals ask about. Updates pending in the mempool are fetched as soon as they show."""
        view = self._views.get(task_id)
        state = self._rounds.get(task_id)
        if view is None or state is None or state.round != view.round:
            return
        for pending in self._pending.values():
            if pending.task == task_id and pending.round == state.round:
                self._fetch_soon(state, pending.sub)
        candidates = []
        if view.closable(time.time(), state.spec.round.deadline_s):
            candidates.append(view)
        completed = self._prospective(view)
        if completed is not None:
            candidates.append(completed[0])
        candidates.extend(state.wanted.values())
        for candidate in candidates:
            self._maybe_judge_view(state, candidate)

    def _fetch_soon(self, state: _Round, sub: ledgerview.SubmittedUpdate) -> None:
        key = str(sub.cid)
        if key not in state.fetched and key not in state.fetching:
            state.fetching.add(key)
            self._start(self._fetch_update, state, sub)

    def _maybe_judge_view(self, state: _Round, view: ledgerview.RoundView) -> None:
        key = view.key
        if key in state.decisions or key in state.judging:
            return
        if state.closable_at is None:
            state.closable_at = time.time()
        for sub in view.submissions:
            self._fetch_soon(state, sub)
        if any(str(s.cid) not in state.fetched for s in view.submissions):
            return
        if state.fetched_at is None:
            state.fetched_at = time.time()
        if not self.ctx.blobs.has(state.model):
            return
        state.judging.add(key)
        self._start(self._judge, state, view)

    async def _judge(self, state: _Round, view: ledgerview.RoundView) -> None:
        try:
            spec = state.spec
            cfg = network_config(spec, 1)
            model = await trio.to_thread.run_sync(self.ctx.blobs.get, state.model)
            subs = [
                Submission(s.device, str(s.cid), s.n_samples, state.fetched.get(str(s.cid)))
                for s in view.submissions
            ]

            def judge() -> RoundDecision:
                return judge_round(
                    cfg,
                    spec.aggregation.rule,
                    spec.aggregation.params,
                    model,
                    subs,
                    min_updates=spec.round.min_updates,
                    max_update_norm=spec.round.max_update_norm,
                )

            # At normal priority and never behind an evaluation: judging is short (tens of ms)
            # and every round waits for it, while evaluating the last model can wait.
            async with self._judge_limiter:
                decision = await trio.to_thread.run_sync(judge)
            weights = decision.weights
            if self.fault:
                weights = await trio.to_thread.run_sync(_perturb, cfg, weights)
            cid = await self.ctx.store(weights)
            state.decisions[view.key] = (decision, cid)
            if state.judged_at is None:
                state.judged_at = time.time()
                state.wanted_at = time.monotonic()
            self.ctx.counters.rounds_judged += 1
            self.log.info(
                "round judged",
                task=state.task,
                round=state.round,
                accepted=len(decision.accepted),
                rejected=len(decision.rejected),
                carried_forward=decision.carried_forward,
                aggregate=str(cid),
                aggregate_s=round(decision.aggregate_s, 3),
                submissions=len(view.submissions),
            )
        except Exception as exc:
            self.log.error("judging a round failed", task=state.task, error=repr(exc))
        finally:
            state.judging.discard(view.key)
            self._wake(state)

    async def _committed(self, task_id: int) -> None:
        """The round we were following was committed (or the task ended): record it."""
        state = self._rounds.get(task_id)
        if state is None or (task_id, state.round) in self._evaluated:
            return
        state.commit_seen_at = time.time()
        self._evaluated.add((task_id, state.round))
        self._start(self._record_round, state)

    async def _backfill(self, task_id: int, spec_cid: Cid, owner: str, before: int) -> None:
        """Record the rounds below ``before`` that were committed while this miner was not
        following the task (it was down, or started late) and that its records lack: each
        committed model is fetched (and pinned, so this miner serves it too) and evaluated."""
        record = self.ctx.read_record(f"task-{task_id}")
        done = {int(r["round"]) for r in record.get("rounds", []) if r.get("accuracy") is not None}
        history = await self.ctx.chain.run_sync(
            ledgerview.round_history, self.ctx.chain.chain, self.ctx.contract, task_id
        )
        missing = [h for h in history if int(h["round"]) < before and int(h["round"]) not in done]
        if not missing:
            return
        spec = await self.ctx.spec(spec_cid, prefer=[owner])
        self.log.info(
            "recording rounds committed while away",
            task=task_id,
            rounds=[int(h["round"]) for h in missing],
        )
        for h in missing:
            key = (task_id, int(h["round"]))
            if key in self._evaluated:
                continue
            self._evaluated.add(key)
            past = _Round(task_id, int(h["round"]), spec, Cid.parse(str(h["aggregate"])), 0)
            past.commit_seen_at = time.time()
            self._start(self._record_round, past)

    async def _fetch_committed(self, aggregate: Cid, proposer: str, task: int) -> bytes:
        """The committed model's bytes, pinned: every miner holds and serves every committed
        model. A miner cut off from its peers when the round closed (isolated, or just
        restarted) tries again for a while instead of never holding that model."""
        for _ in range(_RECORD_FETCH_ATTEMPTS - 1):
            try:
                return await self.ctx.fetch(aggregate, prefer=[proposer], pin=True)
            except FederationError as exc:
                self.log.warning("cannot fetch the committed model yet", task=task, error=str(exc))
                await trio.sleep(_RECORD_FETCH_RETRY_S)
        return await self.ctx.fetch(aggregate, prefer=[proposer], pin=True)  # its error goes up

    async def _record_round(self, state: _Round) -> None:
        history = await self.ctx.chain.run_sync(
            ledgerview.round_history, self.ctx.chain.chain, self.ctx.contract, state.task
        )
        entry = next((h for h in history if h["round"] == state.round), None)
        if entry is None:
            return
        aggregate = Cid.parse(str(entry["aggregate"]))
        match = next((d for d, cid in state.decisions.values() if cid == aggregate), None)
        decision, mine = match, match is not None
        try:
            weights = await self._fetch_committed(aggregate, str(entry["proposer"]), state.task)
            cfg = network_config(state.spec, 1)
            async with self._limiter:
                # Nothing waits on it: it takes only what the devices' training leaves.
                accuracy, loss = await run_low_priority(
                    evaluate_model, cfg, weights, state.spec.round.eval_size, nice=BACKGROUND_NICE
                )
        except Exception as exc:
            self.log.error("cannot evaluate the committed model", task=state.task, error=str(exc))
            accuracy = loss = None
        consensus_s = (
            time.monotonic() - state.wanted_at if state.wanted_at is not None and mine else None
        )
        record = self.ctx.read_record(f"task-{state.task}")
        rounds = [r for r in record.get("rounds", []) if r.get("round") != state.round]
        rounds.append(
            {
                **entry,
                "opened_at": state.opened_at or None,  # 0: a round recorded after the fact
                "accuracy": accuracy,
                "loss": loss,
                "accepted_devices": list(decision.accepted) if decision and mine else None,
                "rejected_devices": list(decision.rejected) if decision and mine else None,
                "reasons": decision.reasons if decision and mine else None,
                "carried_forward": decision.carried_forward if decision and mine else None,
                "fetch_s": max(state.fetch_s.values(), default=0.0),
                "aggregate_s": decision.aggregate_s if decision else None,
                "consensus_s": consensus_s,
                "seen_open_at": state.seen_open_at,
                "closable_at": state.closable_at,
                "fetched_at": state.fetched_at,
                "judged_at": state.judged_at,
                "commit_seen_at": state.commit_seen_at,
                "agreed_with_commit": mine,
                "validation": f"{state.spec.data.dataset} test split, first "
                f"{state.spec.round.eval_size} images",
            }
        )
        rounds.sort(key=lambda r: r["round"])
        record.update({"task": state.task, "rounds": rounds})
        self.ctx.write_record(f"task-{state.task}", record)
        self.ctx.publish(
            "round_committed",
            task=state.task,
            round=state.round,
            aggregate=str(aggregate),
            accuracy=accuracy,
            loss=loss,
        )
        self.ctx.counters.rounds_committed += 1
        if decision is not None and mine:
            self.ctx.counters.updates_accepted += len(decision.accepted)
            self.ctx.counters.updates_rejected += len(decision.rejected)
            for device in decision.accepted:
                self.ctx.publish(
                    "update_accepted", task=state.task, round=state.round, device=device
                )
            for device in decision.rejected:
                self.ctx.publish(
                    "update_rejected",
                    task=state.task,
                    round=state.round,
                    device=device,
                    reason=decision.reasons.get(device, ""),
                )
        self.log.info(
            "round committed",
            task=state.task,
            round=state.round,
            accuracy=accuracy,
            aggregate=str(aggregate),
        )

    def status(self) -> dict[str, Any]:
        unusable = {str(t): {"unusable": why} for t, why in self._unusable.items()}
        return unusable | {
            str(task_id): {
                "round": state.round,
                "fetched": sum(1 for v in state.fetched.values() if v is not None),
                "failed": sum(1 for v in state.fetched.values() if v is None),
                "judged": bool(state.decisions),
            }
            for task_id, state in self._rounds.items()
        }


def commit_gas(accepted: int, rejected: int) -> int:
    """The gas limit a ``commitRound`` is sent with: a bound, not an estimate, because an estimate
    executes the call on the head, where a round closed on submissions that the same block
    records would revert (and estimating is a binary search over a dozen executions). Measured
    here: 868,000 gas for the first round of 8 accepted devices (new storage everywhere),
    209,000 for a later round of 3; the bound is about twice that, and only used gas is paid."""
    return 250_000 + 50_000 * MAX_COMMITTEE + 150_000 * accepted + 80_000 * rejected


def _perturb(cfg: Any, weights: bytes) -> bytes:
    """The ``wrong-aggregate`` fault: the aggregate with every float weight shifted by 0.05."""
    state = load_weights(cfg, weights)
    return weights_to_bytes(
        {k: (v + 0.05) if v.is_floating_point() else v for k, v in state.items()}
    )
