"""The ledger on the control API: ``chain_*``, ``task_*``, ``reputation_*``, ``wallet_*``,
``model_*``, the Ethereum read-only subset, and the ``block_committed`` event.

:class:`ChainApi` is a small service the control plane adds when the node runs a chain
(:func:`flnode.controlplane.control_plane_services` finds the chain service among its ``extra``
services). It reads through the :class:`~flnode.consensus.service.ChainService` (every read in the
chain's one worker thread) and the blob store, and follows the chain's committed heads to publish
``block_committed`` on the node's event bus, whoever imported the block (the BFT consensus, block
sync or the dev proposer all go through ``ChainService.import_block``).

People read these answers, so amounts are decimal strings of wei (JSON numbers lose precision past
2⁵³) with an ether figure beside them, CIDs are text (``bafkrei…``), addresses are checksummed,
and ledger events are decoded by name. Tools that want Ethereum's own encoding use ``eth_*``
(:mod:`flnode.eth_rpc`).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio
from pydantic import Field, field_validator

from .cid import Cid, InvalidCidError
from .eth_rpc import eth_providers
from .events import EventBus
from .identity import NodeIdentity
from .metrics import Sample
from .rpc import (
    INVALID_PARAMS,
    SERVER_ERROR,
    NoParams,
    Params,
    RpcError,
    RpcMethod,
    StaticProvider,
)
from .service import Service
from .strictjson import loads_strict

if TYPE_CHECKING:
    from .consensus.chain import Chain, Head
    from .consensus.service import ChainService
    from .storage.service import BlobStoreService

BLOCK_COMMITTED = "block_committed"
WEI_PER_ETHER = 10**18
#: ``model_download`` returns at most this many bytes per call (base64 in the reply makes the
#: frame 4/3 as large); larger blobs are read in pieces with ``offset``.
MAX_DOWNLOAD_BYTES = 4 * 2**20
MAX_TASK_PAGE = 1000
#: Longest ``wallet_withdraw`` may wait for its transaction to be committed (below the API's
#: default call timeout of 30 s).
MAX_WITHDRAW_WAIT_S = 25.0
#: Largest safetensors header ``model_get`` parses (the format allows 100 MB; models are small).
MAX_SAFETENSORS_HEADER = 2**20
_CID_FIELDS = frozenset({"spec", "model", "cid", "aggregate"})


def _wei(amount: int) -> dict[str, Any]:
    return {"wei": str(amount), "ether": amount / WEI_PER_ETHER}


def _address(value: str) -> str:
    from eth_utils import is_hex_address, to_checksum_address

    if not is_hex_address(value):
        raise ValueError(f"{value!r} is not an address (0x and 40 hex digits)")
    return to_checksum_address(value)


class AddressParams(Params):
    address: str | None = Field(None, description="Account address; default: this node's.")

    @field_validator("address")
    @classmethod
    def _check(cls, v: str | None) -> str | None:
        return None if v is None else _address(v)


class BlockParams(Params):
    block: int | str = Field(
        "latest", description="Block number, block hash (0x…), or 'latest'/'earliest'."
    )
    txs: bool = Field(False, description="Include each transaction's details, not only hashes.")

    @field_validator("block")
    @classmethod
    def _check(cls, v: int | str) -> int | str:
        if isinstance(v, int):
            if v < 0:
                raise ValueError("a block number is not negative")
            return v
        if v in ("latest", "earliest"):
            return v
        if v.isdigit():
            return int(v)
        if v.startswith("0x") and len(v) == 66:
            try:
                bytes.fromhex(v[2:])
                return v
            except ValueError:
                pass
        raise ValueError(f"{v!r} is not a block number, a block hash or 'latest'/'earliest'")


class TxParams(Params):
    hash: str = Field(description="Transaction hash (0x + 64 hex digits).")

    @field_validator("hash")
    @classmethod
    def _check(cls, v: str) -> str:
        try:
            if v.startswith("0x") and len(bytes.fromhex(v[2:])) == 32:
                return v
        except ValueError:
            pass
        raise ValueError(f"{v!r} is not a transaction hash (0x and 64 hex digits)")


class TaskParams(Params):
    task: int = Field(ge=1, description="Task id (the ledger numbers tasks from 1).")


class TaskListParams(Params):
    offset: int = Field(0, ge=0, description="Skip this many tasks (oldest first).")
    limit: int = Field(100, ge=1, le=MAX_TASK_PAGE, description="Most tasks to return.")


class WithdrawParams(Params):
    wait_s: float = Field(
        0.0,
        ge=0,
        le=MAX_WITHDRAW_WAIT_S,
        description="Wait up to this long for the transaction to be committed (0 = do not wait).",
    )


class MinerRegisterParams(WithdrawParams):
    stake_wei: str = Field(
        description="Stake to lock, in wei as a decimal string (at least the ledger's minimum "
        "stake, minus any stake already held)."
    )

    @field_validator("stake_wei")
    @classmethod
    def _check_stake(cls, v: str) -> str:
        if not v.isdigit() or int(v) <= 0:
            raise ValueError(f"{v!r} is not a positive whole number of wei")
        return v


class CidParams(Params):
    cid: str = Field(description="CID of the blob (bafkrei…).")

    @field_validator("cid")
    @classmethod
    def _check(cls, v: str) -> str:
        try:
            Cid.parse(v)
        except InvalidCidError as exc:
            raise ValueError(str(exc)) from None
        return v


class DownloadParams(CidParams):
    offset: int = Field(0, ge=0, description="First byte to return.")
    length: int = Field(
        MAX_DOWNLOAD_BYTES,
        ge=1,
        le=MAX_DOWNLOAD_BYTES,
        description=f"Most bytes to return (at most {MAX_DOWNLOAD_BYTES}).",
    )


def _jsonable(value: Any, name: str = "") -> Any:
    """Event arguments for people: CIDs as text, other bytes as hex, tuples as lists."""
    if isinstance(value, bytes):
        if name in _CID_FIELDS and len(value) == 32:
            return str(Cid(value))
        return "0x" + value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _head_json(head: Head) -> dict[str, Any]:
    return {
        "number": head.number,
        "hash": "0x" + head.hash.hex(),
        "parent_hash": "0x" + head.parent_hash.hex(),
        "state_root": "0x" + head.state_root.hex(),
        "timestamp": head.timestamp,
        "coinbase": head.coinbase,
        "gas_used": head.gas_used,
        "gas_limit": head.gas_limit,
        "base_fee": head.base_fee,
        "tx_count": head.tx_count,
    }


def _safetensors_info(blob: bytes) -> dict[str, Any] | None:
    """Tensor names, dtypes and shapes of a safetensors blob; None if it is not one."""
    if len(blob) < 8:
        return None
    (size,) = struct.unpack("<Q", blob[:8])
    if size > min(MAX_SAFETENSORS_HEADER, len(blob) - 8):
        return None
    try:
        # Blobs come from peers: bounded nesting (json's C scanner recurses, and with py-evm's
        # recursion limit a deep header would overflow the C stack).
        header = loads_strict(blob[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    metadata = header.pop("__metadata__", None)
    tensors: dict[str, Any] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or "dtype" not in entry or "shape" not in entry:
            return None
        tensors[name] = {"dtype": entry["dtype"], "shape": entry["shape"]}
    return {
        "format": "safetensors",
        "tensors": dict(sorted(tensors.items())),
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


class ChainApi(Service):
    """Serves the ledger's namespaces and publishes ``block_committed``. See the module docstring."""

    name = "chain_api"

    def __init__(
        self,
        chain: ChainService,
        bus: EventBus,
        blobs: BlobStoreService,
        identity: NodeIdentity,
    ) -> None:
        self.chain = chain
        self.bus = bus
        self.blobs = blobs
        self.identity = identity
        self.height: int | None = None
        self.committed = 0
        bus.declare(
            BLOCK_COMMITTED,
            "A block was committed to the local chain: {number, hash, timestamp, coinbase, "
            "tx_count, gas_used}.",
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        heads = self.chain.subscribe_blocks()
        self.height = (await self.chain.head()).number
        task_status.started()
        async with heads:
            async for head in heads:
                self.height = head.number
                self.committed += 1
                self.bus.publish(
                    BLOCK_COMMITTED,
                    number=head.number,
                    hash="0x" + head.hash.hex(),
                    timestamp=head.timestamp,
                    coinbase=head.coinbase,
                    tx_count=head.tx_count,
                    gas_used=head.gas_used,
                )
        await trio.sleep_forever()  # the chain closed the channel: it is stopping too

    def metric_samples(self) -> Iterable[Sample]:
        if self.height is not None:
            yield Sample("flnode_chain_height", "gauge", "Number of the head block.", self.height)
        yield Sample(
            "flnode_chain_blocks_committed",
            "counter",
            "Blocks committed to the local chain since the node started.",
            self.committed,
        )

    # -- the providers ------------------------------------------------------------------------

    def providers(self) -> list[StaticProvider]:
        """Every namespace this service serves (each a :class:`~flnode.rpc.MethodProvider`)."""
        return [*self._ledger_providers(), self._model_provider(), *eth_providers(self.chain)]

    def _ledger_providers(self) -> list[StaticProvider]:
        from .consensus.errors import NotFound

        svc = self.chain
        contract = svc.contract

        async def head(_: NoParams) -> dict[str, Any]:
            h = await svc.head()
            return {
                **_head_json(h),
                "chain_id": svc.spec.chain_id,
                "network_id": svc.spec.network_id,
                "genesis_hash": svc.spec.genesis_hash,
            }

        def read_block(chain: Chain, p: BlockParams) -> dict[str, Any]:
            top = chain.head().number
            ref: int | bytes
            if p.block == "latest":
                ref = top
            elif p.block == "earliest":
                ref = 0
            elif isinstance(p.block, int):
                if p.block > top:
                    raise RpcError(SERVER_ERROR, f"no block #{p.block} yet: the head is #{top}")
                ref = p.block
            else:
                ref = bytes.fromhex(p.block[2:])
            try:
                block = chain.block(ref)
            except NotFound:
                raise RpcError(
                    SERVER_ERROR, f"no block with hash {p.block} in the local chain"
                ) from None
            h = block.header
            receipts = chain.receipts(int(block.number)) if p.txs else []
            return {
                "number": int(h.block_number),
                "hash": "0x" + h.hash.hex(),
                "parent_hash": "0x" + h.parent_hash.hex(),
                "state_root": "0x" + h.state_root.hex(),
                "timestamp": int(h.timestamp),
                "coinbase": _checksum(h.coinbase),
                "gas_used": int(h.gas_used),
                "gas_limit": int(h.gas_limit),
                "base_fee": int(h.base_fee_per_gas),
                "tx_count": len(block.transactions),
                "transactions": [
                    _tx_summary(contract, tx, r)
                    for tx, r in zip(block.transactions, receipts, strict=True)
                ]
                if p.txs
                else ["0x" + tx.hash.hex() for tx in block.transactions],
            }

        def read_tx(chain: Chain, p: TxParams) -> dict[str, Any]:
            digest = bytes.fromhex(p.hash[2:])
            try:
                receipt = chain.receipt(digest)
            except NotFound:
                if digest in chain.mempool:
                    return {"hash": p.hash, "status": "pending"}
                raise RpcError(
                    SERVER_ERROR,
                    f"no transaction {p.hash} in the local chain or mempool",
                ) from None
            tx = chain.block(receipt.block_number).transactions[receipt.tx_index]
            return _tx_summary(contract, tx, receipt)

        async def reputation(p: AddressParams) -> dict[str, Any]:
            who = p.address or self.identity.address

            def read(chain: Chain) -> dict[str, Any]:
                score = contract.reputation(chain.call, who)
                good, bad, judgements = contract.evidence(chain.call, who)
                return {
                    "address": who,
                    "reputation": score,
                    "good": good,
                    "bad": bad,
                    "judgements": judgements,
                }

            return await svc.run_sync(read, svc.chain)

        async def balance(p: AddressParams) -> dict[str, Any]:
            who = p.address or self.identity.address

            def read(chain: Chain) -> dict[str, Any]:
                return {
                    "address": who,
                    "balance": _wei(chain.balance(who)),
                    "owed": _wei(contract.owed(chain.call, who)),
                    "stake": _wei(contract.stake(chain.call, who)),
                    "nonce": chain.nonce(who),
                }

            return await svc.run_sync(read, svc.chain)

        async def committed(heads: Any, tx_hash: bytes, wait_s: float, out: dict[str, Any]) -> None:
            """Fill ``out``'s status (and block) once ``tx_hash`` is committed, or after
            ``wait_s``; ``heads`` is subscribed before the transaction is sent, so its block
            cannot be missed."""
            out["status"] = "pending"
            with trio.move_on_after(wait_s):
                while wait_s > 0:
                    try:
                        receipt = await svc.receipt(tx_hash)
                    except NotFound:
                        await heads.receive()
                        continue
                    out["status"] = "success" if receipt.success else "reverted"
                    out["block_number"] = receipt.block_number
                    break

        async def send_and_wait(
            data: bytes, wait_s: float, value: int = 0, **fields: Any
        ) -> dict[str, Any]:
            heads = svc.subscribe_blocks()
            with heads:
                tx_hash = await svc.send(contract.address, data, value=value)
                out: dict[str, Any] = {"tx_hash": "0x" + tx_hash.hex(), **fields}
                await committed(heads, tx_hash, wait_s, out)
            return out

        async def withdraw(p: WithdrawParams) -> dict[str, Any]:
            me = self.identity.address
            owed = await svc.run_sync(contract.owed, svc.chain.call, me)
            if owed == 0:
                raise RpcError(
                    SERVER_ERROR,
                    f"nothing to withdraw: the ledger owes {me} nothing (wallet_balance shows "
                    "what it owes)",
                )
            return await send_and_wait(contract.withdraw(), p.wait_s, amount=_wei(owed))

        async def miner_status(p: AddressParams) -> dict[str, Any]:
            who = p.address or self.identity.address

            def read(chain: Chain) -> dict[str, Any]:
                return {
                    "address": who,
                    "stake": _wei(contract.stake(chain.call, who)),
                    "active": contract.is_active_miner(chain.call, who),
                    "leaving_at_block": int(contract.view(chain.call, "leaving_at", who)) or None,
                    "min_stake": _wei(int(contract.view(chain.call, "min_stake"))),
                    "head": chain.head().number,
                }

            return await svc.run_sync(read, svc.chain)

        async def miner_register(p: MinerRegisterParams) -> dict[str, Any]:
            me = self.identity.address
            stake = int(p.stake_wei)

            def check(chain: Chain) -> str | None:
                if int(contract.view(chain.call, "leaving_at", me)):
                    return f"{me} is leaving the committee; finish with miner_leave first"
                total = contract.stake(chain.call, me) + stake
                least = int(contract.view(chain.call, "min_stake"))
                if total < least:
                    return (
                        f"a stake of {total} wei is below the ledger's minimum stake of {least} wei"
                    )
                if chain.balance(me) < stake:
                    return (
                        f"{me} holds {chain.balance(me)} wei, less than the stake of {stake} wei "
                        "(plus gas)"
                    )
                return None

            problem = await svc.run_sync(check, svc.chain)
            if problem is not None:
                raise RpcError(SERVER_ERROR, problem)
            return await send_and_wait(
                contract.register_miner(), p.wait_s, value=stake, stake=_wei(stake)
            )

        async def miner_leave(p: WithdrawParams) -> dict[str, Any]:
            me = self.identity.address

            def step(chain: Chain) -> tuple[str, int]:
                if contract.stake(chain.call, me) == 0:
                    return "none", 0
                at = int(contract.view(chain.call, "leaving_at", me))
                if at == 0:
                    return "request", 0
                return ("leave" if chain.head().number >= at else "wait"), at

            what, at = await svc.run_sync(step, svc.chain)
            if what == "none":
                raise RpcError(SERVER_ERROR, f"{me} holds no miner stake")
            if what == "wait":
                raise RpcError(
                    SERVER_ERROR,
                    f"{me} is leaving; its stake can be taken back from block {at} on "
                    "(call miner_leave again then)",
                )
            data = contract.request_leave() if what == "request" else contract.leave()
            return await send_and_wait(data, p.wait_s, step=what)

        async def task_list(p: TaskListParams) -> dict[str, Any]:
            def read(chain: Chain) -> dict[str, Any]:
                count = contract.task_count(chain.call)
                ids = range(p.offset + 1, min(count, p.offset + p.limit) + 1)
                tasks = [contract.task(chain.call, i) for i in ids]
                return {"count": count, "tasks": [_task_json(t) for t in tasks if t is not None]}

            return await svc.run_sync(read, svc.chain)

        async def task_get(p: TaskParams) -> dict[str, Any]:
            def read(chain: Chain) -> dict[str, Any]:
                task = contract.task(chain.call, p.task)
                if task is None:
                    count = contract.task_count(chain.call)
                    raise RpcError(
                        SERVER_ERROR,
                        f"no task {p.task} on the ledger (it holds {count} task(s); "
                        "task_list shows them)",
                    )
                return {
                    **_task_json(task),
                    "committee": list(contract.committee(chain.call, p.task)),
                }

            return await svc.run_sync(read, svc.chain)

        def on_chain(fn: Any) -> Any:
            async def handler(params: Any) -> Any:
                return await svc.run_sync(fn, svc.chain, params)

            return handler

        m = RpcMethod
        return [
            StaticProvider(
                "chain",
                (
                    m("chain_head", head, "The head of the local chain.", result="block summary"),
                    m(
                        "chain_block",
                        on_chain(read_block),
                        "One block by number or hash, with its transaction hashes (or details).",
                        BlockParams,
                        result="block summary",
                    ),
                    m(
                        "chain_tx",
                        on_chain(read_tx),
                        "A transaction: sender, target, outcome, gas and decoded ledger events.",
                        TxParams,
                        result="transaction summary (status pending while in the mempool)",
                    ),
                ),
            ),
            StaticProvider(
                "reputation",
                (
                    m(
                        "reputation_get",
                        reputation,
                        "A device's reputation on the ledger (0.5 when never judged) and its "
                        "evidence.",
                        AddressParams,
                        result="{address, reputation, good, bad, judgements}",
                    ),
                ),
            ),
            StaticProvider(
                "wallet",
                (
                    m(
                        "wallet_balance",
                        balance,
                        "An account's balance, what the ledger owes it, its stake and nonce.",
                        AddressParams,
                        result="amounts as {wei (decimal string), ether}",
                    ),
                    m(
                        "wallet_withdraw",
                        withdraw,
                        "Withdraw what the ledger owes this node (a transaction signed with the "
                        "node key).",
                        WithdrawParams,
                        result="{tx_hash, amount, status, block_number when committed}",
                    ),
                ),
            ),
            StaticProvider(
                "miner",
                (
                    m(
                        "miner_status",
                        miner_status,
                        "An account's miner stake, whether it sits on the committee, and the "
                        "ledger's minimum stake.",
                        AddressParams,
                        result="{address, stake, active, leaving_at_block, min_stake, head}",
                    ),
                    m(
                        "miner_register",
                        miner_register,
                        "Stake this node's key as a miner (registerMiner); it joins the BFT "
                        "committee from the block after the registration is committed.",
                        MinerRegisterParams,
                        result="{tx_hash, stake, status, block_number when committed}",
                    ),
                    m(
                        "miner_leave",
                        miner_leave,
                        "Leave the committee: the first call requests it (the stake stays locked "
                        "for the ledger's leave delay), a call after the delay returns the stake "
                        "(credited; withdraw it with wallet_withdraw).",
                        WithdrawParams,
                        result="{tx_hash, step: request|leave, status, block_number}",
                    ),
                ),
            ),
            StaticProvider(
                "task",
                (
                    m(
                        "task_list",
                        task_list,
                        "Tasks on the ledger, oldest first.",
                        TaskListParams,
                        result="{count, tasks}",
                    ),
                    m(
                        "task_get",
                        task_get,
                        "One task on the ledger, with its committee.",
                        TaskParams,
                        result="task",
                    ),
                ),
            ),
        ]

    def _model_provider(self) -> StaticProvider:
        from .storage import BlobNotFoundError, CorruptBlobError

        blobs = self.blobs

        async def read(cid: Cid) -> bytes:
            try:
                return await trio.to_thread.run_sync(blobs.store.get, cid)
            except BlobNotFoundError:
                raise RpcError(
                    SERVER_ERROR, f"blob {cid} is not in this node's store (fetch it first)"
                ) from None
            except CorruptBlobError:
                raise RpcError(
                    SERVER_ERROR,
                    f"blob {cid} failed verification on this node and was quarantined",
                ) from None

        async def model_get(p: CidParams) -> dict[str, Any]:
            cid = Cid.parse(p.cid)
            blob = await read(cid)
            pinned = await trio.to_thread.run_sync(blobs.store.is_pinned, cid)
            info = _safetensors_info(blob) or {"format": "raw"}
            return {"cid": str(cid), "size": len(blob), "pinned": pinned, **info}

        async def model_download(p: DownloadParams) -> dict[str, Any]:
            cid = Cid.parse(p.cid)
            blob = await read(cid)
            if p.offset > len(blob):
                raise RpcError(
                    INVALID_PARAMS,
                    f"offset {p.offset} is past the end of blob {cid} ({len(blob)} bytes)",
                )
            piece = blob[p.offset : p.offset + p.length]
            return {
                "cid": str(cid),
                "size": len(blob),
                "offset": p.offset,
                "length": len(piece),
                "complete": p.offset + len(piece) == len(blob),
                "data": base64.b64encode(piece).decode("ascii"),
            }

        return StaticProvider(
            "model",
            (
                RpcMethod(
                    "model_get",
                    model_get,
                    "Metadata of a blob in the local store: size, pinned, and for safetensors "
                    "its tensors and metadata.",
                    CidParams,
                    result="{cid, size, pinned, format, tensors?, metadata?}",
                ),
                RpcMethod(
                    "model_download",
                    model_download,
                    f"A blob's bytes, base64, at most {MAX_DOWNLOAD_BYTES} per call (page with "
                    "offset).",
                    DownloadParams,
                    result="{cid, size, offset, length, complete, data}",
                ),
            ),
        )


def _checksum(address: bytes) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address)


def _task_json(task: Any) -> dict[str, Any]:
    return {
        "id": task.id,
        "owner": task.owner,
        "spec": str(task.spec),
        "model": str(task.model),
        "rounds": task.rounds,
        "round": task.round,
        "updates_per_round": task.updates_per_round,
        "submitted": task.submitted,
        "reward_per_round": _wei(task.reward_per_round),
        "deposit": _wei(task.deposit),
        "epsilon": task.epsilon,
        "last_progress_block": task.last_progress_block,
        "closed": task.closed,
        "finished": task.finished,
    }


def _tx_summary(contract: Any, tx: Any, receipt: Any) -> dict[str, Any]:
    events = [
        {"event": e.name, "args": {k: _jsonable(v, k) for k, v in e.args.items()}}
        for e in contract.decode_logs(receipt.logs)
    ]
    return {
        "hash": "0x" + tx.hash.hex(),
        "status": "success" if receipt.success else "reverted",
        "block_number": receipt.block_number,
        "block_hash": "0x" + receipt.block_hash.hex(),
        "index": receipt.tx_index,
        "from": receipt.sender,
        "to": receipt.to,
        "nonce": int(tx.nonce),
        "value": _wei(int(tx.value)),
        "gas": int(tx.gas),
        "gas_used": receipt.gas_used,
        "input": "0x" + bytes(tx.data).hex(),
        "events": events,
        "logs": len(receipt.logs),
    }
