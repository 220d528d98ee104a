"""The chain service under trio: one worker thread, SQLite persistence, blocks announced."""

from __future__ import annotations

from pathlib import Path

import trio

from flnode.consensus.network import NetworkSpec
from flnode.consensus.service import ChainService, adopt_network
from flnode.storage.chaindb import SqliteAtomicDB

from .conftest import ETHER, Cast


def _service(spec: NetworkSpec, cast: Cast, path: Path, **kw: object) -> ChainService:
    return ChainService(
        spec,
        lambda: SqliteAtomicDB(path),
        cast.miners[0],
        on_close=lambda db: db.close(),  # type: ignore[attr-defined]
        **kw,  # type: ignore[arg-type]
    )


async def test_send_mine_read_and_reopen(spec: NetworkSpec, cast: Cast, tmp_path: Path) -> None:
    path = tmp_path / "chain.sqlite"
    svc = _service(spec, cast, path)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        heads = svc.subscribe_blocks()
        assert (await svc.head()).number == 0
        tx_hash = await svc.send(cast.outsider.address, b"", value=ETHER)
        register = await svc.send(spec.ledger_address, svc.contract.register_miner(), value=ETHER)
        head = await svc.mine_pending()
        assert head.number == 1 and head.tx_count == 2
        assert (await heads.receive()) == head
        assert (await svc.receipt(tx_hash)).success
        assert (await svc.receipt(register)).logs
        assert await svc.view("stake", cast.miners[0].address) == 3 * ETHER
        assert len(await svc.logs(0, address=spec.ledger_address)) == 1
        assert await svc.balance(cast.outsider.address) == 1001 * ETHER
        assert svc.describe()["genesis_hash"] == spec.genesis_hash
        nursery.cancel_scope.cancel()
    again = _service(spec, cast, path)
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        assert await again.head() == head
        nursery.cancel_scope.cancel()


async def test_dev_proposer_seals_pending_transactions(
    spec: NetworkSpec, cast: Cast, tmp_path: Path
) -> None:
    svc = _service(spec, cast, tmp_path / "chain.sqlite", dev_mine_interval_s=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        heads = svc.subscribe_blocks()
        await svc.send(cast.outsider.address, b"", value=1)
        with trio.fail_after(10):
            head = await heads.receive()
        assert head.number == 1 and head.tx_count == 1
        nursery.cancel_scope.cancel()


def test_adopt_network_keeps_a_copy_and_refuses_another(
    spec: NetworkSpec, cast: Cast, tmp_path: Path
) -> None:
    import pytest

    from flnode.consensus.errors import GenesisMismatchError

    from .conftest import make_spec

    adopt_network(tmp_path, spec)
    adopt_network(tmp_path, spec)  # idempotent
    with pytest.raises(GenesisMismatchError, match="fresh data dir"):
        adopt_network(tmp_path, make_spec(cast, chain_id=77))
