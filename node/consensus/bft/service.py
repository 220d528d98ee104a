"""The consensus as a node service: the agreement core driven over gossip, sync and the chain.

One trio task (the *event loop*) owns the :class:`~.core.Agreement` and feeds it one event at a
time — a gossiped message, a timer, a built or validated block, "there is work", blocks from
sync — and carries out the actions it returns. Everything slow runs in other tasks that post
their result back as an event: block building and validation (py-evm, in the chain's worker
thread), timers, publishing. Committing is done inside the loop, so the core never sees two
heights at once.

Around it:

* **Transaction gossip**: every ``tx_gossip_interval_s`` the mempool's new transactions are
  published on the ``txs`` topic in batches; received batches go through the mempool's checks
  (signature, chain id, nonce, balance, gas, size) and are de-duplicated by hash. A peer whose
  transaction is malformed or badly signed is charged. Pending transactions wake an idle height.
* **Block sync** (request/response, :class:`~.messages.SyncRequest` → ``SyncResponse``): served
  from the certified-block records; a node syncs when the core reports a later height or a
  certified block it lacks, every ``sync_interval_s`` as a fallback when it committed nothing in
  that time, and before it takes part at start ("catch up first"). Every synced block's
  certificate is verified against the committee of its height before it is imported.
* **Evidence**: equivocation evidence is gossiped by the core; a committee member submits it to
  the ledger contract's ``slash`` (once per offender, only while the offender still has stake).

* **Block announcements**: the proposer of a decided block gossips it with its certificate on
  the ``blocks`` topic. Only committee members subscribe to the ``bft`` topic (credentials,
  proposals and votes: a dozen messages a height, each received from several mesh peers);
  everyone else adopts announced blocks after verifying their certificates, and syncs when one
  is missing. Likewise only members subscribe to the ``txs`` topic: the others publish their own
  transactions to it.

A node outside the committee (a device, say) runs the same service and follows the chain: it
never signs, and it imports only certified blocks, announced or synced.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from eth_utils import keccak
from pydantic import Field as PydanticField
from pydantic import field_validator

from ...identity import NodeIdentity
from ...log import get_logger
from ...rpc import Params, RpcMethod
from ...service import Service
from ..chain import Head
from ..errors import BlockRejected, TransactionRejected
from ..service import ChainService
from .abc import BFT_TOPIC, BLOCK_TOPIC, TX_TOPIC, ConsensusNetworkAPI, ProposalSource
from .certificate import HeightContext, verify_certified_block
from .chainlink import BlockValidator, ChainLink, inspect_block
from .core import (
    Action,
    Agreement,
    Behind,
    Broadcast,
    BuildBlock,
    Decide,
    EvidenceFound,
    NeedBlock,
    Offence,
    PullRound,
    ScheduleTimeout,
    Timeouts,
    ValidateBlock,
)
from .errors import InvalidConsensusMessage
from .messages import (
    MAX_SYNC_BLOCKS,
    MAX_SYNC_RESPONSE_SIZE,
    MAX_TX_BATCH,
    MAX_TX_BATCH_BYTES,
    PRECOMMIT,
    PREVOTE,
    CertifiedBlock,
    CommitCertificate,
    Credential,
    Evidence,
    Proposal,
    RoundRequest,
    RoundResponse,
    SyncRequest,
    SyncResponse,
    TxBatch,
    VoteMessage,
    decode_message,
    encode_message,
)
from .signer import STATE_FILE, GuardedSigner

log = get_logger("flnode.consensus")

_CHARGED_TX_REASONS = frozenset({"oversize", "malformed", "wrong-chain-id", "bad-signature"})
_HONEST_RACES = frozenset({"not-leader"})
"""Rejections an honest peer can cause: a member that had not yet seen a lower credential
proposes as leader (costs the round, never safety). Counted and logged, not charged: on a
loaded machine charging them banned honest miners' relays."""
_SEEN_TXS = 100_000
_PARKED_TXS = 10_000
_MAX_PULL_PEERS = 16  # a stalled round asks every peer of a committee-sized network at once


@dataclass(frozen=True, slots=True)
class ConsensusSettings:
    """Tunables of the consensus service (see the module docstring)."""

    timeouts: Timeouts = field(default_factory=Timeouts)
    max_block_txs: int = 1000
    proposal_wait_s: float = 0.2
    """A leader whose mempool is empty waits this long for transactions before proposing."""
    prepare_wait_s: float = 1.0
    """The longest a leader waits for its proposal source to get ready (e.g. to judge the
    round its block's submissions complete); it stays well below the propose timeout."""
    max_block_interval_s: float = 0.0
    """When > 0, a height with nothing pending starts anyway after this long (an empty block,
    e.g. so that time-based contract rules advance); 0 = never make empty blocks."""
    tx_gossip_interval_s: float = 0.05
    tx_regossip_s: float = 5.0
    """This node's own transactions still pending after this long are gossiped again (gossip
    may lose a message, e.g. before a new peer's mesh has formed; every peer that already has
    the transaction drops the repeat by its hash)."""
    sync_batch: int = 32
    sync_timeout_s: float = 10.0
    sync_interval_s: float = 5.0
    behind_grace_s: float = 1.0
    """How long after seeing a later height's message a node still behind starts a sync."""
    sync_peers: int = 3
    """Peers asked per sync pass when they have nothing new (a pass stops at the first that
    serves blocks)."""
    initial_sync_s: float = 10.0


@dataclass(slots=True)
class ConsensusStatistics:
    """Counters for logs, metrics and tests."""

    height: int = 0
    round: int = 0
    committed: int = 0
    synced: int = 0
    sync_requests: int = 0
    txs_gossiped: int = 0
    txs_regossiped: int = 0
    txs_received: int = 0
    evidence: int = 0
    slash_submitted: int = 0
    offences: dict[str, int] = field(default_factory=dict)
    commit_ms: list[float] = field(default_factory=list)
    """Per decided height: first proposal seen (sent or received) → block committed."""
    txs_committed: int = 0
    txs_parked: int = 0
    events: int = 0
    published: int = 0
    round_pulls: int = 0


Event = Callable[[], Awaitable[None]]


_HEX_TX = r"^(0x)?([0-9a-fA-F]{2})+$"


class SubmitParams(Params):
    """``consensus_submit``: one raw signed transaction."""

    tx: str = PydanticField(pattern=_HEX_TX, max_length=2 * 128 * 1024 + 2)


class SubmitBatchParams(Params):
    """``consensus_submit_batch``: raw signed transactions, in the order to add them."""

    txs: list[str] = PydanticField(min_length=1, max_length=1000)

    @field_validator("txs")
    @classmethod
    def _hex(cls, txs: list[str]) -> list[str]:
        for tx in txs:
            if len(tx) > 2 * 128 * 1024 + 2 or re.fullmatch(_HEX_TX, tx) is None:
                raise ValueError("each transaction must be 0x-prefixed hex of at most 128 KiB")
        return txs


class ConsensusService(Service):
    """Runs the BFT consensus of one node (see the module docstring)."""

    name = "consensus"

    def __init__(
        self,
        chain: ChainService,
        network: ConsensusNetworkAPI,
        identity: NodeIdentity,
        *,
        state_dir: Path | None,
        settings: ConsensusSettings | None = None,
        validator: BlockValidator | None = None,
        proposals: ProposalSource | None = None,
    ) -> None:
        self.chain = chain
        self.proposals = proposals
        self.network = network
        self.identity = identity
        self.settings = settings or ConsensusSettings()
        self.link = ChainLink(chain, validator=validator)
        self._state_path = None if state_dir is None else state_dir / STATE_FILE
        self.stats = ConsensusStatistics()
        self.core: Agreement | None = None
        self.head: Head | None = None
        self._seed = b""
        self._events_send, self._events = trio.open_memory_channel[Event](4096)
        self._outbox_send, self._outbox = trio.open_memory_channel[tuple[str, bytes]](4096)
        self._nursery: trio.Nursery | None = None
        self._bft_subscribed = False
        self._sync_wanted = trio.Event()
        self._seen_txs: OrderedDict[bytes, None] = OrderedDict()
        self._own_txs: OrderedDict[bytes, None] = OrderedDict()
        """Transactions that entered the network here (API, local roles), for re-gossip."""
        self._slashed: set[str] = set()
        self._parked: dict[bytes, dict[int, bytes]] = {}
        self._parked_count = 0
        self._last_commit = time.monotonic()
        self._height_started = time.monotonic()
        self._proposal_seen: float | None = None
        self._proposal_sent: tuple[int, int] = (0, -1)
        """(height, round) of this node's last proposal, so that a re-broadcast is not logged."""
        self._committed = trio.Condition()
        self._rng = random.Random()
        self._debug = logging.getLogger("flnode.consensus").isEnabledFor(logging.DEBUG)

    # -- public ---------------------------------------------------------------------------------

    async def wait_for_height(self, height: int, timeout: float) -> Head:
        """Wait until this node has committed ``height`` (raises ``trio.TooSlowError``)."""
        with trio.fail_after(timeout):
            async with self._committed:
                while self.head is None or self.head.number < height:
                    await self._committed.wait()
        assert self.head is not None
        return self.head

    async def submit(self, raw_tx: bytes) -> bytes:
        """Add a transaction to the local mempool (it is gossiped with the next batch)."""
        return await self.chain.submit(raw_tx)

    def describe(self) -> dict[str, object]:
        return {}

    def status(self) -> dict[str, object]:
        """Where the consensus stands (the ``consensus_status`` API method)."""
        core, head = self.core, self.head
        ctx = core.ctx if core is not None else None
        commit_ms = sorted(self.stats.commit_ms[-100:])
        return {
            "height": ctx.height if ctx else None,
            "round": core.round if core else None,
            "step": core.step.name.lower() if core and core.started else "idle",
            "member": bool(core and core.is_member),
            "address": self.identity.address,
            "committee": sorted(ctx.committee.members) if ctx else [],
            "quorum": ctx.committee.quorum if ctx else None,
            "head": None
            if head is None
            else {
                "number": head.number,
                "hash": "0x" + head.hash.hex(),
                "state_root": "0x" + head.state_root.hex(),
                "txs": head.tx_count,
            },
            "committed": self.stats.committed,
            "synced": self.stats.synced,
            "sync_requests": self.stats.sync_requests,
            "txs_gossiped": self.stats.txs_gossiped,
            "txs_regossiped": self.stats.txs_regossiped,
            "txs_received": self.stats.txs_received,
            "evidence": self.stats.evidence,
            "slash_submitted": self.stats.slash_submitted,
            "txs_committed": self.stats.txs_committed,
            "txs_parked": self.stats.txs_parked,
            "offences": dict(self.stats.offences),
            "commit_ms_median": commit_ms[len(commit_ms) // 2] if commit_ms else None,
            "events": self.stats.events,
            "published": self.stats.published,
            "round_pulls": self.stats.round_pulls,
            "outbox": self._outbox.statistics().current_buffer_used,
            "votes": {
                "prevote": len(core.votes(core.round, PREVOTE)) if core and ctx else 0,
                "precommit": len(core.votes(core.round, PRECOMMIT)) if core and ctx else 0,
            },
        }

    # -- control API (flnode.rpc.MethodProvider) ---------------------------------------------

    @property
    def rpc_namespace(self) -> str:
        return "consensus"

    def rpc_methods(self) -> list[RpcMethod]:
        async def status(_: Params) -> dict[str, object]:
            return self.status()

        async def submit(params: SubmitParams) -> str:
            raw = bytes.fromhex(params.tx.removeprefix("0x"))
            return "0x" + (await self.submit(raw)).hex()

        async def submit_batch(params: SubmitBatchParams) -> list[str]:
            raws = [bytes.fromhex(t.removeprefix("0x")) for t in params.txs]

            def add_all() -> list[str]:
                out = []
                for raw in raws:
                    try:
                        out.append("0x" + self.chain.chain.add_transaction(raw).hex())
                    except TransactionRejected as exc:
                        out.append(str(exc))
                return out

            return await self.chain.run_sync(add_all)

        return [
            RpcMethod(
                "consensus_status",
                status,
                "Height, round, step, committee, head and counters of the BFT consensus.",
                result="an object",
            ),
            RpcMethod(
                "consensus_submit_batch",
                submit_batch,
                "Queue up to 1,000 raw signed transactions at once (one pass of the mempool).",
                SubmitBatchParams,
                result="per transaction its hash, or why it was rejected",
            ),
            RpcMethod(
                "consensus_submit",
                submit,
                "Queue a raw signed transaction (hex) and gossip it to the other mempools.",
                SubmitParams,
                result="the transaction hash",
            ),
        ]

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.head = await self.link.recover()
        self._seed = await self.link.seed(self.head.number)
        signer = GuardedSigner(self.identity, self.link.chain_id, self._state_path)
        self.core = Agreement(
            signer,
            inspect_block,
            timeouts=self.settings.timeouts,
            on_log=lambda event, kw: log.warning(event, **kw),
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            blocks = await self.network.subscribe(BLOCK_TOPIC)
            self.network.serve_sync(self._serve_sync)
            nursery.start_soon(self._publish_loop)
            await self._initial_sync()
            await self._start_height()
            nursery.start_soon(self._blocks_in_loop, blocks)
            nursery.start_soon(self._tx_out_loop)
            nursery.start_soon(self._sync_loop)
            nursery.start_soon(self._event_loop)
            log.info(
                "consensus started",
                height=self.head.number + 1,
                member=self.core.is_member,
                committee=self.core.ctx.committee.size if self.core.ctx else 0,
            )
            task_status.started()

    async def _event_loop(self) -> None:
        async for event in self._events:
            await event()
            self.stats.events += 1

    async def _post(self, event: Event) -> None:
        await self._events_send.send(event)

    # -- heights ----------------------------------------------------------------------------------

    async def _context(self) -> HeightContext:
        assert self.head is not None
        committee = await self.link.committee(self.head)
        return HeightContext(self.head.number + 1, self.head.hash, self._seed, committee)

    async def _start_height(self) -> None:
        assert self.core is not None
        ctx = await self._context()
        member = self.core.address in ctx.committee
        if member and not self._bft_subscribed:
            await self._subscribe_committee_topics()
        has_work = member and (await self.link.pending() > 0 or self._wants_block())
        self._height_started = time.monotonic()
        self._proposal_seen = None
        self.stats.height, self.stats.round = ctx.height, 0
        await self._apply(self.core.start_height(ctx, has_work=has_work))

    async def _subscribe_committee_topics(self) -> None:
        """Start receiving credentials, proposals and votes, and other nodes' transactions: from
        the first height at which this node sits on the committee (a miner registered later
        subscribes when it joins).

        Only a proposer needs a mempool of everyone's transactions; a node outside the committee
        publishes its own to the members (gossipsub's fanout) without receiving, checking and
        relaying every other node's. A transaction gossiped before a member subscribed reaches
        it when its sender gossips it again (``tx_regossip_s``).
        """
        assert self._nursery is not None
        self._bft_subscribed = True
        channel = await self.network.subscribe(BFT_TOPIC)
        self._nursery.start_soon(self._bft_in_loop, channel)
        txs = await self.network.subscribe(TX_TOPIC)
        self._nursery.start_soon(self._tx_in_loop, txs)

    async def _committed_block(
        self, certified: CertifiedBlock, seed: bytes, how: str, *, announce: bool = False
    ) -> None:
        """Record and import a certified block, announce it if asked, then start the next
        height."""
        try:
            head = await self.link.commit(certified, seed)
        except BlockRejected as exc:
            # 2f+1 certified a block our chain refuses: more than f are faulty, or our state is
            # damaged. Never import it; try to learn the chain from others.
            log.error("certified block rejected by the chain", error=str(exc))
            self._sync_wanted.set()
            return
        self.head, self._seed = head, seed
        self._last_commit = time.monotonic()
        if announce:
            try:
                self._outbox_send.send_nowait((BLOCK_TOPIC, encode_message(certified)))
            except trio.WouldBlock:
                log.warning("consensus outbox full, block announcement dropped")
        if self._parked:
            await self.chain.run_sync(self._retry_parked)
        self.stats.txs_committed += head.tx_count
        if how == "decided":
            self.stats.committed += 1
            since = self._proposal_seen or self._height_started
            self.stats.commit_ms.append((time.monotonic() - since) * 1000)
            del self.stats.commit_ms[:-1000]
        else:
            self.stats.synced += 1
        log.info(
            "block committed",
            number=head.number,
            hash="0x" + head.hash.hex()[:16],
            txs=head.tx_count,
            round=certified.certificate.round,
            how=how,
        )
        async with self._committed:
            self._committed.notify_all()
        await self._start_height()

    # -- actions ----------------------------------------------------------------------------------

    async def _apply(self, actions: list[Action]) -> None:
        assert self._nursery is not None and self.core is not None
        for action in actions:
            if isinstance(action, Broadcast):
                if isinstance(action.message, Proposal):
                    if self._proposal_seen is None:
                        self._proposal_seen = time.monotonic()
                    self._log_proposal(action.message)
                try:
                    self._outbox_send.send_nowait((BFT_TOPIC, encode_message(action.message)))
                except trio.WouldBlock:
                    log.warning("consensus outbox full, message dropped")
            elif isinstance(action, ScheduleTimeout):
                self._nursery.start_soon(self._timer, action)
            elif isinstance(action, BuildBlock):
                self._nursery.start_soon(self._build, action)
            elif isinstance(action, ValidateBlock):
                self._nursery.start_soon(self._validate, action)
            elif isinstance(action, Decide):
                assert isinstance(action.certificate, CommitCertificate)
                await self._committed_block(
                    CertifiedBlock(action.block, action.certificate),
                    action.next_seed,
                    "decided",
                    announce=action.info.coinbase.lower() == self.core.address.lower(),
                )
            elif isinstance(action, NeedBlock):
                self._sync_wanted.set()
            elif isinstance(action, PullRound):
                self._nursery.start_soon(self._pull_round, action)
            elif isinstance(action, Behind):
                self._nursery.start_soon(self._maybe_behind, action.height)
            elif isinstance(action, Offence):
                self._charge(action.origin, action.reason, action.detail)
            elif isinstance(action, EvidenceFound):
                self.stats.evidence += 1
                log.warning("equivocation evidence", offender=action.offender)
                self._nursery.start_soon(self._slash, action)
        if self.core.ctx is not None:
            self.stats.round = self.core.round

    def _log_proposal(self, proposal: Proposal) -> None:
        key = (proposal.height, proposal.round)
        if key > self._proposal_sent:
            self._proposal_sent = key
            log.info(
                "proposal sent",
                height=proposal.height,
                round=proposal.round,
                pol_round=proposal.pol_round,
            )

    def _charge(self, origin: object, reason: str, detail: str) -> None:
        self.stats.offences[reason] = self.stats.offences.get(reason, 0) + 1
        log.info("consensus message rejected", reason=reason, detail=detail[:160])
        if isinstance(origin, str) and reason not in _HONEST_RACES:
            self.network.penalise(origin, reason)

    async def _timer(self, action: ScheduleTimeout) -> None:
        await trio.sleep(action.seconds)
        core = self.core
        assert core is not None

        async def fire() -> None:
            await self._apply(core.on_timeout(action.kind, action.height, action.round))

        await self._post(fire)

    def _wants_block(self) -> bool:
        if self.proposals is None:
            return False
        try:
            return self.proposals.wants_block()
        except Exception as exc:  # the hook must not take the consensus down
            log.error("proposal source failed", error=repr(exc))
            return False

    async def _build(self, action: BuildBlock) -> None:
        deadline = trio.current_time() + self.settings.proposal_wait_s
        while (
            await self.link.pending() == 0
            and not self._wants_block()
            and trio.current_time() < deadline
        ):
            await trio.sleep(0.02)
        first: list[bytes] = []
        if self.proposals is not None:
            with trio.move_on_after(self.settings.prepare_wait_s):
                try:
                    await self.proposals.prepare(action.height - 1, action.round)
                except Exception as exc:  # the block goes without what was not ready
                    log.error("proposal source failed", error=repr(exc))
            try:
                first = await self.proposals.transactions(action.height - 1, action.round)
            except Exception as exc:  # a block without them is still a block
                log.error("proposal source failed", error=repr(exc))
        try:
            raw = await self.link.build(self.settings.max_block_txs, first=first)
        except BlockRejected as exc:
            log.error("cannot build a block", error=str(exc))
            return
        core = self.core
        assert core is not None

        async def built() -> None:
            await self._apply(core.block_built(action.height, action.round, raw))

        await self._post(built)

    async def _validate(self, action: ValidateBlock) -> None:
        core = self.core
        assert core is not None
        # A follower casts no vote, so it need not pre-execute proposals (on a devnet of 14
        # nodes that was a tenth of every device's CPU): it decides a block only with 2f+1
        # precommits, and importing it executes and checks it anyway.
        ok = True if not core.is_member else await self.link.validate(action.block)

        async def validated() -> None:
            await self._apply(core.block_validated(action.height, action.block_hash, ok))

        await self._post(validated)

    async def _slash(self, found: EvidenceFound) -> None:
        core = self.core
        if core is None or not core.is_member or found.offender in self._slashed:
            return
        self._slashed.add(found.offender)
        try:
            if await self.chain.view("stake", found.offender) == 0:
                return
            data = self.chain.contract.slash(
                found.evidence.first.as_ledger_vote(), found.evidence.second.as_ledger_vote()
            )
            tx = await self.chain.send(self.chain.spec.ledger_address, data)
            self.stats.slash_submitted += 1
            log.warning("slash submitted", offender=found.offender, tx="0x" + tx.hex())
        except Exception as exc:  # a failed report must not stop the consensus
            log.error("slash submission failed", offender=found.offender, error=repr(exc))

    # -- gossip -----------------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        async for topic, data in self._outbox:
            started = trio.current_time()
            try:
                await self.network.publish(topic, data)
                self.stats.published += 1
            except Exception as exc:  # never let a publish failure stop the consensus
                log.warning("consensus publish failed", topic=topic, error=repr(exc))
            took = trio.current_time() - started
            if took > 1.0:
                log.warning("consensus publish slow", topic=topic, seconds=round(took, 2))

    async def _decoded(
        self, channel: AsyncIterator[tuple[bytes, str]], kinds: tuple[type, ...]
    ) -> AsyncIterator[tuple[Any, str]]:
        """(message, peer) for each gossiped message that decodes to one of ``kinds``; the peer
        that relayed anything else is charged."""
        async for data, peer in channel:
            try:
                message = decode_message(data)
            except InvalidConsensusMessage as exc:
                self._charge(peer, exc.reason, exc.detail)
                continue
            if not isinstance(message, kinds):
                self._charge(peer, "wrong-topic", type(message).__name__)
                continue
            yield message, peer

    async def _bft_in_loop(self, channel: AsyncIterator[tuple[bytes, str]]) -> None:
        core = self.core
        assert core is not None
        kinds = (Credential, Proposal, VoteMessage, Evidence)
        async for message, peer in self._decoded(channel, kinds):
            if self._debug:
                log.debug(
                    "consensus message in",
                    type=type(message).__name__,
                    height=getattr(message, "height", None),
                    round=getattr(message, "round", None),
                    kind=getattr(message, "kind", None),
                    peer=peer[-8:],
                )

            async def handle(message: object = message, peer: str = peer) -> None:
                if (
                    isinstance(message, Proposal)
                    and self._proposal_seen is None
                    and core.ctx is not None
                    and message.height == core.ctx.height
                ):
                    self._proposal_seen = time.monotonic()
                await self._apply(core.on_message(message, peer))  # type: ignore[arg-type]

            await self._post(handle)

    async def _blocks_in_loop(self, channel: AsyncIterator[tuple[bytes, str]]) -> None:
        """Adopt announced blocks that extend our head (after checking their certificates)."""
        assert self._nursery is not None
        async for message, peer in self._decoded(channel, (CertifiedBlock,)):
            head = self.head
            if head is None or message.height <= head.number:
                continue  # decided or synced already (the usual case for committee members)
            if message.height > head.number + 1:
                self._nursery.start_soon(self._maybe_behind, message.height)
                continue

            async def adopt(certified: CertifiedBlock = message, peer: str = peer) -> None:
                await self._adopt((certified,), peer, how="announced")

            await self._post(adopt)

    async def _tx_in_loop(self, channel: AsyncIterator[tuple[bytes, str]]) -> None:
        async for message, peer in self._decoded(channel, (TxBatch,)):
            fresh = []
            for raw in message.txs:
                digest = keccak(raw)
                if digest not in self._seen_txs:
                    self._remember(digest)
                    fresh.append(raw)
            if not fresh:
                continue
            self.stats.txs_received += len(fresh)
            reasons = await self.chain.run_sync(self._add_all, fresh)
            for reason in reasons:
                if reason in _CHARGED_TX_REASONS:
                    self._charge(peer, f"tx-{reason}", "transaction rejected by the mempool")
                    break

    def _add_all(self, raws: list[bytes]) -> list[str]:
        """Add gossiped transactions to the mempool (chain thread); the rejection reasons.

        Gossip may deliver a sender's transactions out of nonce order (they entered the network
        at different nodes), and the mempool refuses gaps: such a transaction is *parked* under
        its sender and nonce, and added as soon as the nonces before it are in (after any
        transaction got in, and after every commit).
        """
        chain = self.chain.chain
        reasons = []
        added = False
        for raw in raws:
            try:
                chain.add_transaction(raw)
                added = True
            except TransactionRejected as exc:
                if exc.reason == "nonce-gap" and self._parked_count < _PARKED_TXS:
                    tx = chain.decode_transaction(raw)
                    self._parked.setdefault(tx.sender, {})[tx.nonce] = raw
                    self._parked_count += 1
                    self.stats.txs_parked += 1
                else:
                    reasons.append(exc.reason)
        if added and self._parked:
            self._retry_parked()
        return reasons

    def _retry_parked(self) -> None:
        """Add the parked transactions whose turn has come (chain thread)."""
        mempool = self.chain.chain.mempool
        for sender, queue in list(self._parked.items()):
            account = self.chain.chain.nonce(sender)
            for nonce in [n for n in queue if n < account]:
                del queue[nonce]  # included meanwhile (or replaced): never valid again
                self._parked_count -= 1
            nonce = mempool.next_nonce(sender)
            while nonce in queue:
                raw = queue.pop(nonce)
                self._parked_count -= 1
                try:
                    mempool.add(raw)
                except TransactionRejected:
                    break
                nonce += 1
            if not queue:
                del self._parked[sender]

    def _remember(self, digest: bytes) -> None:
        self._seen_txs[digest] = None
        if len(self._seen_txs) > _SEEN_TXS:
            self._seen_txs.popitem(last=False)

    async def _tx_out_loop(self) -> None:
        core = self.core
        assert core is not None
        regossip_at = time.monotonic() + self.settings.tx_regossip_s
        while True:
            await trio.sleep(self.settings.tx_gossip_interval_s)
            # An empty mempool needs no trip to the chain's worker thread (this loop runs 20
            # times a second on every node; len() of the mempool is one atomic read).
            if self.link.pending_hint() == 0:
                count, pending = 0, []
            else:
                count, pending = await self.link.pending_raw(4 * MAX_TX_BATCH, self._seen_txs)
            fresh = []
            for digest, raw in pending:
                if digest in self._seen_txs:
                    continue
                self._remember(digest)  # received ones are remembered on arrival: this is ours
                self._own_txs[digest] = None
                if len(self._own_txs) > _SEEN_TXS:
                    self._own_txs.popitem(last=False)
                fresh.append(raw)
            self._gossip_txs(fresh)
            if count > 0 and time.monotonic() >= regossip_at:
                regossip_at = time.monotonic() + self.settings.tx_regossip_s
                _, oldest = await self.link.pending_raw(MAX_TX_BATCH)
                again = [raw for digest, raw in oldest if digest in self._own_txs]
                self.stats.txs_regossiped += len(again)
                self._gossip_txs(again)
            wake = count > 0 or self._wants_block()
            interval = self.settings.max_block_interval_s
            if interval > 0 and time.monotonic() - self._last_commit > interval:
                wake = True
            if wake and core.is_member and not core.started and not core.decided:

                async def work() -> None:
                    await self._apply(core.on_work())

                await self._post(work)

    def _gossip_txs(self, raws: list[bytes]) -> None:
        batch: list[bytes] = []
        size = 0
        for raw in raws:
            if len(batch) == MAX_TX_BATCH or size + len(raw) > MAX_TX_BATCH_BYTES:
                self._send_txs(batch)
                batch, size = [], 0
            batch.append(raw)
            size += len(raw)
        if batch:
            self._send_txs(batch)

    def _send_txs(self, txs: list[bytes]) -> None:
        self.stats.txs_gossiped += len(txs)
        try:
            self._outbox_send.send_nowait((TX_TOPIC, encode_message(TxBatch(tuple(txs)))))
        except trio.WouldBlock:
            log.warning("consensus outbox full, transactions not gossiped")

    # -- block sync -------------------------------------------------------------------------------

    async def _serve_sync(self, request: bytes, peer: str) -> bytes:
        try:
            message = decode_message(request, max_size=64)
        except InvalidConsensusMessage as exc:
            self._charge(peer, exc.reason, exc.detail)
            return encode_message(SyncResponse(()))
        if isinstance(message, RoundRequest):
            core = self.core
            held = core.round_messages(message.height, message.round) if core else []
            return encode_message(RoundResponse(tuple(encode_message(m) for m in held)))
        if not isinstance(message, SyncRequest):
            self._charge(peer, "wrong-protocol", type(message).__name__)
            return encode_message(SyncResponse(()))
        blocks = await self.link.certified(
            message.first,
            min(message.count, self.settings.sync_batch, MAX_SYNC_BLOCKS),
            MAX_SYNC_RESPONSE_SIZE - 65536,
        )
        return encode_message(SyncResponse(tuple(blocks)))

    async def _pull_round(self, action: PullRound) -> None:
        """Ask a few peers for what they hold of a stalled round, and feed it to the core."""
        core = self.core
        assert core is not None
        self.stats.round_pulls += 1
        peers = self.network.peers()
        self._rng.shuffle(peers)
        request = encode_message(RoundRequest(action.height, action.round))
        async with trio.open_nursery() as nursery:
            for peer in peers[:_MAX_PULL_PEERS]:
                nursery.start_soon(self._pull_from, peer, request)

    async def _pull_from(self, peer: str, request: bytes) -> None:
        core = self.core
        assert core is not None
        try:
            with trio.fail_after(self.settings.sync_timeout_s):
                raw = await self.network.request_sync(peer, request)
            response = decode_message(raw, max_size=MAX_SYNC_RESPONSE_SIZE)
        except InvalidConsensusMessage as exc:
            self._charge(peer, exc.reason, exc.detail)
            return
        except Exception as exc:  # timeouts, dial and stream errors of any kind
            log.debug("round pull failed", peer=peer, error=repr(exc))
            return
        if not isinstance(response, RoundResponse):
            return
        messages: list[Credential | Proposal | VoteMessage] = []
        for data in response.messages:
            try:
                message = decode_message(data)
            except InvalidConsensusMessage as exc:
                self._charge(peer, exc.reason, exc.detail)
                return
            if isinstance(message, Credential | Proposal | VoteMessage):
                messages.append(message)

        async def feed() -> None:
            for message in messages:
                await self._apply(core.on_message(message, peer))

        await self._post(feed)

    async def _maybe_behind(self, height: int) -> None:
        """A message of a later height arrived. Usually we are just committing a little later
        than the sender, so sync only if we are still behind after a moment."""
        await trio.sleep(self.settings.behind_grace_s)
        if self.head is not None and self.head.number + 1 < height:
            self._sync_wanted.set()

    async def _sync_loop(self) -> None:
        interval = self.settings.sync_interval_s
        while True:
            asked = False
            with trio.move_on_after(interval):
                await self._sync_wanted.wait()
                asked = True
            self._sync_wanted = trio.Event()
            if not asked and time.monotonic() - self._last_commit < interval:
                # Blocks are arriving: the fallback has nothing to catch up with (a gap in them
                # asks for a sync itself). On a 15-node devnet the fallback's requests, every
                # 5 s to up to 3 peers from every node, were a tenth of a device's event loop.
                continue
            await self._sync_once()

    async def _initial_sync(self) -> None:
        """Catch up with the peers before taking part (bounded by ``initial_sync_s``)."""
        if not self.network.peers():
            return  # the first node up has nobody to learn from; later hints trigger sync
        with trio.move_on_after(self.settings.initial_sync_s):
            while await self._sync_once(direct=True):
                pass

    async def _sync_once(self, *, direct: bool = False) -> int:
        """Fetch and adopt blocks above our head from one peer after another; how many."""
        peers = self.network.peers()
        self._rng.shuffle(peers)
        adopted = 0
        for peer in peers[: max(1, self.settings.sync_peers)] if not direct else peers:
            while True:
                assert self.head is not None
                request = SyncRequest(self.head.number + 1, self.settings.sync_batch)
                self.stats.sync_requests += 1
                try:
                    with trio.fail_after(self.settings.sync_timeout_s):
                        raw = await self.network.request_sync(peer, encode_message(request))
                    response = decode_message(raw, max_size=MAX_SYNC_RESPONSE_SIZE)
                except InvalidConsensusMessage as exc:
                    self._charge(peer, exc.reason, exc.detail)
                    break
                except Exception as exc:  # timeouts, dial and stream errors of any kind
                    log.debug("sync request failed", peer=peer, error=repr(exc))
                    break
                if not isinstance(response, SyncResponse) or not response.blocks:
                    break
                if direct:
                    count = await self._adopt(response.blocks, peer)
                else:
                    count = await self._adopt_in_loop(response.blocks, peer)
                adopted += count
                if count < len(response.blocks) or count < self.settings.sync_batch:
                    break
            if adopted:
                break  # caught up with this peer's head; the core takes it from here
        return adopted

    async def _adopt_in_loop(self, blocks: tuple[CertifiedBlock, ...], peer: str) -> int:
        """:meth:`_adopt` run by the event loop (the core must not change under it)."""
        done = trio.Event()
        result: list[int] = []

        async def adopt() -> None:
            try:
                result.append(await self._adopt(blocks, peer))
            finally:
                done.set()

        await self._post(adopt)
        await done.wait()
        return result[0] if result else 0

    async def _adopt(
        self, blocks: tuple[CertifiedBlock, ...], peer: str, *, how: str = "synced"
    ) -> int:
        """Verify and commit synced (or announced) blocks that extend our head; how many were
        adopted."""
        count = 0
        for certified in blocks:
            assert self.head is not None
            if certified.height <= self.head.number:
                continue
            if certified.height != self.head.number + 1:
                break
            try:
                _, seed = verify_certified_block(
                    certified,
                    await self._context(),
                    chain_id=self.link.chain_id,
                    inspect=inspect_block,
                )
            except InvalidConsensusMessage as exc:
                self._charge(peer, exc.reason, exc.detail)
                break
            before = self.head.number
            await self._committed_block(certified, seed, how)
            if self.head.number == before:
                break
            count += 1
        return count
