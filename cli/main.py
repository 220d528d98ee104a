"""The ``flnode`` entry point: one click group, errors as one line each.

Exit codes: 0 success; 1 a runtime failure (the message says what and what to do); 2 bad usage,
a bad flag, a bad config value or an unusable data dir; 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from flnode import __version__

from .chain import chain_group
from .cid import cid_command
from .console import console_command
from .devnet import devnet_group
from .init import init_command
from .keys import keys_group
from .network import network_group
from .simulate import simulate_command
from .start import start_command
from .task import task_group

USAGE_EXIT = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="flnode")
def cli() -> None:
    """flnode: a peer-to-peer node for private, blockchain-audited federated learning.

    Every participant runs the same daemon with a role (device, edge, miner, manufacturer).
    Start with `flnode init`, then `flnode start`.
    """


cli.add_command(init_command)
cli.add_command(keys_group)
cli.add_command(cid_command)
cli.add_command(start_command)
cli.add_command(simulate_command)
cli.add_command(network_group)
cli.add_command(chain_group)
cli.add_command(console_command)
cli.add_command(task_group)
cli.add_command(devnet_group)


def _fail(message: str, code: int) -> int:
    click.echo(f"flnode: error: {message}", err=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (the console script exits with it)."""
    from flnode.errors import ConfigError, DataDirError, FLNodeError

    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name="flnode", standalone_mode=False
        )
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see `{exc.ctx.command_path} --help`)"
        return _fail(exc.format_message() + hint, USAGE_EXIT)
    except click.Abort:
        return _fail("aborted", 130)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except (ConfigError, DataDirError) as exc:
        return _fail(str(exc), USAGE_EXIT)
    except FLNodeError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
