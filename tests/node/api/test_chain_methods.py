"""The ledger on the API of a real node (dev proposer chain on SQLite, real websockets).

One node per module runs a task through a round on its ledger (it is the only miner and the
dev proposer, so it commits the round itself and is owed rewards), then every ``chain_*``,
``task_*``, ``reputation_*``, ``wallet_*``, ``model_*`` method and the Ethereum subset are called
for their answers and their errors; web3.py reads the same ledger as an auditor would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from safetensors.numpy import save as save_safetensors

from flnode import eth_rpc
from flnode.api import ApiClient, ApiEndpoint
from flnode.api.registry import MethodRegistry
from flnode.cid import Cid
from flnode.config import NodeConfig
from flnode.consensus.ledger import LedgerContract
from flnode.consensus.network import NetworkSpec, new_network
from flnode.datadir import init_datadir
from flnode.identity import NodeIdentity
from flnode.node import Node
from flnode.rpc import RpcError, RpcMethod, StaticProvider
from tests.networks import one_node_network

ETHER = 10**18
STRANGER = "0x000000000000000000000000000000000000dEaD"
pytestmark = pytest.mark.timeout(120)


@dataclass
class Setup:
    node: Node
    client: ApiClient
    spec: NetworkSpec
    device: NodeIdentity
    task: int
    commit_tx: str
    model_cid: Cid


async def _send(
    node: Node, who: NodeIdentity, data: bytes, value: int = 0, to: str | None = None
) -> bytes:
    """Sign ``data`` to the ledger as ``who``, queue it and wait until it is committed."""
    chain = node.service("chain")
    contract: LedgerContract = chain.contract  # type: ignore[attr-defined]

    def sign_and_add() -> bytes:
        tx = chain.chain.sign_transaction(  # type: ignore[attr-defined]
            who.private_key, to=to or contract.address, data=data, value=value, gas=3_000_000
        )
        return chain.chain.add_transaction(tx.encode())  # type: ignore[attr-defined]

    tx_hash: bytes = await chain.run_sync(sign_and_add)  # type: ignore[attr-defined]
    with trio.fail_after(20):
        while True:
            try:
                receipt = await chain.receipt(tx_hash)  # type: ignore[attr-defined]
                assert receipt.success, f"transaction {tx_hash.hex()} reverted"
                return tx_hash
            except KeyError:
                await trio.sleep(0.05)


@pytest.fixture
async def ledger_node(tmp_path: Path) -> AsyncIterator[Setup]:
    me = init_datadir(tmp_path / "node").identity
    device = NodeIdentity.from_secret((4242).to_bytes(32, "big"))
    spec = new_network(
        network_id="api-net",
        chain_id=31337,
        accounts=[(me.address, 100 * ETHER), (device.address, 100 * ETHER)],
        miners=[(me.address, 2 * ETHER)],
        min_stake=ETHER,
    )
    spec.save(tmp_path / "net.toml")
    config = NodeConfig.model_validate(
        {
            "node": {"shutdown_timeout_s": 1.0, "network_id": "api-net"},
            "chain": {"network_file": str(tmp_path / "net.toml"), "dev_mine_interval_s": 0.05},
        }
    )
    node = Node(config, me, tmp_path / "node")
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            async with ApiClient.open(ApiEndpoint.from_datadir(node.datadir.path)) as client:
                contract = LedgerContract(spec.ledger_address)
                weights = save_safetensors(
                    {
                        "head.weight": np.zeros((2, 3), np.float32),
                        "head.bias": np.ones(2, np.float32),
                    },
                    metadata={"round": "0"},
                )
                model = node.service("blobstore").store.put(weights)  # type: ignore[attr-defined]
                await _send(
                    node,
                    me,
                    contract.create_task(
                        spec=Cid.from_data(b"spec"),
                        model=model,
                        rounds=2,
                        updates_per_round=8,
                        reward_per_round=ETHER,
                        epsilon=10.0,
                        committee=[me.address],
                    ),
                    value=2 * ETHER,
                )
                await _send(node, device, contract.join_task(1))
                await _send(node, device, contract.submit_update(1, 0, Cid.from_data(b"u"), 50))
                commit = await _send(
                    node,
                    me,
                    contract.commit_round(1, 0, Cid.from_data(b"agg"), [device.address], [], [1.0]),
                )
                yield Setup(node, client, spec, device, 1, "0x" + commit.hex(), model)
        finally:
            node.request_stop()


async def _error(client: ApiClient, method: str, params: Any = None) -> RpcError:
    with pytest.raises(RpcError) as caught:
        await client.call(method, params if params is not None else {})
    return caught.value


async def test_ledger_methods_answer_and_explain_errors(ledger_node: Setup) -> None:
    s = ledger_node
    c, me = s.client, s.node.identity.address
    head = await c.call("chain_head")
    assert head["number"] >= 4 and head["chain_id"] == 31337 and head["network_id"] == "api-net"
    assert head["genesis_hash"] == s.spec.genesis_hash

    # chain_block: by number, by hash, latest, with transaction details; errors.
    genesis = await c.call("chain_block", {"block": 0})
    assert genesis["number"] == 0 and genesis["transactions"] == []
    latest = await c.call("chain_block", {"block": "latest", "txs": True})
    assert latest["hash"] == head["hash"] or latest["number"] > head["number"]
    by_hash = await c.call("chain_block", {"block": head["hash"]})
    assert by_hash["number"] == head["number"]
    beyond = await _error(c, "chain_block", {"block": 10**6})
    assert beyond.code == -32000 and "the head is #" in beyond.message
    unknown = await _error(c, "chain_block", {"block": "0x" + "ab" * 32})
    assert unknown.code == -32000 and "no block with hash" in unknown.message
    bad = await _error(c, "chain_block", {"block": "yesterday"})
    assert bad.code == -32602 and "not a block number" in bad.message

    # chain_tx: the round commit, decoded; unknown and malformed hashes.
    tx = await c.call("chain_tx", {"hash": s.commit_tx})
    assert tx["status"] == "success" and tx["from"] == me
    names = [e["event"] for e in tx["events"]]
    assert "RoundCommitted" in names and "RewardCredited" in names
    committed = next(e for e in tx["events"] if e["event"] == "RoundCommitted")
    assert committed["args"]["aggregate"] == str(Cid.from_data(b"agg"))
    missing = await _error(c, "chain_tx", {"hash": "0x" + "00" * 32})
    assert missing.code == -32000 and "no transaction" in missing.message
    assert (await _error(c, "chain_tx", {"hash": "0x12"})).code == -32602

    # task_list / task_get.
    tasks = await c.call("task_list")
    assert tasks["count"] == 1 and tasks["tasks"][0]["id"] == 1
    task = await c.call("task_get", {"task": 1})
    assert task["owner"] == me and task["committee"] == [me] and task["round"] == 1
    assert task["model"] == str(Cid.from_data(b"agg")) and task["epsilon"] == 10.0
    assert task["deposit"]["wei"] == str(ETHER)
    assert (await c.call("task_list", {"offset": 1}))["tasks"] == []
    none = await _error(c, "task_get", {"task": 9})
    assert none.code == -32000 and "no task 9" in none.message
    assert (await _error(c, "task_get", {"task": 0})).code == -32602
    assert (await _error(c, "task_list", {"limit": 0})).code == -32602

    # reputation_get: the accepted device rose to 2/3; a stranger is at 1/2.
    rep = await c.call("reputation_get", {"address": s.device.address})
    assert rep["reputation"] == pytest.approx(2 / 3, abs=1e-6) and rep["judgements"] == 1
    assert (await c.call("reputation_get"))["address"] == me
    bad_addr = await _error(c, "reputation_get", {"address": "0x1234"})
    assert bad_addr.code == -32602 and "is not an address" in bad_addr.message

    # wallet_balance / wallet_withdraw (the node proposed and sat on the committee: it is owed).
    wallet = await c.call("wallet_balance")
    owed = int(wallet["owed"]["wei"])
    assert owed > 0 and wallet["stake"]["wei"] == str(2 * ETHER) and wallet["nonce"] >= 2
    before = int(wallet["balance"]["wei"])
    done = await c.call("wallet_withdraw", {"wait_s": 20})
    assert done["status"] == "success" and done["amount"]["wei"] == str(owed)
    after = await c.call("wallet_balance")
    assert after["owed"]["wei"] == "0" and int(after["balance"]["wei"]) > before
    twice = await _error(c, "wallet_withdraw")
    assert twice.code == -32000 and "nothing to withdraw" in twice.message
    assert (await _error(c, "wallet_withdraw", {"wait_s": 60})).code == -32602
    withdrawn = await c.call("chain_tx", {"hash": done["tx_hash"]})
    assert [e["event"] for e in withdrawn["events"]] == ["Withdrawn"]


async def test_miner_methods_stake_and_leave(ledger_node: Setup) -> None:
    c, me = ledger_node.client, ledger_node.node.identity.address
    status = await c.call("miner_status")
    assert status["address"] == me and status["active"] is True
    assert status["stake"]["wei"] == str(2 * ETHER) and status["min_stake"]["wei"] == str(ETHER)
    assert status["leaving_at_block"] is None
    stranger = await c.call("miner_status", {"address": STRANGER})
    assert stranger["active"] is False and stranger["stake"]["wei"] == "0"

    more = await c.call("miner_register", {"stake_wei": str(ETHER), "wait_s": 20})
    assert more["status"] == "success" and more["stake"]["wei"] == str(ETHER)
    assert (await c.call("miner_status"))["stake"]["wei"] == str(3 * ETHER)
    receipt = await c.call("chain_tx", {"hash": more["tx_hash"]})
    assert [e["event"] for e in receipt["events"]] == ["MinerRegistered"]
    rich = await _error(c, "miner_register", {"stake_wei": str(10**6 * ETHER)})
    assert rich.code == -32000 and "less than the stake" in rich.message
    for bad in ("0", "-5", "1e18", "lots"):
        refused = await _error(c, "miner_register", {"stake_wei": bad})
        assert refused.code == -32602 and "positive whole number of wei" in refused.message

    asked = await c.call("miner_leave", {"wait_s": 20})
    assert asked["status"] == "success" and asked["step"] == "request"
    leaving = await c.call("miner_status")
    assert leaving["active"] is False and leaving["leaving_at_block"] > leaving["head"]
    early = await _error(c, "miner_leave")
    assert early.code == -32000 and f"from block {leaving['leaving_at_block']}" in early.message
    rejoin = await _error(c, "miner_register", {"stake_wei": str(ETHER)})
    assert rejoin.code == -32000 and "is leaving" in rejoin.message


async def test_model_methods_read_the_blob_store(ledger_node: Setup) -> None:
    c, cid = ledger_node.client, ledger_node.model_cid
    info = await c.call("model_get", {"cid": str(cid)})
    assert info["format"] == "safetensors" and info["metadata"] == {"round": "0"}
    assert info["tensors"]["head.weight"] == {"dtype": "F32", "shape": [2, 3]}
    whole = await c.call("model_download", {"cid": str(cid)})
    data = base64.b64decode(whole["data"])
    assert whole["complete"] and Cid.from_data(data) == cid and whole["size"] == len(data)
    piece = await c.call("model_download", {"cid": str(cid), "offset": 8, "length": 5})
    assert base64.b64decode(piece["data"]) == data[8:13] and not piece["complete"]
    raw = ledger_node.node.service("blobstore").store.put(b"not a model")  # type: ignore[attr-defined]
    assert (await c.call("model_get", {"cid": str(raw)}))["format"] == "raw"

    absent = await _error(c, "model_get", {"cid": str(Cid.from_data(b"elsewhere"))})
    assert absent.code == -32000 and "not in this node's store" in absent.message
    assert (await _error(c, "model_get", {"cid": "bafy-nope"})).code == -32602
    past = await _error(c, "model_download", {"cid": str(cid), "offset": 10**6})
    assert past.code == -32602 and "past the end" in past.message
    too_big = await _error(c, "model_download", {"cid": str(cid), "length": 2**30})
    assert too_big.code == -32602


async def test_block_committed_events_and_chain_metrics(ledger_node: Setup) -> None:
    s = ledger_node
    sub = await s.client.subscribe("block_committed")
    tx = await _send(s.node, s.device, b"", value=1, to=s.node.identity.address)
    event = await sub.next(timeout=10)
    assert event["event"] == "block_committed"
    assert event["data"]["tx_count"] >= 1 and event["data"]["number"] >= 5
    receipt = await s.client.call("chain_tx", {"hash": "0x" + tx.hex()})
    assert receipt["block_number"] >= event["data"]["number"]
    api = s.node.service("chain_api")
    samples = {x.name: x.value for x in api.metric_samples()}  # type: ignore[attr-defined]
    assert samples["flnode_chain_height"] >= 5 and samples["flnode_chain_blocks_committed"] >= 5


def _web3_audit(url: str, spec: NetworkSpec, device: str, commit_tx: str) -> dict[str, Any]:
    """What an auditor reads with web3.py (its own asyncio loop, in a worker thread)."""
    from web3 import AsyncWeb3, WebSocketProvider
    from web3.exceptions import ContractLogicError
    from web3.logs import DISCARD

    from flnode.consensus.artifact import load_artifact

    async def audit() -> dict[str, Any]:
        async with AsyncWeb3(WebSocketProvider(url)) as w3:
            ledger = w3.eth.contract(address=spec.ledger_address, abi=list(load_artifact().abi))
            head = await w3.eth.block_number
            receipt = await w3.eth.get_transaction_receipt(commit_tx)
            try:
                await ledger.functions.withdraw().call({"from": STRANGER})
                revert = ""
            except ContractLogicError as exc:
                revert = str(exc)
            async with w3.batch_requests() as batch:  # one JSON-RPC batch frame
                batch.add(w3.eth.get_block(0))
                batch.add(w3.eth.get_balance(device))
                batched = await batch.async_execute()
            return {
                "batched": batched,
                "chain_id": await w3.eth.chain_id,
                "net_version": await w3.net.version,
                "client": await w3.client_version,
                "head": head,
                "block": await w3.eth.get_block(receipt["blockNumber"], full_transactions=True),
                "by_hash": await w3.eth.get_block(receipt["blockHash"]),
                "genesis": await w3.eth.get_block("earliest"),
                "balance": await w3.eth.get_balance(device),
                "balance_at_genesis": await w3.eth.get_balance(device, block_identifier=0),
                "code": await w3.eth.get_code(spec.ledger_address),
                "nonce": await w3.eth.get_transaction_count(device),
                "task_count": await ledger.functions.task_count().call(),
                "task_count_at_genesis": await ledger.functions.task_count().call(
                    block_identifier=0
                ),
                "reputation": await ledger.functions.reputationOf(device).call(),
                "revert": revert,
                "receipt": receipt,
                "tx": await w3.eth.get_transaction(commit_tx),
                "committed": await ledger.events.RoundCommitted.get_logs(from_block=0),
                "credited": await ledger.events.RewardCredited.get_logs(
                    from_block=0, argument_filters={"account": device}
                ),
                "receipt_events": ledger.events.RoundCommitted().process_receipt(
                    receipt, errors=DISCARD
                ),
            }

    return asyncio.run(audit())


async def test_web3_reads_the_ledger(ledger_node: Setup) -> None:
    """web3.py's WebSocketProvider, authenticated with ?token=, audits the task's round."""
    s = ledger_node
    token = s.node.datadir.token_file.read_text().strip()
    url = f"{ApiEndpoint.from_datadir(s.node.datadir.path).url}?token={token}"
    got = await trio.to_thread.run_sync(_web3_audit, url, s.spec, s.device.address, s.commit_tx)
    head = await s.client.call("chain_head")
    assert got["chain_id"] == 31337 and got["net_version"] == "31337"
    assert got["client"].startswith("flnode/") and got["head"] <= head["number"]
    receipt, block = got["receipt"], got["block"]
    assert receipt["status"] == 1 and receipt["transactionHash"].to_0x_hex() == s.commit_tx
    ours = await s.client.call("chain_block", {"block": block["number"]})
    assert block["hash"].to_0x_hex() == ours["hash"] == got["by_hash"]["hash"].to_0x_hex()
    assert block["stateRoot"].to_0x_hex() == ours["state_root"]
    assert block["transactions"][receipt["transactionIndex"]]["hash"] == receipt["transactionHash"]
    assert got["tx"]["from"] == s.node.identity.address and got["tx"]["chainId"] == 31337
    assert (
        got["genesis"]["number"] == 0 and got["genesis"]["hash"].to_0x_hex() == s.spec.genesis_hash
    )
    assert got["balance_at_genesis"] == 100 * ETHER > got["balance"] > 99 * ETHER
    assert got["code"] and got["nonce"] == 2
    assert got["task_count"] == 1 and got["task_count_at_genesis"] == 0
    assert got["reputation"] == 666_666
    assert got["batched"][0]["hash"] == got["genesis"]["hash"]
    assert got["batched"][1] == got["balance"]
    assert "nothing to withdraw" in got["revert"]
    (committed,) = got["committed"]
    assert committed["args"]["aggregate"] == Cid.from_data(b"agg").digest
    assert committed["args"]["accepted"] == 1 and committed["blockNumber"] == block["number"]
    (credited,) = got["credited"]
    assert credited["args"]["amount"] == 8 * ETHER // 10  # 80 % of the round to the only device
    assert got["receipt_events"][0]["args"] == committed["args"]


# (py-evm header field, Ethereum JSON key, b = bytes / i = integer)
_HEADER_FIELDS = [
    ("parent_hash", "parentHash", "b"),
    ("uncles_hash", "sha3Uncles", "b"),
    ("coinbase", "miner", "b"),
    ("state_root", "stateRoot", "b"),
    ("transaction_root", "transactionsRoot", "b"),
    ("receipt_root", "receiptsRoot", "b"),
    ("bloom", "logsBloom", "i"),
    ("difficulty", "difficulty", "i"),
    ("block_number", "number", "i"),
    ("gas_limit", "gasLimit", "i"),
    ("gas_used", "gasUsed", "i"),
    ("timestamp", "timestamp", "i"),
    ("extra_data", "extraData", "b"),
    ("mix_hash", "mixHash", "b"),
    ("nonce", "nonce", "b"),
    ("base_fee_per_gas", "baseFeePerGas", "i"),
    ("withdrawals_root", "withdrawalsRoot", "b"),
    ("blob_gas_used", "blobGasUsed", "i"),
    ("excess_blob_gas", "excessBlobGas", "i"),
    ("parent_beacon_block_root", "parentBeaconBlockRoot", "b"),
    ("requests_hash", "requestsHash", "b"),
]


async def test_eth_methods_raw_answers_and_errors(
    ledger_node: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ethereum subset over the flnode client: nulls where Ethereum has them, clear errors."""
    c, spec = ledger_node.client, ledger_node.spec
    head = int(await c.call("eth_blockNumber"), 16)
    assert await c.call("eth_getBlockByNumber", [hex(head + 1), False]) is None
    assert await c.call("eth_getBlockByHash", ["0x" + "11" * 32, False]) is None
    assert await c.call("eth_getTransactionReceipt", ["0x" + "22" * 32]) is None
    assert await c.call("eth_getTransactionByHash", ["0x" + "22" * 32]) is None
    assert (await c.call("eth_getBlockByNumber", ["finalized"]))["number"] == hex(head)
    bad_tag = await _error(c, "eth_getBlockByNumber", ["tomorrow", False])
    assert bad_tag.code == -32602 and "hex quantity" in bad_tag.message
    beyond = await _error(c, "eth_getBalance", [ledger_node.device.address, hex(head + 5)])
    assert beyond.code == -32602 and "beyond the head" in beyond.message
    short = await _error(c, "eth_getCode", ["0x1234", "latest"])
    assert short.code == -32602 and "20 bytes" in short.message
    nonce = await c.call("eth_getTransactionCount", [ledger_node.device.address, "latest"])
    assert nonce == "0x2"

    # The block object is faithful: its fields rebuild a header with the block's own hash.
    from eth.vm.forks.prague.blocks import PragueBlockHeader

    blk = await c.call("eth_getBlockByNumber", ["latest", False])
    rebuilt = PragueBlockHeader(
        **{
            name: (bytes.fromhex(blk[key][2:]) if kind == "b" else int(blk[key], 16))
            for name, key, kind in _HEADER_FIELDS
        }
    )
    assert "0x" + rebuilt.hash.hex() == blk["hash"]

    # Genesis writes the ledger's parameters and stakes into its storage: some early slot is set.
    words = [
        await c.call("eth_getStorageAt", [spec.ledger_address, hex(i), "latest"]) for i in range(4)
    ]
    assert all(len(w) == 66 for w in words) and any(int(w, 16) for w in words)
    genesis_word = await c.call("eth_getStorageAt", [spec.ledger_address, "0x0", "earliest"])
    assert len(genesis_word) == 66
    huge = await _error(c, "eth_getStorageAt", [spec.ledger_address, hex(2**256), "latest"])
    assert huge.code == -32602 and "below 2**256" in huge.message
    assert await c.call("eth_syncing") is False

    withdraw = "0x" + LedgerContract(spec.ledger_address).withdraw().hex()
    reverted = await _error(c, "eth_call", [{"to": spec.ledger_address, "data": withdraw}])
    assert reverted.code == 3 and "nothing to withdraw" in reverted.message
    assert reverted.data.startswith("0x08c379a0")  # Error(string), for tools to decode
    no_to = await _error(c, "eth_call", [{"data": withdraw}])
    assert no_to.code == -32602 and "needs 'to'" in no_to.message
    odd = await _error(c, "eth_call", [{"to": spec.ledger_address, "colour": "red"}])
    assert odd.code == -32602 and "colour" in odd.message

    all_logs = await c.call("eth_getLogs", [{"fromBlock": "0x0", "address": spec.ledger_address}])
    assert len(all_logs) >= 8 and all(log["removed"] is False for log in all_logs)
    topic = all_logs[0]["topics"][0]
    one = await c.call("eth_getLogs", [{"fromBlock": "earliest", "topics": [topic]}])
    assert one and all(log["topics"][0] == topic for log in one)
    either = await c.call(
        "eth_getLogs",
        [{"fromBlock": "0x0", "topics": [[topic, all_logs[-1]["topics"][0]]]}],
    )
    assert len(either) >= len(one)
    block_hash = all_logs[-1]["blockHash"]
    in_block = await c.call("eth_getLogs", [{"blockHash": block_hash}])
    assert in_block and {log["blockHash"] for log in in_block} == {block_hash}
    listed = await c.call(
        "eth_getLogs", [{"fromBlock": "0x0", "address": [spec.ledger_address, "0x" + "00" * 20]}]
    )
    assert len(listed) == len(all_logs)
    ahead = {"fromBlock": hex(head + 1), "toBlock": hex(head + 5)}
    assert await c.call("eth_getLogs", [ahead]) == []
    monkeypatch.setattr(eth_rpc, "MAX_LOG_BLOCKS", 2)
    too_wide = await _error(c, "eth_getLogs", [{"fromBlock": "0x0", "toBlock": hex(10**6)}])
    assert too_wide.code == -32602 and "over the limit of 2" in too_wide.message
    monkeypatch.setattr(eth_rpc, "MAX_LOG_BLOCKS", 10_000)
    monkeypatch.setattr(eth_rpc, "MAX_LOGS", 1)
    too_many = await _error(c, "eth_getLogs", [{"fromBlock": "0x0"}])
    assert too_many.code == -32005 and "more than 1 logs" in too_many.message
    monkeypatch.undo()
    backwards = await _error(c, "eth_getLogs", [{"fromBlock": hex(head), "toBlock": "0x0"}])
    assert backwards.code == -32602 and "after toBlock" in backwards.message
    both = await _error(c, "eth_getLogs", [{"blockHash": block_hash, "fromBlock": "0x0"}])
    assert both.code == -32602 and "not both" in both.message
    bad_topic = await _error(c, "eth_getLogs", [{"topics": ["0x12"]}])
    assert bad_topic.code == -32602 and "topics[0]" in bad_topic.message
    assert (await _error(c, "eth_chainId", [1])).code == -32602


def test_registry_allows_camel_case_only_in_ethereum_namespaces() -> None:
    async def nothing(params: Any) -> None:
        return None

    registry = MethodRegistry()
    registry.add_provider(StaticProvider("eth", (RpcMethod("eth_getBlockByNumber", nothing, "x"),)))
    registry.add_provider(StaticProvider("web3", (RpcMethod("web3_clientVersion", nothing, "x"),)))
    with pytest.raises(ValueError, match="lower_snake_case"):
        registry.add(RpcMethod("chain_getHead", nothing, "x"))
    with pytest.raises(ValueError, match="lower_snake_case"):
        registry.add(RpcMethod("eth_get_Block", nothing, "x"))
    assert "eth_getBlockByNumber" in registry


async def test_a_transaction_waiting_for_consensus_is_pending(tmp_path: Path) -> None:
    """A follower whose committee is offline: a queued transaction is pending, not lost."""
    absent = NodeIdentity.from_secret((99).to_bytes(32, "big"))
    me = one_node_network(tmp_path, "idle-net", 31338, miner=absent)
    config = NodeConfig.model_validate(
        {
            "node": {"shutdown_timeout_s": 1.0, "network_id": "idle-net"},
            "chain": {"network_file": str(tmp_path / "net.toml")},
        }
    )
    node = Node(config, me, tmp_path / "node")
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            async with ApiClient.open(ApiEndpoint.from_datadir(node.datadir.path)) as c:
                chain = node.service("chain")
                tx = await chain.run_sync(  # type: ignore[attr-defined]
                    lambda: chain.chain.sign_transaction(  # type: ignore[attr-defined]
                        me.private_key, to=STRANGER, value=1, gas=21_000
                    )
                )
                raw = "0x" + tx.encode().hex()
                tx_hash = "0x" + tx.hash.hex()
                assert await c.call("consensus_submit", {"tx": raw}) == tx_hash
                assert await c.call("chain_tx", {"hash": tx_hash}) == {
                    "hash": tx_hash,
                    "status": "pending",
                }
                assert await c.call("eth_getTransactionReceipt", [tx_hash]) is None
                assert (await c.call("chain_head"))["number"] == 0
                assert await c.call("eth_blockNumber") == "0x0"
                # Nobody owes this node anything: withdraw refuses before sending anything.
                refused = await _error(c, "wallet_withdraw", {"wait_s": 1})
                assert "nothing to withdraw" in refused.message
                state = node.datadir.state_file.read_text()
                url = json.loads(state)["metrics_url"]
                text = await trio.to_thread.run_sync(_scrape, url)
                assert "flnode_chain_height 0.0" in text
                assert "flnode_chain_blocks_committed_total 0.0" in text
                assert "flnode_consensus_height 1.0" in text  # waiting for its committee
                assert "flnode_consensus_committed_total 0.0" in text
        finally:
            node.request_stop()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()
