"""A read-only subset of Ethereum's JSON-RPC over the node's ledger, for standard auditing tools.

The ledger is an Ethereum chain (py-evm, Prague rules), so tools such as web3.py, ethers or a
block explorer can read it if the node speaks their protocol. This module serves ``eth_chainId``,
``eth_blockNumber``, ``eth_getBlockByNumber``, ``eth_getBlockByHash``, ``eth_getBalance``,
``eth_getCode``, ``eth_getStorageAt``, ``eth_getTransactionCount``, ``eth_call``, ``eth_getLogs``,
``eth_syncing``,
``eth_getTransactionByHash``, ``eth_getTransactionReceipt``, ``net_version`` and
``web3_clientVersion`` with Ethereum's encodings (quantities as ``0x``-hex without leading zeros,
data as ``0x``-hex, checksummed addresses, ``null`` for a block or transaction that is not there)
and Ethereum's method names, which are camelCase after the namespace: the API registry accepts
that spelling for the ``eth``, ``net`` and ``web3`` namespaces only (``FOREIGN_NAMESPACES`` in
:mod:`flnode.api.registry`).

Nothing here writes: there is no ``eth_sendRawTransaction`` (transactions enter through
``consensus_submit`` or ``wallet_withdraw``), no filters and no ``eth_subscribe`` (flnode's own
``subscribe`` streams ``block_committed``). Block tags: ``latest``, ``pending``, ``safe`` and
``finalized`` all mean the head, since a committed block is final (BFT, no reorgs);
``earliest`` is genesis. Every read runs in the chain's worker thread.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import rlp
from eth_bloom import BloomFilter
from eth_utils import keccak, to_checksum_address
from pydantic import Field, field_validator

from . import __version__
from .rpc import INVALID_PARAMS, NoParams, Params, RpcError, RpcMethod, StaticProvider

if TYPE_CHECKING:
    from eth.abc import BlockAPI, BlockHeaderAPI, SignedTransactionAPI

    from .consensus.chain import Chain, Log, Receipt
    from .consensus.service import ChainService

#: JSON-RPC code Ethereum nodes use for a reverted ``eth_call`` (geth, EIP-1474 practice).
EXECUTION_REVERTED = 3
#: ``eth_getLogs`` scans at most this many blocks and returns at most this many logs per call.
MAX_LOG_BLOCKS = 10_000
MAX_LOGS = 10_000
CALL_GAS_CAP = 50_000_000
_FINAL_TAGS = frozenset({"latest", "pending", "safe", "finalized"})


def quantity(n: int) -> str:
    """Ethereum's QUANTITY: hex without leading zeros (``0x0`` for zero)."""
    return hex(int(n))


def data(b: bytes) -> str:
    """Ethereum's DATA: ``0x`` and two hex digits per byte."""
    return "0x" + bytes(b).hex()


def _hex_bytes(value: str, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"{what} must be a 0x-prefixed hex string")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise ValueError(f"{what} {value!r} is not valid hex") from None
    if size is not None and len(raw) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def _parse_quantity(value: str | int, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{what} must not be negative")
        return value
    if isinstance(value, str) and value.startswith("0x") and len(value) > 2:
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise ValueError(f"{what} {value!r} is not a hex quantity such as 0x1a")


def _check_block(value: str | int) -> str | int:
    if isinstance(value, str) and value in (*_FINAL_TAGS, "earliest"):
        return value
    _parse_quantity(value, "block")
    return value


BlockRef = str | int


class _BlockParam(Params):
    """Parameters with a ``block`` (number or tag), checked before the handler runs."""

    @field_validator("block", check_fields=False)
    @classmethod
    def _block(cls, v: BlockRef) -> BlockRef:
        return _check_block(v)


class BlockNumberParams(_BlockParam):
    block: BlockRef = Field(description="Block number (hex) or tag: latest, earliest, finalized.")
    full: bool = Field(False, description="Whole transactions instead of their hashes.")


class BlockHashParams(Params):
    hash: str = Field(description="Block hash (0x + 64 hex digits).")
    full: bool = Field(False, description="Whole transactions instead of their hashes.")

    @field_validator("hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        return _checked(v, "block hash", 32)


class AccountParams(_BlockParam):
    address: str = Field(description="Account address (0x + 40 hex digits).")
    block: BlockRef = Field("latest", description="Block number (hex) or tag.")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return _checked(v, "address", 20)


class StorageParams(_BlockParam):
    address: str = Field(description="Contract address (0x + 40 hex digits).")
    slot: str | int = Field(description="Storage slot (hex quantity).")
    block: BlockRef = Field("latest", description="Block number (hex) or tag.")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return _checked(v, "address", 20)

    @field_validator("slot")
    @classmethod
    def _slot(cls, v: str | int) -> str | int:
        if _parse_quantity(v, "slot") >= 2**256:
            raise ValueError("a storage slot is below 2**256")
        return v


class CallParams(_BlockParam):
    call: dict[str, Any] = Field(description="Call object: to, data (or input), from, value, gas.")
    block: BlockRef = Field("latest", description="Block number (hex) or tag.")


class LogsParams(Params):
    filter: dict[str, Any] = Field(
        description="fromBlock, toBlock (or blockHash), address (one or a list), topics."
    )


class TxHashParams(Params):
    hash: str = Field(description="Transaction hash (0x + 64 hex digits).")

    @field_validator("hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        return _checked(v, "transaction hash", 32)


def _checked(value: str, what: str, size: int) -> str:
    _hex_bytes(value, what, size)
    return value


def _bad(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message)


# -- formatting (runs in the chain thread) --------------------------------------------------------


def _evm(chain: Chain) -> Any:
    """py-evm's chain object behind ``chain``.

    :class:`~flnode.consensus.chain.Chain` reads state at the head only; Ethereum's methods take a
    block, and the state of every block is still in the database (no pruning), so reads at an
    older block go to py-evm directly. This is the one place that reaches behind ``Chain``.
    """
    return chain._chain


def resolve_block(chain: Chain, ref: BlockRef) -> int | None:
    """A block reference as a number; None when it is beyond the head."""
    head = int(chain.head_header().block_number)
    if ref == "earliest":
        return 0
    if isinstance(ref, str) and ref in _FINAL_TAGS:
        return head
    number = _parse_quantity(ref, "block")
    return number if number <= head else None


def _header_at(chain: Chain, ref: BlockRef) -> BlockHeaderAPI:
    number = resolve_block(chain, ref)
    if number is None:
        head = int(chain.head_header().block_number)
        raise RpcError(
            INVALID_PARAMS, f"block {ref} is beyond the head (#{head}); state exists up to the head"
        )
    return _evm(chain).get_canonical_block_header_by_number(number)


def _effective_gas_price(tx: SignedTransactionAPI, base_fee: int) -> int:
    if hasattr(tx, "max_fee_per_gas"):
        return min(int(tx.max_fee_per_gas), base_fee + int(tx.max_priority_fee_per_gas))
    return int(tx.gas_price)


def tx_json(tx: SignedTransactionAPI, block: BlockAPI | None, index: int | None) -> dict[str, Any]:
    """A transaction object as ``eth_getTransactionByHash`` returns it."""
    base_fee = int(getattr(block.header, "base_fee_per_gas", 0) or 0) if block else 0
    typed = hasattr(tx, "max_fee_per_gas")
    out: dict[str, Any] = {
        "hash": data(tx.hash),
        "type": quantity(getattr(tx, "type_id", None) or 0),
        "nonce": quantity(tx.nonce),
        "blockHash": data(block.hash) if block else None,
        "blockNumber": quantity(block.number) if block else None,
        "transactionIndex": quantity(index) if index is not None else None,
        "from": to_checksum_address(tx.sender),
        "to": to_checksum_address(tx.to) if tx.to else None,
        "value": quantity(tx.value),
        "gas": quantity(tx.gas),
        "gasPrice": quantity(_effective_gas_price(tx, base_fee) if block else tx.max_fee_per_gas)
        if typed
        else quantity(tx.gas_price),
        "input": data(tx.data),
        "r": quantity(tx.r),
        "s": quantity(tx.s),
    }
    if typed:
        out.update(
            {
                "chainId": quantity(tx.chain_id),
                "maxFeePerGas": quantity(tx.max_fee_per_gas),
                "maxPriorityFeePerGas": quantity(tx.max_priority_fee_per_gas),
                "accessList": [
                    {
                        "address": to_checksum_address(addr),
                        "storageKeys": [data(int(k).to_bytes(32, "big")) for k in keys],
                    }
                    for addr, keys in tx.access_list
                ],
                "yParity": quantity(tx.y_parity),
                "v": quantity(tx.y_parity),
            }
        )
    else:
        out["v"] = quantity(tx.v)
    return out


def block_json(block: BlockAPI, full: bool) -> dict[str, Any]:
    """A block object as ``eth_getBlockByNumber`` returns it (post-Prague fields included)."""
    h = block.header
    out: dict[str, Any] = {
        "number": quantity(h.block_number),
        "hash": data(h.hash),
        "parentHash": data(h.parent_hash),
        "nonce": data(h.nonce),
        "mixHash": data(h.mix_hash),
        "sha3Uncles": data(h.uncles_hash),
        "logsBloom": data(int(h.bloom).to_bytes(256, "big")),
        "transactionsRoot": data(h.transaction_root),
        "stateRoot": data(h.state_root),
        "receiptsRoot": data(h.receipt_root),
        "miner": to_checksum_address(h.coinbase),
        "difficulty": quantity(h.difficulty),
        "totalDifficulty": quantity(0),
        "extraData": data(h.extra_data),
        "size": quantity(len(rlp.encode(block))),
        "gasLimit": quantity(h.gas_limit),
        "gasUsed": quantity(h.gas_used),
        "timestamp": quantity(h.timestamp),
        "transactions": [
            tx_json(tx, block, i) if full else data(tx.hash)
            for i, tx in enumerate(block.transactions)
        ],
        "uncles": [],
    }
    for attr, key in (
        ("base_fee_per_gas", "baseFeePerGas"),
        ("blob_gas_used", "blobGasUsed"),
        ("excess_blob_gas", "excessBlobGas"),
    ):
        if hasattr(h, attr):
            out[key] = quantity(getattr(h, attr))
    for attr, key in (
        ("withdrawals_root", "withdrawalsRoot"),
        ("parent_beacon_block_root", "parentBeaconBlockRoot"),
        ("requests_hash", "requestsHash"),
    ):
        if hasattr(h, attr):
            out[key] = data(getattr(h, attr))
    if hasattr(h, "withdrawals_root"):
        out["withdrawals"] = [
            {
                "index": quantity(w.index),
                "validatorIndex": quantity(w.validator_index),
                "address": to_checksum_address(w.address),
                "amount": quantity(w.amount),
            }
            for w in getattr(block, "withdrawals", ())
        ]
    return out


def log_json(log: Log, block_hash: bytes) -> dict[str, Any]:
    return {
        "address": to_checksum_address(log.address),
        "topics": [data(t) for t in log.topics],
        "data": data(log.data),
        "blockNumber": quantity(log.block_number),
        "blockHash": data(block_hash),
        "transactionHash": data(log.tx_hash),
        "transactionIndex": quantity(log.tx_index),
        "logIndex": quantity(log.log_index),
        "removed": False,
    }


def receipt_json(chain: Chain, receipt: Receipt) -> dict[str, Any]:
    """A receipt as ``eth_getTransactionReceipt`` returns it."""
    block = chain.block(receipt.block_number)
    tx = block.transactions[receipt.tx_index]
    bloom = BloomFilter()
    for log in receipt.logs:
        bloom.add(log.address)
        for topic in log.topics:
            bloom.add(topic)
    created = None
    if not tx.to:
        created = to_checksum_address(keccak(rlp.encode([tx.sender, tx.nonce]))[12:])
    return {
        "transactionHash": data(receipt.tx_hash),
        "transactionIndex": quantity(receipt.tx_index),
        "blockHash": data(receipt.block_hash),
        "blockNumber": quantity(receipt.block_number),
        "from": receipt.sender,
        "to": receipt.to,
        "cumulativeGasUsed": quantity(receipt.cumulative_gas_used),
        "gasUsed": quantity(receipt.gas_used),
        "effectiveGasPrice": quantity(
            _effective_gas_price(tx, int(getattr(block.header, "base_fee_per_gas", 0) or 0))
        ),
        "contractAddress": created,
        "logs": [log_json(log, receipt.block_hash) for log in receipt.logs],
        "logsBloom": data(int(bloom).to_bytes(256, "big")),
        "status": quantity(1 if receipt.success else 0),
        "type": quantity(getattr(tx, "type_id", None) or 0),
    }


# -- the methods ---------------------------------------------------------------------------------


def _call_args(call: dict[str, Any]) -> tuple[bytes, bytes, bytes, int, int]:
    """(to, data, from, value, gas) of an ``eth_call`` object, checked."""
    known = {"to", "data", "input", "from", "value", "gas", "gasPrice", "maxFeePerGas"}
    known |= {"maxPriorityFeePerGas", "type", "chainId", "nonce", "accessList"}
    unknown = sorted(set(call) - known)
    if unknown:
        raise _bad(f"eth_call: unknown field(s) in the call object: {', '.join(unknown)}")
    try:
        if not call.get("to"):
            raise ValueError("the call object needs 'to' (contract creation is not supported)")
        to = _hex_bytes(call["to"], "to", 20)
        if "data" in call and "input" in call and call["data"] != call["input"]:
            raise ValueError("'data' and 'input' differ; give one of them")
        payload = _hex_bytes(call.get("input", call.get("data", "0x")), "data")
        sender = _hex_bytes(call["from"], "from", 20) if call.get("from") else b"\x00" * 20
        value = _parse_quantity(call.get("value", 0), "value")
        gas = min(_parse_quantity(call.get("gas", CALL_GAS_CAP), "gas"), CALL_GAS_CAP)
    except (ValueError, TypeError) as exc:
        raise _bad(f"eth_call: {exc}") from None
    return to, payload, sender, value, gas


def _log_filter(
    chain: Chain, flt: dict[str, Any]
) -> tuple[int, int, list[bytes] | None, list[list[bytes] | None]]:
    """(first, last, addresses, topics) of an ``eth_getLogs`` filter, checked."""
    known = {"fromBlock", "toBlock", "address", "topics", "blockHash"}
    unknown = sorted(set(flt) - known)
    if unknown:
        raise _bad(f"eth_getLogs: unknown filter field(s): {', '.join(unknown)}")
    head = int(chain.head_header().block_number)
    try:
        if flt.get("blockHash") is not None:
            if "fromBlock" in flt or "toBlock" in flt:
                raise ValueError("give blockHash or fromBlock/toBlock, not both")
            digest = _hex_bytes(flt["blockHash"], "blockHash", 32)
            try:
                first = last = int(chain.block(digest).number)
            except KeyError:
                raise ValueError(f"no block with hash {flt['blockHash']}") from None
        else:
            first = _requested(flt.get("fromBlock", "latest"), head)
            last = _requested(flt.get("toBlock", "latest"), head)
        raw_addr = flt.get("address")
        addresses = None
        if raw_addr is not None:
            items = raw_addr if isinstance(raw_addr, list) else [raw_addr]
            addresses = [_hex_bytes(a, "address", 20) for a in items]
        topics: list[list[bytes] | None] = []
        for i, t in enumerate(flt.get("topics") or []):
            if t is None:
                topics.append(None)
            elif isinstance(t, list):
                topics.append([_hex_bytes(x, f"topics[{i}]", 32) for x in t] or None)
            else:
                topics.append([_hex_bytes(t, f"topics[{i}]", 32)])
        if len(topics) > 4:
            raise ValueError("at most 4 topic positions")
    except (ValueError, TypeError) as exc:
        raise _bad(f"eth_getLogs: {exc}") from None
    if first > last:
        raise _bad(f"eth_getLogs: fromBlock {first} is after toBlock {last}")
    last = min(last, head)  # blocks beyond the head hold no logs yet (first > last: none)
    if last - first + 1 > MAX_LOG_BLOCKS:
        raise _bad(
            f"eth_getLogs: a range of {last - first + 1} blocks is over the limit of "
            f"{MAX_LOG_BLOCKS}; query in smaller ranges"
        )
    return first, last, addresses, topics


def _requested(ref: Any, head: int) -> int:
    """The block number a filter bound names (possibly beyond the head)."""
    if ref is None:
        return head
    _check_block(ref)
    if ref == "earliest":
        return 0
    if isinstance(ref, str) and ref in _FINAL_TAGS:
        return head
    return _parse_quantity(ref, "block")


def _logs(chain: Chain, flt: dict[str, Any]) -> list[dict[str, Any]]:
    first, last, addresses, topics = _log_filter(chain, flt)
    if first > last:
        return []
    # Chain.logs filters one address and one topic per position; lists (OR) are checked here.
    exact = [t[0] if t is not None and len(t) == 1 else None for t in topics]
    address = addresses[0] if addresses is not None and len(addresses) == 1 else None
    out: list[dict[str, Any]] = []
    hashes: dict[int, bytes] = {}
    for log in chain.logs(first, last, address=address, topics=exact):
        if addresses is not None and log.address not in addresses:
            continue
        if any(
            t is not None and (i >= len(log.topics) or log.topics[i] not in t)
            for i, t in enumerate(topics)
        ):
            continue
        if len(out) == MAX_LOGS:
            raise RpcError(
                -32005,
                f"eth_getLogs: more than {MAX_LOGS} logs match; query a smaller block range",
            )
        if log.block_number not in hashes:
            hashes[log.block_number] = chain.block(log.block_number).hash
        out.append(log_json(log, hashes[log.block_number]))
    return out


def eth_providers(service: ChainService) -> list[StaticProvider]:
    """The ``eth_*``, ``net_*`` and ``web3_*`` providers over a running chain service."""
    from eth.vm.spoof import SpoofTransaction

    from .consensus.errors import NotFound

    run = service.run_sync

    def on_chain(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def handler(params: Any) -> Any:
            return await run(fn, service.chain, params)

        return handler

    def chain_id(chain: Chain, _: NoParams) -> str:
        return quantity(chain.chain_id)

    def block_number(chain: Chain, _: NoParams) -> str:
        return quantity(chain.head_header().block_number)

    def block_by_number(chain: Chain, p: BlockNumberParams) -> dict[str, Any] | None:
        number = resolve_block(chain, p.block)
        return None if number is None else block_json(chain.block(number), p.full)

    def block_by_hash(chain: Chain, p: BlockHashParams) -> dict[str, Any] | None:
        try:
            block = chain.block(_hex_bytes(p.hash, "hash", 32))
        except NotFound:
            return None
        # A block on no canonical chain is not part of the ledger (consensus imports none).
        return block_json(block, p.full)

    def balance(chain: Chain, p: AccountParams) -> str:
        state = _evm(chain).get_vm(_header_at(chain, p.block)).state
        return quantity(state.get_balance(_hex_bytes(p.address, "address", 20)))

    def code(chain: Chain, p: AccountParams) -> str:
        state = _evm(chain).get_vm(_header_at(chain, p.block)).state
        return data(state.get_code(_hex_bytes(p.address, "address", 20)))

    def tx_count(chain: Chain, p: AccountParams) -> str:
        state = _evm(chain).get_vm(_header_at(chain, p.block)).state
        return quantity(state.get_nonce(_hex_bytes(p.address, "address", 20)))

    def storage(chain: Chain, p: StorageParams) -> str:
        state = _evm(chain).get_vm(_header_at(chain, p.block)).state
        word = state.get_storage(
            _hex_bytes(p.address, "address", 20), _parse_quantity(p.slot, "slot")
        )
        return data(int(word).to_bytes(32, "big"))

    def syncing(chain: Chain, _: NoParams) -> bool:
        # A node that is behind catches up by block sync before it takes part, and what it
        # serves meanwhile is its own committed chain: never a half-synced state.
        return False

    def call(chain: Chain, p: CallParams) -> str:
        to, payload, sender, value, gas = _call_args(p.call)
        header = _header_at(chain, p.block)
        evm = _evm(chain)
        vm = evm.get_vm(header)
        utx = vm.create_unsigned_transaction(
            nonce=vm.state.get_nonce(sender), gas_price=0, gas=gas, to=to, value=value, data=payload
        )
        try:
            return data(evm.get_transaction_result(SpoofTransaction(utx, from_=sender), header))
        except Exception as exc:  # py-evm raises the execution's error (Revert, OutOfGas, ...)
            # As geth answers: code 3, the decoded reason, and the raw revert data for tools.
            raw = exc.args[0] if exc.args and isinstance(exc.args[0], bytes) else None
            raise RpcError(
                EXECUTION_REVERTED,
                f"execution reverted: {chain._reason(exc)}",
                data(raw) if raw is not None else None,
            ) from None

    def logs(chain: Chain, p: LogsParams) -> list[dict[str, Any]]:
        return _logs(chain, p.filter)

    def tx_by_hash(chain: Chain, p: TxHashParams) -> dict[str, Any] | None:
        digest = _hex_bytes(p.hash, "hash", 32)
        try:
            receipt = chain.receipt(digest)
        except NotFound:
            return None
        block = chain.block(receipt.block_number)
        return tx_json(block.transactions[receipt.tx_index], block, receipt.tx_index)

    def tx_receipt(chain: Chain, p: TxHashParams) -> dict[str, Any] | None:
        try:
            receipt = chain.receipt(_hex_bytes(p.hash, "hash", 32))
        except NotFound:
            return None
        return receipt_json(chain, receipt)

    async def net_version(_: NoParams) -> str:
        return str(service.spec.chain_id)

    async def client_version(_: NoParams) -> str:
        py = ".".join(str(v) for v in sys.version_info[:3])
        return f"flnode/v{__version__}/linux/python{py}"

    m = RpcMethod
    return [
        StaticProvider(
            "eth",
            (
                m("eth_chainId", on_chain(chain_id), "The chain id (hex).", result="QUANTITY"),
                m(
                    "eth_blockNumber",
                    on_chain(block_number),
                    "Number of the head block (hex).",
                    result="QUANTITY",
                ),
                m(
                    "eth_getBlockByNumber",
                    on_chain(block_by_number),
                    "A block by number or tag (Ethereum's block object).",
                    BlockNumberParams,
                    result="block object, or null beyond the head",
                ),
                m(
                    "eth_getBlockByHash",
                    on_chain(block_by_hash),
                    "A block by hash (Ethereum's block object).",
                    BlockHashParams,
                    result="block object, or null",
                ),
                m(
                    "eth_getBalance",
                    on_chain(balance),
                    "An account's balance in wei at a block.",
                    AccountParams,
                    result="QUANTITY",
                ),
                m(
                    "eth_getCode",
                    on_chain(code),
                    "An account's code at a block.",
                    AccountParams,
                    result="DATA",
                ),
                m(
                    "eth_getTransactionCount",
                    on_chain(tx_count),
                    "An account's nonce at a block.",
                    AccountParams,
                    result="QUANTITY",
                ),
                m(
                    "eth_getStorageAt",
                    on_chain(storage),
                    "One 32-byte storage word of a contract at a block.",
                    StorageParams,
                    result="DATA (32 bytes)",
                ),
                m(
                    "eth_syncing",
                    on_chain(syncing),
                    "Always false: the node serves only blocks it has committed.",
                    result="false",
                ),
                m(
                    "eth_call",
                    on_chain(call),
                    "Execute a read-only call at a block (nothing is sent).",
                    CallParams,
                    result="DATA (the return data); error 3 when it reverts",
                ),
                m(
                    "eth_getLogs",
                    on_chain(logs),
                    f"Logs matching a filter (at most {MAX_LOG_BLOCKS} blocks per query).",
                    LogsParams,
                    result="array of log objects",
                ),
                m(
                    "eth_getTransactionByHash",
                    on_chain(tx_by_hash),
                    "An included transaction (Ethereum's transaction object).",
                    TxHashParams,
                    result="transaction object, or null",
                ),
                m(
                    "eth_getTransactionReceipt",
                    on_chain(tx_receipt),
                    "The receipt of an included transaction.",
                    TxHashParams,
                    result="receipt object, or null",
                ),
            ),
        ),
        StaticProvider(
            "net",
            (
                m(
                    "net_version",
                    net_version,
                    "The chain id as a decimal string (Ethereum's network version).",
                    result="string",
                ),
            ),
        ),
        StaticProvider(
            "web3",
            (m("web3_clientVersion", client_version, "flnode's version.", result="string"),),
        ),
    ]
