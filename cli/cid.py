"""``flnode cid``: the CID of files, as the blob store names them."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("cid")
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
)
def cid_command(files: tuple[Path, ...]) -> None:
    """Print the CIDv1 (raw, sha2-256, base32) of each FILE.

    The same CID that `ipfs add --cid-version 1 --raw-leaves` gives a file of up to one block,
    and the name under which flnode stores those bytes.
    """
    from flnode.cid import Cid

    for path in files:
        cid = Cid.from_file(path)
        click.echo(str(cid) if len(files) == 1 else f"{cid}  {path}")
