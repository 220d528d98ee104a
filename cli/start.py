"""``flnode start``: run the daemon in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from .options import datadir_option

ROLE_CHOICES = ("device", "edge", "miner", "manufacturer")


def _parse_roles(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...] | None:
    roles = [r.strip() for value in values for r in value.split(",") if r.strip()]
    for role in roles:
        if role not in ROLE_CHOICES:
            raise click.BadParameter(
                f"{role!r} is not a role; choose from {', '.join(ROLE_CHOICES)}", ctx, param
            )
    return tuple(dict.fromkeys(roles)) or None


@click.command("start")
@datadir_option
@click.option(
    "--role",
    "roles",
    multiple=True,
    callback=_parse_roles,
    metavar="ROLE[,ROLE]",
    help="Role(s) to run: device, edge, miner, manufacturer (repeat or comma-separate). "
    "Default: node.roles from the config.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Log level (default: log.level from the config, info).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default=None,
    help="console = key=value, json = one object per line, auto = console on a terminal.",
)
@click.option(
    "--listen",
    multiple=True,
    metavar="MULTIADDR",
    help="Listen address, e.g. /ip4/127.0.0.1/tcp/4001 (repeatable; default: p2p.listen).",
)
@click.option(
    "--bootstrap",
    multiple=True,
    metavar="MULTIADDR",
    help="Peer to connect to, /ip4/.../tcp/PORT/p2p/PEER_ID (repeatable; default: p2p.bootstrap).",
)
@click.option("--mdns/--no-mdns", default=None, help="Discover peers on the LAN with mDNS.")
@click.option("--network-id", default=None, help="Network name (default: node.network_id).")
@click.option(
    "--network",
    "network_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Network file (from `flnode network new`): run the ledger; also sets the network id.",
)
@click.option(
    "--api-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Control-API port on api.listen_host (0 = any free port; default: api.port).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Prometheus metrics port (0 = any free port; default: metrics.port).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file to use instead of <datadir>/config.toml.",
)
def start_command(
    datadir: Path,
    roles: tuple[str, ...] | None,
    log_level: str | None,
    log_format: str | None,
    listen: tuple[str, ...],
    bootstrap: tuple[str, ...],
    mdns: bool | None,
    network_id: str | None,
    network_file: Path | None,
    api_port: int | None,
    metrics_port: int | None,
    config_file: Path | None,
) -> None:
    """Run the node daemon in the foreground.

    Logs go to stderr. SIGINT or SIGTERM stops the node cleanly (exit code 0); a second signal
    cancels whatever is still shutting down.
    """
    import trio

    from flnode.config import load_config
    from flnode.datadir import DataDir
    from flnode.identity import NodeIdentity
    from flnode.log import configure_logging, get_logger
    from flnode.node import Node

    dd = DataDir(datadir)
    dd.check_initialised()
    if network_file is not None and network_id is None:
        from flnode.consensus.network import load_network

        network_id = load_network(network_file).network_id
    config = load_config(
        datadir,
        config_file=config_file,
        overrides={
            "node.roles": roles,
            "node.network_id": network_id,
            "chain.network_file": str(network_file.resolve()) if network_file else None,
            "log.level": log_level,
            "log.format": log_format,
            "p2p.listen": listen or None,
            "p2p.bootstrap": bootstrap or None,
            "p2p.mdns": mdns,
            "api.port": api_port,
            "metrics.port": metrics_port,
        },
    )
    configure_logging(config.log.level, config.log.format)
    identity = NodeIdentity.load(dd.key_file)
    log = get_logger("flnode.cli")

    async def daemon() -> None:
        node = Node(config, identity, datadir)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if node_stopping.is_set():
                            log.warning("second signal, cancelling shutdown", signal=name)
                            nursery.cancel_scope.cancel()
                            return
                        log.info("signal received, stopping", signal=name)
                        node_stopping.set()
                        node.request_stop()

                node_stopping = trio.Event()
                nursery.start_soon(watch_signals)
                await node.run()
                nursery.cancel_scope.cancel()

    with dd.lock():
        trio.run(daemon)
