"""A seeded fault injector for a running devnet: kill and restart, pause, and cut nodes off.

Every ``interval_s`` (a random draw in the range) the injector picks a fault and a node with its
own :class:`random.Random` (``seed``), so a run's schedule of faults is reproducible (when they
land relative to the training still depends on the machine):

* ``kill``: SIGKILL, stay down for ``down_s``, then ``devnet restart`` (same data dir and ports);
* ``pause``: SIGSTOP for ``pause_s``, then SIGCONT. Everything sent to and from the node waits:
  this is how the injector **delays** traffic (on loopback, without root or ``tc``);
* ``isolate``: every other live node bans it and it bans them (``node_ban``) for ``isolate_s``,
  then the bans are lifted (``node_unban``): its traffic is **dropped** meanwhile. Each ban lasts
  a few seconds longer than planned, so it ends by itself if the lift cannot be delivered.

Safety of the experiment, not of the system: a miner that is killed, paused or cut off is
*down*, and at most ``max_miners_down`` miners (default f = ⌊(n−1)/3⌋) are down at once; at most
``max_others_down`` other nodes (devices, edges, the manufacturer) likewise. Nodes in ``spare`` (e.g. the manufacturer that publishes
the task) are never touched. Every fault is recorded as a :class:`FaultRecord` (with the
outcome: done, or why it could not be undone) for the test's report.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from ..api.client import ApiClient
from ..log import get_logger
from .network import DevnetNode, Network
from .processes import is_alive, node_pid
from .supervisor import endpoint, restart

log = get_logger("flnode.devnet.chaos")

KINDS = ("kill", "pause", "isolate")
_API_TIMEOUT_S = 5.0
_BAN_MARGIN_S = 5.0


@dataclass(frozen=True, slots=True)
class ChaosSettings:
    seed: int = 1
    kinds: tuple[str, ...] = KINDS
    interval_s: tuple[float, float] = (4.0, 10.0)
    down_s: tuple[float, float] = (3.0, 10.0)
    pause_s: tuple[float, float] = (2.0, 8.0)
    isolate_s: tuple[float, float] = (3.0, 10.0)
    max_miners_down: int | None = None  # default: f of the devnet's miners
    max_others_down: int = 2  # devices, edges, manufacturers
    spare: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"chaos kinds must be among {', '.join(KINDS)}; got {self.kinds}")
        for name in ("interval_s", "down_s", "pause_s", "isolate_s"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range 0 < low <= high; got ({low}, {high})")


@dataclass(slots=True)
class FaultRecord:
    at: float
    kind: str
    node: str
    seconds: float
    outcome: str = "running"


@dataclass
class ChaosMonkey:
    """Injects faults into ``network`` until cancelled (run it in a nursery beside the work)."""

    network: Network
    settings: ChaosSettings = field(default_factory=ChaosSettings)
    faults: list[FaultRecord] = field(default_factory=list)
    _down: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.settings.seed)
        self._miners = [n.name for n in self.network.nodes if "miner" in n.roles]
        self._others = [n.name for n in self.network.nodes if "miner" not in n.roles]
        self._max_miners = (
            self.settings.max_miners_down
            if self.settings.max_miners_down is not None
            else (len(self._miners) - 1) // 3
        )

    @property
    def down(self) -> frozenset[str]:
        """Nodes that are killed, paused or cut off right now."""
        return frozenset(self._down)

    def _candidates(self) -> list[str]:
        miners_down = sum(1 for n in self._down if n in self._miners)
        others_down = len(self._down) - miners_down
        out = []
        for node in self.network.nodes:
            name = node.name
            if name in self.settings.spare or name in self._down:
                continue
            if name in self._miners and miners_down >= self._max_miners:
                continue
            if name in self._others and others_down >= self.settings.max_others_down:
                continue
            if not is_alive(node_pid(self.network, name), self.network.datadir(name)):
                continue
            out.append(name)
        return out

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(self._rng.uniform(*self.settings.interval_s))
                kind = self._rng.choice(self.settings.kinds)
                candidates = self._candidates()
                if not candidates:
                    continue
                name = self._rng.choice(sorted(candidates))
                seconds = self._rng.uniform(*getattr(self.settings, _DURATION[kind]))
                record = FaultRecord(time.time(), kind, name, round(seconds, 2))
                self.faults.append(record)
                self._down.add(name)
                log.info("chaos: fault", kind=kind, node=name, seconds=record.seconds)
                nursery.start_soon(self._inject, record)

    async def _inject(self, record: FaultRecord) -> None:
        try:
            with trio.CancelScope(shield=True):
                # Shielded: a fault once begun is always undone (a paused node is resumed, a ban
                # lifted) even when the run is being cancelled.
                await _FAULTS[record.kind](self, record)
            record.outcome = "done"
        except Exception as exc:  # recorded for the report; the experiment goes on
            record.outcome = f"failed: {type(exc).__name__}: {exc}"
            log.warning("chaos: fault failed", node=record.node, error=record.outcome)
        finally:
            self._down.discard(record.node)

    async def _kill(self, record: FaultRecord) -> None:
        pid = node_pid(self.network, record.node)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        await trio.sleep(record.seconds)
        await restart(self.network, record.node, timeout_s=180.0)

    async def _pause(self, record: FaultRecord) -> None:
        pid = node_pid(self.network, record.node)
        if pid is None:
            return
        os.kill(pid, signal.SIGSTOP)
        try:
            await trio.sleep(record.seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    async def _isolate(self, record: FaultRecord) -> None:
        target = self.network.node(record.node)
        others = [n for n in self.network.nodes if n.name != target.name]
        ban_s = record.seconds + _BAN_MARGIN_S
        await self._ban_pairs(target.name, others, ban_s)
        await trio.sleep(record.seconds)
        await self._unban_pairs(target.name, others)

    async def _ban_pairs(self, name: str, others: Iterable[DevnetNode], seconds: float) -> None:
        target = self.network.node(name)
        for other in others:
            ban = {"peer_id": target.peer_id, "seconds": seconds}
            await _try_call(self.network, other.name, "node_ban", ban)
            await _try_call(
                self.network, name, "node_ban", {"peer_id": other.peer_id, "seconds": seconds}
            )

    async def _unban_pairs(self, name: str, others: Iterable[DevnetNode]) -> None:
        target = self.network.node(name)
        for other in others:
            await _try_call(self.network, other.name, "node_unban", {"peer_id": target.peer_id})
            await _try_call(self.network, name, "node_unban", {"peer_id": other.peer_id})


async def _try_call(network: Network, name: str, method: str, params: dict[str, object]) -> bool:
    """Call ``method`` on ``name`` if it answers within a few seconds (a node that is itself
    down at that moment is skipped: its own bans expire, and a restarted node has none)."""
    if not is_alive(node_pid(network, name), network.datadir(name)):
        return False
    try:
        with trio.fail_after(_API_TIMEOUT_S):
            async with ApiClient.open(endpoint(network, name)) as client:
                await client.call(method, params)
        return True
    except Exception:  # a paused, restarting or already-unbanned peer: nothing to undo there
        return False


_DURATION = {"kill": "down_s", "pause": "pause_s", "isolate": "isolate_s"}
_FAULTS = {
    "kill": ChaosMonkey._kill,
    "pause": ChaosMonkey._pause,
    "isolate": ChaosMonkey._isolate,
}
