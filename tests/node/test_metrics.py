"""The Prometheus endpoint of a real node: scraped over HTTP and parsed with prometheus_client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from flnode.api import ApiClient, ApiEndpoint
from flnode.config import NodeConfig
from flnode.datadir import init_datadir
from flnode.node import Node


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, "", exc.read().decode()


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_metrics_are_scraped_and_parsed(tmp_path: Path) -> None:
    result = init_datadir(tmp_path / "n")
    node = Node(NodeConfig(), result.identity, tmp_path / "n")
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        state = json.loads(node.datadir.state_file.read_text())
        url = state["metrics_url"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        node.service("blobstore").store.put(b"one blob")  # type: ignore[attr-defined]
        async with ApiClient.open(ApiEndpoint.from_datadir(node.datadir.path)) as c:
            await c.call("node_info")
            await c.call("node_info")
            with pytest.raises(Exception, match="unknown method"):
                await c.call("nope")
            status, ctype, text = await trio.to_thread.run_sync(_get, url)
        assert status == 200 and ctype.startswith("text/plain; version=")
        v = _values(text)
        assert v[("flnode_peers", ())] == 0
        assert v[("flnode_blobs", ())] == 1
        assert v[("flnode_api_calls_total", (("method", "node_info"),))] == 2
        assert v[("flnode_api_errors_total", (("code", "-32601"),))] == 1
        assert v[("flnode_api_connections", ())] == 1
        assert ("flnode_gossip_messages_total", (("direction", "out"),)) in v
        assert ("flnode_gossip_messages_total", (("direction", "in"),)) in v
        assert v[("flnode_event_loop_lag_seconds", ())] >= 0
        info = next(k for k in v if k[0] == "flnode_node_info")
        assert ("peer_id", result.identity.peer_id) in info[1]
        status, _, body = await trio.to_thread.run_sync(_get, url.replace("/metrics", "/x"))
        assert status == 404 and "/metrics" in body
        node.request_stop()


async def test_metrics_can_be_switched_off(tmp_path: Path) -> None:
    result = init_datadir(tmp_path / "n")
    config = NodeConfig.model_validate({"metrics": {"enabled": False}})
    node = Node(config, result.identity, tmp_path / "n")
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert "metrics" not in [s.name for s in node.services]
        assert "metrics_url" not in json.loads(node.datadir.state_file.read_text())
        node.request_stop()
