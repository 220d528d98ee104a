"""Per-process series on a real node's Prometheus endpoint: trio tasks, RSS, open fds, threads."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from flnode.config import NodeConfig
from flnode.datadir import init_datadir
from flnode.node import Node
from flnode.service import LoopMonitor


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
async def test_process_series_on_a_real_node(tmp_path: Path) -> None:
    result = init_datadir(tmp_path / "n")
    node = Node(NodeConfig(), result.identity, tmp_path / "n")
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        url = json.loads(node.datadir.state_file.read_text())["metrics_url"]
        v = await trio.to_thread.run_sync(_scrape, url)
        node.request_stop()
    assert v["flnode_trio_tasks"] > 5
    assert v["flnode_process_resident_bytes"] > 50 * 2**20
    assert v["flnode_process_open_fds"] > 3
    assert v["flnode_process_threads"] >= 1


async def test_task_count_follows_the_task_tree() -> None:
    before = LoopMonitor.count_tasks()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(trio.sleep_forever)
        await trio.sleep(0)
        assert LoopMonitor.count_tasks() == before + 3
        nursery.cancel_scope.cancel()
    assert LoopMonitor.count_tasks() == before


def test_process_reading_without_proc_reports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*_a: object, **_k: object) -> object:
        raise FileNotFoundError("/proc")

    monkeypatch.setattr("builtins.open", missing)
    monkeypatch.setattr("os.listdir", missing)
    assert LoopMonitor.read_process() == {}
