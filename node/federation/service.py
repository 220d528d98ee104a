"""The federation service: a node's training roles, and their API methods.

One service per node with a ledger; its roles follow the node's ``node.roles``: a miner judges
and commits rounds (and hands its hooks to the consensus, see :meth:`consensus_hooks`), a device
trains and submits, an edge trains heads for devices, a manufacturer publishes tasks. API methods:
``task_create``/``task_close`` (manufacturer), ``task_join`` (device), ``round_status`` (every
node: the ledger's view of a task's rounds plus this node's own records) and
``federation_status``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio
from pydantic import Field

from ..metrics import Sample
from ..rpc import SERVER_ERROR, Params, RpcError, RpcMethod, StaticProvider
from ..service import Service
from . import ledgerview
from .context import FederationContext, FederationError
from .device import DeviceRole
from .edge import EdgeRole, OffloadClient
from .manufacturer import ManufacturerRole
from .miner import MinerRole

MAX_SPEC_CHARS = 64 * 1024


class TaskCreateParams(Params):
    spec: str = Field(
        min_length=1, max_length=MAX_SPEC_CHARS, description="The task spec, as TOML text."
    )
    reward_per_round_wei: int = Field(
        10**18, ge=0, description="What each round pays out (devices, leader, committee)."
    )
    deposit_wei: int | None = Field(
        None, ge=0, description="Deposit sent with the task (default: rounds × reward per round)."
    )
    committee: list[str] | None = Field(
        None, max_length=16, description="Miner addresses (default: every active miner)."
    )


class TaskIdParams(Params):
    task: int = Field(ge=1, description="Task id (the ledger numbers tasks from 1).")


class FederationService(Service):
    name = "federation"

    def __init__(self, ctx: FederationContext) -> None:
        self.ctx = ctx
        roles = set(ctx.config.node.roles)
        self.miner = MinerRole(ctx) if "miner" in roles else None
        self.edge = EdgeRole(ctx) if "edge" in roles else None
        offload = OffloadClient(ctx) if ctx.config.federation.edge else None
        self.device = DeviceRole(ctx, offload) if "device" in roles else None
        self.manufacturer = ManufacturerRole(ctx) if "manufacturer" in roles else None
        self._offload = offload

    def consensus_hooks(self) -> dict[str, Any]:
        """``proposals`` and ``validator`` for the consensus service (miners only)."""
        if self.miner is None:
            return {}
        return {"proposals": self.miner, "validator": self.miner.validate}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.edge is not None:
                self.edge.serve()
            if self._offload is not None:
                self._offload.setup()
            for role in (self.miner, self.device):
                if role is not None:
                    nursery.start_soon(role.run)
            task_status.started()
            await trio.sleep_forever()

    def metric_samples(self) -> Iterable[Sample]:
        c = self.ctx.counters
        yield Sample(
            "flnode_training_seconds",
            "counter",
            "Seconds spent training (device and edge).",
            c.train_s,
        )
        yield Sample(
            "flnode_updates_submitted",
            "counter",
            "Updates this device submitted.",
            c.updates_submitted,
        )
        yield Sample(
            "flnode_rounds_refused",
            "counter",
            "Rounds refused by the privacy ledger.",
            c.rounds_refused,
        )
        yield Sample(
            "flnode_updates_judged",
            "counter",
            "Updates in rounds this miner judged and saw committed, by verdict.",
            c.updates_accepted,
            {"verdict": "accepted"},
        )
        yield Sample(
            "flnode_updates_judged",
            "counter",
            "Updates in rounds this miner judged and saw committed, by verdict.",
            c.updates_rejected,
            {"verdict": "rejected"},
        )
        yield Sample(
            "flnode_rounds_judged", "counter", "Rounds this miner judged.", c.rounds_judged
        )
        yield Sample(
            "flnode_rounds_committed", "counter", "Rounds seen committed.", c.rounds_committed
        )
        yield Sample(
            "flnode_offload_jobs", "counter", "Offload jobs this edge served.", c.offload_jobs
        )

    def describe(self) -> dict[str, object]:
        return {
            "federation_roles": [
                r
                for r in ("miner", "device", "edge", "manufacturer")
                if getattr(self, r) is not None
            ]
        }

    # -- API ------------------------------------------------------------------------------------

    def providers(self) -> list[StaticProvider]:
        m = RpcMethod
        task_methods = [
            m(
                "task_join",
                self._join,
                "Join a task as a device (it must be able to serve the task's spec).",
                TaskIdParams,
                "{task, tx_hash}",
            ),
            m(
                "task_create",
                self._create,
                "Publish a training task (manufacturer): pre-train, store spec and model, createTask.",
                TaskCreateParams,
                "{task, spec_cid, model_cid, public_only_accuracy, …}",
            ),
            m(
                "task_close",
                self._close,
                "Close a finished (or idle) task you own; the rest of the deposit is credited back.",
                TaskIdParams,
                "{task, refund_wei, tx_hash}",
            ),
        ]
        return [
            StaticProvider("task", tuple(task_methods)),
            StaticProvider(
                "round",
                (
                    m(
                        "round_status",
                        self._round_status,
                        "A task's rounds: the open one (submissions, deadline) and every committed one.",
                        TaskIdParams,
                        "{task, round, rounds, open: {...}, committed: [...], records: {...}}",
                    ),
                ),
            ),
            StaticProvider(
                "federation",
                (
                    m(
                        "federation_status",
                        self._status,
                        "This node's training roles and what each is doing.",
                    ),
                ),
            ),
        ]

    async def _join(self, p: TaskIdParams) -> dict[str, Any]:
        if self.device is None:
            raise RpcError(SERVER_ERROR, "this node does not run the device role (node.roles)")
        try:
            out = await self.device.join(p.task)
        except FederationError as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from None
        self.device.poke()
        return out

    async def _create(self, p: TaskCreateParams) -> dict[str, Any]:
        if self.manufacturer is None:
            raise RpcError(
                SERVER_ERROR, "this node does not run the manufacturer role (node.roles)"
            )
        try:
            return await self.manufacturer.create_task(
                p.spec,
                reward_per_round=p.reward_per_round_wei,
                deposit=p.deposit_wei,
                committee=p.committee,
            )
        except (FederationError, ValueError) as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from None

    async def _close(self, p: TaskIdParams) -> dict[str, Any]:
        if self.manufacturer is None:
            raise RpcError(
                SERVER_ERROR, "this node does not run the manufacturer role (node.roles)"
            )
        try:
            return await self.manufacturer.close_task(p.task)
        except FederationError as exc:
            raise RpcError(SERVER_ERROR, str(exc)) from None

    async def _round_status(self, p: TaskIdParams) -> dict[str, Any]:
        chain, contract = self.ctx.chain, self.ctx.contract
        view = await chain.run_sync(ledgerview.round_view, chain.chain, contract, p.task)
        if view is None:
            raise RpcError(SERVER_ERROR, f"no task {p.task} on the ledger (task_list shows them)")
        history = await chain.run_sync(ledgerview.round_history, chain.chain, contract, p.task)
        task = view.task
        spec_deadline = None
        try:
            spec = await self.ctx.spec(task.spec, prefer=[task.owner])
            spec_deadline = spec.round.deadline_s
        except Exception:  # a spec we cannot fetch: the ledger part is still worth showing
            spec = None
        records = {}
        for name in (f"task-{p.task}", f"device-task-{p.task}", f"manufacturer-task-{p.task}"):
            record = self.ctx.read_record(name)
            if record:
                records[name.rsplit("-task-", 1)[0] if "-task-" in name else "miner"] = record
        return {
            "task": p.task,
            "round": task.round,
            "rounds": task.rounds,
            "finished": task.finished,
            "closed": task.closed,
            "model": str(task.model),
            "open": None
            if task.finished or task.closed
            else {
                "round": task.round,
                "opened_block": view.opened_block,
                "opened_at": view.opened_at,
                "deadline_at": None if spec_deadline is None else view.deadline(spec_deadline),
                "submissions": [
                    {
                        "device": s.device,
                        "cid": str(s.cid),
                        "n_samples": s.n_samples,
                        "block": s.block,
                    }
                    for s in view.submissions
                ],
                "updates_per_round": task.updates_per_round,
            },
            "committed": history,
            "records": records,
        }

    async def _status(self, _: Params) -> dict[str, Any]:
        out: dict[str, Any] = {"roles": self.describe()["federation_roles"]}
        if self.miner is not None:
            out["miner"] = self.miner.status()
        if self.device is not None:
            out["device"] = self.device.status()
        if self.edge is not None:
            out["edge"] = self.edge.status()
        return out
