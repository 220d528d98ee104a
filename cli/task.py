"""``flnode task publish|status|join|close``: training tasks, through a running node's API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .options import datadir_option


def _call(datadir: Path, method: str, params: dict[str, Any], timeout: float = 60.0) -> Any:
    import trio

    from flnode.api import ApiClient, ApiEndpoint
    from flnode.rpc import RpcError

    endpoint = ApiEndpoint.from_datadir(datadir)

    async def go() -> Any:
        async with ApiClient.open(endpoint) as client:
            return await client.call(method, params, timeout=timeout)

    try:
        return trio.run(go)
    except RpcError as exc:
        raise click.ClickException(f"{method}: {exc.message}") from None


@click.group("task")
def task_group() -> None:
    """Publish, follow, join and close federated training tasks (on a running node)."""


@task_group.command("publish")
@datadir_option
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="Task spec (TOML), e.g. examples/task-dpsgd-full.toml.",
)
@click.option(
    "--reward-per-round",
    type=click.IntRange(0),
    default=10**18,
    show_default=True,
    help="Wei paid out per round.",
)
@click.option(
    "--deposit", type=click.IntRange(0), default=None, help="Wei (default: rounds × reward)."
)
def publish_command(
    datadir: Path, spec_file: Path, reward_per_round: int, deposit: int | None
) -> None:
    """Pre-train on the public slice, store spec and model, and send createTask (manufacturer)."""
    from flnode.learning.taskspec import TaskSpecError, load_task_spec

    text = spec_file.read_text(encoding="utf-8")
    try:
        load_task_spec(text.encode())
    except TaskSpecError as exc:
        raise click.ClickException(str(exc)) from None
    params: dict[str, Any] = {"spec": text, "reward_per_round_wei": reward_per_round}
    if deposit is not None:
        params["deposit_wei"] = deposit
    click.echo(json.dumps(_call(datadir, "task_create", params, timeout=900.0), indent=2))


@task_group.command("status")
@datadir_option
@click.argument("task", type=click.IntRange(1))
def status_command(datadir: Path, task: int) -> None:
    """The task's rounds as this node sees them (round_status)."""
    click.echo(json.dumps(_call(datadir, "round_status", {"task": task}), indent=2))


@task_group.command("join")
@datadir_option
@click.argument("task", type=click.IntRange(1))
def join_command(datadir: Path, task: int) -> None:
    """Join a task as a device (devices with federation.auto_join do it themselves)."""
    click.echo(json.dumps(_call(datadir, "task_join", {"task": task}), indent=2))


@task_group.command("close")
@datadir_option
@click.argument("task", type=click.IntRange(1))
def close_command(datadir: Path, task: int) -> None:
    """Close a finished (or idle) task you own; the unspent deposit is credited back."""
    click.echo(json.dumps(_call(datadir, "task_close", {"task": task}, timeout=120.0), indent=2))
