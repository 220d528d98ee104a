"""`flnode devnet` with real processes: up, status, a node killed with SIGKILL, restart, down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import process_gone


def _flnode(
    exe: list[str], env: dict[str, str], *args: str, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*exe, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd
    )


def _status(exe: list[str], env: dict[str, str], d: Path) -> dict[str, dict[str, Any]]:
    done = _flnode(exe, env, "devnet", "status", "--dir", str(d), "--json")
    assert done.returncode == 0, done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)}


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.fixture
def devnet_dir(tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]):  # type: ignore[no-untyped-def]
    d = tmp_path / "devnet"
    yield d
    if (d / "devnet.json").exists():  # never leave processes behind, whatever failed
        _flnode(flnode_exe, clean_env, "devnet", "down", "--dir", str(d), "--grace", "3")


def test_up_status_kill_restart_down(
    devnet_dir: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    d = str(devnet_dir)
    up = _flnode(
        flnode_exe,
        clean_env,
        "devnet",
        "up",
        "--dir",
        d,
        "--miners",
        "1",
        "--devices",
        "1",
        "--timeout",
        "90",
    )
    assert up.returncode == 0, up.stderr + up.stdout
    assert "devnet up: 3 nodes" in up.stdout

    rows = _status(flnode_exe, clean_env, devnet_dir)
    assert list(rows) == ["miner-0", "device-0", "manufacturer-0"]
    assert all(r["alive"] and r["peers"] == 2 for r in rows.values()), rows
    assert rows["miner-0"]["roles"] == ["miner"]

    # Each node's API is reachable with the console, through its data dir.
    info = _flnode(
        flnode_exe, clean_env, "console", "--datadir", f"{d}/nodes/miner-0", "--exec", "node_info"
    )
    assert json.loads(info.stdout)["peer_id"] == rows["miner-0"]["peer_id"]

    # The devnet runs a chain (its miner is the committee; `up` waited for a first block): a
    # transfer signed by device-0 is committed too, and every node's status shows the height.
    assert all(r["height"] >= 1 for r in rows.values()), rows
    _commit_transfer(flnode_exe, clean_env, devnet_dir)
    _wait(
        lambda: all(r["height"] >= 2 for r in _status(flnode_exe, clean_env, devnet_dir).values()),
        30,
        "block 2 on every node",
    )
    wallet = _console(flnode_exe, clean_env, devnet_dir, "manufacturer-0", "wallet_balance")
    assert wallet["balance"]["wei"] == str(1000 * 10**18 + 1)
    assert _console(flnode_exe, clean_env, devnet_dir, "miner-0", "eth_chainId") == "0x539"

    again = _flnode(flnode_exe, clean_env, "devnet", "up", "--dir", d)
    assert again.returncode == 1 and "already running" in again.stderr

    # SIGKILL one node: status shows it dead, the others notice it left.
    victim = rows["device-0"]
    os.kill(victim["pid"], signal.SIGKILL)
    _wait(lambda: not _status(flnode_exe, clean_env, devnet_dir)["device-0"]["alive"], 10, "dead")
    _wait(
        lambda: _status(flnode_exe, clean_env, devnet_dir)["miner-0"]["peers"] == 1,
        15,
        "miner-0 to drop the dead peer",
    )
    table = _flnode(flnode_exe, clean_env, "devnet", "status", "--dir", d)
    assert "not running: device-0" in table.stdout

    restarted = _flnode(flnode_exe, clean_env, "devnet", "restart", "--dir", d, "device-0")
    assert restarted.returncode == 0, restarted.stderr
    rows = _status(flnode_exe, clean_env, devnet_dir)
    assert rows["device-0"]["alive"] and rows["device-0"]["pid"] != victim["pid"]
    assert rows["device-0"]["peer_id"] == victim["peer_id"]  # same data dir, same identity
    _wait(
        lambda: _status(flnode_exe, clean_env, devnet_dir)["miner-0"]["peers"] == 2, 15, "reconnect"
    )

    logs = _flnode(flnode_exe, clean_env, "devnet", "logs", "--dir", d, "device-0", "-n", "200")
    assert '"event": "ready"' in logs.stdout
    every = _flnode(flnode_exe, clean_env, "devnet", "logs", "--dir", d, "-n", "1")
    assert {line.split(" | ")[0].strip() for line in every.stdout.splitlines()} == set(rows)

    down = _flnode(flnode_exe, clean_env, "devnet", "down", "--dir", d)
    assert down.returncode == 0
    assert down.stdout.count(": stopped") == 3, down.stdout
    assert not any(r["alive"] for r in _status(flnode_exe, clean_env, devnet_dir).values())
    for row in rows.values():
        assert process_gone(row["pid"]), row


def _console(exe: list[str], env: dict[str, str], d: Path, node: str, command: str) -> Any:
    done = _flnode(exe, env, "console", "--datadir", str(d / "nodes" / node), "--exec", command)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _commit_transfer(exe: list[str], env: dict[str, str], d: Path) -> None:
    """Sign 1 wei from device-0 to manufacturer-0 and queue it through device-0's API."""
    from eth.db.atomic import AtomicDB

    from flnode.consensus.chain import Chain
    from flnode.consensus.network import load_network
    from flnode.identity import NodeIdentity

    spec = load_network(d / "network.toml")
    sender = NodeIdentity.load(d / "nodes" / "device-0" / "node.key")
    receiver = NodeIdentity.load(d / "nodes" / "manufacturer-0" / "node.key")
    tx = Chain(spec, AtomicDB()).sign_transaction(
        sender.private_key, to=receiver.address, value=1, gas=21_000
    )
    command = f"consensus_submit tx=0x{tx.encode().hex()}"
    assert _console(exe, env, d, "device-0", command) == "0x" + tx.hash.hex()


def test_up_fails_clearly_when_a_node_cannot_start(
    devnet_dir: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    d = str(devnet_dir)
    created = _flnode(
        flnode_exe, clean_env, "devnet", "up", "--dir", d, "--devices", "1", "--manufacturers", "0"
    )
    assert created.returncode == 0, created.stderr
    _flnode(flnode_exe, clean_env, "devnet", "down", "--dir", d)
    # Break the node's config: `up` must report the node's own error, not hang.
    config = devnet_dir / "nodes" / "device-0" / "config.toml"
    config.write_text(config.read_text() + "\n[bogus]\nx = 1\n")
    failed = _flnode(flnode_exe, clean_env, "devnet", "up", "--dir", d, "--timeout", "30")
    assert failed.returncode == 1
    assert "node device-0 exited while the devnet was starting" in failed.stderr
    assert "unknown config section [bogus]" in failed.stderr
    other = _flnode(flnode_exe, clean_env, "devnet", "up", "--dir", d, "--miners", "2")
    assert other.returncode == 1 and "another layout" in other.stderr


def test_up_and_down_with_a_relative_dir_as_make_run_passes_it(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    """`make run` gives `--dir .run/devnet`; the nodes' configs name the chain's network file,
    which a node reads relative to its own data dir, so a relative devnet dir once broke every
    node with a miner in the devnet."""
    try:
        up = _flnode(
            flnode_exe,
            clean_env,
            *("devnet", "up", "--dir", "rel/devnet", "--miners", "1", "--devices", "1"),
            "--timeout",
            "90",
            cwd=tmp_path,
        )
        assert up.returncode == 0, up.stderr
        status = _flnode(
            flnode_exe, clean_env, "devnet", "status", "--dir", "rel/devnet", "--json", cwd=tmp_path
        )
        assert status.returncode == 0, status.stderr
        rows = json.loads(status.stdout)
        assert rows and all(row["alive"] for row in rows), rows
        assert all(row["height"] >= 1 for row in rows), rows
    finally:
        _flnode(
            flnode_exe, clean_env, "devnet", "down", "--dir", "rel/devnet", "--grace", "3",
            cwd=tmp_path,
        )  # fmt: skip


BOUNDED_LAYOUT = """\
miners = 1
manufacturers = 0
""" + "".join(
    f'[[node]]\nname = "device-{i}"\nroles = ["device"]\nconfig.p2p.max_peers = 2\n'
    for i in range(5)
)


def test_up_waits_for_each_node_to_reach_its_own_peer_bound(
    devnet_dir: Path, tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    """A large devnet bounds its devices' peers (a full mesh of 50 nodes does not run on 2
    cores): ``up`` then waits for each device's ``max_peers`` connections, not for all nodes."""
    layout = tmp_path / "layout.toml"
    layout.write_text(BOUNDED_LAYOUT, encoding="utf-8")
    up = _flnode(
        flnode_exe,
        clean_env,
        *("devnet", "up", "--dir", str(devnet_dir), "--layout", str(layout), "--timeout", "90"),
    )
    assert up.returncode == 0, up.stderr[-3000:]
    rows = _status(flnode_exe, clean_env, devnet_dir)
    assert rows["miner-0"]["peers"] == 5, rows  # unbounded: it dials every node it learns of
    for i in range(5):
        assert rows[f"device-{i}"]["peers"] >= 2, rows
