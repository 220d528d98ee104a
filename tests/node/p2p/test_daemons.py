"""Real `flnode start` processes on loopback: discovery from one bootstrap address, and
reconnection to a node that was killed with SIGKILL and restarted."""

from __future__ import annotations

from pathlib import Path

from tests.daemons import Daemon, free_port, init_datadir

READY_S = 60


def test_four_daemons_find_each_other_and_reconnect_after_sigkill(
    flnode_exe: list[str], tmp_path: Path, clean_env: dict[str, str]
) -> None:
    ports = [free_port() for _ in range(4)]
    dirs = [init_datadir(flnode_exe, tmp_path / f"n{i}", clean_env) for i in range(4)]
    daemons: list[Daemon] = []
    try:
        first = Daemon(flnode_exe, dirs[0], clean_env, "--listen", f"/ip4/127.0.0.1/tcp/{ports[0]}")
        daemons.append(first)
        first.wait_for(lambda: bool(first.events("ready")), READY_S, "node 0 ready")
        bootstrap = f"/ip4/127.0.0.1/tcp/{ports[0]}/p2p/{first.peer_id}"
        for i in range(1, 4):
            daemons.append(
                Daemon(
                    flnode_exe,
                    dirs[i],
                    clean_env,
                    "--listen",
                    f"/ip4/127.0.0.1/tcp/{ports[i]}",
                    "--bootstrap",
                    bootstrap,
                )
            )
        for d in daemons:
            d.wait_for(lambda d=d: bool(d.events("ready")), READY_S, "ready")
        ids = [d.peer_id for d in daemons]
        for i, d in enumerate(daemons):
            others = set(ids) - {ids[i]}
            d.wait_for(lambda d=d, o=others: d.connected_peers() == o, 30, f"node {i} meshed")

        # SIGKILL node 2 (no goodbye), restart it on the same data dir and port.
        victim = daemons[2]
        victim.kill()
        for i in (0, 1, 3):
            d = daemons[i]
            d.wait_for(lambda d=d: ids[2] not in d.connected_peers(), 30, f"node {i} sees loss")
        victim.start()
        victim.wait_for(lambda: len(victim.events("ready")) == 2, READY_S, "restarted node ready")
        for i, d in enumerate(daemons):
            others = set(ids) - {ids[i]}
            d.wait_for(lambda d=d, o=others: d.connected_peers() == o, 45, f"node {i} re-meshed")
    finally:
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0, 0, 0]
