"""Chaos: a devnet trains while a seeded fault injector kills and restarts, pauses and cuts off
random nodes (never more than f miners at once); then every invariant a user relies on is checked.

* every node ends with the same head and state root;
* every committed round is on every node's ledger, with the same aggregate;
* every committed model CID can be downloaded from every miner and its bytes hash to the CID;
* the money adds up: the deposit equals what the rounds paid plus what the task still holds,
  what the ledger owes equals what was paid, and the contract's balance equals what it owes
  plus the deposits and stakes it holds;
* (long variant) the final accuracy is within 2 points of a fault-free run with the same seed.

The short variant runs in the default suite (8 processes, 2 rounds) and checks the invariants
only; the long one (13 processes, 10 rounds, and the fault-free run to compare with) is marked
slow and also checks the accuracy.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import trio

from flnode.api.client import ApiClient
from flnode.cid import Cid
from flnode.consensus.ledger import LedgerContract
from flnode.consensus.network import load_network
from flnode.devnet import down, endpoint, layout_from_counts, prepare, up
from flnode.devnet.chaos import ChaosMonkey, ChaosSettings
from flnode.devnet.network import CHAIN_FILE, Network
from flnode.devnet.training import edit_spec, run_task
from flnode.rpc import RpcError

MINERS = 4


def _spec(devices: int, rounds: int) -> str:
    """The default task, smaller: ``rounds`` rounds that close when every device is in or after
    45 s (a device that is down does not hold a round up for long), evaluated on 2,000 images."""
    return edit_spec(rounds=rounds, updates_per_round=devices, deadline_s=45.0, eval_size=2000)


async def _call(network: Network, name: str, method: str, params: Any = None) -> Any:
    async with ApiClient.open(endpoint(network, name)) as client:
        return await client.call(method, params, timeout=60)


async def _train(
    workdir: Path, *, devices: int, rounds: int, chaos: ChaosSettings | None
) -> tuple[Network, dict[str, Any], ChaosMonkey | None]:
    layout = layout_from_counts(
        miners=MINERS,
        devices=devices,
        manufacturers=1,
        config={"federation": {"shard_count": 40}},  # ~1,500 images per device: quick rounds
    )
    network = prepare(workdir, layout, reset=True)
    try:
        return await _train_on(network, devices=devices, rounds=rounds, chaos=chaos)
    except BaseException:
        down(network)  # the caller stops it after checking; on a failure here, stop it now
        raise


async def _train_on(
    network: Network, *, devices: int, rounds: int, chaos: ChaosSettings | None
) -> tuple[Network, dict[str, Any], ChaosMonkey | None]:
    await up(network, timeout_s=300.0)
    monkey = None if chaos is None else ChaosMonkey(network, chaos)
    spec = _spec(devices, rounds)
    if monkey is None:
        result = await run_task(network, spec, timeout_s=300.0 + 150.0 * rounds)
        return network, result.report, None
    faults = trio.CancelScope()

    async def inject() -> None:
        with faults:
            await monkey.run()

    def follow(event: dict[str, Any]) -> None:
        # Faults stop once the task is finished, so the report can read every node; faults under
        # way are still undone (the injector waits for them).
        if event.get("stage") == "collecting":
            faults.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(inject)
        try:
            result = await run_task(
                network, spec, timeout_s=300.0 + 150.0 * rounds, on_progress=follow
            )
        finally:
            faults.cancel()
    return network, result.report, monkey


async def _check_invariants(network: Network, report: dict[str, Any], rounds: int) -> None:
    names = [n.name for n in network.nodes]
    miners = [n.name for n in network.nodes if "miner" in n.roles]
    task = int(report["task"])

    # One chain: the same head and state root everywhere (give restarted nodes time to sync).
    heads: dict[str, Any] = {}
    with trio.move_on_after(120):
        while True:
            heads = {n: await _call(network, n, "chain_head") for n in names}
            if len({(h["number"], h["hash"], h["state_root"]) for h in heads.values()}) == 1:
                break
            await trio.sleep(1)
    distinct = {(h["number"], h["hash"], h["state_root"]) for h in heads.values()}
    assert len(distinct) == 1, f"nodes disagree on the head: {heads}"

    # Every committed round on every node, with the same aggregate.
    histories = {
        n: (await _call(network, n, "round_status", {"task": task}))["committed"] for n in names
    }
    reference = histories[miners[0]]
    assert [h["round"] for h in reference] == list(range(rounds)), reference
    for name, history in histories.items():
        assert [(h["round"], h["aggregate"]) for h in history] == [
            (h["round"], h["aggregate"]) for h in reference
        ], name

    # Every committed model can be fetched from every miner and verifies against its CID.
    for entry in reference:
        cid = Cid.parse(entry["aggregate"])
        for miner in miners:
            data = await _download(network, miner, str(cid))
            assert Cid.from_data(data) == cid, (miner, str(cid))

    # The money adds up.
    created = int(report["deposit_wei"])
    paid = sum(int(h["paid_wei"]) for h in reference)
    held = int((await _call(network, miners[0], "task_get", {"task": task}))["deposit"]["wei"])
    assert created == paid + held, (created, paid, held)
    # nobody withdraws during these runs: everything paid is still owed to someone
    owed = 0
    for name in names:
        owed += int((await _call(network, name, "wallet_balance"))["owed"]["wei"])
    assert owed == paid, (owed, paid)
    spec = load_network(network.dir / CHAIN_FILE)
    ledger = LedgerContract(spec.ledger_address)
    totals = {
        name: ledger.codec.decode_output(
            name,
            bytes.fromhex(
                (
                    await _call(
                        network,
                        miners[0],
                        "eth_call",
                        [
                            {
                                "to": spec.ledger_address,
                                "data": "0x" + ledger.codec.encode_call(name).hex(),
                            },
                            "latest",
                        ],
                    )
                )[2:]
            ),
        )
        for name in ("total_owed", "total_deposits", "total_staked")
    }
    balance = int(
        (await _call(network, miners[0], "wallet_balance", {"address": spec.ledger_address}))[
            "balance"
        ]["wei"]
    )
    assert balance == sum(totals.values()), (balance, totals)


async def _download(network: Network, name: str, cid: str) -> bytes:
    """The blob's bytes from ``name``'s store; a miner restarted at the end of the run may still
    be fetching the last models it missed (it records every committed round), so wait a while."""
    out = b""
    with trio.fail_after(90):
        while True:
            try:
                piece = await _call(
                    network, name, "model_download", {"cid": cid, "offset": len(out)}
                )
            except RpcError as exc:
                if "not in this node's store" not in exc.message:
                    raise
                await trio.sleep(1)
                continue
            out += base64.b64decode(piece["data"])
            if piece["complete"]:
                return out


@pytest.mark.timeout(900)
async def test_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    # One fault every 3-6 s, at most one miner and one other node down at a time, yet a round
    # can still gather updates before its 45 s deadline. The first fault must land while the
    # task runs: with forked nodes a 2-round task finished before a first fault drawn from
    # 6-12 s. The manufacturer is spared: its faults are the long variant's.
    chaos = ChaosSettings(
        seed=11,
        interval_s=(3.0, 6.0),
        down_s=(2.0, 5.0),
        pause_s=(1.0, 4.0),
        isolate_s=(2.0, 6.0),
        max_others_down=1,
        spare=frozenset({"manufacturer-0"}),
    )
    network, report, monkey = await _train(tmp_path / "devnet", devices=3, rounds=3, chaos=chaos)
    try:
        assert monkey is not None and monkey.faults, "the injector made no fault"
        assert all(f.outcome == "done" for f in monkey.faults), monkey.faults
        await _check_invariants(network, report, rounds=3)
        # No accuracy check here: a few rounds of three small devices, one of them killed or cut
        # off, need not beat the public-only model (CI saw 78.8 % vs 79.9 %). Accuracy under
        # faults is the long variant's comparison with a fault-free run of the same seed.
    finally:
        down(network)


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_ten_rounds_of_chaos_keep_every_invariant_and_the_accuracy(tmp_path: Path) -> None:
    chaos = ChaosSettings(seed=7)
    network, report, monkey = await _train(tmp_path / "chaos", devices=8, rounds=10, chaos=chaos)
    try:
        assert monkey is not None and len(monkey.faults) >= 10, monkey.faults
        assert all(f.outcome == "done" for f in monkey.faults), monkey.faults
        assert {f.kind for f in monkey.faults} == {"kill", "pause", "isolate"}
        await _check_invariants(network, report, rounds=10)
    finally:
        down(network)
    calm, calm_report, _ = await _train(tmp_path / "calm", devices=8, rounds=10, chaos=None)
    down(calm)
    gap = calm_report["final_accuracy"] - report["final_accuracy"]
    assert gap <= 0.02, (calm_report["final_accuracy"], report["final_accuracy"])
