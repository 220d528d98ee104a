"""Helpers to run real `flnode start` processes and follow their JSON logs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """One `flnode start` process whose stderr JSON log lines are collected by a thread."""

    def __init__(self, exe: list[str], datadir: Path, env: dict[str, str], *args: str) -> None:
        self.exe, self.datadir, self.env, self.args = exe, datadir, env, args
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *self.exe,
                "start",
                "--datadir",
                str(self.datadir),
                "--log-format",
                "json",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"event": "non-json", "line": line}
            record["_pid"] = proc.pid
            with self._lock:
                self.records.append(record)

    def events(self, name: str, pid: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                r
                for r in self.records
                if r.get("event") == name and (pid is None or r["_pid"] == pid)
            ]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        tail = "".join(json.dumps(r) + "\n" for r in self.records[-15:])
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last logs:\n{tail}")

    def connected_peers(self) -> set[str]:
        """Peers this process (its current incarnation) is connected to, from its log."""
        assert self.proc is not None
        peers: set[str] = set()
        with self._lock:
            for r in self.records:
                if r["_pid"] != self.proc.pid:
                    continue
                if r.get("event") == "peer connected":
                    peers.add(r["peer"])
                elif r.get("event") == "peer disconnected":
                    peers.discard(r["peer"])
        return peers

    @property
    def peer_id(self) -> str:
        return self.events("ready")[0]["peer_id"]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def init_datadir(exe: list[str], path: Path, env: dict[str, str]) -> Path:
    subprocess.run([*exe, "init", "--datadir", str(path)], check=True, env=env, capture_output=True)
    return path


def process_gone(pid: int) -> bool:
    """The process has exited: no such pid, or a zombie its (adopting) parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")
