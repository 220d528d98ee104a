"""The double-sign guard and sortition: what a restart must never do, and who leads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from flnode.consensus.bft.errors import DoubleSignRefused, SignerStateError
from flnode.consensus.bft.messages import NIL, PRECOMMIT, PREVOTE
from flnode.consensus.bft.signer import GuardedSigner
from flnode.consensus.bft.sortition import (
    Committee,
    credential_signer,
    genesis_seed,
    make_credential,
)

from .simnet import CHAIN_ID, identities

KEY = identities(1, seed=5)[0]
BLOCK_A = b"\xaa" * 32
BLOCK_B = b"\xbb" * 32


def test_restart_never_double_signs(tmp_path: Path) -> None:
    path = tmp_path / "consensus" / "signer.json"
    signer = GuardedSigner(KEY, CHAIN_ID, path)
    first = signer.vote(5, 2, PREVOTE, BLOCK_A)
    assert path.exists()
    restarted = GuardedSigner(KEY, CHAIN_ID, path)
    assert restarted.vote(5, 2, PREVOTE, BLOCK_A) == first  # the same vote again is harmless
    with pytest.raises(DoubleSignRefused):
        restarted.vote(5, 2, PREVOTE, BLOCK_B)
    with pytest.raises(DoubleSignRefused):
        restarted.vote(5, 2, PREVOTE, NIL)
    with pytest.raises(DoubleSignRefused):
        restarted.vote(5, 1, PRECOMMIT, BLOCK_A)  # an earlier round
    restarted.vote(5, 2, PRECOMMIT, BLOCK_A)  # the next step is fine
    again = GuardedSigner(KEY, CHAIN_ID, path)
    with pytest.raises(DoubleSignRefused):
        again.vote(5, 2, PRECOMMIT, NIL)
    again.vote(6, 0, PREVOTE, NIL)


def test_corrupt_signer_state_stops_signing(tmp_path: Path) -> None:
    path = tmp_path / "signer.json"
    path.write_text("{not json")
    with pytest.raises(SignerStateError, match="refuses to sign"):
        GuardedSigner(KEY, CHAIN_ID, path)


def test_credentials_are_unique_and_verifiable() -> None:
    seed = genesis_seed(b"\x01" * 32)
    cred = make_credential(KEY, CHAIN_ID, seed, 3, 1)
    assert cred == make_credential(KEY, CHAIN_ID, seed, 3, 1)  # deterministic (RFC 6979)
    assert credential_signer(cred, CHAIN_ID, seed, 3, 1) == KEY.address
    assert credential_signer(cred, CHAIN_ID, seed, 3, 2) != KEY.address


def test_sortition_is_stake_weighted() -> None:
    miners = identities(3, seed=21)
    stakes = {miners[0].address: 1, miners[1].address: 1, miners[2].address: 2}
    committee = Committee.of({a: s * 10**18 for a, s in stakes.items()})
    assert committee.units(miners[2].address) == 2
    wins: Counter[str] = Counter()
    for height in range(1, 801):
        seed = genesis_seed(height.to_bytes(32, "big"))
        prios = {
            m.address: committee.priority(m.address, make_credential(m, CHAIN_ID, seed, height, 0))
            for m in miners
        }
        wins[min(prios, key=prios.__getitem__)] += 1
    share = wins[miners[2].address] / 800
    assert 0.42 < share < 0.58, share  # expected 1/2 for half of the tickets


def test_committee_thresholds() -> None:
    def c(n: int) -> Committee:
        return Committee.of({m.address: 1 for m in identities(n, seed=30)})

    assert (c(1).quorum, c(1).weak) == (1, 1)
    assert (c(4).quorum, c(4).weak) == (3, 2)
    assert (c(7).quorum, c(7).weak) == (5, 3)
    assert (c(10).quorum, c(10).weak) == (7, 4)
