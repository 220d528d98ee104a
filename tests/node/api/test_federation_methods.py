"""The training roles' API methods on a real node (dev proposer chain, real websockets): their
answers and their errors. Training itself runs in tests/node/federation (real processes)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from flnode.api import ApiClient, ApiEndpoint
from flnode.config import NodeConfig
from flnode.node import Node
from flnode.rpc import RpcError
from tests.networks import one_node_network

ETHER = 10**18
pytestmark = pytest.mark.timeout(120)


async def _node(tmp_path: Path, roles: list[str]) -> AsyncIterator[ApiClient]:
    """A node with ``roles`` on its own dev chain; its data dir is ``tmp_path / "node"``."""
    me = one_node_network(tmp_path, "fed-net", 31337)
    config = NodeConfig.model_validate(
        {
            "node": {"shutdown_timeout_s": 1.0, "network_id": "fed-net", "roles": roles},
            "chain": {"network_file": str(tmp_path / "net.toml"), "dev_mine_interval_s": 0.05},
        }
    )
    node = Node(config, me, tmp_path / "node")
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            async with ApiClient.open(ApiEndpoint.from_datadir(node.datadir.path)) as client:
                yield client
        finally:
            node.request_stop()


@pytest.fixture
async def manufacturer(tmp_path: Path) -> AsyncIterator[ApiClient]:
    async for client in _node(tmp_path, ["manufacturer", "miner"]):
        yield client


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[ApiClient]:
    async for client in _node(tmp_path, ["device"]):
        yield client


async def _error(client: ApiClient, method: str, params: dict[str, object]) -> str:
    with pytest.raises(RpcError) as caught:
        await client.call(method, params)
    return caught.value.message


async def test_round_status_and_join_of_an_unknown_task_say_so(device: ApiClient) -> None:
    assert "no task 7" in await _error(device, "round_status", {"task": 7})
    assert "no task 7" in await _error(device, "task_join", {"task": 7})
    assert "task" in await _error(device, "round_status", {"task": 0})  # ids start at 1


async def test_roles_are_enforced(device: ApiClient) -> None:
    message = await _error(device, "task_create", {"spec": 'name = "x"\n'})
    assert "manufacturer role" in message
    assert "manufacturer role" in await _error(device, "task_close", {"task": 1})
    status = await device.call("federation_status")
    assert status["roles"] == ["device"]


async def test_a_bad_spec_is_refused_naming_the_problem(manufacturer: ApiClient) -> None:
    assert "TOML" in await _error(manufacturer, "task_create", {"spec": "this is = = not toml"})
    message = await _error(manufacturer, "task_create", {"spec": '[privacy]\nmode = "frozen"\n'})
    assert "flnode simulate" in message  # the frozen mode does not run on the network
    message = await _error(
        manufacturer,
        "task_create",
        {"spec": 'name = "x"\n', "reward_per_round_wei": ETHER, "deposit_wei": 1},
    )
    assert "deposit" in message


async def test_the_training_events_are_declared(manufacturer: ApiClient) -> None:
    events = await manufacturer.call("rpc_events")
    names = set(events) if isinstance(events, dict) else {e["event"] for e in events}
    for topic in (
        "round_started",
        "update_received",
        "update_accepted",
        "update_rejected",
        "round_committed",
        "privacy_refused",
    ):
        assert topic in names, names


async def test_training_metrics_are_exported(manufacturer: ApiClient, tmp_path: Path) -> None:
    state = json.loads((tmp_path / "node" / "node.json").read_text())

    def scrape() -> str:
        with urllib.request.urlopen(state["metrics_url"], timeout=5) as response:
            return response.read().decode()

    text = await trio.to_thread.run_sync(scrape)
    for line in (
        "flnode_training_seconds_total 0.0",
        'flnode_updates_judged_total{verdict="accepted"} 0.0',
        'flnode_updates_judged_total{verdict="rejected"} 0.0',
        "flnode_rounds_committed_total 0.0",
        "flnode_offload_jobs_total 0.0",
    ):
        assert line in text, line
