"""The Node's service lifecycle, in one trio process with real services."""

from __future__ import annotations

import json

import pytest
import trio

from flnode.config import NodeConfig
from flnode.datadir import InitResult
from flnode.node import Node
from flnode.service import LoopMonitor, Service
from flnode.storage.service import BlobStoreService


class Recorder(Service):
    """A service that records when it started and stopped, in a shared list."""

    def __init__(self, name: str, events: list[str], *, stop_delay: float = 0.0) -> None:
        self.name = name
        self.events = events
        self.stop_delay = stop_delay

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.events.append(f"start {self.name}")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(self.stop_delay)
            self.events.append(f"stop {self.name}")


async def test_services_start_in_order_and_stop_in_reverse(datadir: InitResult) -> None:
    events: list[str] = []
    services = [Recorder("a", events), Recorder("b", events), Recorder("c", events)]
    node = Node(NodeConfig(), datadir.identity, datadir.datadir.path, services=services)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert events == ["start a", "start b", "start c"]
        state = json.loads(datadir.datadir.state_file.read_text())
        assert state["peer_id"] == datadir.identity.peer_id
        assert state["roles"] == ["device"]
        node.request_stop()
    assert events[3:] == ["stop c", "stop b", "stop a"]
    assert not datadir.datadir.state_file.exists()


async def test_stuck_service_does_not_hold_up_the_others(datadir: InitResult) -> None:
    """A service that overruns its grace period is left to finish; the rest stop meanwhile."""
    events: list[str] = []
    config = NodeConfig.model_validate({"node": {"shutdown_timeout_s": 0.2}})
    services = [Recorder("ok", events), Recorder("slow", events, stop_delay=1.0)]
    node = Node(config, datadir.identity, datadir.datadir.path, services=services)
    with trio.fail_after(3):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            node.request_stop()
    # Reverse order would stop 'slow' first; after its 0.2 s of grace the node stops 'ok' while
    # 'slow' is still in its (shielded) cleanup.
    assert events == ["start ok", "start slow", "stop ok", "stop slow"]


class Crashes(Service):
    name = "crashes"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(0.01)
        raise OSError("disk on fire")


class Returns(Service):
    name = "returns"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()


async def test_crashing_service_stops_the_node_with_its_error(datadir: InitResult) -> None:
    events: list[str] = []
    node = Node(
        NodeConfig(),
        datadir.identity,
        datadir.datadir.path,
        services=[Recorder("a", events), Crashes()],
    )
    with pytest.RaisesGroup(
        pytest.RaisesExc(OSError, match="disk on fire"), flatten_subgroups=True
    ):
        await node.run()
    assert events == ["start a", "stop a"]
    assert not datadir.datadir.state_file.exists()


async def test_service_returning_early_is_an_error(datadir: InitResult) -> None:
    node = Node(NodeConfig(), datadir.identity, datadir.datadir.path, services=[Returns()])
    with pytest.RaisesGroup(
        pytest.RaisesExc(RuntimeError, match="'returns' exited while the node ran"),
        flatten_subgroups=True,
    ):
        await node.run()


async def test_default_services_run_and_blob_store_is_usable(datadir: InitResult) -> None:
    node = Node(NodeConfig(), datadir.identity, datadir.datadir.path)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        store_service = node.service("blobstore")
        assert isinstance(store_service, BlobStoreService)
        cid = store_service.store.put(b"through the node")
        assert store_service.store.get(cid) == b"through the node"
        node.request_stop()
    with pytest.raises(KeyError):
        node.service("nope")


async def test_loop_monitor_measures_a_blocked_loop() -> None:
    import time

    monitor = LoopMonitor(interval_s=0.05, warn_lag_s=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        await trio.sleep(0.01)
        time.sleep(0.3)  # block the event loop, as CPU work on it would
        await trio.sleep(0.12)
        nursery.cancel_scope.cancel()
    stats = monitor.statistics()
    assert stats.samples >= 2
    # The monitor asked to sleep 0.05 s and was woken >= 0.29 s later.
    assert stats.max_lag_s >= 0.2
