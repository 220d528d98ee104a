"""What every federation role needs from the node: ledger, blobs, peers, events, records.

One :class:`FederationContext` per node, shared by its roles. It fetches blobs by CID (the local
store first, then peers: the preferred ones, then every connected peer), sends ledger
transactions and waits for their receipts, keeps a spec cache (a task's spec is a TOML blob named
on the ledger), and writes the role's records as JSON files in ``<datadir>/federation/``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from ..cid import Cid
from ..config import NodeConfig
from ..consensus.chain import Receipt
from ..consensus.errors import NotFound
from ..consensus.service import ChainService
from ..datadir import DataDir
from ..errors import FLNodeError
from ..events import EventBus
from ..fsutil import write_file_atomically
from ..identity import NodeIdentity, address_from_peer_id
from ..learning.taskspec import LearningTaskSpec, load_task_spec
from ..log import get_logger
from ..p2p.fetch import FetchError
from ..p2p.service import P2PService
from ..storage import BlobNotFoundError, CorruptBlobError
from ..storage.blobstore import BlobStore
from ..storage.service import BlobStoreService

T = TypeVar("T")
RECORDS_DIR = "federation"
_MAX_PROVIDERS = 8  # peers asked, one after another, for one blob

EVENT_TOPICS = {
    "task_created": "A task was published on the ledger (task, spec, model, rounds).",
    "round_started": "A task's round opened (task, round, model).",
    "update_submitted": "This device submitted an update (task, round, cid, timings).",
    "update_received": "A miner fetched and checked a submitted update (task, round, device).",
    "update_accepted": "A committed round accepted a device's update (task, round, device).",
    "update_rejected": "A committed round rejected a device's update (task, round, device).",
    "round_committed": "A round was committed on the ledger (task, round, aggregate, accuracy).",
    "privacy_refused": "A device refused to train because its privacy budget would be exceeded.",
}


LOW_PRIORITY_NICE = 10
BACKGROUND_NICE = 19
"""For work nothing waits on (a miner's evaluation of the committed model): on a shared machine
it takes the CPU the devices' training leaves (CFS weight 15 against 110 at nice 10)."""


async def run_low_priority(fn: Callable[..., T], *args: Any, nice: int = LOW_PRIORITY_NICE) -> T:
    """Run CPU-heavy learning work (training, judging, evaluating) in a fresh thread at a lower
    scheduling priority (Linux nice is per thread; the thread's nice value becomes ``nice``).

    Every node's event loop, gossip and consensus must stay responsive while devices train: on
    a machine running many nodes the training would otherwise starve the consensus of every
    process (a 14-node devnet on 2 cores lost rounds to it). A fresh thread, because trio reuses
    its worker threads and a lowered priority cannot be raised back without privileges.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        name_os_thread(_LEARNING_THREAD)
        try:
            result.append(fn(*args))
        except BaseException as exc:  # re-raised in the caller
            error.append(exc)
        finally:
            release_free_memory()

    def run() -> None:
        thread = threading.Thread(target=body, name=_LEARNING_THREAD, daemon=True)
        thread.start()
        thread.join()

    await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    if error:
        raise error[0]
    return result[0]


_LEARNING_THREAD = "flnode-learn"
_PR_SET_NAME = 15


def name_os_thread(name: str) -> bool:
    """Give the calling thread ``name`` (at most 15 bytes) as its OS name, the one ``top -H``,
    ``ps -L`` and ``/proc/<pid>/task/<tid>/comm`` show; False where that is not possible.

    Python 3.11 names its threads for Python only, and a new thread inherits the OS name of the
    one that started it (here a "Trio thread"), which hides the learning work's CPU time among
    the event loop's helpers."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0) == 0)


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``); False elsewhere.

    A DP-SGD round allocates and frees tensors of a different size at every step (Poisson
    sampling varies the batch), and glibc keeps the freed, fragmented space: measured on one
    device of the default task, RSS grew from 520 MiB to 950 MiB over 8 rounds, and fell back to
    ~560 MiB after each round once trimmed (about 20 ms). A node that trains a round now and then
    should not hold its largest round's memory in between.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.cache
def _glibc() -> Any:
    """glibc, with ``malloc_trim``; None on a C library without it (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


class FederationError(FLNodeError):
    """A federation step failed in a way the caller should hear about (message says why)."""


@dataclass
class FederationCounters:
    """What the roles did since the node started (exported as Prometheus metrics)."""

    train_s: float = 0.0
    updates_submitted: int = 0
    rounds_refused: int = 0
    updates_accepted: int = 0
    updates_rejected: int = 0
    rounds_judged: int = 0
    rounds_committed: int = 0
    offload_jobs: int = 0


@dataclass
class FederationContext:
    config: NodeConfig
    datadir: DataDir
    identity: NodeIdentity
    p2p: P2PService
    chain: ChainService
    blob_service: BlobStoreService
    bus: EventBus
    _specs: dict[str, LearningTaskSpec] = field(default_factory=dict)
    counters: FederationCounters = field(default_factory=FederationCounters)

    def __post_init__(self) -> None:
        self.log = get_logger("flnode.federation", node=self.identity.peer_id[-8:])
        for topic, description in EVENT_TOPICS.items():
            if topic not in self.bus.topics():
                self.bus.declare(topic, description)

    @property
    def blobs(self) -> BlobStore:
        return self.blob_service.store

    @property
    def address(self) -> str:
        return self.identity.address

    @property
    def contract(self) -> Any:
        return self.chain.contract

    # -- blobs ----------------------------------------------------------------------------------

    def peers_by_address(self) -> dict[str, str]:
        """Connected peers by their ledger address (peer id and address share one key)."""
        out = {}
        for peer in self.p2p.connected_peers():
            try:
                out[address_from_peer_id(peer).lower()] = peer
            except Exception:  # a peer id of another key type: no ledger address
                continue
        return out

    async def fetch(self, cid: Cid, *, prefer: Sequence[str] = (), pin: bool = False) -> bytes:
        """The bytes of ``cid``: from the local store, else from peers (``prefer``: ledger
        addresses or peer ids to ask first), verified against the CID and stored locally."""
        try:
            return await trio.to_thread.run_sync(self.blobs.get, cid)
        except (BlobNotFoundError, CorruptBlobError):
            pass
        by_address = self.peers_by_address()
        first = [by_address.get(p.lower(), p) for p in prefer]
        providers = list(dict.fromkeys(p for p in first if p in by_address.values()))
        others = [p for p in self.p2p.connected_peers() if p not in providers]
        providers += others[: max(0, _MAX_PROVIDERS - len(providers))]
        if not providers:
            raise FederationError(f"cannot fetch {cid}: no peer is connected")
        try:
            data = await self.p2p.fetch(cid, providers)
        except FetchError as exc:
            raise FederationError(f"cannot fetch {cid}: {exc}") from None
        await trio.to_thread.run_sync(self._store, data, pin)
        return data

    def _store(self, data: bytes, pin: bool) -> Cid:
        cid = self.blobs.put(data)
        if pin:
            self.blobs.pin(cid)
        return cid

    async def store(self, data: bytes, *, pin: bool = True) -> Cid:
        return await trio.to_thread.run_sync(self._store, data, pin)

    async def spec(self, cid: Cid, *, prefer: Sequence[str] = ()) -> LearningTaskSpec:
        """The task spec named ``cid`` on the ledger (cached; raises when it does not parse)."""
        key = str(cid)
        if key not in self._specs:
            raw = await self.fetch(cid, prefer=prefer, pin=True)
            self._specs[key] = load_task_spec(raw)
        return self._specs[key]

    # -- ledger ---------------------------------------------------------------------------------

    async def send(self, data: bytes, *, value: int = 0) -> bytes:
        """Sign and queue a call of the ledger contract; its transaction hash."""
        return await self.chain.send(self.contract.address, data, value=value)

    async def receipt(self, tx_hash: bytes) -> Receipt | None:
        """The receipt if the transaction is committed now, else None."""
        try:
            return await self.chain.receipt(tx_hash)
        except NotFound:
            return None

    async def wait_receipt(self, tx_hash: bytes, timeout: float) -> Receipt | None:
        """The receipt once the transaction is in a committed block (None after ``timeout``)."""
        heads = self.chain.subscribe_blocks()
        with heads, trio.move_on_after(timeout):
            while True:
                try:
                    return await self.chain.receipt(tx_hash)
                except NotFound:
                    await heads.receive()
        return None

    # -- records --------------------------------------------------------------------------------

    def record_path(self, name: str) -> Path:
        return self.datadir.path / RECORDS_DIR / f"{name}.json"

    def read_record(self, name: str) -> dict[str, Any]:
        path = self.record_path(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self.log.error(
                "unreadable federation record, starting afresh", path=str(path), error=str(exc)
            )
            return {}

    def write_record(self, name: str, record: dict[str, Any]) -> None:
        data = json.dumps(record, indent=1, sort_keys=True).encode()
        write_file_atomically(self.record_path(name), data)

    def publish(self, topic: str, **data: Any) -> None:
        self.bus.publish(topic, **data)
