"""Peer scores: penalties, recovery, bans and their expiry (with a fake clock)."""

from __future__ import annotations

import pytest

from flnode.config import P2PSection
from flnode.identity import NodeIdentity
from flnode.p2p import FetcherAPI, GossipAPI, P2PService, PeerScoreBook


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_penalties_accumulate_and_ban_at_threshold() -> None:
    clock = Clock()
    book = PeerScoreBook(ban_threshold=-100, ban_seconds=60, half_life_s=300, clock=clock)
    for _ in range(3):
        assert book.penalise("p", "bad_signature") is False  # 25 each: -75
    assert book.score("p") == pytest.approx(-75)
    assert book.penalise("p", "bad_signature") is True  # -100: banned now
    assert book.is_banned("p")
    assert book.penalise("p", "bad_signature") is False  # already banned: not banned twice
    assert book.bans_total == 1
    assert book.snapshot("p").offences == {"bad_signature": 5}


def test_scores_recover_with_half_life() -> None:
    clock = Clock()
    book = PeerScoreBook(half_life_s=100, clock=clock)
    book.penalise("p", "invalid_payload")  # -20
    clock.now += 100
    assert book.score("p") == pytest.approx(-10)
    clock.now += 100
    assert book.score("p") == pytest.approx(-5)


def test_operator_bans_last_their_time_keep_a_longer_one_and_can_be_lifted() -> None:
    clock = Clock()
    book = PeerScoreBook(ban_seconds=60, clock=clock)
    book.ban("p", 300)
    assert book.is_banned("p") and book.banned() == ["p"] and book.bans_total == 1
    book.ban("p", 10)  # a shorter ban does not cut the longer one short
    clock.now += 299
    assert book.is_banned("p") and book.bans_total == 1
    clock.now += 2
    assert not book.is_banned("p")
    book.penalise("q", "bad_signature")
    book.ban("q", 100)
    assert book.unban("q") is True and not book.is_banned("q") and book.score("q") == 0
    assert book.unban("q") is False and book.unban("never-seen") is False
    with pytest.raises(ValueError, match="positive"):
        book.ban("r", 0)


def test_ban_expires_and_score_resets() -> None:
    clock = Clock()
    book = PeerScoreBook(ban_threshold=-40, ban_seconds=30, clock=clock)
    book.penalise("p", "cid_mismatch")  # -50
    assert book.is_banned("p") and book.banned() == ["p"]
    clock.now += 31
    assert not book.is_banned("p")
    assert book.score("p") == 0.0
    assert book.banned() == []


def test_unknown_offence_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown offence"):
        PeerScoreBook().penalise("p", "rudeness")


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        PeerScoreBook(ban_threshold=5)
    with pytest.raises(ValueError):
        PeerScoreBook(ban_seconds=0)


def test_memory_is_bounded_and_bans_are_kept() -> None:
    book = PeerScoreBook(max_peers=10, ban_threshold=-10)
    book.penalise("banned", "cid_mismatch")
    for i in range(100):
        book.penalise(f"p{i}", "spam")
    assert book.is_banned("banned")
    assert len(book._records) <= 10


def test_p2p_service_implements_the_seams() -> None:
    async def source(cid: object) -> None:
        return None

    service = P2PService(NodeIdentity.generate(), P2PSection(), "flnode-test", source)  # type: ignore[arg-type]
    assert isinstance(service, GossipAPI)
    assert isinstance(service, FetcherAPI)
