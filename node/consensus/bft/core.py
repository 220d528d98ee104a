"""The agreement state machine: Tendermint's algorithm with Algorand-style leaders, as pure logic.

:class:`Agreement` holds one node's state at one height and reacts to four kinds of input —
messages, timer expiries, "there is work" and the answers to its requests (a built block, a
validated block) — by returning :data:`Action` values. It does no I/O, reads no clock and uses
no randomness, so several instances exchanging messages in memory under a simulated clock are the
real protocol, deterministic and fast (``tests/node/consensus/bft``); the
:class:`~.service.ConsensusService` drives it over gossip and the chain.

The algorithm is Buchman, Kwon and Milosevic, "The latest gossip on BFT consensus" (2018),
Algorithm 1, with these choices:

* **Leader** of (height, round): the member with the lowest sortition priority
  (:mod:`.sortition`). Credentials cannot be computed by others, so every member reveals its
  credential when it enters a round, and round 0's as soon as the height begins (even while idle,
  so that the leader is known before the first transaction arrives and proposes at once); a
  member proposes once it has seen 2f+1 credentials (its own included) and its own is the lowest, and a node prevotes for the proposal whose credential
  is the lowest it knows. Nodes may disagree about the leader when credentials arrive late; that
  costs a round at worst, never safety (Tendermint's safety does not depend on who proposes).
* **Locking** exactly as Tendermint: precommit only after 2f+1 prevotes for a block in this
  round; once locked, prevote only the locked block unless a proposal carries a proof of lock
  (``pol_round``) from a later round; ``valid_value`` is re-proposed by later leaders.
* **Timeouts** grow by ``delta`` per round, so after enough failed rounds every honest node
  waits long enough; a new round brings a new sortition, so the lead passes on.
* **Validity**: a block is valid when the application says so (:class:`ValidateBlock` is
  answered with :meth:`Agreement.block_validated`); an invalid proposal gets a nil prevote.
* **Decision**: 2f+1 precommits for a block whose bytes we have (from any proposal) decide it,
  with a :class:`~.messages.CommitCertificate` of those precommits. If we lack the bytes,
  :class:`NeedBlock` asks the driver to fetch the certified block by sync.
* **No empty blocks**: a height starts idle; round 0 begins when the driver reports work
  (pending transactions, or a deadline) or when a valid message of this height arrives.
* **Equivocation**: a second, different vote by a member at one (round, kind) is not counted;
  the pair becomes :class:`~.messages.Evidence` (:class:`EvidenceFound`).

A node that is not a committee member runs the same machine passively: it never signs, but it
collects proposals and precommits and decides (follows the chain) like the others.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from eth_utils import to_checksum_address

from .certificate import BlockInfo, BlockInspector, HeightContext, make_certificate
from .errors import DoubleSignRefused, InvalidConsensusMessage
from .messages import (
    NIL,
    PRECOMMIT,
    PREVOTE,
    Credential,
    Evidence,
    Message,
    Proposal,
    VoteMessage,
)
from .signer import GuardedSigner
from .sortition import credential_signer, next_seed, seed_proof_signer

MAX_ROUNDS_AHEAD = 64
"""Messages for rounds further ahead than this are dropped (bounds memory per peer)."""
MAX_FUTURE_HEIGHTS = 2
MAX_FUTURE_MESSAGES = 4096
MAX_FUTURE_BYTES = 32 * 2**20
"""Messages of the next heights are kept (a node that commits a little later than the others
needs the next proposal), bounded in count and in proposal bytes."""


class Step(enum.IntEnum):
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3


class TimeoutKind(enum.Enum):
    PROPOSE = "propose"
    PREVOTE = "prevote"
    PRECOMMIT = "precommit"
    CREDENTIALS = "credentials"
    LONE_LEADER = "lone-leader"
    REBROADCAST = "rebroadcast"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Base timeouts (seconds) and their growth per round (Tendermint's timeoutX(r))."""

    propose: float = 3.0
    prevote: float = 1.0
    precommit: float = 1.0
    delta: float = 0.5
    maximum: float = 30.0
    credentials: float = 0.05
    """How long a member that holds the lowest of 2f+1 credentials waits for the others before
    proposing (a later, lower credential would make a second leader and cost the round)."""
    rebroadcast: float = 2.0
    """While a height is undecided, a node re-sends its own messages of the current round this
    often: gossip does not retransmit, and a message lost to a partition or a restart would
    otherwise stall the round for ever (Tendermint assumes eventual delivery)."""

    def duration(self, kind: TimeoutKind, round_: int) -> float:
        base = {
            TimeoutKind.PROPOSE: self.propose,
            TimeoutKind.PREVOTE: self.prevote,
            TimeoutKind.PRECOMMIT: self.precommit,
            TimeoutKind.CREDENTIALS: self.credentials,
            TimeoutKind.LONE_LEADER: 0.0,
            TimeoutKind.REBROADCAST: self.rebroadcast,
        }[kind]
        if kind is TimeoutKind.REBROADCAST:
            # Slower as rounds fail: re-sending every message of a stuck round every 2 s is
            # what keeps a CPU-starved network starved.
            return min(self.maximum, base + round_ * self.delta)
        if kind is TimeoutKind.CREDENTIALS:
            # Grows with the round too: on a loaded machine credentials arrive late, and a
            # member that proposes before a lower credential arrives costs the round again.
            return min(self.maximum, base + round_ * self.delta)
        if kind is TimeoutKind.LONE_LEADER:
            return self.duration(TimeoutKind.PROPOSE, round_) / 3
        return min(self.maximum, base + round_ * self.delta)


# -- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Gossip this message to the committee (and followers)."""

    message: Message


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    """Call :meth:`Agreement.on_timeout` with these arguments after ``seconds``."""

    kind: TimeoutKind
    height: int
    round: int
    seconds: float


@dataclass(frozen=True, slots=True)
class BuildBlock:
    """We lead (height, round) with nothing to re-propose: build a block on the head and call
    :meth:`Agreement.block_built` (the driver may wait a little for transactions first)."""

    height: int
    round: int


@dataclass(frozen=True, slots=True)
class ValidateBlock:
    """Run the application's validation; answer with :meth:`Agreement.block_validated`."""

    height: int
    block_hash: bytes
    block: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Decide:
    """The height is decided: import ``block`` with ``certificate``, then start the next height
    with ``next_seed``."""

    height: int
    block: bytes = field(repr=False)
    info: BlockInfo
    certificate: object  # CommitCertificate (kept loose to avoid a cycle in type checkers)
    next_seed: bytes


@dataclass(frozen=True, slots=True)
class NeedBlock:
    """2f+1 precommitted a block whose bytes we never received: fetch it (block sync)."""

    height: int
    block_hash: bytes


@dataclass(frozen=True, slots=True)
class Behind:
    """A valid-looking message for a later height arrived: we may be behind (sync)."""

    height: int


@dataclass(frozen=True, slots=True)
class PullRound:
    """The round made no progress for a rebroadcast period: ask peers directly for what they
    hold of (height, round) and feed it back with :meth:`Agreement.on_message`."""

    height: int
    round: int


@dataclass(frozen=True, slots=True)
class Offence:
    """A message was rejected; ``origin`` is what the driver passed in (e.g. the peer)."""

    origin: object
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class EvidenceFound:
    """Proof that ``offender`` signed two conflicting votes (gossip it, submit it to ``slash``)."""

    evidence: Evidence
    offender: str


Action = (
    Broadcast
    | ScheduleTimeout
    | BuildBlock
    | ValidateBlock
    | Decide
    | NeedBlock
    | Behind
    | PullRound
    | Offence
    | EvidenceFound
)


@dataclass(slots=True)
class _Block:
    raw: bytes
    info: BlockInfo
    seed_proof: bytes


@dataclass(slots=True)
class _Stats:
    rounds_started: int = 0
    proposals: int = 0
    decided: int = 0
    offences: dict[str, int] = field(default_factory=dict)


class Agreement:
    """One node's agreement state (see the module docstring)."""

    def __init__(
        self,
        signer: GuardedSigner,
        inspect: BlockInspector,
        *,
        timeouts: Timeouts | None = None,
        on_log: Callable[[str, dict[str, object]], None] | None = None,
    ) -> None:
        self.signer = signer
        self.address = signer.address
        self.chain_id = signer.chain_id
        self.inspect = inspect
        self.timeouts = timeouts or Timeouts()
        self._log = on_log
        self.stats = _Stats()
        self.ctx: HeightContext | None = None
        self._future: dict[int, list[tuple[Message, object]]] = defaultdict(list)
        self._future_bytes = 0
        self._out: list[Action] = []
        self._reset()

    # -- state --------------------------------------------------------------------------------

    def _reset(self) -> None:
        self.started = False
        self.decided = False
        self.round = 0
        self.step = Step.PROPOSE
        self.locked: tuple[bytes, int] | None = None
        self.valid: tuple[bytes, int] | None = None
        self._blocks: dict[bytes, _Block] = {}
        self._validity: dict[bytes, bool] = {}
        self._validating: set[bytes] = set()
        self._proposals: dict[int, dict[str, tuple[Proposal, bytes]]] = defaultdict(dict)
        self._priorities: dict[int, dict[str, int]] = defaultdict(dict)
        self._votes: dict[tuple[int, int], dict[str, VoteMessage]] = defaultdict(dict)
        self._senders: dict[int, set[str]] = defaultdict(set)
        self._fired: set[tuple[str, int]] = set()
        self._proposed: set[int] = set()
        self._credentials_waited: set[int] = set()
        self._lone_ok: set[int] = set()
        self._own: dict[int, list[Message]] = defaultdict(list)
        self._credentials: dict[int, dict[str, Credential]] = defaultdict(dict)
        self._last_mark: tuple[int, ...] | None = None
        self._evidence: set[tuple[str, int, int, int]] = set()
        self._need_block: set[bytes] = set()
        self._behind = 0

    @property
    def height(self) -> int:
        return self.ctx.height if self.ctx is not None else 0

    @property
    def is_member(self) -> bool:
        return self.ctx is not None and self.address in self.ctx.committee

    def _progress_mark(self) -> tuple[int, ...]:
        r = self.round
        return (
            r,
            int(self.step),
            len(self._priorities.get(r, ())),
            len(self._proposals.get(r, ())),
            self._count(r, PREVOTE),
            self._count(r, PRECOMMIT),
        )

    def round_messages(self, height: int, round_: int) -> list[Message]:
        """Every credential, proposal and vote held for (height, round) of the current height
        (what a peer asks for with a ``RoundRequest``)."""
        if self.ctx is None or height != self.height:
            return []
        out: list[Message] = list(self._credentials.get(round_, {}).values())
        out.extend(p for p, _ in self._proposals.get(round_, {}).values())
        for kind in (PREVOTE, PRECOMMIT):
            out.extend(self._votes.get((round_, kind), {}).values())
        return out

    def votes(self, round_: int, kind: int) -> dict[str, VoteMessage]:
        """The counted votes of one round and kind, by signer (read-only use)."""
        return dict(self._votes.get((round_, kind), {}))

    # -- inputs -------------------------------------------------------------------------------

    def start_height(self, ctx: HeightContext, *, has_work: bool) -> list[Action]:
        """Begin agreement on ``ctx.height`` (the previous height is decided and imported)."""
        self.ctx = ctx
        self._reset()
        self._out = []
        for h in [h for h in self._future if h < ctx.height]:
            del self._future[h]
        self._future_bytes = sum(
            len(m.block) for ms in self._future.values() for m, _ in ms if isinstance(m, Proposal)
        )
        if has_work:
            self._start_round(0)
        else:
            # Idle until a transaction arrives, but reveal round 0's credential now: when work
            # comes, every member already knows who leads and the leader proposes at once,
            # instead of a credential exchange (a gossip hop, and a wait for the last ones).
            self._reveal(0)
        for message, origin in self._future.pop(ctx.height, []):
            self._handle(message, origin)
        self._progress()
        return self._flush()

    def on_work(self) -> list[Action]:
        """Transactions are waiting (or a block deadline passed): leave the idle state."""
        self._out = []
        if self.ctx is not None and not self.started and not self.decided:
            self._start_round(0)
            self._progress()
        return self._flush()

    def on_message(self, message: Message, origin: object = None) -> list[Action]:
        """A consensus message from the network (already decoded, not yet authenticated)."""
        self._out = []
        self._handle(message, origin)
        self._progress()
        return self._flush()

    def on_timeout(self, kind: TimeoutKind, height: int, round_: int) -> list[Action]:
        self._out = []
        if self.ctx is not None and height == self.height and not self.decided:
            if round_ == self.round:
                # A proposal that came in time but is still being checked (a big block on a
                # busy machine) is not a missing one: prevote when the check answers, not nil.
                if (
                    kind is TimeoutKind.PROPOSE
                    and self.step is Step.PROPOSE
                    and not self._validating_leader_proposal()
                ):
                    self._vote(PREVOTE, NIL)
                    self.step = Step.PREVOTE
                elif kind is TimeoutKind.PREVOTE and self.step is Step.PREVOTE:
                    self._vote(PRECOMMIT, NIL)
                    self.step = Step.PRECOMMIT
                elif kind is TimeoutKind.PRECOMMIT:
                    self._start_round(round_ + 1)
                elif kind is TimeoutKind.CREDENTIALS:
                    self._credentials_waited.add(round_)
                elif kind is TimeoutKind.LONE_LEADER:
                    self._lone_ok.add(round_)
            if kind is TimeoutKind.REBROADCAST and self.started:
                for message in self._own.get(self.round, ()):
                    self._out.append(Broadcast(message))
                mark = self._progress_mark()
                if mark == self._last_mark:
                    self._out.append(PullRound(self.height, self.round))
                self._last_mark = mark
                self._schedule(TimeoutKind.REBROADCAST, self.round)
            self._progress()
        return self._flush()

    def block_built(self, height: int, round_: int, block: bytes) -> list[Action]:
        """The driver built the block we asked for with :class:`BuildBlock`: propose it."""
        self._out = []
        if (
            self.ctx is not None
            and height == self.height
            and round_ == self.round
            and self.step is Step.PROPOSE
            and not self.decided
        ):
            info = self.inspect(block)
            seed_proof = self.signer.seed_proof(self.ctx.seed, height)
            self._blocks[info.hash] = _Block(block, info, seed_proof)
            self._validity[info.hash] = True  # we built it on our head
            self._send_proposal(round_, -1, info.hash)
            self._progress()
        return self._flush()

    def block_validated(self, height: int, block_hash: bytes, ok: bool) -> list[Action]:
        self._out = []
        if self.ctx is not None and height == self.height:
            self._validity[block_hash] = ok
            self._validating.discard(block_hash)
            self._progress()
        return self._flush()

    # -- message handling -----------------------------------------------------------------------

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _offence(self, origin: object, reason: str, detail: str) -> None:
        self.stats.offences[reason] = self.stats.offences.get(reason, 0) + 1
        self._out.append(Offence(origin, reason, detail))

    def _handle(self, message: Message, origin: object) -> None:
        if self.ctx is None:
            return
        if isinstance(message, Evidence):
            self._handle_evidence(message, origin)
            return
        if not isinstance(message, Credential | Proposal | VoteMessage):
            return
        if message.height < self.height:
            return  # late: that height is decided
        if message.height > self.height:
            size = len(message.block) if isinstance(message, Proposal) else 0
            if (
                message.height <= self.height + MAX_FUTURE_HEIGHTS
                and sum(len(v) for v in self._future.values()) < MAX_FUTURE_MESSAGES
                and self._future_bytes + size <= MAX_FUTURE_BYTES
            ):
                self._future[message.height].append((message, origin))
                self._future_bytes += size
            if message.height > self._behind:
                self._behind = message.height
                self._out.append(Behind(message.height))
            return
        if self.decided:
            return
        if message.round > self.round + MAX_ROUNDS_AHEAD:
            return
        try:
            if isinstance(message, Credential):
                accepted = self._handle_credential(message, origin)
            elif isinstance(message, Proposal):
                accepted = self._handle_proposal(message, origin)
            else:
                accepted = self._handle_vote(message, origin)
        except InvalidConsensusMessage as exc:
            self._offence(origin, exc.reason, exc.detail)
            return
        revealed_early = isinstance(message, Credential) and message.round == 0
        if accepted and not self.started and not revealed_early:
            # Someone has work at this height: join in. (Round 0's credentials are revealed
            # when a height begins, work or not, so they say nothing about work.)
            self._start_round(0)

    def _member(self, signer: str, what: str) -> None:
        assert self.ctx is not None
        if signer not in self.ctx.committee:
            raise InvalidConsensusMessage("non-member", f"{what} from non-member {signer}")

    def _handle_credential(self, message: Credential, origin: object) -> bool:
        assert self.ctx is not None
        signer = credential_signer(
            message.credential, self.chain_id, self.ctx.seed, message.height, message.round
        )
        self._member(signer, "credential")
        self._note_credential(message.round, signer, message.credential)
        self._credentials[message.round].setdefault(signer, message)
        return True

    def _note_credential(self, round_: int, signer: str, credential: bytes) -> None:
        assert self.ctx is not None
        prios = self._priorities[round_]
        if signer not in prios:
            prios[signer] = self.ctx.committee.priority(signer, credential)
            self._senders[round_].add(signer)

    def _handle_proposal(self, p: Proposal, origin: object) -> bool:
        ctx = self.ctx
        assert ctx is not None
        info = self.inspect(p.block)
        if info.number != ctx.height or info.parent_hash != ctx.parent_hash:
            raise InvalidConsensusMessage(
                "wrong-parent", f"block #{info.number} does not extend the head of {ctx.height}"
            )
        proposer = p.signer(self.chain_id, info.hash)
        self._member(proposer, "proposal")
        if credential_signer(p.credential, self.chain_id, ctx.seed, p.height, p.round) != (
            proposer
        ):
            raise InvalidConsensusMessage("bad-credential", "the credential is not the proposer's")
        coinbase = to_checksum_address(info.coinbase)
        if coinbase not in ctx.committee or (p.pol_round == -1 and coinbase != proposer):
            raise InvalidConsensusMessage(
                "bad-coinbase", f"a fresh proposal by {proposer} must have it as coinbase"
            )
        if seed_proof_signer(p.seed_proof, self.chain_id, ctx.seed, ctx.height) != coinbase:
            raise InvalidConsensusMessage("bad-seed-proof", "the seed proof is not the coinbase's")
        known = self._proposals[p.round].get(proposer)
        if known is not None:
            if known[1] != info.hash:
                self._offence(origin, "proposal-equivocation", f"{proposer} round {p.round}")
            return False
        self._proposals[p.round][proposer] = (p, info.hash)
        self._blocks.setdefault(info.hash, _Block(p.block, info, p.seed_proof))
        self._note_credential(p.round, proposer, p.credential)
        best = min(self._priorities[p.round].values())
        if self._priorities[p.round][proposer] > best:
            self._offence(origin, "not-leader", f"{proposer} is not the lowest credential")
        self.stats.proposals += 1
        return True

    def _handle_vote(self, v: VoteMessage, origin: object) -> bool:
        signer = v.signer(self.chain_id)
        self._member(signer, "vote")
        tally = self._votes[(v.round, v.kind)]
        known = tally.get(signer)
        if known is not None:
            if known.block_hash != v.block_hash:
                self._report(Evidence(known, v), signer)
            return False
        tally[signer] = v
        self._senders[v.round].add(signer)
        return True

    def _handle_evidence(self, ev: Evidence, origin: object) -> None:
        try:
            offender = ev.offender(self.chain_id)
        except InvalidConsensusMessage as exc:
            self._offence(origin, exc.reason, exc.detail)
            return
        self._report(ev, offender, rebroadcast=False)

    def _report(self, ev: Evidence, offender: str, *, rebroadcast: bool = True) -> None:
        key = (offender, *ev.key)
        if key in self._evidence:
            return
        self._evidence.add(key)
        self._out.append(EvidenceFound(ev, offender))
        if rebroadcast:
            self._out.append(Broadcast(ev))

    # -- own messages -------------------------------------------------------------------------

    def _start_round(self, round_: int) -> None:
        assert self.ctx is not None
        self.started = True
        self.round = round_
        self.step = Step.PROPOSE
        self.stats.rounds_started += 1
        self._reveal(round_)
        if self.is_member:
            self._schedule(TimeoutKind.LONE_LEADER, round_)
        if ("rebroadcast", 0) not in self._fired:
            self._fired.add(("rebroadcast", 0))
            self._schedule(TimeoutKind.REBROADCAST, round_)
        self._schedule(TimeoutKind.PROPOSE, round_)

    def _reveal(self, round_: int) -> None:
        """Send this member's credential for ``round_`` of the height (once)."""
        assert self.ctx is not None
        if not self.is_member or self.address in self._credentials[round_]:
            return
        credential = self.signer.credential(self.ctx.seed, self.height, round_)
        self._note_credential(round_, self.address, credential)
        message = Credential(self.height, round_, credential)
        self._credentials[round_][self.address] = message
        self._send(message)

    def _schedule(self, kind: TimeoutKind, round_: int) -> None:
        self._out.append(
            ScheduleTimeout(kind, self.height, round_, self.timeouts.duration(kind, round_))
        )

    def _vote(self, kind: int, block_hash: bytes) -> None:
        if not self.is_member:
            return
        try:
            vote = self.signer.vote(self.height, self.round, kind, block_hash)
        except DoubleSignRefused as exc:
            if self._log:
                self._log("vote refused by the double-sign guard", {"detail": str(exc)})
            return
        self._votes[(self.round, kind)][self.address] = vote
        self._senders[self.round].add(self.address)
        self._send(vote)

    def _send_proposal(self, round_: int, pol_round: int, block_hash: bytes) -> None:
        assert self.ctx is not None
        block = self._blocks[block_hash]
        credential = self.signer.credential(self.ctx.seed, self.height, round_)
        try:
            proposal = self.signer.proposal(
                self.height,
                round_,
                pol_round,
                block.raw,
                block_hash,
                block.seed_proof,
                credential,
            )
        except DoubleSignRefused as exc:
            if self._log:
                self._log("proposal refused by the double-sign guard", {"detail": str(exc)})
            return
        self._proposals[round_][self.address] = (proposal, block_hash)
        self._send(proposal)

    def _send(self, message: Credential | Proposal | VoteMessage) -> None:
        self._own[message.round].append(message)
        self._out.append(Broadcast(message))

    # -- the rules ----------------------------------------------------------------------------

    def _count(self, round_: int, kind: int, block_hash: bytes | None = None) -> int:
        tally = self._votes.get((round_, kind))
        if not tally:
            return 0
        if block_hash is None:
            return len(tally)
        return sum(1 for v in tally.values() if v.block_hash == block_hash)

    def _quorum_hashes(self, round_: int, kind: int) -> list[bytes]:
        assert self.ctx is not None
        tally = self._votes.get((round_, kind))
        if not tally or len(tally) < self.ctx.committee.quorum:
            return []
        counts: dict[bytes, int] = defaultdict(int)
        for v in tally.values():
            counts[v.block_hash] += 1
        return [h for h, n in counts.items() if n >= self.ctx.committee.quorum]

    def _valid(self, block_hash: bytes) -> bool | None:
        """The block's validity, or None while unknown (validation is then requested once)."""
        if block_hash in self._validity:
            return self._validity[block_hash]
        block = self._blocks.get(block_hash)
        if block is not None and block_hash not in self._validating:
            self._validating.add(block_hash)
            self._out.append(ValidateBlock(self.height, block_hash, block.raw))
        return None

    def _validating_leader_proposal(self) -> bool:
        entry = self._leader_proposal(self.round)
        return entry is not None and entry[1] in self._validating

    def _leader_proposal(self, round_: int) -> tuple[Proposal, bytes] | None:
        proposals = self._proposals.get(round_)
        if not proposals:
            return None
        prios = self._priorities[round_]
        best = min(prios.values())
        for proposer, entry in proposals.items():
            if prios[proposer] == best:
                return entry
        return None

    def _progress(self) -> None:
        if self.ctx is None:
            return
        changed = True
        while changed and not self.decided:
            changed = (
                self._try_decide()
                or (self.started and self._round_skip())
                or (self.started and self._try_propose())
                or (self.started and self._prevote_on_proposal())
                or (self.started and self._polka())
                or (self.started and self._polka_nil())
                or (self.started and self._schedule_once())
            )

    def _round_skip(self) -> bool:
        assert self.ctx is not None
        ahead = [
            r
            for r, senders in self._senders.items()
            if r > self.round and len(senders) >= self.ctx.committee.weak
        ]
        if not ahead:
            return False
        self._start_round(max(ahead))
        return True

    def _try_propose(self) -> bool:
        assert self.ctx is not None
        r = self.round
        if self.step is not Step.PROPOSE or r in self._proposed or not self.is_member:
            return False
        prios = self._priorities[r]
        if min(prios.values()) != prios[self.address]:
            return False
        committee = self.ctx.committee
        # Not everyone's credential is in: with 2f+1 of them wait briefly for the rest; with
        # fewer (a lossy mesh, members still entering the round), propose anyway after a third
        # of the propose timeout rather than let the round die without a proposal.
        waiting = len(prios) < committee.size and r not in self._lone_ok
        if waiting and (len(prios) < committee.quorum or r not in self._credentials_waited):
            if len(prios) >= committee.quorum and ("credentials", r) not in self._fired:
                self._fired.add(("credentials", r))
                self._schedule(TimeoutKind.CREDENTIALS, r)
            return False
        self._proposed.add(r)
        if self.valid is not None:
            self._send_proposal(r, self.valid[1], self.valid[0])
        else:
            self._out.append(BuildBlock(self.height, r))
        return True

    def _prevote_on_proposal(self) -> bool:
        assert self.ctx is not None
        if self.step is not Step.PROPOSE:
            return False
        entry = self._leader_proposal(self.round)
        if entry is None:
            return False
        proposal, block_hash = entry
        pol = proposal.pol_round
        if pol >= 0 and self._count(pol, PREVOTE, block_hash) < self.ctx.committee.quorum:
            return False  # wait for the proof of lock (or the propose timeout)
        valid = self._valid(block_hash)
        if valid is None:
            return False
        lock_ok = (
            self.locked is None
            or self.locked[0] == block_hash
            or (pol >= 0 and self.locked[1] <= pol)
        )
        self._vote(PREVOTE, block_hash if valid and lock_ok else NIL)
        self.step = Step.PREVOTE
        return True

    def _polka(self) -> bool:
        r = self.round
        if self.step < Step.PREVOTE or ("polka", r) in self._fired:
            return False
        for block_hash in self._quorum_hashes(r, PREVOTE):
            if block_hash == NIL or block_hash not in self._blocks:
                continue
            if self._valid(block_hash) is not True:
                continue
            self._fired.add(("polka", r))
            if self.step is Step.PREVOTE:
                self.locked = (block_hash, r)
                self._vote(PRECOMMIT, block_hash)
                self.step = Step.PRECOMMIT
            self.valid = (block_hash, r)
            return True
        return False

    def _polka_nil(self) -> bool:
        if self.step is not Step.PREVOTE or NIL not in self._quorum_hashes(self.round, PREVOTE):
            return False
        self._vote(PRECOMMIT, NIL)
        self.step = Step.PRECOMMIT
        return True

    def _schedule_once(self) -> bool:
        assert self.ctx is not None
        r, quorum = self.round, self.ctx.committee.quorum
        if (
            self.step is Step.PREVOTE
            and ("prevote-timeout", r) not in self._fired
            and self._count(r, PREVOTE) >= quorum
        ):
            self._fired.add(("prevote-timeout", r))
            self._schedule(TimeoutKind.PREVOTE, r)
            return True
        if ("precommit-timeout", r) not in self._fired and self._count(r, PRECOMMIT) >= quorum:
            self._fired.add(("precommit-timeout", r))
            self._schedule(TimeoutKind.PRECOMMIT, r)
            return True
        return False

    def _try_decide(self) -> bool:
        assert self.ctx is not None
        for (r, kind), _ in list(self._votes.items()):
            if kind != PRECOMMIT:
                continue
            for block_hash in self._quorum_hashes(r, PRECOMMIT):
                if block_hash == NIL:
                    continue
                block = self._blocks.get(block_hash)
                if block is None:
                    if block_hash not in self._need_block:
                        self._need_block.add(block_hash)
                        self._out.append(NeedBlock(self.height, block_hash))
                    continue
                valid = self._valid(block_hash)
                if valid is not True:
                    continue
                self._decide(r, block_hash, block)
                return True
        return False

    def _decide(self, round_: int, block_hash: bytes, block: _Block) -> None:
        assert self.ctx is not None
        precommits = [
            (signer, v)
            for signer, v in self._votes[(round_, PRECOMMIT)].items()
            if v.block_hash == block_hash
        ]
        certificate = make_certificate(
            self.height, round_, block_hash, block.seed_proof, precommits
        )
        self.decided = True
        self.stats.decided += 1
        self._out.append(
            Decide(
                self.height,
                block.raw,
                block.info,
                certificate,
                next_seed(self.ctx.seed, block.seed_proof),
            )
        )
