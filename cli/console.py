"""``flnode console``: an interactive prompt (or one ``--exec`` command) on a running node's API.

Commands are method calls: ``node_peers``, ``node_connect /ip4/127.0.0.1/tcp/4001/p2p/16Uiu2...``,
``node_peers all=true`` or ``rpc_help {"method": "node_info"}``. Arguments are positional or
``name=value``; a value is read as JSON when it parses and the parameter is not a string, so
``all=true`` is a boolean and an address stays text. ``help`` lists the methods, ``help METHOD``
explains one, ``subscribe EVENT...`` streams events above the prompt until ``unsubscribe ID``.

prompt_toolkit runs its own (asyncio) loop in the main thread, so the API client runs in a trio
loop in a second thread and the prompt calls into it with ``trio.from_thread``.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from .options import DEFAULT_DATADIR

CONSOLE_COMMANDS = ("help", "exit", "quit")
HISTORY_FILE = "console_history"


class CommandError(Exception):
    """A console line that cannot be turned into a call."""


def parse_command(line: str, methods: dict[str, dict[str, Any]]) -> tuple[str, Any]:
    """``(method, params)`` for one console line; params are a dict, a list, or None."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise CommandError(f"cannot parse the line: {exc}") from None
    if not words:
        raise CommandError("empty command")
    method, args = words[0], words[1:]
    if not args:
        return method, None
    rest = line.split(None, 1)[1].strip()
    if rest[0] in "{[":
        try:
            params = json.loads(rest)
        except ValueError as exc:
            raise CommandError(f"parameters look like JSON but are not valid: {exc}") from None
        return method, params
    types = {p["name"]: p["type"] for p in methods.get(method, {}).get("params", [])}
    order = list(types)
    named: dict[str, Any] = {}
    positional: list[Any] = []
    for arg in args:
        name, sep, value = arg.partition("=")
        if sep and name.isidentifier():
            named[name] = _value(value, types.get(name))
        else:
            index = len(positional)
            positional.append(_value(arg, types.get(order[index]) if index < len(order) else None))
    if named and positional:
        raise CommandError("use either positional arguments or name=value, not both")
    if method == "subscribe" and positional:
        return method, {"events": positional}  # subscribe peer_joined peer_left
    return method, named if named else positional


def _events_of(params: Any) -> list[str]:
    """The event names of a parsed ``subscribe`` line (``subscribe a b`` or ``{"events": [...]}``)."""
    if params is None:
        return []
    if isinstance(params, dict) and set(params) <= {"events"}:
        params = params.get("events", [])
    if not isinstance(params, list) or not all(isinstance(e, str) for e in params):
        raise CommandError("subscribe takes event names, e.g. subscribe peer_joined peer_left")
    return params


def _value(text: str, type_name: str | None) -> Any:
    if type_name == "string":
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


class TrioClientThread:
    """An :class:`~flnode.api.ApiClient` living in a trio loop on its own thread."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="flnode-console-api", daemon=True)
        self._token: Any = None
        self._client: Any = None
        self._stop: Any = None
        self._nursery: Any = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        import trio

        from flnode.api import ApiClient

        async def main() -> None:
            try:
                async with ApiClient.open(self.endpoint) as client, trio.open_nursery() as n:
                    self._client, self._nursery = client, n
                    self._token = trio.lowlevel.current_trio_token()
                    self._stop = trio.Event()
                    self._ready.set()
                    await self._stop.wait()
                    n.cancel_scope.cancel()
            except BaseException as exc:  # hand any failure to the waiting main thread
                self._error = exc
            finally:
                self._ready.set()

        trio.run(main)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    def call(self, method: str, params: Any) -> Any:
        import trio

        return trio.from_thread.run(self._client.call, method, params, trio_token=self._token)

    def subscribe(self, params: Any, on_event: Callable[[dict[str, Any]], None]) -> Any:
        import trio

        async def go() -> Any:
            sub = await self._client.subscribe(*_events_of(params))

            async def pump() -> None:
                async for event in sub:
                    on_event(event)

            self._nursery.start_soon(pump)
            return sub

        return trio.from_thread.run(go, trio_token=self._token)

    def close(self) -> None:
        import trio

        if self._thread.is_alive() and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join(timeout=5)


class ConsoleApp:
    """The interactive console: prompt, completion, help, pretty results, live events."""

    def __init__(self, client: TrioClientThread, history: Path | None) -> None:
        from rich.console import Console

        self.client = client
        self.history = history
        self.out = Console(highlight=False)
        self.methods: dict[str, dict[str, Any]] = {}
        self.events: list[str] = []
        self.subscriptions: list[str] = []  # ids of this session's subscriptions, for completion

    def load_help(self) -> None:
        self.methods = {m["name"]: m for m in self.client.call("rpc_methods", None)}
        self.events = [e["event"] for e in self.client.call("rpc_events", None)]

    def banner(self) -> None:
        info = self.client.call("node_info", None)
        self.out.print(
            f"flnode console: connected to {self.client.endpoint.url} "
            f"(peer {info['peer_id']}, roles {','.join(info['roles'])}, "
            f"network {info['network_id']})"
        )
        self.out.print("Type help for the methods, Tab to complete, Ctrl-D to leave.")

    def run(self) -> int:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.patch_stdout import patch_stdout

        history = FileHistory(str(self.history)) if self.history else InMemoryHistory()
        session: PromptSession[str] = PromptSession(
            history=history, completer=_Completer(self), complete_while_typing=False
        )
        self.banner()
        with patch_stdout(raw=True):
            while True:
                try:
                    line = session.prompt("flnode> ")
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    return 0
                if not self.client.alive:
                    self.out.print("[red]the connection to the node is gone[/]")
                    return 1
                if not self.handle(line.strip()):
                    return 0

    def handle(self, line: str) -> bool:
        """Run one line; False when the user asked to leave."""
        from flnode.errors import FLNodeError
        from flnode.rpc import RpcError

        if not line:
            return True
        word = line.split()[0]
        if word in ("exit", "quit"):
            return False
        if word == "help":
            self.show_help(line.split()[1] if len(line.split()) > 1 else None)
            return True
        try:
            method, params = parse_command(line, self.methods)
            if method == "subscribe":
                sub = self.client.subscribe(params, self.show_event)
                self.subscriptions.append(sub.id)
                self.out.print(
                    f"subscribed [bold]{sub.id}[/] to {', '.join(sub.events)}"
                    f" (unsubscribe {sub.id} to stop)"
                )
                return True
            if method == "unsubscribe" and isinstance(params, list):
                params = {"subscription": params[0]} if params else params
            self.show_result(self.client.call(method, params))
            if method == "unsubscribe" and isinstance(params, dict):
                with contextlib.suppress(ValueError):
                    self.subscriptions.remove(params.get("subscription"))
        except CommandError as exc:
            self.out.print(f"[red]error:[/] {exc}")
        except RpcError as exc:
            self.out.print(f"[red]error {exc.code}:[/] {exc.message}", markup=True)
        except FLNodeError as exc:
            self.out.print(f"[red]error:[/] {exc}")
        return True

    def show_result(self, result: Any) -> None:
        self.out.print_json(data=result)

    def show_event(self, event: dict[str, Any]) -> None:
        data = json.dumps(event.get("data", {}), separators=(", ", ": "))
        dropped = f" ({event['dropped']} dropped)" if event.get("dropped") else ""
        self.out.print(f"[cyan]event {event.get('event')}[/] {data}{dropped}", markup=True)

    def show_help(self, name: str | None) -> None:
        from rich.table import Table

        if name is None:
            table = Table("method", "what it does", box=None, show_header=True)
            for method in sorted(self.methods):
                table.add_row(method, self.methods[method]["summary"])
            self.out.print(table)
            self.out.print(
                "help METHOD explains one; arguments are positional or name=value; "
                "events: " + ", ".join(self.events)
            )
            return
        method = self.methods.get(name)
        if method is None:
            from difflib import get_close_matches

            close = get_close_matches(name, self.methods, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            self.out.print(f"[red]no method {name!r}[/]{hint}")
            return
        self.out.print(f"[bold]{name}[/]: {method['summary']}")
        if method["params"]:
            table = Table("parameter", "type", "required", "description", box=None)
            for p in method["params"]:
                required = "yes" if p["required"] else f"no (default {p.get('default')!r})"
                table.add_row(p["name"], p["type"], required, p["description"])
            self.out.print(table)
            example = " ".join(f"{p['name']}=..." for p in method["params"])
            self.out.print(f"usage: {name} {example}")
        else:
            self.out.print("no parameters")
        if method["result"]:
            self.out.print(f"returns: {method['result']}")


class _Completer(Completer):
    """Completes method names, then ``help`` targets, event names or ``param=``."""

    def __init__(self, app: ConsoleApp) -> None:
        self.app = app

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        text = document.text_before_cursor
        words = text.split()
        current = "" if text.endswith(" ") or not words else words[-1]
        if len(words) == 0 or (len(words) == 1 and not text.endswith(" ")):
            options: Iterable[str] = [*self.app.methods, *CONSOLE_COMMANDS]
        elif words[0] == "help":
            options = self.app.methods
        elif words[0] == "subscribe":
            options = self.app.events
        elif words[0] == "unsubscribe":
            options = self.app.subscriptions
        else:
            method = self.app.methods.get(words[0], {})
            options = [f"{p['name']}=" for p in method.get("params", [])]
        for option in sorted(options):
            if option.startswith(current):
                yield Completion(option, start_position=-len(current))


@click.command("console")
@click.option(
    "--datadir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="FLNODE_DATADIR",
    help=f"Data dir of the running node (its node.json and api.token). Default: {DEFAULT_DATADIR}.",
)
@click.option(
    "--url", default=None, help="API URL, e.g. ws://127.0.0.1:8545/ (instead of --datadir)."
)
@click.option(
    "--token", default=None, envvar="FLNODE_API_TOKEN", help="API token to use with --url."
)
@click.option(
    "--exec",
    "command",
    default=None,
    metavar="COMMAND",
    help="Run one command, print its result as JSON and exit (subscribe: one JSON line per event).",
)
def console_command(
    datadir: Path | None, url: str | None, token: str | None, command: str | None
) -> int:
    """Attach to a running node's control API.

    Interactive by default: history, Tab completion, `help` and `help METHOD`, pretty results,
    `subscribe EVENT...` shows events live. With --exec, one command's result is printed as JSON
    (exit code 1 and the error on stderr if it fails).
    """
    from flnode.api import ApiEndpoint

    if url is not None:
        if datadir is not None:
            raise click.UsageError("give either --datadir or --url, not both")
        endpoint = ApiEndpoint(url, token)
    else:
        datadir = datadir or DEFAULT_DATADIR
        endpoint = ApiEndpoint.from_datadir(datadir)
        if token is not None:
            endpoint = ApiEndpoint(endpoint.url, token)
    if command is not None:
        return _exec(endpoint, command)
    client = TrioClientThread(endpoint)
    client.start()
    try:
        app = ConsoleApp(client, (datadir / HISTORY_FILE) if datadir else None)
        app.load_help()
        return app.run()
    finally:
        client.close()


def _exec(endpoint: Any, command: str) -> int:
    """``--exec``: one call, its result as JSON on stdout; events as JSON lines for subscribe."""
    import trio

    from flnode.api import ApiClient
    from flnode.rpc import RpcError

    async def main() -> int:
        async with ApiClient.open(endpoint) as client:
            methods = {m["name"]: m for m in await client.call("rpc_methods")}
            try:
                method, params = parse_command(command, methods)
            except CommandError as exc:
                raise click.UsageError(str(exc)) from None
            if method == "help":  # the console's own command, as the rpc_* methods answer it
                method = "rpc_help" if params else "rpc_methods"
            try:
                if method == "subscribe":
                    sub = await client.subscribe(*_events_of(params))
                    click.echo(json.dumps({"subscription": sub.id, "events": sub.events}))
                    async for event in sub:
                        click.echo(json.dumps(event))
                    return 0
                result = await client.call(method, params)
            except RpcError as exc:
                click.echo(f"flnode: error {exc.code}: {exc.message}", err=True)
                return 1
            click.echo(json.dumps(result, indent=2, sort_keys=True))
            return 0

    try:
        return trio.run(main)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_command())
