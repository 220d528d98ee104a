"""``flnode chain``: read the local ledger of a data dir (works while the daemon runs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .options import datadir_option

if TYPE_CHECKING:
    from flnode.consensus.chain import Chain

ETHER = 10**18


@contextmanager
def open_ledger(datadir: Path) -> Iterator[Chain]:
    """The data dir's chain, opened read-only."""
    from flnode.consensus.chain import Chain
    from flnode.consensus.errors import ConsensusError
    from flnode.consensus.network import load_network
    from flnode.consensus.service import CHAIN_DB_FILE, NETWORK_COPY
    from flnode.storage.chaindb import SqliteAtomicDB

    if not (datadir / NETWORK_COPY).exists() or not (datadir / CHAIN_DB_FILE).exists():
        raise ConsensusError(
            f"data dir {datadir} has no ledger; start the node once with "
            f"`flnode start --datadir {datadir} --network FILE`"
        )
    db = SqliteAtomicDB(datadir / CHAIN_DB_FILE, read_only=True)
    try:
        yield Chain(load_network(datadir / NETWORK_COPY), db, read_only=True)
    finally:
        db.close()


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def _emit(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    for key, value in data.items():
        if isinstance(value, list):
            click.echo(f"{key:<18} {len(value)}")
            for item in value:
                click.echo(f"  {item}")
        else:
            click.echo(f"{key:<18} {value}")


def _parse_hash(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise click.BadParameter(f"{text!r} is not a 32-byte hex hash")
    return raw


def _parse_address(text: str) -> str:
    from eth_utils import is_address, to_checksum_address

    if not is_address(text):
        raise click.BadParameter(f"{text!r} is not an address")
    return to_checksum_address(text)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group("chain")
def chain_group() -> None:
    """Inspect the local ledger (head, blocks, transactions, balances, reputation)."""


@chain_group.command("head")
@datadir_option
@json_option
def chain_head(datadir: Path, as_json: bool) -> None:
    """The head block."""
    with open_ledger(datadir) as chain:
        head = chain.head()
        _emit(
            {
                "network": chain.spec.network_id,
                "chain_id": chain.chain_id,
                "number": head.number,
                "hash": _hex(head.hash),
                "parent": _hex(head.parent_hash),
                "state_root": _hex(head.state_root),
                "timestamp": head.timestamp,
                "proposer": head.coinbase,
                "txs": head.tx_count,
                "gas_used": head.gas_used,
                "genesis": _hex(chain.genesis_hash),
            },
            as_json,
        )


@chain_group.command("block")
@click.argument("number", type=click.IntRange(0))
@datadir_option
@json_option
def chain_block(number: int, datadir: Path, as_json: bool) -> None:
    """Block NUMBER and its transactions."""
    from eth_utils import to_checksum_address

    with open_ledger(datadir) as chain:
        block = chain.block(number)
        h = block.header
        _emit(
            {
                "number": int(h.block_number),
                "hash": _hex(h.hash),
                "parent": _hex(h.parent_hash),
                "state_root": _hex(h.state_root),
                "timestamp": int(h.timestamp),
                "proposer": to_checksum_address(h.coinbase),
                "gas_used": int(h.gas_used),
                "gas_limit": int(h.gas_limit),
                "transactions": [_hex(tx.hash) for tx in block.transactions],
            },
            as_json,
        )


@chain_group.command("tx")
@click.argument("tx_hash")
@datadir_option
@json_option
def chain_tx(tx_hash: str, datadir: Path, as_json: bool) -> None:
    """Transaction TX_HASH with its receipt and decoded ledger events."""
    from flnode.consensus.ledger import LedgerContract

    raw = _parse_hash(tx_hash)
    with open_ledger(datadir) as chain:
        tx = chain.transaction(raw)
        receipt = chain.receipt(raw)
        contract = LedgerContract(chain.spec.ledger_address)
        events = [
            f"{e.name}({', '.join(f'{k}={_fmt(v)}' for k, v in e.args.items())})"
            for e in contract.decode_logs(receipt.logs)
        ]
        _emit(
            {
                "hash": _hex(tx.hash),
                "block": receipt.block_number,
                "index": receipt.tx_index,
                "from": receipt.sender,
                "to": receipt.to,
                "value": int(tx.value),
                "nonce": int(tx.nonce),
                "status": "success" if receipt.success else "reverted",
                "gas_used": receipt.gas_used,
                "events": events,
            },
            as_json,
        )


def _fmt(value: Any) -> str:
    return _hex(value) if isinstance(value, bytes) else str(value)


@chain_group.command("balance")
@click.argument("address", callback=lambda _c, _p, v: _parse_address(v))
@datadir_option
@json_option
def chain_balance(address: str, datadir: Path, as_json: bool) -> None:
    """Balance and nonce of ADDRESS, plus what the ledger contract owes it and its stake."""
    from flnode.consensus.ledger import LedgerContract

    with open_ledger(datadir) as chain:
        contract = LedgerContract(chain.spec.ledger_address)
        balance = chain.balance(address)
        owed = contract.owed(chain.call, address)
        stake = contract.stake(chain.call, address)
        _emit(
            {
                "address": address,
                "balance_wei": balance,
                "balance_ether": f"{balance / ETHER:.6f}",
                "nonce": chain.nonce(address),
                "owed_wei": owed,
                "stake_wei": stake,
            },
            as_json,
        )


@chain_group.command("reputation")
@click.argument("address", callback=lambda _c, _p, v: _parse_address(v))
@datadir_option
@json_option
def chain_reputation(address: str, datadir: Path, as_json: bool) -> None:
    """Reputation of device ADDRESS: score in [0, 1] and the evidence behind it."""
    from flnode.consensus.ledger import LedgerContract

    with open_ledger(datadir) as chain:
        contract = LedgerContract(chain.spec.ledger_address)
        score = contract.reputation(chain.call, address)
        good, bad, judged = contract.evidence(chain.call, address)
        _emit(
            {
                "address": address,
                "reputation": round(score, 6),
                "positive_evidence": round(good, 6),
                "negative_evidence": round(bad, 6),
                "judgements": judged,
            },
            as_json,
        )
