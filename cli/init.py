"""``flnode init``: create a data directory."""

from __future__ import annotations

from pathlib import Path

import click

from .options import datadir_option


@click.command("init")
@datadir_option
@click.option("--force", is_flag=True, help="Replace an existing node key (a new identity!).")
def init_command(datadir: Path, force: bool) -> None:
    """Create a data directory: config.toml, a new node key and an API token.

    An existing config.toml is kept. An existing node key is never replaced unless --force is
    given, since it is the node's identity and its chain account.
    """
    from flnode.datadir import init_datadir

    result = init_datadir(datadir, force=force)
    click.echo(f"initialised {result.datadir.path}")
    click.echo(
        f"  config   {result.datadir.config_file}" + ("" if result.wrote_config else " (kept)")
    )
    click.echo(f"  key      {result.datadir.key_file} (mode 0600)")
    click.echo(f"  token    {result.datadir.token_file} (mode 0600)")
    click.echo(f"  peer id  {result.identity.peer_id}")
    click.echo(f"  address  {result.identity.address}")
