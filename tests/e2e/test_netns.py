"""Beyond one machine: four miner processes, each in its own Linux network namespace, on a test
subnet with link delay and loss, commit the same chain.

The test builds its own little network and removes it again, whatever happens:

* one namespace per node (``flt-<6 hex>-<i>``) and a hub namespace (``flt-<6 hex>-h``) holding a
  bridge; every node's ``eth0`` is one end of a veth pair whose other end is a port of the
  bridge; one more veth pair joins the root namespace (``flt-<6 hex>-r``, address ``.1``) to the
  bridge so that the test itself reaches the nodes' control APIs;
* a private ``10.213.<random>.0/24`` subnet that no interface of the machine uses yet, the nodes
  at ``.10`` to ``.13``;
* on every node's ``eth0``, ``tc qdisc ... root netem delay 20ms 5ms loss 1%``. A kernel built
  without ``sch_netem`` (as some VM kernels are) gets a token-bucket limit instead (``tbf rate
  1mbit``: a slow link with queueing delay, but no loss), and the test says so in a warning.

Each node runs as ``ip netns exec <ns> flnode start``, listens on its namespace address only,
bootstraps to the first two nodes by those addresses, and serves its API on that address
(``api.allow_remote``). The test checks that every node listens on its subnet address and on no
loopback address, that they form a full mesh and know each other by subnet addresses (never a
loopback one, in ``node_peers``), that 20 transfers submitted through one node's API and 5 more
through another are committed by all four, that all end on the same head hash and state root without rejecting
any honest message, and, with netem, that the delay is really on the wire (a TCP handshake from
the root namespace takes at least 10 ms).

Needs root, Linux, and iproute2's ``ip`` and ``tc``; skipped otherwise. It takes 40-60 s on a
2-core machine (four daemons starting and stopping), so it is marked slow:

    sudo .venv/bin/pytest tests/e2e/test_netns.py -m slow
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from tests.daemons import Daemon
from tests.node.consensus.bft.procs import ProcessNet, api_call, same_head, submit_all, wait_heads


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces, veth pairs and tc exist on Linux only"
    if os.geteuid() != 0:
        return (
            "needs root to create network namespaces, veth pairs and tc qdiscs "
            "(run: sudo .venv/bin/pytest tests/e2e/test_netns.py -m slow)"
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"needs iproute2's {' and '.join(missing)} on PATH"
    return None


_SKIP = _skip_reason()
pytestmark = [pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""), pytest.mark.slow]

NODES = 4
P2P_PORT = 4001
API_PORT = 4002
NETEM = ("netem", "delay", "20ms", "5ms", "loss", "1%")
TBF = ("tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


class Lab:
    """Namespaces, veth pairs and a bridge on a private /24; ``destroy`` removes all of it."""

    def __init__(self, count: int) -> None:
        self.prefix = f"flt-{secrets.token_hex(3)}"
        self.hub = f"{self.prefix}-h"
        self.root_link = f"{self.prefix}-r"
        self.namespaces = [f"{self.prefix}-{i}" for i in range(count)]
        self.subnet = _free_subnet()
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])  # .1, the root namespace's end
        self.addresses = [str(hosts[9 + i]) for i in range(count)]  # .10, .11, ...
        self.qdisc: tuple[str, ...] = ()
        self._created: list[str] = []

    def create(self) -> None:
        plen = self.subnet.prefixlen
        self._add_ns(self.hub)
        _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.hub, "link", "set", "br0", "up")
        # the root namespace's door to the subnet
        _run(
            "ip",
            "link",
            "add",
            self.root_link,
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            self.hub,
        )
        self._created.append(self.root_link)
        _run("ip", "-n", self.hub, "link", "set", "up0", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.gateway}/{plen}", "dev", self.root_link)
        _run("ip", "link", "set", self.root_link, "up")
        for i, ns in enumerate(self.namespaces):
            self._add_ns(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            port = f"p{i}"
            _run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port)
            _run("ip", "-n", ns, "link", "set", port, "netns", self.hub)
            _run("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.addresses[i]}/{plen}", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            self._impair(ns)

    def _add_ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._created.append(name)

    def _impair(self, ns: str) -> None:
        """netem on the node's link; a token bucket when the kernel has no netem."""
        if not self.qdisc:
            probe = _run("tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", *NETEM, check=False)
            if probe.returncode == 0:
                self.qdisc = NETEM
                return
            warnings.warn(
                f"this kernel has no sch_netem ({probe.stderr.strip()}): the links get "
                f"`tc qdisc ... root {' '.join(TBF)}` instead (a slow link, no loss)",
                stacklevel=2,
            )
            self.qdisc = TBF
        _run("tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", *self.qdisc)

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[i]]

    def destroy(self) -> None:
        """Delete every namespace (their veths go with them) and the root end; never raises."""
        for name in reversed(self._created):
            if name == self.root_link:
                _run("ip", "link", "del", name, check=False)
            else:
                _run("ip", "netns", "del", name, check=False)

    def leftovers(self) -> list[str]:
        names = _run("ip", "netns", "list").stdout + _run("ip", "-o", "link", "show").stdout
        return sorted({w.split("@")[0] for w in names.split() if w.startswith(self.prefix)})


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.x.0/24 that no address or route of the root namespace touches."""
    used = _run("ip", "-4", "-o", "addr", "show").stdout + _run("ip", "-4", "route").stdout
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.213.{secrets.randbelow(256)}.0/24")
        if f"10.213.{net.network_address.packed[2]}." not in used:
            return net
    raise RuntimeError("no free 10.213.x.0/24 subnet")


class NetnsNet(ProcessNet):
    """:class:`ProcessNet` with each node in its own namespace, on its subnet address."""

    def __init__(self, exe: list[str], root: Path, env: dict[str, str], lab: Lab) -> None:
        super().__init__(exe, root, env, NODES)
        self.lab = lab
        self.ports = [P2P_PORT] * NODES
        for i, datadir in enumerate(self.dirs):
            config = {
                "node": {"roles": ["miner"], "network_id": self.spec.network_id},
                "p2p": {"peer_exchange_interval_s": 2.0, "reconnect_max_backoff_s": 5.0},
                "api": {
                    "listen_host": lab.addresses[i],
                    "allow_remote": True,
                    "port": API_PORT,
                },
                "metrics": {"enabled": False},
            }
            (datadir / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")

    def addr(self, i: int) -> str:
        return f"/ip4/{self.lab.addresses[i]}/tcp/{P2P_PORT}/p2p/{self.ids[i].peer_id}"

    def start(self, i: int) -> Daemon:
        boot = [a for j in (0, 1) if j != i for a in ("--bootstrap", self.addr(j))]
        daemon = Daemon(
            [*self.lab.exec_prefix(i), *self.exe],
            self.dirs[i],
            self.env,
            "--network",
            str(self.network_file),
            "--listen",
            f"/ip4/{self.lab.addresses[i]}/tcp/{P2P_PORT}",
            *boot,
        )
        self.daemons[i] = daemon
        return daemon


@pytest.fixture
def netns_net(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> Iterator[NetnsNet]:
    lab = Lab(NODES)
    net: NetnsNet | None = None
    try:
        lab.create()
        net = NetnsNet(flnode_exe, tmp_path, clean_env, lab)
        yield net
    finally:
        if net is not None:
            net.stop_all()
        lab.destroy()
        left = lab.leftovers()
        assert not left, f"the test left network namespaces or links behind: {left}"


def _connect_ms(host: str, port: int) -> float:
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=5):
        return (time.perf_counter() - start) * 1000


async def test_four_miners_in_namespaces_over_delayed_lossy_links(netns_net: NetnsNet) -> None:
    net, lab = netns_net, netns_net.lab
    for i in range(NODES):
        net.start(i)
    for i in range(NODES):
        net.wait_ready(i, timeout=90)

    # every node listens on its namespace address, and on no loopback address
    for i, daemon in enumerate(net.daemons):
        assert daemon is not None
        ready = daemon.events("ready")[-1]
        addrs = [str(a) for a in ready.get("p2p_addrs", [])]
        assert any(a.startswith(f"/ip4/{lab.addresses[i]}/tcp/{P2P_PORT}") for a in addrs), addrs
        assert not any("/ip4/127." in a for a in addrs), addrs

    for daemon in net.daemons:
        assert daemon is not None
        daemon.wait_for(lambda d=daemon: len(d.connected_peers()) >= NODES - 1, 60, "full mesh")
    # ...and knows its peers by their subnet addresses, never by a loopback one
    for datadir in net.dirs:
        peers = await api_call(datadir, "node_peers")
        addrs = [a for p in peers["peers"] for a in p["addrs"]]
        assert not any("/ip4/127." in a for a in addrs), addrs
        assert any(f"/ip4/{x}/" in a for a in addrs for x in lab.addresses), addrs

    if lab.qdisc == NETEM:
        # the delay is on the wire: the SYN-ACK leaves through the node's netem qdisc
        rtts = [_connect_ms(addr, API_PORT) for addr in lab.addresses for _ in range(3)]
        assert statistics.median(rtts) >= 10, f"TCP handshakes took {rtts} ms: no netem delay?"

    # transactions enter at one node's API and must reach every node's chain
    txs = net.transfers(20)
    await submit_all(net.dirs[0], txs)
    statuses = await wait_heads(
        net.dirs,
        lambda s: all(st.get("txs_committed", 0) >= 20 for st in s) and same_head(s, 1),
        120,
    )
    offences = [set(st["offences"]) - {"not-leader"} for st in statuses]
    assert not any(offences), [st["offences"] for st in statuses]

    # a second batch through another node: the chain keeps moving over the same links
    target = statuses[0]["head"]["number"] + 1
    await submit_all(net.dirs[2], net.transfers(5))
    await wait_heads(
        net.dirs,
        lambda s: all(st.get("txs_committed", 0) >= 25 for st in s) and same_head(s, target),
        120,
    )
