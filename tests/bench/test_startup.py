"""``bench/startup.py`` on the smallest devnet: one device, forked, measured idle for a second."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:  # `bench` is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

from bench import startup  # noqa: E402
from flnode.devnet import layout_from_counts, prepare  # noqa: E402
from flnode.devnet.processes import is_alive, node_pid  # noqa: E402


def test_measure_times_up_and_reads_each_node_idle_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    spawn = "fork"
    layout = layout_from_counts(miners=0, devices=1, edges=0, manufacturers=0)
    network = prepare(tmp_path / "devnet", layout)
    record = startup.measure(network, spawn, idle_s=1.0)
    assert record["spawn"] == spawn and record["nodes"] == 1
    assert 0 < record["up_s"] < 120
    node = record["per_node"]["device-0"]
    assert 0 < node["pss_mib"] <= node["rss_mib"]
    assert record["idle_cpu_cores"] >= 0
    assert not is_alive(node_pid(network, "device-0"), network.datadir("device-0"))
