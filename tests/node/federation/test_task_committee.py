"""Miners outside a task's committee check its round commits too (real processes, slow).

The task's committee is one faulty miner, which proposes perturbed aggregates; the three honest
miners are not on it. The contract takes a ``commitRound`` from the committee only, and the
faulty miner's own vote and two others' would make a BFT quorum of 3 of 4: if only committee
members checked commits, the outsiders would vote for its wrong model. Every miner checks, so
the round is never committed wrongly (nor at all: nobody else may commit it), and the outsiders
are seen refusing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from flnode.api.client import ApiClient
from flnode.devnet import down, endpoint, layout_from_counts, prepare, up
from flnode.devnet.layout import NodeSpec
from flnode.devnet.network import Network
from flnode.devnet.training import edit_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
DEVICES = 3


def _spec() -> str:
    return edit_spec(rounds=2, updates_per_round=DEVICES, eval_size=2000)


async def _call(network: Network, name: str, method: str, params: Any = None) -> Any:
    async with ApiClient.open(endpoint(network, name)) as client:
        return await client.call(method, params, timeout=120)


def _events(path: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == name:
            out.append(entry)
    return out


async def test_miners_outside_the_task_committee_refuse_a_wrong_commit(tmp_path: Path) -> None:
    layout = layout_from_counts(
        miners=3,
        devices=DEVICES,
        manufacturers=1,
        config={"federation": {"shard_count": 40}},
        extra_nodes=(
            NodeSpec(
                name="bad-miner",
                roles=("miner",),
                config={"federation": {"fault": "wrong-aggregate"}},
            ),
        ),
    )
    network = prepare(tmp_path / "devnet", layout, reset=True)
    try:
        await up(network, timeout_s=300.0)
        created = await _call(
            network,
            "manufacturer-0",
            "task_create",
            {"spec": _spec(), "committee": [network.node("bad-miner").address]},
        )
        task = int(created["task"])
        # Wait until every device has submitted round 1: the round may close from then on.
        with trio.fail_after(600):
            while True:
                status = await _call(network, "miner-1", "round_status", {"task": task})
                if len((status.get("open") or {}).get("submissions", [])) >= DEVICES:
                    break
                await trio.sleep(2)
        # The faulty member leads about one height in four: give it many chances.
        with trio.fail_after(240):
            while not _events(network.log_file("bad-miner"), "proposing round commit"):
                await trio.sleep(2)
        await trio.sleep(30)
        status = await _call(network, "miner-1", "round_status", {"task": task})
    finally:
        down(network)
    assert status["committed"] == [], f"a round was committed: {status['committed']}"
    refusals = {
        m: len(_events(network.log_file(m), "proposed aggregate differs from mine"))
        for m in ("miner-0", "miner-1", "miner-2")
    }
    assert all(refusals.values()), f"a miner outside the committee never refused: {refusals}"
