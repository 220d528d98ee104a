"""A devnet on disk: the network file, one data dir per node, logs and pid files.

::

    <dir>/devnet.json        the network file: layout, and per node its data dir, ports, peer id
    <dir>/nodes/<name>/      the node's data dir (config.toml written by the devnet, node.key, ...)
    <dir>/logs/<name>.log    the node's stderr+stdout (JSON log lines), appended across restarts
    <dir>/run/<name>.pid     the pid of the node's current process
    <dir>/network.toml       the chain's network file, when the layout has miners: every node
                             funded, every miner staked (so the miners form the BFT committee)

Ports (p2p, API, metrics) are chosen once, when the devnet is created, and written into each
node's ``config.toml``: a restarted node comes back on the same addresses, so its peers' books
stay right. Every node bootstraps to the first two nodes (the seeds); peer exchange does the rest.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w

from ..datadir import init_datadir
from ..fsutil import write_file_atomically
from .errors import DevnetError
from .layout import Layout

NETWORK_FILE = "devnet.json"
CHAIN_FILE = "network.toml"
FORMAT = 1
SEEDS = 2
#: The devnet chain: an id that is not a public network's, and amounts that make a demo easy.
CHAIN_ID = 1337
FUNDS_WEI = 1000 * 10**18
STAKE_WEI = 10 * 10**18
MIN_STAKE_WEI = 10**18


@dataclass(frozen=True, slots=True)
class DevnetNode:
    """One node of a devnet, as written in the network file."""

    name: str
    roles: tuple[str, ...]
    peer_id: str
    address: str
    p2p_port: int
    api_port: int
    metrics_port: int

    @property
    def p2p_addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.p2p_port}/p2p/{self.peer_id}"

    @property
    def api_url(self) -> str:
        return f"ws://127.0.0.1:{self.api_port}/"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@dataclass(frozen=True, slots=True)
class Network:
    """A devnet directory and what its network file says."""

    dir: Path
    layout: Layout
    nodes: tuple[DevnetNode, ...]
    created_at: float

    def datadir(self, name: str) -> Path:
        return self.dir / "nodes" / name

    def log_file(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.dir / "run" / f"{name}.pid"

    def node(self, name: str) -> DevnetNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise DevnetError(
            f"no node {name!r} in the devnet at {self.dir}; nodes: "
            + ", ".join(n.name for n in self.nodes)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "created_at": self.created_at,
            "layout": self.layout.to_json(),
            "nodes": [asdict(n) for n in self.nodes],
        }


OFFLOADING_DEVICES = 2  # devices that offload to the first edge, when there is one


def network_exists(directory: Path) -> bool:
    return (directory / NETWORK_FILE).exists()


def load_network(directory: Path) -> Network:
    path = directory / NETWORK_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DevnetError(
            f"no devnet in {directory} ({NETWORK_FILE} is missing); create one with "
            f"`flnode devnet up --dir {directory} --miners N --devices N`"
        ) from None
    except (OSError, ValueError) as exc:
        raise DevnetError(f"cannot read {path}: {exc}") from None
    if data.get("format") != FORMAT:
        raise DevnetError(f"{path} has format {data.get('format')!r}; this flnode reads {FORMAT}")
    nodes = tuple(DevnetNode(**{**n, "roles": tuple(n["roles"])}) for n in data["nodes"])
    return Network(directory, Layout.model_validate(data["layout"]), nodes, data["created_at"])


def create_network(directory: Path, layout: Layout) -> Network:
    """Make the data dirs, pick ports, write every config.toml and the network file."""
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("nodes", "logs", "run"):
        (directory / sub).mkdir(exist_ok=True)
    ports = _free_ports(3 * len(layout.nodes))
    nodes = []
    for i, spec in enumerate(layout.nodes):
        result = init_datadir(directory / "nodes" / spec.name)
        nodes.append(
            DevnetNode(
                name=spec.name,
                roles=tuple(spec.roles),
                peer_id=result.identity.peer_id,
                address=result.identity.address,
                p2p_port=ports[3 * i],
                api_port=ports[3 * i + 1],
                metrics_port=ports[3 * i + 2],
            )
        )
    network = Network(directory, layout, tuple(nodes), time.time())
    if any("miner" in n.roles for n in nodes):
        _write_chain_file(network)
    for node in nodes:
        _write_config(network, node)
    write_file_atomically(
        directory / NETWORK_FILE,
        (json.dumps(network.to_json(), indent=2) + "\n").encode("utf-8"),
    )
    return network


def _write_chain_file(network: Network) -> None:
    """The ledger's network file: every node funded, the miners staked (they are the committee).

    Imported here only: a devnet without miners runs no chain and needs no py-evm.
    """
    from ..consensus.network import new_network

    spec = new_network(
        network_id=network.layout.network_id,
        chain_id=CHAIN_ID,
        accounts=[(n.address, FUNDS_WEI) for n in network.nodes],
        miners=[(n.address, STAKE_WEI) for n in network.nodes if "miner" in n.roles],
        min_stake=MIN_STAKE_WEI,
    )
    spec.save(network.dir / CHAIN_FILE)


def _write_config(network: Network, node: DevnetNode) -> None:
    seeds = [n.p2p_addr for n in network.nodes[:SEEDS] if n.name != node.name]
    spec = next(n for n in network.layout.nodes if n.name == node.name)
    config = network.layout.node_config(spec)
    config.setdefault("node", {}).update(
        {"roles": list(node.roles), "network_id": network.layout.network_id}
    )
    config.setdefault("log", {}).setdefault("format", "json")
    p2p = config.setdefault("p2p", {})
    p2p.update({"listen": [f"/ip4/127.0.0.1/tcp/{node.p2p_port}"], "bootstrap": seeds})
    p2p.setdefault("reconnect_max_backoff_s", 5.0)
    api = config.setdefault("api", {})
    api.update({"enabled": True, "port": node.api_port})
    api.setdefault("call_timeout_s", 600.0)  # task_create pre-trains before it answers
    config.setdefault("metrics", {}).update({"enabled": True, "port": node.metrics_port})
    if "device" in node.roles:
        _device_settings(network, node, config.setdefault("federation", {}))
    if (network.dir / CHAIN_FILE).exists():  # a layout may opt out: chain.network_file = ""
        config.setdefault("chain", {}).setdefault(
            "network_file", str((network.dir / CHAIN_FILE).resolve())
        )
    header = f"# Written by `flnode devnet` for node {node.name}; edit the layout instead.\n"
    (network.datadir(node.name) / "config.toml").write_text(
        header + tomli_w.dumps(config), encoding="utf-8"
    )


def _device_settings(network: Network, node: DevnetNode, federation: dict[str, Any]) -> None:
    """Each device gets its own shard of the data set's private part; the first
    :data:`OFFLOADING_DEVICES` offload head training to the first edge (tasks whose privacy
    mode releases features; a ``dpsgd-full`` device trains everything itself)."""
    devices = [n for n in network.nodes if "device" in n.roles]
    edges = [n for n in network.nodes if "edge" in n.roles]
    index = devices.index(node)
    federation.setdefault("shard_index", index)
    federation.setdefault("shard_count", len(devices))
    if edges and index < OFFLOADING_DEVICES:
        federation.setdefault("edge", edges[0].peer_id)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all held open until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()
