"""A device lets a finished task's learner go (its shard, model and optimiser) and still reports
the task: one real node that publishes, trains and judges a one-round task on its own chain, and
commits the round in the block that records its update."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from flnode.api import ApiClient, ApiEndpoint
from flnode.config import NodeConfig
from flnode.devnet.training import edit_spec
from flnode.node import Node
from tests.networks import one_node_network

pytestmark = pytest.mark.timeout(300)


def _spec() -> str:
    return edit_spec(rounds=1, updates_per_round=1, min_updates=1, eval_size=500, pretrain_epochs=1)


async def test_a_finished_task_releases_its_learner_and_stays_in_the_status(
    tmp_path: Path,
) -> None:
    me = one_node_network(tmp_path, "fed-net", 31337)
    config = NodeConfig.model_validate(
        {
            "node": {
                "shutdown_timeout_s": 1.0,
                "network_id": "fed-net",
                "roles": ["manufacturer", "miner", "device"],
            },
            # a real BFT consensus with one member (the dev proposer does not commit rounds)
            "chain": {"network_file": str(tmp_path / "net.toml")},
            "federation": {"shard_count": 120},  # 500 images: a quick DP-SGD round
        }
    )
    node = Node(config, me, tmp_path / "node")
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            async with ApiClient.open(ApiEndpoint.from_datadir(node.datadir.path)) as client:
                created = await client.call("task_create", {"spec": _spec()}, timeout=120)
                task = int(created["task"])
                device = node.service("federation").device  # type: ignore[attr-defined]
                with trio.fail_after(200):
                    while True:
                        status = await client.call("round_status", {"task": task})
                        if status["finished"] and not device._learners:
                            break
                        await trio.sleep(0.5)
                report = (await client.call("federation_status"))["device"][str(task)]
        finally:
            node.request_stop()
    assert report["samples"] > 0 and 0 < report["epsilon_spent"] <= report["epsilon_budget"]
    assert report["refused"] is False
    # The miner judged the round while the update's transaction waited in its mempool, and led
    # one block that recorded the submission and committed the round on it.
    (committed,) = status["committed"]
    assert committed["block"] == committed["last_submission_block"], committed
