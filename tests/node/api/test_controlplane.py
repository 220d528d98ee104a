"""A later layer plugs in through the control plane: its namespace is served, its samples exported."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from flnode.api import ApiClient, ApiEndpoint
from flnode.config import NodeConfig
from flnode.controlplane import control_plane_services, peer_event_publisher
from flnode.datadir import init_datadir
from flnode.events import EventBus
from flnode.metrics import Sample
from flnode.node import Node
from flnode.p2p.service import P2PService
from flnode.rpc import NoParams, RpcMethod
from flnode.service import LoopMonitor, Service
from flnode.storage.service import BlobStoreService


class ChainLike(Service):
    """Stands in for a ledger service: a ``chain`` namespace, a metric, and an event it publishes."""

    name = "chain"
    rpc_namespace = "chain"

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.height = 7
        bus.declare("block_committed", "A block was committed: {height}.")

    def rpc_methods(self) -> Iterable[RpcMethod]:
        async def chain_head(params: NoParams) -> dict[str, int]:
            return {"height": self.height}

        return [RpcMethod("chain_head", chain_head, "The committed head.")]

    def metric_samples(self) -> Iterable[Sample]:
        yield Sample("flnode_chain_height", "gauge", "Committed height.", self.height)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()


async def test_extra_services_plug_into_api_metrics_and_events(tmp_path: Path) -> None:
    result = init_datadir(tmp_path / "n")
    config = NodeConfig()
    bus = EventBus()

    async def no_blobs(cid: object) -> None:
        return None

    blobs = BlobStoreService(result.datadir.blob_dir, max_blob_size=2**20)
    p2p = P2PService(
        result.identity, config.p2p, "t", no_blobs, on_peer_event=peer_event_publisher(bus)
    )
    monitor = LoopMonitor()
    chain = ChainLike(bus)
    control = control_plane_services(
        config,
        result.datadir,
        result.identity,
        bus=bus,
        monitor=monitor,
        blobs=blobs,
        p2p=p2p,
        extra=[chain],
    )
    node = Node(config, result.identity, tmp_path / "n", [monitor, blobs, p2p, chain, *control])
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        state = json.loads(node.datadir.state_file.read_text())
        async with ApiClient.open(ApiEndpoint.from_datadir(node.datadir.path)) as c:
            assert await c.call("chain_head") == {"height": 7}
            sub = await c.subscribe("block_committed")
            bus.publish("block_committed", height=8)
            event = await sub.next(timeout=5)
            assert event["event"] == "block_committed" and event["data"] == {"height": 8}

        def scrape() -> str:
            with urllib.request.urlopen(state["metrics_url"], timeout=5) as response:
                return response.read().decode()

        text = await trio.to_thread.run_sync(scrape)
        heights = [
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "flnode_chain_height"
        ]
        assert heights == [7]
        node.request_stop()
