"""``up``, ``status``, ``restart`` and ``down`` of a devnet, over its processes and their APIs.

``up`` starts the seeds first (the nodes everyone bootstraps to), then the rest, and waits until
every node is *ready* (its ``node.json`` names the process we started) and passes every
:class:`ReadinessCheck`; the default check is that the node is connected to all the others (or
to its own ``p2p.max_peers``). A later issue adds checks (e.g. "a first block is committed") by
passing its own list, without touching the launcher. A node that dies while ``up`` waits fails it
with the end of its log.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ..api import ApiClient, ApiEndpoint
from ..config import NodeConfig, load_config
from ..errors import FLNodeError
from ..rpc import METHOD_NOT_FOUND, RpcError
from .errors import DevnetError
from .layout import Layout
from .network import CHAIN_FILE, SEEDS, Network, create_network, load_network, network_exists
from .processes import (
    StopOutcome,
    fork_node,
    is_alive,
    log_tail,
    node_pid,
    start_node,
    stop_nodes,
)
from .zygote import open_zygote

DEFAULT_TIMEOUT_S = 120.0
SPAWN_MODES = ("fork", "exec")
ZYGOTE_LOG = "zygote"  # its output goes to <dir>/logs/zygote.log
_POLL_S = 0.25
_POLL_PER_NODE_S = 0.02
_STATUS_CALL_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class ReadinessCheck:
    """A named condition every node must meet before ``up`` returns.

    ``check(client, network, name)`` is called repeatedly with an API client of node ``name``
    until it returns True.
    """

    label: str
    check: Callable[[ApiClient, Network, str], Awaitable[bool]]


async def _connected_to_all(client: ApiClient, network: Network, name: str) -> bool:
    """Connected to every other node, or to as many as the node's ``p2p.max_peers`` allows (a
    large devnet may bound its devices' peers; the miners, unbounded, then connect to all)."""
    peers = await client.call("node_peers")
    wanted = min(len(network.nodes) - 1, _max_peers(network.datadir(name)))
    return int(peers["connected"]) >= wanted


def _max_peers(datadir: Path) -> int:
    try:
        return load_config(datadir, env={}).p2p.max_peers
    except FLNodeError:  # the node itself refuses to start on it, and says why
        return NodeConfig().p2p.max_peers


CONNECTED = ReadinessCheck("connected", _connected_to_all)
DEFAULT_CHECKS: tuple[ReadinessCheck, ...] = (CONNECTED,)


def first_block_check() -> ReadinessCheck:
    """Every node has committed block 1: the miners' consensus runs and everyone follows it.

    The consensus makes no empty blocks, so the first miner queues one transaction (0 wei to
    itself, signed with its own key from its data dir) while its chain is still at genesis.
    """
    sent: set[str] = set()

    async def check(client: ApiClient, network: Network, name: str) -> bool:
        if int((await client.call("chain_head"))["number"]) >= 1:
            return True
        first_miner = next(n.name for n in network.nodes if "miner" in n.roles)
        if name == first_miner and name not in sent:
            sent.add(name)
            # A refusal means it is queued already (an earlier `up` while this node kept running).
            with contextlib.suppress(RpcError):
                await client.call("consensus_submit", {"tx": await _self_transfer(client, network)})
        return False

    return ReadinessCheck("first block", check)


async def _self_transfer(client: ApiClient, network: Network) -> str:
    from eth.db.atomic import AtomicDB

    from ..consensus.chain import Chain
    from ..consensus.network import load_network as load_chain_file
    from ..identity import NodeIdentity

    info = await client.call("node_info")
    name = next(n.name for n in network.nodes if n.peer_id == info["peer_id"])
    key = NodeIdentity.load(network.datadir(name) / "node.key")
    nonce = int(await client.call("eth_getTransactionCount", [key.address, "latest"]), 16)

    def sign() -> str:
        signer = Chain(load_chain_file(network.dir / CHAIN_FILE), AtomicDB())
        tx = signer.sign_transaction(key.private_key, to=key.address, gas=21_000, nonce=nonce)
        return "0x" + tx.encode().hex()

    return await trio.to_thread.run_sync(sign)


def default_checks(network: Network) -> tuple[ReadinessCheck, ...]:
    """Connected to all, and with a chain (a layout with miners) a first committed block."""
    if (network.dir / CHAIN_FILE).exists() and any("miner" in n.roles for n in network.nodes):
        return (CONNECTED, first_block_check())
    return DEFAULT_CHECKS


Progress = Callable[[dict[str, int]], None]
"""Called with counts such as {"started": 4, "ready": 3, "connected": 1, "total": 4}."""


def endpoint(network: Network, name: str) -> ApiEndpoint:
    """The API endpoint of a devnet node (its url from the network file, its token)."""
    return ApiEndpoint(
        network.node(name).api_url, (network.datadir(name) / "api.token").read_text().strip()
    )


def prepare(directory: Path, layout: Layout | None, *, reset: bool = False) -> Network:
    """The devnet in ``directory``: created from ``layout``, or the existing one reused."""
    if network_exists(directory):
        existing = load_network(directory)
        if reset:
            running = [
                n.name
                for n in existing.nodes
                if is_alive(node_pid(existing, n.name), existing.datadir(n.name))
            ]
            if running:
                raise DevnetError(
                    f"the devnet in {directory} is running ({', '.join(running)}); "
                    f"stop it with `flnode devnet down --dir {directory}` before --reset"
                )
            shutil.rmtree(directory)
        elif layout is not None and layout != existing.layout:
            raise DevnetError(
                f"{directory} holds a devnet with another layout; use the same flags, none "
                "(to reuse it), or --reset to replace it (its node keys and data are deleted)"
            )
        else:
            return existing
    if layout is None:
        raise DevnetError(
            "say which nodes to run: --miners/--devices/--edges/--manufacturers or --layout"
        )
    return create_network(directory, layout)


async def up(
    network: Network,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    checks: Sequence[ReadinessCheck] | None = None,
    progress: Progress | None = None,
    spawn: str = "fork",
) -> None:
    """Start every node that is not running and wait until all are ready and pass ``checks``
    (by default :func:`default_checks`).

    ``spawn="fork"`` forks the nodes from one process that has done their imports (see
    :mod:`.zygote`: a dozen nodes start in seconds instead of tens of seconds on two cores);
    ``"exec"`` starts each in a new interpreter.
    """
    if spawn not in SPAWN_MODES:
        raise DevnetError(f"spawn must be one of {', '.join(SPAWN_MODES)}, not {spawn!r}")
    if checks is None:
        checks = default_checks(network)
    running = [
        n.name
        for n in network.nodes
        if is_alive(node_pid(network, n.name), network.datadir(n.name))
    ]
    if len(running) == len(network.nodes):
        raise DevnetError(
            f"the devnet in {network.dir} is already running; see `flnode devnet status --dir {network.dir}`"
        )
    names = [n.name for n in network.nodes]
    pids: dict[str, int] = {n: node_pid(network, n) for n in running}  # type: ignore[misc]
    passed: dict[str, set[str]] = {c.label: set() for c in checks}
    try:
        with trio.fail_after(timeout_s):
            async with contextlib.AsyncExitStack() as stack:
                if spawn == "fork":
                    zygote = await stack.enter_async_context(
                        open_zygote(network.log_file(ZYGOTE_LOG))
                    )

                    async def start(name: str) -> int:
                        return await fork_node(network, name, zygote)
                else:

                    async def start(name: str) -> int:
                        return start_node(network, name)

                # Seeds first: the others dial them at start; a refused first dial costs backoff.
                seeds = [n for n in names[:SEEDS] if n not in running]
                for name in seeds:
                    pids[name] = await start(name)
                await _wait_ready(network, seeds, pids, progress, names)
                for name in names[SEEDS:]:
                    if name not in running:
                        pids[name] = await start(name)
            await _wait_ready(network, names, pids, progress, names)
            await _wait_checks(network, names, pids, checks, progress, passed)
    except trio.TooSlowError:
        raise DevnetError(_late(network, names, pids, checks, passed, timeout_s)) from None
    if progress is not None:
        progress({"done": 1, "total": len(names)})


async def wait_until_up(
    network: Network,
    names: Sequence[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    checks: Sequence[ReadinessCheck] = DEFAULT_CHECKS,
) -> None:
    """Wait until the named (already started) nodes are ready and pass ``checks``."""
    pids: dict[str, int] = {n: node_pid(network, n) for n in names}  # type: ignore[misc]
    passed: dict[str, set[str]] = {c.label: set() for c in checks}
    try:
        with trio.fail_after(timeout_s):
            await _wait_ready(network, list(names), pids, None, list(names))
            await _wait_checks(network, list(names), pids, checks, None, passed)
    except trio.TooSlowError:
        raise DevnetError(_late(network, names, pids, checks, passed, timeout_s)) from None


def _late(
    network: Network,
    names: Sequence[str],
    pids: dict[str, int],
    checks: Sequence[ReadinessCheck],
    passed: dict[str, set[str]],
    timeout_s: float,
) -> str:
    not_ready = [n for n in names if not _ready(network, n, pids.get(n))]
    problems = [f"not ready: {', '.join(not_ready)}"] if not_ready else []
    for check in checks:
        missing = [n for n in names if n not in passed[check.label] and n not in not_ready]
        if missing:
            problems.append(f"not {check.label}: {', '.join(missing)}")
    return (
        f"the devnet was not up within {timeout_s:g} s ({'; '.join(problems)}); the nodes keep "
        f"running: see `flnode devnet logs --dir {network.dir}` and `flnode devnet status`"
    )


def _check_alive(network: Network, names: Sequence[str], pids: dict[str, int]) -> None:
    for name in names:
        if not is_alive(pids.get(name), network.datadir(name)):
            tail = log_tail(network, name, 12)
            raise DevnetError(
                f"node {name} exited while the devnet was starting; the end of "
                f"{network.log_file(name)}:\n{tail}"
            )


def _ready(network: Network, name: str, pid: int | None) -> bool:
    try:
        state = json.loads((network.datadir(name) / "node.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return False
    return state.get("pid") == pid and bool(state.get("api_url"))


async def _wait_ready(
    network: Network,
    names: Sequence[str],
    pids: dict[str, int],
    progress: Progress | None,
    everyone: Sequence[str],
) -> None:
    while True:
        ready = [n for n in names if _ready(network, n, pids.get(n))]
        if progress is not None:
            progress({"started": len(pids), "ready": len(ready), "total": len(everyone)})
        if len(ready) == len(names):
            return
        _check_alive(network, names, pids)
        await trio.sleep(_POLL_S)


async def _wait_checks(
    network: Network,
    names: Sequence[str],
    pids: dict[str, int],
    checks: Sequence[ReadinessCheck],
    progress: Progress | None,
    passed: dict[str, set[str]],
) -> None:

    # Every check is an API call on a node that is busy meshing with all the others: ask each
    # node less often in a larger devnet, so that the calls stay about 50 a second in all.
    poll_s = max(_POLL_S, _POLL_PER_NODE_S * len(names))

    async def watch(name: str) -> None:
        async with ApiClient.open(endpoint(network, name)) as client:
            for check in checks:
                while not await check.check(client, network, name):
                    await trio.sleep(poll_s)
                passed[check.label].add(name)

    async def report() -> None:
        while True:
            if progress is not None:
                progress(
                    {
                        "started": len(pids),
                        "ready": len(names),
                        "total": len(names),
                        **{label: len(done) for label, done in passed.items()},
                    }
                )
            _check_alive(network, names, pids)
            await trio.sleep(_POLL_S)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            async with trio.open_nursery() as watchers:
                for name in names:
                    watchers.start_soon(watch, name)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # A node died (DevnetError from report) or its API went away (from watch): report the
        # first such error plainly rather than as a group of concurrent failures.
        errors = group.subgroup(lambda e: isinstance(e, FLNodeError))
        if errors is None:
            raise
        first = _leaves(errors)[0]
        if isinstance(first, DevnetError):
            raise first from None
        raise DevnetError(
            f"a node stopped answering while the devnet was starting: {first}"
        ) from None
    if progress is not None:
        progress({label: len(done) for label, done in passed.items()})


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One row of ``flnode devnet status``."""

    name: str
    roles: tuple[str, ...]
    peer_id: str
    api_url: str
    metrics_url: str
    pid: int | None
    alive: bool
    peers: int | None = None
    api_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Number of the node's chain head (None: not running, or the node runs no chain).
    height: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": list(self.roles),
            "peer_id": self.peer_id,
            "api_url": self.api_url,
            "metrics_url": self.metrics_url,
            "pid": self.pid,
            "alive": self.alive,
            "peers": self.peers,
            "api_error": self.api_error,
            "height": self.height,
            **self.extra,
        }


async def status(network: Network) -> list[NodeStatus]:
    """Every node's process state and, for live ones, what its API says (bounded in time)."""
    rows: dict[str, NodeStatus] = {}

    async def one(name: str) -> None:
        node = network.node(name)
        pid = node_pid(network, name)
        alive = is_alive(pid, network.datadir(name))
        peers: int | None = None
        height: int | None = None
        error: str | None = None
        if alive:
            try:
                with trio.fail_after(_STATUS_CALL_TIMEOUT_S):
                    async with ApiClient.open(
                        endpoint(network, name), connect_timeout=_STATUS_CALL_TIMEOUT_S
                    ) as client:
                        peers = int((await client.call("node_peers"))["connected"])
                        try:
                            height = int((await client.call("chain_head"))["number"])
                        except RpcError as exc:  # a node without a chain has no chain_head
                            if exc.code != METHOD_NOT_FOUND:
                                raise
            except (FLNodeError, trio.TooSlowError, OSError) as exc:
                error = str(exc) or type(exc).__name__
        rows[name] = NodeStatus(
            node.name,
            node.roles,
            node.peer_id,
            node.api_url,
            node.metrics_url,
            pid,
            alive,
            peers,
            error,
            height=height,
        )

    async with trio.open_nursery() as nursery:
        for node in network.nodes:
            nursery.start_soon(one, node.name)
    return [rows[n.name] for n in network.nodes]


async def restart(
    network: Network, name: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> StopOutcome:
    """Stop ``name`` if it runs, start it again, wait until it is ready and connected."""
    network.node(name)
    outcome = stop_nodes(network, [name])[0]
    start_node(network, name)
    alive_others = [
        n.name
        for n in network.nodes
        if n.name != name and is_alive(node_pid(network, n.name), network.datadir(n.name))
    ]

    async def connected_to_live(client: ApiClient, net: Network, node: str) -> bool:
        peers = await client.call("node_peers")
        return int(peers["connected"]) >= len(alive_others)

    await wait_until_up(
        network,
        [name],
        timeout_s=timeout_s,
        checks=(ReadinessCheck("connected", connected_to_live),),
    )
    return outcome


def down(network: Network, *, grace_s: float = 10.0) -> list[StopOutcome]:
    return stop_nodes(network, [n.name for n in network.nodes], grace_s)
