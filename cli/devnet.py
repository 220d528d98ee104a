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
    # Absolute: each node's config names files in it, and a node reads relative paths against
    # its own data dir (`make run` passes a relative one).
    type=click.Path(file_okay=False, path_type=Path, resolve_path=True),
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


_spawn_option = click.option(
    "--spawn",
    type=click.Choice(["fork", "exec"]),
    default="fork",
    show_default=True,
    help="fork: start the nodes from one process that has imported their code (fast, shares "
    "memory); exec: a new interpreter per node.",
)


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
@_spawn_option
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
    spawn: str,
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
        trio.run(lambda: up(network, timeout_s=timeout, progress=progress.update, spawn=spawn))
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


@devnet_group.command("run")
@dir_option
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Task spec (TOML) to train; default: the built-in MNIST DP-SGD task "
    "(`flnode devnet run --show-spec` prints it).",
)
@click.option(
    "--miners",
    type=click.IntRange(1, 16),
    default=4,
    show_default=True,
    help="Miners, when the devnet has to be created.",
)
@click.option(
    "--devices",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Devices, when the devnet has to be created.",
)
@click.option(
    "--edges",
    type=click.IntRange(0, 8),
    default=1,
    show_default=True,
    help="Edge nodes, when the devnet has to be created.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(10),
    default=1800.0,
    show_default=True,
    help="Seconds the task may take.",
)
@click.option(
    "--down/--keep",
    "stop_after",
    default=False,
    show_default=True,
    help="Stop the devnet when the task is done (default: keep it running).",
)
@click.option("--show-spec", is_flag=True, help="Print the built-in task spec and exit.")
@_spawn_option
def run_command(
    directory: Path,
    spec_file: Path | None,
    miners: int,
    devices: int,
    edges: int,
    timeout: float,
    stop_after: bool,
    show_spec: bool,
    spawn: str,
) -> None:
    """Train a task end to end on a devnet: bring it up if needed (1 manufacturer, 4 miners,
    8 devices, 1 edge by default), publish the task, follow its rounds, and write report.json,
    report.md and accuracy.png into --dir."""
    import trio

    from flnode.devnet import layout_from_counts, prepare, up
    from flnode.devnet.network import network_exists
    from flnode.devnet.training import DEFAULT_TASK_SPEC, run_task
    from flnode.learning.taskspec import load_task_spec

    if show_spec:
        click.echo(DEFAULT_TASK_SPEC, nl=False)
        return
    spec_text = DEFAULT_TASK_SPEC if spec_file is None else spec_file.read_text(encoding="utf-8")
    load_task_spec(spec_text.encode())  # a bad spec is refused before anything starts
    layout = None
    if not network_exists(directory):
        layout = layout_from_counts(miners=miners, devices=devices, edges=edges, manufacturers=1)
    network = prepare(directory, layout)
    from flnode.devnet.processes import is_alive, node_pid

    running = [is_alive(node_pid(network, n.name), network.datadir(n.name)) for n in network.nodes]
    if all(running):
        click.echo(
            f"using the running devnet in {directory} ({len(network.nodes)} nodes)", err=True
        )
    elif any(running):
        raise click.ClickException(
            f"some nodes of the devnet in {directory} are running and some are not; "
            f"`flnode devnet status --dir {directory}` shows which (restart them, or `down` first)"
        )
    else:
        started = time.monotonic()
        with _Progress(len(network.nodes)) as progress:
            trio.run(lambda: up(network, timeout_s=300.0, progress=progress.update, spawn=spawn))
        click.echo(
            f"devnet up: {len(network.nodes)} nodes in {directory} "
            f"({time.monotonic() - started:.1f} s)",
            err=True,
        )
    with _TaskProgress() as follow:
        result = trio.run(
            lambda: run_task(network, spec_text, timeout_s=timeout, on_progress=follow.update)
        )
    report = result.report
    click.echo(_summary(report))
    for path in result.paths:
        click.echo(f"  {path}")
    if stop_after:
        from flnode.devnet import down

        down(network)
        click.echo(f"devnet in {directory} stopped")
    else:
        click.echo(f"the devnet keeps running: `flnode devnet down --dir {directory}` stops it")


def _summary(report: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.2f} %"

    gain = report.get("gain_points")
    return (
        f"task {report['task']} finished: {len(report['rounds'])} rounds, "
        f"public-only {pct(report['public_only_accuracy'])} → final "
        f"{pct(report['final_accuracy'])} ({'–' if gain is None else f'{gain:+.2f}'} points); "
        f"every node agrees on the final model: "
        f"{'yes' if report['all_nodes_agree_on_final_model'] else 'NO'}; "
        f"{report['duration_s']:.0f} s. Reports:"
    )


class _TaskProgress:
    """A progress bar over the task's rounds, with the latest accuracy, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(stderr=True),
        )
        self.task: Any = None

    def __enter__(self) -> _TaskProgress:
        self.progress.__enter__()
        self.task = self.progress.add_task("publishing", total=None, detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, status: dict[str, Any]) -> None:
        stage = status.get("stage")
        if stage == "published":
            acc = status.get("public_only_accuracy")
            self.progress.update(
                self.task,
                description=f"task {status['task']}",
                total=status.get("rounds"),
                detail=f"public-only {100 * acc:.2f} %" if acc is not None else "",
            )
        elif stage == "running":
            committed = status.get("committed") or []
            open_round = status.get("open") or {}
            subs = len(open_round.get("submissions") or [])
            records = (status.get("records") or {}).get("miner", {}).get("rounds", [])
            accs = [r["accuracy"] for r in records if r.get("accuracy") is not None]
            detail = f"round {status.get('round', 0) + 1}: {subs} updates in"
            if accs:
                detail += f"; accuracy {100 * accs[-1]:.2f} %"
            self.progress.update(self.task, completed=len(committed), detail=detail)
        elif stage == "collecting":
            self.progress.update(self.task, detail=status.get("detail", ""))
        else:
            self.progress.update(self.task, detail=status.get("detail", ""))


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
