"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_DATADIR = Path("~/.flnode").expanduser()

datadir_option = click.option(
    "--datadir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATADIR,
    envvar="FLNODE_DATADIR",
    show_default=True,
    show_envvar=True,
    help="The node's data directory (config, key, blobs).",
)
