"""`flnode console` as a person uses it: a real daemon, the prompt driven in a pseudo-terminal."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from flnode.cli.console import CommandError, parse_command
from tests.daemons import Daemon, free_port, init_datadir


@pytest.fixture
def node(flnode_exe: list[str], tmp_path: Path, clean_env: dict[str, str]):  # type: ignore[no-untyped-def]
    datadir = init_datadir(flnode_exe, tmp_path / "a", clean_env)
    api_port, metrics_port = free_port(), free_port()
    daemon = Daemon(
        flnode_exe,
        datadir,
        clean_env,
        "--api-port",
        str(api_port),
        "--metrics-port",
        str(metrics_port),
    )
    daemon.wait_for(lambda: bool(daemon.events("ready")), 30, "node a ready")
    state = json.loads((datadir / "node.json").read_text())
    assert state["api_url"] == f"ws://127.0.0.1:{api_port}/"
    assert state["metrics_url"] == f"http://127.0.0.1:{metrics_port}/metrics"
    yield daemon
    assert daemon.stop() == 0


# Terminal control sequences (cursor moves, modes, colours) and carriage returns: what is left is
# the text a person sees, in the order it was drawn.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


class Screen:
    """What the console has drawn so far, as plain text, read from the pseudo-terminal."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.text = ""
        self.pos = 0

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.text, self.pos)
            if match:
                self.pos = match.end()
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on screen; it shows:\n{self.text[-1500:]}")
            try:
                chunk = self.child.read_nonblocking(4096, timeout=0.2)
            except pexpect.TIMEOUT:
                continue
            self.text += _CONTROL.sub("", chunk)


def _console_env(clean_env: dict[str, str]) -> dict[str, str]:
    # No colours and no cursor-position queries, so the screen is plain text to match on.
    return {**clean_env, "NO_COLOR": "1", "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}


def test_interactive_console_in_a_pty(
    node: Daemon, flnode_exe: list[str], tmp_path: Path, clean_env: dict[str, str]
) -> None:
    child = pexpect.spawn(
        flnode_exe[0],
        ["console", "--datadir", str(node.datadir)],
        env=_console_env(clean_env),
        dimensions=(50, 160),
        encoding="utf-8",
        timeout=20,
    )
    screen = Screen(child)
    try:
        screen.expect("connected to ws://127.0.0.1:")
        screen.expect(node.peer_id)
        screen.expect("flnode>")

        child.sendline("help")
        screen.expect("node_connect +Connect to a peer now")
        screen.expect("events: peer_joined, peer_left")
        screen.expect("flnode>")

        child.send("node_pe\t")  # Tab completes the method name
        screen.expect("node_peers")
        child.send("\r")
        screen.expect('"connected": 0')
        screen.expect("flnode>")

        child.sendline("help node_connect")
        screen.expect(r"addr +string +yes +Full multiaddr: /ip4/HOST/tcp/PORT/p2p/PEER_ID")
        screen.expect("flnode>")

        child.sendline("nod_info")
        screen.expect("error -32601: unknown method 'nod_info'; did you mean node_info")
        screen.expect("flnode>")

        child.sendline("node_connect /ip4/127.0.0.1/tcp/1")
        screen.expect("error -32602: invalid params for node_connect: addr: expected")
        screen.expect("flnode>")

        child.sendline("subscribe peer_joined peer_left")
        sid = screen.expect(r"subscribed ([0-9a-f]{16}) to peer_joined, peer_left").group(1)
        screen.expect("flnode>")

        # A second node joins: the event appears on the screen while the prompt waits.
        datadir_b = init_datadir(flnode_exe, tmp_path / "b", clean_env)
        addr = json.loads((node.datadir / "node.json").read_text())["p2p_addrs"][0]
        b = Daemon(flnode_exe, datadir_b, clean_env, "--bootstrap", addr)
        try:
            b.wait_for(lambda: bool(b.events("ready")), 30, "node b ready")
            screen.expect(f'event peer_joined {{"peer_id": "{b.peer_id}"}}')
        finally:
            assert b.stop() == 0
        screen.expect(f'event peer_left {{"peer_id": "{b.peer_id}"}}')

        child.send("\x1b[A")  # Up: history brings back the last command
        screen.expect("subscribe peer_joined peer_left")
        child.send("\x15")  # Ctrl-U clears the line
        child.send("unsubscribe \t")  # Tab offers this session's subscription id
        screen.expect(f"unsubscribe {sid}")
        child.send("\r")
        screen.expect("true")
        screen.expect("flnode>")
        child.sendeof()  # Ctrl-D leaves
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    history = (node.datadir / "console_history").read_text()
    assert "+help node_connect" in history


def test_exec_prints_json_and_fails_clearly(
    node: Daemon, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*flnode_exe, "console", "--datadir", str(node.datadir), *args],
            capture_output=True,
            text=True,
            env=clean_env,
            timeout=30,
        )

    info = run("--exec", "node_info")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["peer_id"] == node.peer_id
    described = run("--exec", "help node_connect")
    assert json.loads(described.stdout)["params"][0]["name"] == "addr"
    assert "node_info" in {m["name"] for m in json.loads(run("--exec", "help").stdout)}
    peers = run("--exec", "node_peers all=true")
    assert json.loads(peers.stdout) == {"connected": 0, "peers": []}
    usage = run("--exec", "node_peers true all=true")
    assert usage.returncode == 2 and "not both" in usage.stderr and "Traceback" not in usage.stderr
    bad = run("--exec", "node_peers all=maybe")
    assert bad.returncode == 1 and bad.stdout == ""
    assert "error -32602: invalid params for node_peers: all:" in bad.stderr
    token = (node.datadir / "api.token").read_text().strip()
    url = json.loads((node.datadir / "node.json").read_text())["api_url"]
    by_url = subprocess.run(
        [*flnode_exe, "console", "--url", url, "--token", token, "--exec", "rpc_help node_info"],
        capture_output=True,
        text=True,
        env=clean_env,
        timeout=30,
    )
    assert json.loads(by_url.stdout)["name"] == "node_info"
    wrong = subprocess.run(
        [*flnode_exe, "console", "--url", url, "--token", "nope", "--exec", "node_info"],
        capture_output=True,
        text=True,
        env=clean_env,
        timeout=30,
    )
    assert wrong.returncode == 1 and "wrong token" in wrong.stderr


def test_console_without_a_running_node(
    flnode_exe: list[str], tmp_path: Path, clean_env: dict[str, str]
) -> None:
    datadir = init_datadir(flnode_exe, tmp_path / "idle", clean_env)
    done = subprocess.run(
        [*flnode_exe, "console", "--datadir", str(datadir), "--exec", "node_info"],
        capture_output=True,
        text=True,
        env=clean_env,
        timeout=30,
    )
    assert done.returncode == 1
    assert f"start one with `flnode start --datadir {datadir}`" in done.stderr


def test_parse_command() -> None:
    methods = {
        "node_connect": {"params": [{"name": "addr", "type": "string"}]},
        "node_peers": {"params": [{"name": "all", "type": "boolean"}]},
    }
    assert parse_command("node_info", methods) == ("node_info", None)
    assert parse_command("node_peers all=true", methods) == ("node_peers", {"all": True})
    assert parse_command("node_connect 123", methods) == ("node_connect", ["123"])
    assert parse_command('rpc_help {"method": "x"}', methods) == ("rpc_help", {"method": "x"})
    assert parse_command("subscribe a b", methods) == ("subscribe", {"events": ["a", "b"]})
    with pytest.raises(CommandError, match="not both"):
        parse_command("node_peers true all=true", methods)
    with pytest.raises(CommandError, match="not valid"):
        parse_command("node_peers {oops", methods)
