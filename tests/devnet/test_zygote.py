"""The devnet's zygote: its line protocol, what a forked node inherits, and `up --spawn exec`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flnode.devnet.processes import runs_node
from flnode.devnet.zygote import node_command
from tests.daemons import process_gone

ZYGOTE = [sys.executable, "-c", "import sys, flnode.devnet.zygote as z; sys.exit(z.serve())"]


def test_runs_node_matches_an_execd_or_a_forked_command_line_and_nothing_else() -> None:
    d = Path("/tmp/net/nodes/miner-1")
    execd = [arg.encode() for arg in node_command(d)]
    forked = [" ".join(node_command(d)).encode(), b""]
    assert runs_node(execd, d) and runs_node(forked, d)
    other = Path("/tmp/net/nodes/miner-10")
    assert not runs_node(execd, other) and not runs_node(forked, other)
    assert not runs_node([b"python", b"-m", b"flnode.devnet.zygote"], d)


def test_zygote_answers_bad_requests_and_forks_a_node_into_its_own_log(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    zygote = subprocess.Popen(
        ZYGOTE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=clean_env,
        text=True,
    )
    assert zygote.stdin is not None and zygote.stdout is not None

    def ask(line: str) -> dict[str, object]:
        zygote.stdin.write(line + "\n")  # type: ignore[union-attr]
        zygote.stdin.flush()  # type: ignore[union-attr]
        return json.loads(zygote.stdout.readline())  # type: ignore[union-attr]

    try:
        ready = json.loads(zygote.stdout.readline())
        assert ready["ready"] is True and ready["import_s"] > 0
        for bad, says in [
            ("not json", "bad request"),
            ("[1, 2]", "a request is a JSON object"),
            ('{"log": "/tmp/x"}', "'datadir' must be a non-empty string"),
            ('{"datadir": "/x", "log": "/tmp/x", "env": {"A": 1}}', "'env' must map strings"),
        ]:
            reply = ask(bad)
            assert says in str(reply.get("error")), (bad, reply)

        # A node whose data dir does not exist: the fork runs the real CLI, which says so in the
        # node's log (its stdout and stderr) and exits; the zygote keeps serving.
        log = tmp_path / "node.log"
        missing = tmp_path / "no-such-node"
        reply = ask(json.dumps({"datadir": str(missing), "log": str(log), "env": clean_env}))
        pid = int(reply["pid"])  # type: ignore[call-overload]
        deadline = time.monotonic() + 30
        while not process_gone(pid):
            assert time.monotonic() < deadline, "the forked node did not exit"
            time.sleep(0.05)
        text = log.read_text()
        assert "flnode: error:" in text and str(missing) in text, text
        assert ask("{}")["error"]  # still answering after the fork
    finally:
        zygote.stdin.close()
        assert zygote.wait(timeout=30) == 0  # end of input stops it


@pytest.mark.parametrize("spawn", ["fork", "exec"])
def test_up_starts_nodes_either_way_names_them_in_ps_and_logs_once(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str], spawn: str
) -> None:
    d = tmp_path / "devnet"
    run = [*flnode_exe, "devnet"]
    up = subprocess.run(
        [*run, "up", "--dir", str(d), "--devices", "1", "--manufacturers", "0", "--spawn", spawn],
        capture_output=True,
        text=True,
        env=clean_env,
        timeout=120,
    )
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        header = (d / "logs" / "device-0.log").read_text().splitlines()[0]
        assert header.endswith(f"({spawn})"), header
        pid = int((d / "run" / "device-0.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert runs_node(cmdline, d / "nodes" / "device-0"), cmdline
        status = subprocess.run(
            [*run, "status", "--dir", str(d), "--json"],
            capture_output=True,
            text=True,
            env=clean_env,
        )
        assert json.loads(status.stdout)[0]["alive"] is True
    finally:
        down = subprocess.run(
            [*run, "down", "--dir", str(d)], capture_output=True, text=True, env=clean_env
        )
    assert down.returncode == 0 and ": stopped" in down.stdout, down.stdout + down.stderr
    assert process_gone(pid)
    # Each line once, as the node's JSON: imports in the zygote must not leave a logging handler
    # behind (opacus calls logging.basicConfig when imported, which doubled every line).
    lines = (d / "logs" / "device-0.log").read_text().splitlines()[1:]
    assert lines and all(line.startswith("{") for line in lines), lines[:5]
    assert sum('"event": "ready"' in line for line in lines) == 1


def test_up_refuses_an_unknown_spawn_mode(
    tmp_path: Path, flnode_exe: list[str], clean_env: dict[str, str]
) -> None:
    done = subprocess.run(
        [*flnode_exe, "devnet", "up", "--dir", str(tmp_path), "--devices", "1", "--spawn", "clone"],
        capture_output=True,
        text=True,
        env=clean_env,
    )
    assert done.returncode == 2 and "'clone' is not one of 'fork', 'exec'" in done.stderr
