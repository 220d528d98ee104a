"""`flnode start` as a real OS process: ready, signals, clean exit, one daemon per data dir."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

READY_TIMEOUT_S = 30


def start(
    flnode_exe: list[str], datadir: Path, env: dict[str, str], *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*flnode_exe, "start", "--datadir", str(datadir), "--log-format", "json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_event(proc: subprocess.Popen[str], event: str, timeout: float) -> dict[str, object]:
    """Read JSON log lines from stderr until one has ``event``; return it."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        record = json.loads(line)
        if record.get("event") == event:
            return record
    raise AssertionError(f"no {event!r} log line within {timeout} s; got: {''.join(seen)}")


@pytest.fixture
def initialised(flnode_exe: list[str], tmp_path: Path, clean_env: dict[str, str]) -> Path:
    d = tmp_path / "node"
    subprocess.run(
        [*flnode_exe, "init", "--datadir", str(d)], check=True, env=clean_env, capture_output=True
    )
    return d


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_start_ready_then_signal_stops_cleanly(
    flnode_exe: list[str], initialised: Path, clean_env: dict[str, str], signum: signal.Signals
) -> None:
    proc = start(flnode_exe, initialised, clean_env, "--role", "miner,device")
    try:
        ready = wait_for_event(proc, "ready", READY_TIMEOUT_S)
        assert ready["roles"] == "miner,device"
        assert ready["level"] == "info"
        state = json.loads((initialised / "node.json").read_text())
        assert state["pid"] == proc.pid
        assert state["peer_id"] == ready["peer_id"]
        sent = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    rest = proc.stderr.read() if proc.stderr else ""
    events = [json.loads(line)["event"] for line in rest.splitlines()]
    assert "stopped" in events
    assert elapsed < 2.0, f"took {elapsed:.2f} s to stop"
    assert not (initialised / "node.json").exists()


def test_second_daemon_on_same_datadir_is_refused(
    flnode_exe: list[str], initialised: Path, clean_env: dict[str, str]
) -> None:
    first = start(flnode_exe, initialised, clean_env)
    try:
        wait_for_event(first, "ready", READY_TIMEOUT_S)
        second = subprocess.run(
            [*flnode_exe, "start", "--datadir", str(initialised)],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env,
        )
        assert second.returncode == 2
        assert f"in use by another flnode process (pid {first.pid})" in second.stderr
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0
    finally:
        first.kill()


def test_restart_after_sigkill(
    flnode_exe: list[str], initialised: Path, clean_env: dict[str, str]
) -> None:
    """A killed daemon leaves its lock released (flock dies with the process): a new one starts."""
    first = start(flnode_exe, initialised, clean_env)
    try:
        wait_for_event(first, "ready", READY_TIMEOUT_S)
        first.kill()
        first.wait(timeout=10)
        second = start(flnode_exe, initialised, clean_env)
        try:
            wait_for_event(second, "ready", READY_TIMEOUT_S)
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=10) == 0
        finally:
            second.kill()
    finally:
        first.kill()
