"""Starting, finding and stopping a devnet's node processes.

Each node runs as ``python -m flnode.cli.main start --datadir <dir>/nodes/<name>`` with the same
interpreter as the launcher, in its own session (so a Ctrl-C at the launcher's terminal does not
reach the nodes), its output appended to ``<dir>/logs/<name>.log``: either exec'd
(:func:`start_node`) or forked from a zygote that has done the imports (:func:`fork_node`, see
:mod:`.zygote`). A node counts as alive when the pid in ``<dir>/run/<name>.pid`` is a running (not
zombie) process whose command line names its data dir: a pid reused by an unrelated process after
a crash is not mistaken for the node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .network import Network
from .zygote import Zygote, node_command, node_env

STOP_GRACE_S = 10.0


def _open_log(network: Network, name: str, how: str) -> Path:
    log = network.log_file(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"--- flnode devnet: starting {name} at {time.time():.3f} ({how})\n".encode())
    return log


def _record_pid(network: Network, name: str, pid: int) -> None:
    pid_file = network.pid_file(name)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{pid}\n", encoding="ascii")


def start_node(network: Network, name: str) -> int:
    """Start the node ``name`` in a new interpreter; returns its pid (recorded in its pid file)."""
    log = _open_log(network, name, "exec")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            node_command(network.datadir(name)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=node_env(),
            start_new_session=True,
            close_fds=True,
        )
    _record_pid(network, name, proc.pid)
    # The Popen object is dropped on purpose: the node outlives this launcher. Forget it without
    # the ResourceWarning ("subprocess is still running") the destructor would raise.
    proc.returncode = 0
    return proc.pid


async def fork_node(network: Network, name: str, zygote: Zygote) -> int:
    """Start the node ``name`` forked from ``zygote``; returns its pid (recorded in its pid file)."""
    log = _open_log(network, name, "fork")
    pid = await zygote.spawn(network.datadir(name), log, node_env())
    _record_pid(network, name, pid)
    return pid


def node_pid(network: Network, name: str) -> int | None:
    try:
        return int(network.pid_file(name).read_text(encoding="ascii").strip())
    except (FileNotFoundError, ValueError):
        return None


def is_alive(pid: int | None, datadir: Path) -> bool:
    """Whether ``pid`` is a live process running the node of ``datadir``."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        _reap(pid)
        return False
    return runs_node(cmdline, datadir)


def runs_node(cmdline: list[bytes], datadir: Path) -> bool:
    """Whether a process's arguments (``/proc/<pid>/cmdline`` split at NULs) are the node of
    ``datadir``'s: an exec'd node has it as an argument, a forked one in its title."""
    wanted = str(datadir).encode()
    return wanted in cmdline or any(arg.endswith(b" --datadir " + wanted) for arg in cmdline)


def _reap(pid: int) -> None:
    """Collect a zombie child (only when the launcher itself is its parent, e.g. in tests)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@dataclass(frozen=True, slots=True)
class StopOutcome:
    name: str
    pid: int | None
    how: str  # "stopped" (SIGTERM), "killed" (SIGKILL after the grace), "not running"


def stop_nodes(
    network: Network, names: list[str], grace_s: float = STOP_GRACE_S
) -> list[StopOutcome]:
    """SIGTERM every named live node, SIGKILL those still alive after ``grace_s``."""
    pids = {name: node_pid(network, name) for name in names}
    live = {n: p for n, p in pids.items() if is_alive(p, network.datadir(n))}
    for pid in live.values():
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(
        is_alive(p, network.datadir(n)) for n, p in live.items()
    ):
        time.sleep(0.05)
    outcomes = []
    for name in names:
        pid = pids[name]
        if name not in live:
            outcomes.append(StopOutcome(name, pid, "not running"))
        elif is_alive(pid, network.datadir(name)):
            _signal(pid, signal.SIGKILL)  # type: ignore[arg-type]
            outcomes.append(StopOutcome(name, pid, "killed"))
        else:
            outcomes.append(StopOutcome(name, pid, "stopped"))
        network.pid_file(name).unlink(missing_ok=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        is_alive(pids[o.name], network.datadir(o.name)) for o in outcomes if o.how == "killed"
    ):
        time.sleep(0.05)
    return outcomes


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def log_tail(network: Network, name: str, lines: int = 10) -> str:
    try:
        text = network.log_file(name).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
