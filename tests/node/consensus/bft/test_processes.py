"""The consensus in real `flnode start` processes: commits, a SIGKILLed miner, catching up."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from .procs import ProcessNet, same_head, submit_all, wait_heads


@pytest.mark.slow
async def test_four_miner_processes_commit_survive_a_kill_and_catch_up(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    net = ProcessNet(flnode_exe, tmp_path, clean_env, 4)
    try:
        net.start_all(mesh_timeout=30)
        # one sender's transactions enter at different nodes: gossip must reorder them
        txs = net.transfers(20)
        for i in range(4):
            await submit_all(net.dirs[i], txs[5 * i : 5 * i + 5])
            await trio.sleep(0.3)
        statuses = await wait_heads(
            net.dirs,
            lambda s: all(st.get("txs_committed", 0) >= 20 for st in s) and same_head(s, 1),
            90,
        )
        # honest nodes only: no message may have been rejected, except a second leader's
        # proposal when a lower credential arrived late (possible on a loaded machine)
        offences = [set(st["offences"]) - {"not-leader"} for st in statuses]
        assert not any(offences), [st["offences"] for st in statuses]
        first = statuses[0]["head"]["number"]

        # a miner is SIGKILLed: the other three keep committing
        killed = net.daemons[3]
        assert killed is not None
        killed.kill()
        more = net.transfers(10)
        await submit_all(net.dirs[0], more)
        statuses = await wait_heads(
            net.dirs[:3],
            lambda s: all(st.get("txs_committed", 0) >= 30 for st in s) and same_head(s, first + 1),
            90,
        )
        target = statuses[0]["head"]["number"]

        # it restarts (same data dir, same port) and catches up by itself
        net.start(3)
        net.wait_ready(3)
        # (by block sync, or by importing the certified block it had recorded just before the
        # kill: both paths end at the same head)
        await wait_heads(net.dirs, lambda s: same_head(s, target), 90)
        last = net.transfers(3)
        await submit_all(net.dirs[3], last)
        await wait_heads(net.dirs, lambda s: same_head(s, target + 1), 90)
    finally:
        net.stop_all()
