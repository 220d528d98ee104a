"""Peer scoring: misbehaviour costs points, and a peer below the threshold is banned for a while.

Every peer starts at 0. Each offence subtracts its penalty (:data:`PENALTIES`); scores recover
toward 0 exponentially (half-life ``half_life_s``), so an honest peer that once relayed a corrupt
message is not punished forever, while a peer that keeps misbehaving sinks. A score at or below
``ban_threshold`` bans the peer for ``ban_seconds``: the P2P service disconnects it and refuses its
connections and messages until the ban expires, and the score is reset when the ban is lifted.

Who is penalised is the caller's decision, and it matters: for gossip, the peer the bytes came from
(the forwarding hop), unless the envelope's signature verified, because an unverified sender field
is only a claim anyone can forge (see :mod:`flnode.p2p.errors`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

PENALTIES: Mapping[str, float] = MappingProxyType(
    {
        # envelope rejections (flnode.p2p.errors reasons)
        "malformed": 10.0,
        "bad_sender": 10.0,
        "internal_error": 0.0,
        "oversized": 20.0,
        "unknown_version": 2.0,
        "unknown_type": 2.0,
        "wrong_network": 5.0,
        # A late envelope is dropped, not charged: on a loaded machine honest relays deliver
        # late, and charging them banned honest peers (a replay is charged as "replay").
        "stale": 0.0,
        "future": 2.0,
        "bad_signature": 25.0,
        "sender_mismatch": 25.0,
        "invalid_payload": 20.0,
        "cid_mismatch": 50.0,
        "decoder_error": 0.0,
        # replay guard verdicts
        "replay": 5.0,
        "conflict": 50.0,
        # fetch-by-CID
        "fetch_cid_mismatch": 50.0,
        "fetch_oversized": 50.0,
        "fetch_error": 1.0,
        # rate limiting
        "spam": 1.0,
    }
)
"""Points lost per offence. Lies that only the offender can produce (content that does not match
its CID, a conflicting second message under one sequence number) cost the most."""


@dataclass(frozen=True, slots=True)
class PeerScoreSnapshot:
    """One peer's standing."""

    peer_id: str
    score: float
    offences: Mapping[str, int]
    banned_until: float | None


@dataclass(slots=True)
class _Record:
    score: float = 0.0
    updated: float = 0.0
    offences: dict[str, int] = field(default_factory=dict)
    banned_until: float | None = None


class PeerScoreBook:
    """Scores, offence counts and bans of the peers this node has dealt with."""

    def __init__(
        self,
        *,
        ban_threshold: float = -100.0,
        ban_seconds: float = 120.0,
        half_life_s: float = 300.0,
        max_peers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ban_threshold >= 0:
            raise ValueError(f"ban_threshold must be negative. Got: {ban_threshold}")
        if ban_seconds <= 0 or half_life_s <= 0:
            raise ValueError("ban_seconds and half_life_s must be positive")
        self.ban_threshold = ban_threshold
        self.ban_seconds = ban_seconds
        self.half_life_s = half_life_s
        self.max_peers = max_peers
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self.bans_total = 0

    def _decayed(self, record: _Record, now: float) -> float:
        elapsed = max(0.0, now - record.updated)
        return record.score * math.pow(0.5, elapsed / self.half_life_s)

    def penalise(self, peer_id: str, reason: str, *, weight: float = 1.0) -> bool:
        """Charge ``peer_id`` for an offence; return True if this offence got it banned."""
        penalty = PENALTIES.get(reason)
        if penalty is None:
            raise ValueError(f"unknown offence {reason!r}; known: {', '.join(sorted(PENALTIES))}")
        now = self._clock()
        record = self._records.get(peer_id)
        if record is None:
            self._evict_if_full()
            record = self._records[peer_id] = _Record(updated=now)
        record.score = self._decayed(record, now) - penalty * weight
        record.updated = now
        record.offences[reason] = record.offences.get(reason, 0) + 1
        if record.banned_until is None and record.score <= self.ban_threshold:
            record.banned_until = now + self.ban_seconds
            self.bans_total += 1
            return True
        return False

    def ban(self, peer_id: str, seconds: float) -> None:
        """Ban ``peer_id`` for ``seconds`` whatever its score (an operator's decision); a longer
        ban already in force is kept."""
        if seconds <= 0:
            raise ValueError(f"a ban lasts a positive number of seconds. Got: {seconds}")
        now = self._clock()
        record = self._records.get(peer_id)
        if record is None:
            self._evict_if_full()
            record = self._records[peer_id] = _Record(updated=now)
        until = now + seconds
        if self.is_banned(peer_id):
            assert record.banned_until is not None
            record.banned_until = max(record.banned_until, until)
        else:
            record.banned_until = until
            self.bans_total += 1

    def unban(self, peer_id: str) -> bool:
        """Lift ``peer_id``'s ban now and reset its score; whether it was banned."""
        if not self.is_banned(peer_id):
            return False
        record = self._records[peer_id]
        record.banned_until = None
        record.score = 0.0
        record.updated = self._clock()
        return True

    def is_banned(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is banned now; an expired ban is lifted (and the score reset)."""
        record = self._records.get(peer_id)
        if record is None or record.banned_until is None:
            return False
        if self._clock() < record.banned_until:
            return True
        record.banned_until = None
        record.score = 0.0
        record.updated = self._clock()
        return False

    def score(self, peer_id: str) -> float:
        record = self._records.get(peer_id)
        return 0.0 if record is None else self._decayed(record, self._clock())

    def banned(self) -> list[str]:
        """Peers banned right now."""
        return [p for p in list(self._records) if self.is_banned(p)]

    def snapshot(self, peer_id: str) -> PeerScoreSnapshot:
        record = self._records.get(peer_id, _Record())
        return PeerScoreSnapshot(
            peer_id=peer_id,
            score=self.score(peer_id),
            offences=MappingProxyType(dict(record.offences)),
            banned_until=record.banned_until if self.is_banned(peer_id) else None,
        )

    def offences_total(self) -> dict[str, int]:
        """Offence counts summed over all peers, by reason (for metrics)."""
        totals: dict[str, int] = {}
        for record in self._records.values():
            for reason, count in record.offences.items():
                totals[reason] = totals.get(reason, 0) + count
        return totals

    def _evict_if_full(self) -> None:
        # Forget the best-behaved peer that is not banned; bans are never forgotten early.
        if len(self._records) < self.max_peers:
            return
        now = self._clock()
        candidates = [
            (self._decayed(r, now), p) for p, r in self._records.items() if r.banned_until is None
        ]
        if candidates:
            del self._records[max(candidates)[1]]
