"""The device's part in training: join tasks, train each round on private data, submit.

A device follows the ledger. It joins every open task it can serve (``federation.auto_join``;
or on request, ``task_join``), and for each joined task, whenever a round is open that it has
not submitted to, it:

1. fetches the round's global model by the CID the ledger names (from any peer that has it);
2. trains on its private shard (:class:`~flnode.learning.federated.DeviceLearner`): DP-SGD,
   charged to its privacy ledger ``<datadir>/privacy/task-<id>.json`` before it runs; in
   ``dpsgd-extractor`` mode the noisy features are released (charged too) and the head is trained
   on them, by the configured edge node when there is one (falling back to local training when
   the edge fails or is gone);
3. stores the update in its blob store (peers fetch it from there by CID) and sends
   ``submitUpdate`` signed with its key.

A device that restarts resumes at the ledger's current round; its ledger file and earlier
submissions stay. If the budget would be exceeded the round is refused (nothing is trained or
released) and the device stops training for that task, saying so in its log, its record and a
``privacy_refused`` event. Per-round timings go to ``<datadir>/federation/device-task-<id>.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio
from eth_hash.auto import keccak

from ..cid import Cid
from ..consensus.ledger import TaskInfo
from ..learning.federated import (
    POISONS,
    DeviceLearner,
    FederatedLearningError,
    TrainedUpdate,
    device_shard,
    network_config,
    round_note,
)
from ..learning.ledger import PrivacyBudgetExceeded
from ..learning.offload import HeadTrainingJob
from . import ledgerview
from .context import FederationContext, FederationError, run_low_priority

_TASK_EVENTS = ("TaskCreated", "TaskJoined", "RoundCommitted", "TaskClosed")
"""The ledger events after which a device may have something to do."""
_QUIET_MAX_S = 10.0

HeadOffload = Callable[[int, HeadTrainingJob], Any]


class DeviceRole:
    """Trains and submits for every joined task (see the module docstring)."""

    def __init__(self, ctx: FederationContext, offload: HeadOffload | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.config.federation
        self.log = ctx.log.bind(role="device")
        self.offload = offload
        self._learners: dict[int, DeviceLearner] = {}
        self._finished: dict[int, dict[str, Any]] = {}  # status of tasks whose learner is gone
        self._joining: set[int] = set()
        self._refused: set[int] = set()
        self._unservable: dict[int, str] = {}
        self._busy = False
        self._joined: set[int] = set()
        self._committees: dict[int, tuple[str, ...]] = {}
        self._quiet: tuple[int, float] | None = None
        self._task_topics = [ctx.contract.event_topic(name) for name in _TASK_EVENTS]
        """(head number, monotonic time) of the last step that found nothing to do."""
        self._wake = trio.Event()
        self.poison = self.settings.fault if self.settings.fault in POISONS else None

    def poke(self) -> None:
        self._quiet = None  # e.g. a task joined through the API: look at the ledger again
        self._wake.set()

    async def run(self) -> None:
        heads = self.ctx.chain.subscribe_blocks()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward_heads, heads)
            while True:
                self._wake = trio.Event()
                try:
                    await self._step()
                except FederationError as exc:
                    self.log.warning("training step failed; will retry", error=str(exc))
                except Exception as exc:  # the device must outlive a bad step
                    self.log.error("training step failed", error=repr(exc))
                with trio.move_on_after(2.0):
                    await self._wake.wait()

    async def _forward_heads(self, heads: trio.MemoryReceiveChannel[Any]) -> None:
        with heads:
            async for _ in heads:
                self._wake.set()

    async def _step(self) -> None:
        chain, contract = self.ctx.chain, self.ctx.contract
        head = chain.latest_head
        if head is not None and await self._still_quiet(head.number):
            return
        self._quiet = None
        tasks = await chain.run_sync(ledgerview.tasks, chain.chain, contract)
        for task in tasks:
            if task.closed or task.finished:
                self._retire(task.id)
                continue
            if task.id in self._refused:
                continue
            if task.id in self._unservable:
                continue
            joined = task.id in self._joined or await chain.run_sync(
                lambda t=task.id: bool(
                    contract.view(chain.chain.call, "joined", t, self.ctx.address)
                )
            )
            if joined:
                self._joined.add(task.id)  # joining is for good: no need to ask again
            else:
                if self.settings.auto_join and task.id not in self._joining:
                    await self.join(task.id)
                continue
            sub = await chain.run_sync(
                contract.submission, chain.chain.call, task.id, task.round, self.ctx.address
            )
            if getattr(sub, "status", "none") != "none":
                continue
            if await self._already_trained(task):
                continue
            await self._train_and_submit(task)
            return  # one round at a time; look at the ledger again first
        # Nothing to do at this head: until a block may carry a task-level event, further heads
        # (e.g. the other devices' submissions) change nothing for this device.
        if head is not None:
            self._quiet = (head.number, time.monotonic())

    async def _still_quiet(self, head_number: int) -> bool:
        """Whether the last step found nothing to do and no block since may have changed that:
        no ``TaskCreated``, ``TaskJoined``, ``RoundCommitted`` or ``TaskClosed`` in the header
        blooms, and less than :data:`_QUIET_MAX_S` ago (a full look now and then catches what
        blooms cannot say, e.g. a submission that left the mempool without a block)."""
        if self._quiet is None:
            return False
        since, at = self._quiet
        if time.monotonic() - at > _QUIET_MAX_S:
            return False
        if head_number <= since:
            return True
        chain, contract = self.ctx.chain, self.ctx.contract
        topics = self._task_topics
        busy = await chain.run_sync(
            lambda: chain.chain.may_have_logs(
                since + 1, head_number, address=contract.address, topics=topics
            )
        )
        if busy:
            return False
        self._quiet = (head_number, at)
        return True

    async def _already_trained(self, task: TaskInfo) -> bool:
        """Whether this round was trained already (never train a round twice: each run spends
        privacy budget). A trained update whose transaction was lost (e.g. the node restarted
        before it was committed) is submitted again, from the blob store, without training."""
        entry = (
            self.ctx.read_record(f"device-task-{task.id}").get("rounds", {}).get(str(task.round))
        )
        if not entry:
            return False
        if "cid" not in entry or entry.get("late") or entry.get("reverted"):
            return True  # refused, too late, or reverted: nothing more to do this round
        if entry.get("tx_hash"):
            tx_hash = bytes.fromhex(entry["tx_hash"][2:])

            def pending() -> bool:
                return any(tx.hash == tx_hash for tx in self.ctx.chain.chain.mempool.pending())

            if await self.ctx.chain.run_sync(pending):
                return True
            receipt = await self.ctx.receipt(tx_hash)
            if receipt is not None:
                if not receipt.success:
                    self._note(task.id, task.round, {"reverted": True})
                return True
        cid = Cid.parse(entry["cid"])
        if not await trio.to_thread.run_sync(self.ctx.blobs.has, cid):
            return False  # the update itself is gone: train again (the ledger still counts it)
        tx = await self.ctx.send(
            self.ctx.contract.submit_update(task.id, task.round, cid, int(entry["n_samples"]))
        )
        self._note(task.id, task.round, {"tx_hash": "0x" + tx.hex(), "resubmitted": True})
        self.log.info("update resubmitted", task=task.id, round=task.round, cid=str(cid))
        return True

    async def join(self, task_id: int) -> dict[str, Any]:
        """Send ``joinTask`` once the task's spec is one this device can serve."""
        task = await self.ctx.chain.run_sync(
            self.ctx.contract.task, self.ctx.chain.chain.call, task_id
        )
        if task is None:
            raise FederationError(f"no task {task_id} on the ledger")
        try:
            spec = await self.ctx.spec(task.spec, prefer=[task.owner])
            network_config(spec, self.settings.shard_count)
        except (FederatedLearningError, ValueError) as exc:
            self._unservable[task_id] = str(exc)
            self.log.warning("cannot serve task", task=task_id, reason=str(exc))
            raise FederationError(f"this device cannot serve task {task_id}: {exc}") from None
        self._joining.add(task_id)
        tx = await self.ctx.send(self.ctx.contract.join_task(task_id))
        self.log.info("joining task", task=task_id, spec=spec.name)
        return {"task": task_id, "tx_hash": "0x" + tx.hex()}

    async def _learner(self, task: TaskInfo) -> DeviceLearner:
        learner = self._learners.get(task.id)
        if learner is not None:
            return learner
        spec = await self.ctx.spec(task.spec, prefer=[task.owner])
        cfg = network_config(spec, self.settings.shard_count)
        s = self.settings

        def build() -> DeviceLearner:
            shard = device_shard(cfg, s.shard_index)
            return DeviceLearner(
                cfg,
                shard,
                ledger_path=self.ctx.datadir.privacy_dir / f"task-{task.id}.json",
                task_id=f"task-{task.id}",
                device_id=self.ctx.address,
                seed=None,  # the DP noise and sampling from the OS's entropy
                budget_cap=s.epsilon_cap or None,
                poison=self.poison,
            )

        learner = await run_low_priority(build)
        self._learners[task.id] = learner
        self.log.info(
            "ready to train",
            task=task.id,
            samples=len(learner.shard),
            noise_multiplier=round(learner.noise_multiplier, 4),
            mode=cfg.mode,
        )
        return learner

    async def _train_and_submit(self, task: TaskInfo) -> None:
        started_at = time.time()
        t_fetch = time.perf_counter()
        # The committee computed (and holds) every aggregate; the owner holds the first model.
        # A task's committee is fixed when it is created. Each device asks its members in its
        # own order, so that a round's devices do not all fetch from the first member at once.
        committee = self._committees.get(task.id)
        if committee is None:
            committee = await self.ctx.chain.run_sync(
                self.ctx.contract.committee, self.ctx.chain.chain.call, task.id
            )
            self._committees[task.id] = committee
        ask = sorted(committee, key=lambda m: keccak(f"{m}{self.ctx.address}".lower().encode()))
        model = await self.ctx.fetch(task.model, prefer=[*ask, task.owner], pin=True)
        fetch_s = time.perf_counter() - t_fetch
        learner = await self._learner(task)
        note = round_note(task.round)
        if any(e.kind == "dp-sgd" and e.note == note for e in learner.ledger.entries):
            # This round's training was charged but its update never recorded: the device was
            # stopped mid-round. The privacy cost stays spent; training again would charge it
            # twice, so the round is skipped and the device joins the next one.
            self.log.warning(
                "round interrupted earlier; its privacy cost stays spent, skipping it",
                task=task.id,
                round=task.round,
            )
            self._note(task.id, task.round, {"interrupted": True})
            return
        offload = None
        if self.offload is not None and learner.release is not None:
            offload = self._offload_for(task.id)
        trained_from = time.time()
        try:
            update: TrainedUpdate = await run_low_priority(
                lambda: learner.train_round(model, task.round, head_trainer=offload)
            )
        except Exception as exc:
            if not isinstance(exc, PrivacyBudgetExceeded):
                # Whatever failed may have charged the ledger already (a feature release, the
                # round's DP-SGD): the round is given up rather than retried and charged again.
                self.log.error(
                    "training failed; skipping this round", task=task.id, error=repr(exc)
                )
                self._note(task.id, task.round, {"failed": repr(exc)[:300]})
                return
            self._refused.add(task.id)
            self.ctx.counters.rounds_refused += 1
            self.log.error(
                "refusing to train: privacy budget would be exceeded", task=task.id, detail=str(exc)
            )
            self.ctx.publish("privacy_refused", task=task.id, round=task.round, detail=str(exc))
            self._note(task.id, task.round, {"refused": str(exc)})
            return
        cid = await self.ctx.store(update.weights)
        # The round may have closed while we trained: submitting then only wastes gas.
        current = await self.ctx.chain.run_sync(
            self.ctx.contract.task, self.ctx.chain.chain.call, task.id
        )
        if current is None or current.round != task.round:
            self.log.warning(
                "round closed while training; update dropped", task=task.id, round=task.round
            )
            self._note(task.id, task.round, {"late": True, "train_s": update.train_s})
            return
        timings: dict[str, Any] = {
            "cid": str(cid),
            "n_samples": update.n_samples,
            "fetch_s": fetch_s,
            "train_s": update.train_s,
            "feature_s": update.feature_s,
            "head_s": update.head_s,
            "offloaded": update.offloaded,
            "epsilon_spent": update.epsilon_spent,
            "started_at": started_at,
            "training_started_at": trained_from,
            "submitted_at": time.time(),
        }
        # Recorded before it is sent: a device killed in between resubmits, never retrains.
        self._note(task.id, task.round, timings)
        tx = await self.ctx.send(
            self.ctx.contract.submit_update(task.id, task.round, cid, update.n_samples)
        )
        timings["tx_hash"] = "0x" + tx.hex()
        self._note(task.id, task.round, {"tx_hash": timings["tx_hash"]})
        self.ctx.counters.updates_submitted += 1
        self.ctx.counters.train_s += update.train_s + update.head_s
        self.ctx.publish("update_submitted", task=task.id, round=task.round, **timings)
        self.log.info(
            "update submitted",
            task=task.id,
            round=task.round,
            cid=str(cid),
            train_s=round(update.train_s, 2),
            epsilon=round(update.epsilon_spent, 3),
        )
        receipt = await self.ctx.wait_receipt(tx, 60.0)
        if receipt is not None and not receipt.success:
            self.log.warning("update transaction reverted", task=task.id, round=task.round)
            self._note(task.id, task.round, {**timings, "reverted": True})

    def _offload_for(self, task_id: int) -> Callable[[HeadTrainingJob], Any] | None:
        offload = self.offload
        assert offload is not None
        token = trio.lowlevel.current_trio_token()  # training runs in a thread trio did not make

        def train(job: HeadTrainingJob) -> Any:
            try:
                return trio.from_thread.run(offload, task_id, job, trio_token=token)
            except Exception as exc:
                self.log.warning("edge offload failed; training the head locally", error=str(exc))
                from ..learning.federated import train_offloaded_head

                learner = self._learners[task_id]
                return train_offloaded_head(learner.cfg, job)

        return train

    def _note(self, task_id: int, round_: int, data: dict[str, Any]) -> None:
        name = f"device-task-{task_id}"
        record = self.ctx.read_record(name)
        rounds = record.setdefault("rounds", {})
        rounds[str(round_)] = {**rounds.get(str(round_), {}), **data}
        record["task"] = task_id
        record["device"] = self.ctx.address
        self.ctx.write_record(name, record)

    def _retire(self, task_id: int) -> None:
        """A finished or closed task's learner (its data shard, model and optimiser: tens of MB)
        is let go; what ``status`` shows of it is kept (its privacy ledger is on disk)."""
        learner = self._learners.pop(task_id, None)
        if learner is not None:
            self._finished[task_id] = self._summary(task_id, learner)

    def _summary(self, task_id: int, learner: DeviceLearner) -> dict[str, Any]:
        return {
            "samples": len(learner.shard),
            "epsilon_spent": learner.ledger.spent().epsilon,
            "epsilon_budget": learner.ledger.budget.epsilon,
            "refused": task_id in self._refused,
        }

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {str(t): dict(v) for t, v in self._finished.items()}
        for task_id, learner in self._learners.items():
            out[str(task_id)] = self._summary(task_id, learner)
        for task_id, why in self._unservable.items():
            out[str(task_id)] = {"unservable": why}
        return out
