"""The manufacturer's part: publish a training task, follow it, close it.

``task_create`` (API; ``flnode task publish`` calls it) reads a TOML task spec, pre-trains the
model on the manufacturer's public slice (no privacy cost; its test accuracy is the public-only
baseline), stores the spec and the initial model in the blob store (pinned: devices and miners
fetch them by CID), and sends ``createTask`` with the deposit, the round count, updates per round,
the reward per round, the per-sample ε and the committee (by default every active miner). The
public-only accuracy is kept in ``<datadir>/federation/task-<id>.json``.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from ..learning.federated import PublishedModel, network_config, publish_model
from ..learning.taskspec import LearningTaskSpec, load_task_spec
from .context import FederationContext, FederationError, run_low_priority

DEFAULT_REWARD_PER_ROUND = 10**18  # 1 unit of the chain's currency per round
_CREATE_TIMEOUT_S = 120.0


class ManufacturerRole:
    def __init__(self, ctx: FederationContext) -> None:
        self.ctx = ctx
        self.log = ctx.log.bind(role="manufacturer")
        self._limiter = trio.CapacityLimiter(1)

    async def create_task(
        self,
        spec_text: str,
        *,
        reward_per_round: int = DEFAULT_REWARD_PER_ROUND,
        deposit: int | None = None,
        committee: list[str] | None = None,
    ) -> dict[str, Any]:
        raw = spec_text.encode()
        spec: LearningTaskSpec = load_task_spec(raw)
        cfg = network_config(spec, 1)
        rounds = spec.training.rounds
        deposit = rounds * reward_per_round if deposit is None else deposit
        if deposit < rounds * reward_per_round:
            raise FederationError(
                f"a deposit of {deposit} wei does not cover {rounds} rounds × {reward_per_round} "
                "wei; raise the deposit or lower the reward per round"
            )
        chain, contract = self.ctx.chain, self.ctx.contract
        if committee is None:

            def active() -> list[str]:
                return [
                    m.address
                    for m in chain.spec.miners
                    if contract.is_active_miner(chain.chain.call, m.address)
                ]

            committee = await chain.run_sync(active)
        if not committee:
            raise FederationError("no active miner on the ledger: a task needs a committee")
        balance = await chain.balance(self.ctx.address)
        if balance < deposit:
            raise FederationError(
                f"this node's account {self.ctx.address} holds {balance} wei, less than the "
                f"deposit of {deposit} wei"
            )
        self.log.info(
            "pre-training on the public slice", spec=spec.name, public=spec.data.public_size
        )
        t0 = time.perf_counter()
        async with self._limiter:
            published: PublishedModel = await run_low_priority(
                publish_model, cfg, spec.round.eval_size
            )
        spec_cid = await self.ctx.store(raw)
        model_cid = await self.ctx.store(published.weights)
        data = contract.create_task(
            spec=spec_cid,
            model=model_cid,
            rounds=rounds,
            updates_per_round=spec.round.updates_per_round,
            reward_per_round=reward_per_round,
            epsilon=spec.privacy.epsilon,
            committee=committee,
        )
        tx = await self.ctx.send(data, value=deposit)
        receipt = await self.ctx.wait_receipt(tx, _CREATE_TIMEOUT_S)
        if receipt is None:
            raise FederationError(
                f"createTask {('0x' + tx.hex())[:18]}… was not committed within "
                f"{_CREATE_TIMEOUT_S:g} s; is the miners' consensus running? (chain_head)"
            )
        if not receipt.success:
            raise FederationError("createTask reverted; check the deposit and the committee")
        events = contract.decode_logs(receipt.logs)
        task_id = next(int(e.args["task"]) for e in events if e.name == "TaskCreated")
        result = {
            "task": task_id,
            "spec_cid": str(spec_cid),
            "model_cid": str(model_cid),
            "rounds": rounds,
            "updates_per_round": spec.round.updates_per_round,
            "deposit_wei": str(deposit),
            "reward_per_round_wei": str(reward_per_round),
            "committee": committee,
            "public_only_accuracy": published.public_only_accuracy,
            "public_only_loss": published.public_only_loss,
            "pretrain_s": published.pretrain_s,
            "prepare_s": time.perf_counter() - t0,
            "tx_hash": "0x" + tx.hex(),
            "block": receipt.block_number,
            "spec_name": spec.name,
            "mode": spec.privacy.mode,
            "epsilon": spec.privacy.epsilon,
            "delta": spec.privacy.delta,
        }
        self.ctx.write_record(f"manufacturer-task-{task_id}", result)
        self.ctx.publish(
            "task_created",
            task=task_id,
            spec=str(spec_cid),
            model=str(model_cid),
            rounds=rounds,
            public_only_accuracy=published.public_only_accuracy,
        )
        self.log.info(
            "task published",
            task=task_id,
            public_only_accuracy=round(published.public_only_accuracy, 4),
            model=str(model_cid),
        )
        return result

    async def close_task(self, task_id: int) -> dict[str, Any]:
        tx = await self.ctx.send(self.ctx.contract.close_task(task_id))
        receipt = await self.ctx.wait_receipt(tx, 60.0)
        if receipt is None:
            raise FederationError("closeTask was not committed within 60 s")
        if not receipt.success:
            raise FederationError(
                f"closeTask reverted: task {task_id} is still running, closed already, or not "
                "this node's (the owner closes after the last round or when idle)"
            )
        refund = next(
            (
                int(e.args["refund"])
                for e in self.ctx.contract.decode_logs(receipt.logs)
                if e.name == "TaskClosed"
            ),
            0,
        )
        return {"task": task_id, "refund_wei": str(refund), "tx_hash": "0x" + tx.hex()}
