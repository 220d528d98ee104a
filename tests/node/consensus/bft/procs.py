"""A network of real `flnode start` processes running the consensus on loopback.

Each node has its own data dir and fixed ports (so a restarted node keeps its address), every
node bootstraps to the first two, and all share one network file whose committee is the first
``miners`` nodes. Transactions are signed here and sent through each node's control API
(``consensus_submit``); ``consensus_status`` reports heights and counters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from eth.db.atomic import AtomicDB

from flnode.api.client import ApiClient, ApiEndpoint
from flnode.consensus.chain import Chain
from flnode.consensus.network import NetworkSpec, new_network
from flnode.identity import NodeIdentity
from tests.daemons import Daemon, free_port, init_datadir

ETHER = 10**18
GWEI = 10**9


class ProcessNet:
    """``count`` daemons, the first ``miners`` of them the committee."""

    def __init__(
        self,
        exe: list[str],
        root: Path,
        env: dict[str, str],
        count: int,
        *,
        miners: int | None = None,
        funded: int = 4,
    ) -> None:
        self.exe, self.root, self.env = exe, root, env
        self.dirs = [init_datadir(exe, root / f"node{i}", env) for i in range(count)]
        self.ids = [NodeIdentity.load(d / "node.key") for d in self.dirs]
        self.wallets = [
            NodeIdentity.from_secret((777_000 + i).to_bytes(32, "big")) for i in range(funded)
        ]
        miners = count if miners is None else miners
        self.spec: NetworkSpec = new_network(
            network_id="bft-procs",
            chain_id=5151,
            accounts=[(w.address, 10**6 * ETHER) for w in self.wallets]
            + [(i.address, 1000 * ETHER) for i in self.ids],
            miners=[(i.address, 2 * ETHER) for i in self.ids[:miners]],
            min_stake=ETHER,
        )
        self.network_file = root / "network.toml"
        self.spec.save(self.network_file)
        self.ports = [free_port() for _ in range(count)]
        self.daemons: list[Daemon | None] = [None] * count
        self._signer = Chain(self.spec, AtomicDB())
        self._nonces = [0] * funded
        self.extra_args: list[str] = []

    def addr(self, i: int) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.ports[i]}/p2p/{self.ids[i].peer_id}"

    def start(self, i: int) -> Daemon:
        boot = [
            a for j in (0, 1) if j != i and j < len(self.ids) for a in ("--bootstrap", self.addr(j))
        ]
        daemon = Daemon(
            self.exe,
            self.dirs[i],
            self.env,
            "--network",
            str(self.network_file),
            "--listen",
            f"/ip4/127.0.0.1/tcp/{self.ports[i]}",
            "--api-port",
            "0",
            "--role",
            "miner",
            *boot,
            *self.extra_args,
        )
        self.daemons[i] = daemon
        return daemon

    def wait_ready(self, i: int, timeout: float = 60) -> None:
        daemon = self.daemons[i]
        assert daemon is not None and daemon.proc is not None
        pid = daemon.proc.pid
        daemon.wait_for(lambda: bool(daemon.events("ready", pid)), timeout, f"node{i} ready")

    def start_all(self, *, mesh_timeout: float) -> None:
        """Start every node, wait until each is ready and connected to all the others."""
        count = len(self.dirs)
        for i in range(count):
            self.start(i)
        for i in range(count):
            self.wait_ready(i)
        for i in range(count):
            daemon = self.daemons[i]
            assert daemon is not None
            daemon.wait_for(
                lambda d=daemon: len(d.connected_peers()) >= count - 1, mesh_timeout, "full mesh"
            )

    def stop_all(self) -> None:
        for daemon in self.daemons:
            if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop()

    def transfers(self, count: int, *, wallet: int = 0) -> list[bytes]:
        """``count`` signed transfers from one funded wallet (consecutive nonces)."""
        key = self.wallets[wallet].private_key
        out = []
        for _ in range(count):
            tx = self._signer.sign_transaction(
                key,
                to=self.ids[0].address,
                value=1,
                gas=21_000,
                nonce=self._nonces[wallet],
                max_fee_per_gas=50 * GWEI,
            )
            self._nonces[wallet] += 1
            out.append(tx.encode())
        return out


async def api_call(datadir: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    async with ApiClient.open(ApiEndpoint.from_datadir(datadir)) as client:
        return await client.call(method, params)


async def status(datadir: Path) -> dict[str, Any]:
    result = await api_call(datadir, "consensus_status")
    assert isinstance(result, dict)
    return result


async def submit_all(datadir: Path, txs: list[bytes]) -> list[str]:
    async with ApiClient.open(ApiEndpoint.from_datadir(datadir)) as client:
        return [await client.call("consensus_submit", {"tx": "0x" + tx.hex()}) for tx in txs]


async def wait_heads(dirs: list[Path], predicate: Any, timeout: float) -> list[dict[str, Any]]:
    """Poll ``consensus_status`` of every node until ``predicate(statuses)`` holds."""
    with trio.fail_after(timeout):
        while True:
            statuses = []
            for d in dirs:
                try:
                    statuses.append(await status(d))
                except Exception:
                    statuses.append({})
            if predicate(statuses):
                return statuses
            await trio.sleep(0.2)


async def submit_batches(datadir: Path, txs: list[bytes], size: int = 100) -> list[str]:
    """Submit through ``consensus_submit_batch``, ``size`` transactions per call."""
    out: list[str] = []
    async with ApiClient.open(ApiEndpoint.from_datadir(datadir)) as client:
        for i in range(0, len(txs), size):
            chunk = ["0x" + tx.hex() for tx in txs[i : i + size]]
            out.extend(await client.call("consensus_submit_batch", {"txs": chunk}, timeout=60))
    return out


def same_head(statuses: list[dict[str, Any]], at_least: int) -> bool:
    """Whether every node's ``consensus_status`` shows one head (number, hash, state root) at
    height ``at_least`` or above."""
    heads = [s.get("head") or {} for s in statuses]
    numbers = {h.get("number") for h in heads}
    return (
        len(numbers) == 1
        and (numbers.pop() or 0) >= at_least
        and len({(h["hash"], h["state_root"]) for h in heads}) == 1
    )
