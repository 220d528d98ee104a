"""Fetch-by-CID between real hosts: verified transfer, lying and oversized providers, failures."""

from __future__ import annotations

import os

import pytest
import trio

from flnode.cid import Cid
from flnode.config import P2PSection
from flnode.p2p.fetch import FetchError

from .conftest import full_mesh, running_services


async def test_fetch_verified_blob_from_provider() -> None:
    async with running_services(2) as (provider, requester):
        await full_mesh([provider, requester])
        data = os.urandom(5 * 2**20)
        cid = provider.test_store.put(data)  # type: ignore[attr-defined]
        assert await requester.fetch(cid, [provider.peer_id]) == data
        assert requester.fetcher is not None and provider.fetcher is not None
        assert requester.fetcher.stats.fetched_bytes == len(data)
        assert provider.fetcher.stats.served == 1


async def test_lying_provider_is_penalised_and_next_one_used() -> None:
    async with running_services(3) as (liar, honest, requester):
        await full_mesh([liar, honest, requester])
        data = b"the real update" * 1000
        cid = honest.test_store.put(data)  # type: ignore[attr-defined]
        liar.test_store.blobs[cid] = b"a poisoned update" * 1000  # type: ignore[attr-defined]
        assert await requester.fetch(cid, [liar.peer_id, honest.peer_id]) == data
        snapshot = requester.scores.snapshot(liar.peer_id)
        assert snapshot.offences == {"fetch_cid_mismatch": 1}
        assert requester.scores.score(honest.peer_id) == 0


async def test_oversized_response_is_cut_off_and_next_provider_used() -> None:
    def settings(i: int, started: list) -> P2PSection:  # type: ignore[type-arg]
        boot = (started[0].addrs[0],) if i else ()
        # The requester (i == 2) accepts at most 1 MiB per response.
        return P2PSection(
            bootstrap=boot,
            peer_exchange_interval_s=1.0,
            max_fetch_size=2**20 if i == 2 else 16 * 2**20,
        )

    async with running_services(3, settings=settings) as (big, small, requester):
        await full_mesh([big, small, requester])
        data = b"x" * 1000
        cid = small.test_store.put(data)  # type: ignore[attr-defined]
        big.test_store.blobs[cid] = os.urandom(4 * 2**20)  # type: ignore[attr-defined]
        assert await requester.fetch(cid, [big.peer_id, small.peer_id]) == data
        assert requester.scores.snapshot(big.peer_id).offences == {"fetch_oversized": 1}


async def test_missing_everywhere_raises_with_each_providers_answer() -> None:
    async with running_services(3) as services:
        await full_mesh(services)
        cid = Cid.from_data(b"nobody has this")
        with pytest.raises(FetchError, match="not found") as info:
            await services[2].fetch(cid, [services[0].peer_id, services[1].peer_id])
        assert [why for _, why in info.value.attempts] == ["not found", "not found"]


async def test_concurrent_fetches_of_one_cid_share_a_transfer() -> None:
    async with running_services(2) as (provider, requester):
        await full_mesh([provider, requester])
        data = os.urandom(2 * 2**20)
        cid = provider.test_store.put(data)  # type: ignore[attr-defined]
        results: list[bytes] = []

        async def one() -> None:
            results.append(await requester.fetch(cid, [provider.peer_id]))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
        assert results == [data] * 5
        assert provider.fetcher is not None
        assert provider.fetcher.stats.served < 5
