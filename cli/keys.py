"""``flnode keys``: the node's identity."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import datadir_option


@click.group("keys")
def keys_group() -> None:
    """Show the node's key-derived identities."""


@keys_group.command("show")
@datadir_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def keys_show(datadir: Path, as_json: bool) -> None:
    """Print the libp2p peer ID and the chain address, both derived from node.key."""
    from flnode.datadir import DataDir
    from flnode.identity import NodeIdentity

    dd = DataDir(datadir)
    dd.check_initialised()
    identity = NodeIdentity.load(dd.key_file)
    info = {
        "peer_id": identity.peer_id,
        "address": identity.address,
        "public_key": identity.public_key.to_hex(),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"peer id  {info['peer_id']}")
        click.echo(f"address  {info['address']}")
