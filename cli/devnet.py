"""``flnode devnet up|status|logs|restart|down``: a local network of real node processes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

DEFAULT_DIR = Path(".devnet")

dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DIR,
    envvar="FLNODE_DEVNET_DIR",
    show_default=True,
    help="The devnet's directory (network file, data dirs, logs).",
)


@click.group("devnet")
def devnet_group() -> None:
    """Run a local network of flnode processes on 127.0.0.1.

    `up` starts them and waits until all are connected; `status` shows each node; `logs` prints
    their logs; `restart NODE` brings one back; `down` stops them all.
    """


@devnet_group.command("up")
@dir_option
@click.option("--miners", type=click.IntRange(0, 64), default=None, help="Miner nodes.")
@click.option("--devices", type=click.IntRange(0, 64), default=None, help="Device nodes.")
@click.option("--edges", type=click.IntRange(0, 64), default=None, help="Edge nodes.")
@click.option(
    "--manufacturers",
    type=click.IntRange(0, 64),
    default=None,
    help="Manufacturer nodes (default 1 when other counts are given).",
)
@click.option(
    "--layout",
    "layout_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="A TOML layout (counts, named nodes, [config.<section>] overrides).",
)
@click.option(
    "--network-id", default=None, help="Network id of the devnet (default flnode-devnet)."
)
@click.option(
    "--timeout",
    type=click.FloatRange(1),
    default=120.0,
    show_default=True,
    help="Seconds to wait for readiness.",
)
@click.option("--reset", is_flag=True, help="Delete an existing (stopped) devnet in --dir first.")
def up_command(
    directory: Path,
    miners: int | None,
    devices: int | None,
    edges: int | None,
    manufacturers: int | None,
    layout_file: Path | None,
    network_id: str | None,
    timeout: float,
    reset: bool,
) -> None:
    """Create (or reuse) the devnet in --dir, start its nodes and wait until all are connected
    (and, when it has miners, until every node has committed a first block)."""
    import trio

    from flnode.devnet import layout_from_counts, load_layout, prepare, up

    counts = {"miners": miners, "devices": devices, "edges": edges, "manufacturers": manufacturers}
    layout = None
    if layout_file is not None:
        layout = load_layout(layout_file, **counts)
        if network_id is not None:
            layout = layout.model_copy(update={"network_id": network_id})
    elif any(v is not None for v in counts.values()):
        if manufacturers is None:
            counts["manufacturers"] = 1
        layout = layout_from_counts(
            **{k: v or 0 for k, v in counts.items()}, network_id=network_id or "flnode-devnet"
        )
    network = prepare(directory, layout, reset=reset)
    started = time.monotonic()
    with _Progress(len(network.nodes)) as progress:
        trio.run(lambda: up(network, timeout_s=timeout, progress=progress.update))
    click.echo(
        f"devnet up: {len(network.nodes)} nodes in {directory} "
        f"({time.monotonic() - started:.1f} s); `flnode devnet status --dir {directory}`"
    )
    _print_status(network, as_json=False)
    first = network.nodes[0].name
    click.echo(f"attach to a node: flnode console --datadir {network.datadir(first)}")


class _Progress:
    """One progress line on stderr while `up` waits (ready, then connected)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.total = total
        self.progress = Progress(
            TextColumn("{task.description:>10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            if key in ("total", "done"):
                continue
            if key not in self.tasks:
                self.tasks[key] = self.progress.add_task(key, total=self.total)
            self.progress.update(self.tasks[key], completed=value)


@devnet_group.command("status")
@dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node, as a list.")
def status_command(directory: Path, as_json: bool) -> None:
    """Show each node: role, peer id, API, pid, alive, connected peers."""
    from flnode.devnet import load_network

    _print_status(load_network(directory), as_json=as_json)


def _print_status(network: Any, *, as_json: bool) -> None:
    import trio
    from rich.console import Console
    from rich.table import Table

    from flnode.devnet import status

    rows = trio.run(status, network)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return
    table = Table("node", "roles", "peer id", "api", "pid", "alive", "height", "peers", box=None)
    for r in rows:
        peers = "-" if r.peers is None else str(r.peers)
        if r.api_error:
            peers = f"api error: {r.api_error}"
        table.add_row(
            r.name,
            ",".join(r.roles),
            f"{r.peer_id[:8]}…{r.peer_id[-6:]}",
            r.api_url,
            str(r.pid or "-"),
            "[green]yes[/]" if r.alive else "[red]no[/]",
            "-" if r.height is None else str(r.height),
            peers,
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    dead = [r.name for r in rows if not r.alive]
    if dead and len(dead) < len(rows):
        click.echo(
            f"not running: {', '.join(dead)} (`flnode devnet restart --dir {network.dir} NODE`)"
        )


@devnet_group.command("logs")
@dir_option
@click.argument("node", required=False)
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="Lines from the end.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
def logs_command(directory: Path, node: str | None, lines: int, follow: bool) -> None:
    """Print the end of one node's log, or of every node's (prefixed with its name)."""
    from flnode.devnet import load_network

    network = load_network(directory)
    names = [network.node(node).name] if node else [n.name for n in network.nodes]
    prefix = len(names) > 1
    width = max(len(n) for n in names)
    offsets: dict[str, int] = {}
    for name in names:
        path = network.log_file(name)
        data = path.read_bytes() if path.exists() else b""
        offsets[name] = len(data)
        for line in data.decode("utf-8", "replace").splitlines()[-lines:] if lines else []:
            click.echo(f"{name:<{width}} | {line}" if prefix else line)
    try:
        while follow:
            time.sleep(0.2)
            for name in names:
                path = network.log_file(name)
                if not path.exists() or path.stat().st_size <= offsets[name]:
                    continue
                with open(path, "rb") as f:
                    f.seek(offsets[name])
                    chunk = f.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]
                offsets[name] += len(complete)
                for line in complete.decode("utf-8", "replace").splitlines():
                    click.echo(f"{name:<{width}} | {line}" if prefix else line)
    except KeyboardInterrupt:
        pass


@devnet_group.command("restart")
@dir_option
@click.argument("node")
@click.option("--timeout", type=click.FloatRange(1), default=60.0, show_default=True)
def restart_command(directory: Path, node: str, timeout: float) -> None:
    """Stop NODE if it runs, start it again and wait until it is connected."""
    import trio

    from flnode.devnet import load_network, restart

    network = load_network(directory)
    outcome = trio.run(lambda: restart(network, node, timeout_s=timeout))
    click.echo(f"{node}: was {outcome.how}, restarted and connected")


@devnet_group.command("down")
@dir_option
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL.",
)
def down_command(directory: Path, grace: float) -> None:
    """Stop every node: SIGTERM, then SIGKILL for any still running after --grace seconds."""
    from flnode.devnet import down, load_network

    network = load_network(directory)
    for outcome in down(network, grace_s=grace):
        click.echo(
            f"{outcome.name}: {outcome.how}" + (f" (pid {outcome.pid})" if outcome.pid else "")
        )
