"""A deterministic in-memory network of real :class:`Agreement` instances under a simulated clock.

Each node is the real consensus core with its real :class:`GuardedSigner`; what is simulated is
only the surroundings: message delivery (through the real wire encoding, with a seeded latency),
timers, and a tiny application whose blocks are ``rlp([parent, number, coinbase, timestamp,
[tx, ...]])`` (hash = keccak256 of the bytes). Faults are the network's: a stopped node receives
and sends nothing; a partition drops messages between groups; an equivocating node signs two
votes. Every decided block is checked with :func:`verify_certified_block` before it is applied,
so a certificate that does not verify fails the test.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import rlp
from eth_utils import keccak, to_checksum_address

from flnode.consensus.bft.certificate import (
    BlockInfo,
    HeightContext,
    verify_certified_block,
)
from flnode.consensus.bft.core import (
    Action,
    Agreement,
    Behind,
    Broadcast,
    BuildBlock,
    Decide,
    EvidenceFound,
    NeedBlock,
    Offence,
    ScheduleTimeout,
    Timeouts,
    ValidateBlock,
)
from flnode.consensus.bft.errors import InvalidConsensusMessage
from flnode.consensus.bft.messages import (
    CertifiedBlock,
    Message,
    VoteMessage,
    decode_message,
    encode_message,
)
from flnode.consensus.bft.signer import GuardedSigner
from flnode.consensus.bft.sortition import Committee, genesis_seed
from flnode.identity import NodeIdentity

CHAIN_ID = 4242
GENESIS = keccak(b"simnet genesis")


def fake_block(
    parent: bytes, number: int, coinbase: str, timestamp: int, txs: list[bytes]
) -> bytes:
    return rlp.encode([parent, number, bytes.fromhex(coinbase[2:]), timestamp, txs])


def inspect_fake(raw: bytes) -> BlockInfo:
    try:
        parent, number, coinbase, timestamp, _txs = rlp.decode(raw)
        return BlockInfo(
            hash=keccak(raw),
            parent_hash=parent,
            number=int.from_bytes(number, "big"),
            coinbase=to_checksum_address(coinbase),
            timestamp=int.from_bytes(timestamp, "big"),
        )
    except Exception as exc:
        raise InvalidConsensusMessage("bad-block", f"not a block: {exc}") from None


def block_txs(raw: bytes) -> list[bytes]:
    return list(rlp.decode(raw)[4])


def identities(n: int, seed: int = 11) -> list[NodeIdentity]:
    return [NodeIdentity.from_secret((seed * 1000 + i + 1).to_bytes(32, "big")) for i in range(n)]


@dataclass
class SimNode:
    index: int
    identity: NodeIdentity
    core: Agreement
    signer: GuardedSigner
    chain: list[CertifiedBlock] = field(default_factory=list)
    seeds: list[bytes] = field(default_factory=list)
    mempool: list[bytes] = field(default_factory=list)
    offences: list[Offence] = field(default_factory=list)
    evidence: list[EvidenceFound] = field(default_factory=list)
    signer_log: list[VoteMessage] = field(default_factory=list)
    up: bool = True
    epoch: int = 0  # bumped when the node stops, so its pending timers die with it
    validator: Callable[[bytes], bool] = lambda raw: True

    @property
    def address(self) -> str:
        return self.identity.address

    @property
    def head_hash(self) -> bytes:
        return self.chain[-1].certificate.block_hash if self.chain else GENESIS

    @property
    def height(self) -> int:
        return len(self.chain)


class SimNet:
    """N nodes (the first ``members`` form the committee) on a simulated network."""

    def __init__(
        self,
        n: int,
        *,
        members: int | None = None,
        seed: int = 1,
        latency: tuple[float, float] = (0.005, 0.03),
        timeouts: Timeouts | None = None,
        stakes: list[int] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        self.timeouts = timeouts or Timeouts(propose=1.0, prevote=0.5, precommit=0.5, delta=0.5)
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        ids = identities(n)
        members = n if members is None else members
        self.committee = Committee.of(
            {ids[i].address: (stakes[i] if stakes else 10**18) for i in range(members)}
        )
        self.nodes = []
        for i, ident in enumerate(ids):
            signer = GuardedSigner(ident, CHAIN_ID)
            core = Agreement(signer, inspect_fake, timeouts=self.timeouts)
            self.nodes.append(SimNode(i, ident, core, signer, seeds=[genesis_seed(GENESIS)]))
        self.blocked: set[tuple[int, int]] = set()  # (from, to) pairs that drop messages
        self.sent = 0
        self.sync_requests = 0

    # -- scheduling ----------------------------------------------------------------------------

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), fn))

    def run_until(self, predicate: Callable[[], bool], *, limit: float = 120.0) -> bool:
        """Process events until ``predicate()`` holds (True) or simulated ``limit`` s pass."""
        end = self.now + limit
        while self._queue and not predicate():
            when, _, fn = heapq.heappop(self._queue)
            if when > end:
                heapq.heappush(self._queue, (when, next(self._seq), fn))
                self.now = end
                return predicate()
            self.now = when
            fn()
        return predicate()

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, limit=seconds)

    # -- lifecycle -----------------------------------------------------------------------------

    def context(self, node: SimNode) -> HeightContext:
        return HeightContext(node.height + 1, node.head_hash, node.seeds[-1], self.committee)

    def start(self) -> None:
        for node in self.nodes:
            self._start_height(node)

    def _start_height(self, node: SimNode) -> None:
        self.apply(node, node.core.start_height(self.context(node), has_work=bool(node.mempool)))

    def stop(self, i: int) -> None:
        node = self.nodes[i]
        node.up = False
        node.epoch += 1

    def restart(self, i: int, *, keep_signer: bool = True) -> None:
        """Bring a stopped node back with a fresh core (its chain and signer state survive, as
        they are persisted on disk), then let it catch up by sync."""
        node = self.nodes[i]
        node.up = True
        node.epoch += 1
        signer = node.signer if keep_signer else GuardedSigner(node.identity, CHAIN_ID)
        node.signer = signer
        node.core = Agreement(signer, inspect_fake, timeouts=self.timeouts)
        self._start_height(node)
        self.sync(node)

    def partition(self, *groups: list[int]) -> None:
        self.blocked = {
            (a, b) for ga in groups for gb in groups if ga is not gb for a in ga for b in gb
        }

    def heal(self) -> None:
        self.blocked = set()

    def submit(self, i: int, tx: bytes) -> None:
        """A transaction arrives at node i and is gossiped to the others' mempools."""
        for node in self.nodes:
            delay = 0.0 if node.index == i else self._delay()
            if node.index != i and (i, node.index) in self.blocked:
                continue
            self.at(delay, lambda node=node: self._receive_tx(node, tx))

    def _receive_tx(self, node: SimNode, tx: bytes) -> None:
        if not node.up or tx in node.mempool or any(tx in block_txs(b.block) for b in node.chain):
            return
        node.mempool.append(tx)
        self.apply(node, node.core.on_work())

    # -- actions -------------------------------------------------------------------------------

    def _delay(self) -> float:
        return self.rng.uniform(*self.latency)

    def broadcast(self, node: SimNode, message: Message) -> None:
        if isinstance(message, VoteMessage):
            node.signer_log.append(message)
        raw = encode_message(message)
        for other in self.nodes:
            if other is node or (node.index, other.index) in self.blocked:
                continue
            self.sent += 1
            self.at(self._delay(), lambda other=other: self.deliver(other, raw, node.index))

    def deliver(self, node: SimNode, raw: bytes, origin: int) -> None:
        if not node.up:
            return
        message = decode_message(raw)
        self.apply(node, node.core.on_message(message, origin))

    def apply(self, node: SimNode, actions: list[Action]) -> None:
        epoch = node.epoch
        for action in actions:
            if not node.up:
                return
            if isinstance(action, Broadcast):
                self.broadcast(node, action.message)
            elif isinstance(action, ScheduleTimeout):
                self.at(
                    action.seconds,
                    lambda a=action: (
                        node.up
                        and node.epoch == epoch
                        and self.apply(node, node.core.on_timeout(a.kind, a.height, a.round))
                    ),
                )
            elif isinstance(action, BuildBlock):
                self.at(0.002, lambda a=action: self._build(node, a, epoch))
            elif isinstance(action, ValidateBlock):
                ok = node.validator(action.block)
                self.apply(node, node.core.block_validated(action.height, action.block_hash, ok))
            elif isinstance(action, Decide):
                cert = CertifiedBlock(action.block, action.certificate)  # type: ignore[arg-type]
                self.commit(node, cert)
                self._start_height(node)
            elif isinstance(action, NeedBlock | Behind):
                self.sync(node)
            elif isinstance(action, Offence):
                node.offences.append(action)
            elif isinstance(action, EvidenceFound):
                node.evidence.append(action)

    def _build(self, node: SimNode, action: BuildBlock, epoch: int) -> None:
        if not node.up or node.epoch != epoch:
            return
        raw = fake_block(
            node.head_hash, action.height, node.address, int(self.now * 1000), list(node.mempool)
        )
        self.apply(node, node.core.block_built(action.height, action.round, raw))

    def commit(self, node: SimNode, certified: CertifiedBlock) -> None:
        """Import a certified block (its certificate must verify against our head)."""
        _, seed = verify_certified_block(
            certified, self.context(node), chain_id=CHAIN_ID, inspect=inspect_fake
        )
        node.chain.append(certified)
        node.seeds.append(seed)
        included = set(block_txs(certified.block))
        node.mempool = [t for t in node.mempool if t not in included]

    def sync(self, node: SimNode) -> None:
        """Ask every reachable peer for the certified blocks above our head (simulated RPC)."""
        self.sync_requests += 1
        for peer in self.nodes:
            if peer is node or (node.index, peer.index) in self.blocked:
                continue
            self.at(self._delay() * 2, lambda peer=peer: self._serve_sync(node, peer))

    def _serve_sync(self, node: SimNode, peer: SimNode) -> None:
        if not node.up or not peer.up or (peer.index, node.index) in self.blocked:
            return
        if peer.height <= node.height:
            return
        for certified in peer.chain[node.height : node.height + 64]:
            if certified.height != node.height + 1:
                return
            self.commit(node, certified)
        self._start_height(node)

    # -- checks --------------------------------------------------------------------------------

    def heights(self) -> list[int]:
        return [n.height for n in self.nodes]

    def assert_consistent(self) -> None:
        """No two nodes ever committed different blocks at one height (safety)."""
        longest = max(self.nodes, key=lambda n: n.height)
        for node in self.nodes:
            for a, b in zip(node.chain, longest.chain, strict=False):
                assert a.certificate.block_hash == b.certificate.block_hash, (
                    f"fork at height {a.height} between node {node.index} and {longest.index}"
                )


class Equivocator:
    """Makes ``node`` sign, for every vote its core sends, a second vote for another block, and
    delivers the two in opposite orders to the two halves of the network (as gossip relaying
    both would): each honest node sees both, so each can prove the equivocation."""

    def __init__(self, net: SimNet, index: int) -> None:
        self.net = net
        self.node = net.nodes[index]
        original = net.broadcast

        def broadcast(node: SimNode, message: Message) -> None:
            if node is not self.node or not isinstance(message, VoteMessage):
                original(node, message)
                return
            other_hash = keccak(message.block_hash + b"evil")
            twin = VoteMessage.sign(
                node.identity,
                CHAIN_ID,
                message.height,
                message.round,
                message.kind,
                other_hash,
            )
            a, b = encode_message(message), encode_message(twin)
            for other in net.nodes:
                if other is node:
                    continue
                first, second = (a, b) if other.index % 2 else (b, a)
                delay = net._delay()
                net.at(delay, lambda o=other, r=first: net.deliver(o, r, node.index))
                net.at(delay + 0.001, lambda o=other, r=second: net.deliver(o, r, node.index))

        net.broadcast = broadcast  # type: ignore[method-assign]
