"""``flnode network``: make and inspect network files (chain id, genesis, accounts, miners)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

ETHER = 10**18
DEFAULT_BALANCE = "1000000ether"
_AMOUNT = re.compile(r"^\s*(\d+)\s*(ether|eth|gwei|wei)?\s*$", re.IGNORECASE)
_UNITS = {"ether": ETHER, "eth": ETHER, "gwei": 10**9, "wei": 1, None: 1}


def parse_amount(text: str) -> int:
    """``123`` (wei), ``5ether``, ``7 gwei``."""
    match = _AMOUNT.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not an amount (e.g. 1000, 5ether, 7gwei)")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _UNITS[unit]


def _address_of(value: str) -> str:
    """An address given directly, or the address of a data dir's node key."""
    from eth_utils import is_address, to_checksum_address

    if is_address(value):
        return to_checksum_address(value)
    path = Path(value).expanduser()
    if path.is_dir():
        from flnode.datadir import DataDir
        from flnode.identity import NodeIdentity

        dd = DataDir(path)
        dd.check_initialised()
        return NodeIdentity.load(dd.key_file).address
    raise click.BadParameter(f"{value!r} is neither an address nor an initialised data dir")


def _pairs(values: tuple[str, ...], default: str, what: str) -> list[tuple[str, int]]:
    out = []
    for value in values:
        who, _, amount = value.partition("=")
        try:
            out.append((_address_of(who), parse_amount(amount or default)))
        except click.BadParameter as exc:
            raise click.BadParameter(f"{what} {value!r}: {exc.message}") from None
    return out


@click.group("network")
def network_group() -> None:
    """Create and inspect network files (shared by every node of a network)."""


@network_group.command("new")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--network-id", required=True, help="Network name: a-z, 0-9 and '-', ≤ 32 characters."
)
@click.option(
    "--chain-id", type=click.IntRange(1, 2**53 - 1), required=True, help="EIP-155 chain id."
)
@click.option(
    "--account",
    "accounts",
    multiple=True,
    metavar="ADDR|DATADIR[=AMOUNT]",
    help=f"Pre-fund an account (default {DEFAULT_BALANCE}); repeatable.",
)
@click.option(
    "--miner",
    "miners",
    multiple=True,
    metavar="ADDR|DATADIR[=STAKE]",
    help="Initial miner with its stake (default: --min-stake); it is pre-funded too. Repeatable.",
)
@click.option("--min-stake", default="1ether", show_default=True, help="Minimum miner stake.")
@click.option(
    "--leave-delay",
    type=click.IntRange(0),
    default=100,
    show_default=True,
    help="Blocks between a miner's requestLeave and leave.",
)
@click.option(
    "--idle-close",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Blocks without progress after which a task's owner may close it early.",
)
@click.option("--gas-limit", type=click.IntRange(5_000_000), default=30_000_000, show_default=True)
@click.option(
    "--timestamp", type=click.IntRange(0), default=None, help="Genesis time (default: now)."
)
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def network_new(
    out: Path,
    network_id: str,
    chain_id: int,
    accounts: tuple[str, ...],
    miners: tuple[str, ...],
    min_stake: str,
    leave_delay: int,
    idle_close: int,
    gas_limit: int,
    timestamp: int | None,
    force: bool,
) -> None:
    """Write a new network file OUT (.toml, or .json) and print its genesis hash.

    ADDR is an address; DATADIR is an initialised data dir whose node key's address is used.
    """
    from flnode.consensus.network import new_network

    if out.exists() and not force:
        raise click.UsageError(f"{out} exists; refusing to overwrite it (use --force)")
    stake = parse_amount(min_stake)
    miner_pairs = _pairs(miners, str(stake), "--miner")
    funded = _pairs(accounts, DEFAULT_BALANCE, "--account")
    listed = {a for a, _ in funded}
    funded += [(a, parse_amount(DEFAULT_BALANCE)) for a, _ in miner_pairs if a not in listed]
    spec = new_network(
        network_id=network_id,
        chain_id=chain_id,
        accounts=funded,
        miners=miner_pairs,
        genesis_timestamp=timestamp,
        gas_limit=gas_limit,
        min_stake=stake,
        leave_delay_blocks=leave_delay,
        idle_close_blocks=idle_close,
    )
    spec.save(out)
    click.echo(f"wrote {out}")
    click.echo(f"network   {spec.network_id} (chain id {spec.chain_id})")
    click.echo(f"genesis   {spec.genesis_hash}")
    click.echo(f"accounts  {len(spec.accounts)}, miners {len(spec.miners)}")


@network_group.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the verified file as JSON.")
def network_show(file: Path, as_json: bool) -> None:
    """Verify a network file (recompute its genesis) and summarise it."""
    from flnode.consensus.network import load_network

    spec = load_network(file)
    if as_json:
        click.echo(json.dumps(spec.to_dict(), indent=2))
        return
    click.echo(f"network   {spec.network_id} (chain id {spec.chain_id})")
    click.echo(f"genesis   {spec.genesis_hash} (verified)")
    click.echo(f"ledger    {spec.ledger_address} code {spec.ledger_code_hash}")
    click.echo(f"accounts  {len(spec.accounts)}")
    for m in spec.miners:
        click.echo(f"miner     {m.address} stake {m.stake / ETHER:g} ether")
