"""A template process that imports a node's modules once and forks the devnet's nodes from it.

Why: before it does anything, a node spends about 4 s of CPU importing torch, opacus, py-evm and
libp2p. ``flnode devnet up`` starts a dozen nodes at once on a machine with a few cores, so it
used to spend some 25 s of wall time on the same imports, once per process. A node forked from
this *zygote* starts with them done, and shares their memory pages with its siblings until one
of them writes to a page (copy-on-write; :func:`gc.freeze` keeps the collector from touching the
imported objects). The zygote also loads the shipped MNIST arrays (read-only, 55 MB), which every
device and miner would otherwise read and hold on its own.

Each forked node is an ordinary OS process: its own pid and session (a Ctrl-C at the launcher's
terminal does not reach it), its output appended to its log, its command line in ``ps`` and
``/proc/<pid>/cmdline`` set to ``<python> -m flnode.cli.main start --datadir <dir>`` (what an
exec'd node shows), so that ``status``, ``down`` and ``restart`` find it as before. Forked nodes
share the zygote's string-hash seed (nothing in flnode depends on it differing); their torch and
numpy generators are reseeded from the OS.

Protocol, one JSON object per line on the zygote's stdin/stdout:

* zygote → launcher, once: ``{"ready": true, "import_s": 3.9}``
* launcher → zygote: ``{"datadir": "...", "log": "...", "env": {...}}``
* zygote → launcher: ``{"pid": 1234}`` or ``{"error": "..."}`` (a bad request is answered, never
  fatal)

End of input stops the zygote; the nodes it forked live on.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import setproctitle
import trio

from .errors import DevnetError

# What a node imports before or while it starts (the learning modules load lazily in a node).
PRELOAD = (
    "torch",
    # torch.optim imports the compiler stack on a node's first optimizer (~0.5 s of CPU each)
    "torch._dynamo",
    "opacus",
    "opacus.utils.batch_memory_manager",
    "flnode.node",
    "flnode.cli.main",
    "flnode.cli.start",
    "flnode.federation.device",
    "flnode.federation.edge",
    "flnode.federation.manufacturer",
    "flnode.federation.miner",
    "flnode.learning.dpsgd",
    "flnode.learning.federated",
    "flnode.learning.training",
)
PRELOAD_DATASET = "mnist"
"""The data set flnode ships: 55 MB of uint8 images every device and miner would read and hold."""
_READY_TIMEOUT_S = 120.0
_SPAWN_TIMEOUT_S = 30.0


def node_env() -> dict[str, str]:
    """The launcher's environment without its ``FLNODE_*`` settings: a node reads its own config."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FLNODE_")}


def node_command(datadir: Path | str) -> list[str]:
    """The command line of a node process (exec'd, or the title of a forked one)."""
    return [sys.executable, "-m", "flnode.cli.main", "start", "--datadir", str(datadir)]


# --------------------------------------------------------------------------------------------------
# The zygote process


def _preload() -> float:
    started = time.monotonic()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for module in PRELOAD:
        __import__(module)
    from flnode.learning.datasets import DatasetError
    from flnode.learning.federated import warm_dataset_cache

    with contextlib.suppress(DatasetError):  # a node without it says so itself, when it needs it
        warm_dataset_cache(PRELOAD_DATASET)
    # opacus configures the root logger when imported (logging.basicConfig); a node imports it
    # after its own logging is set up, when that is a no-op. Undo it, or every forked node's
    # log would carry each line twice.
    root.handlers[:] = handlers
    root.setLevel(level)
    gc.collect()
    gc.freeze()
    return time.monotonic() - started


def _reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _parse_request(line: str) -> tuple[str, str, dict[str, str]]:
    request = json.loads(line)
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    datadir, log, env = request.get("datadir"), request.get("log"), request.get("env")
    if not isinstance(datadir, str) or not datadir:
        raise ValueError("'datadir' must be a non-empty string")
    if not isinstance(log, str) or not log:
        raise ValueError("'log' must be a non-empty string")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("'env' must map strings to strings")
    return datadir, log, env


def _reseed_random_generators() -> None:
    """Give a forked node random generators of its own: a child starts with a copy of the
    zygote's torch and numpy generator states, so siblings would draw the same numbers (Python's
    ``random`` reseeds itself after a fork; these do not). flnode's DP noise comes from generators
    seeded from the OS, never from these, but nothing should share a stream by accident."""
    import numpy as np
    import torch

    torch.seed()
    np.random.seed()


def _run_node(datadir: str, log: str, env: Mapping[str, str], titled: int) -> NoReturn:
    """In the forked child: become the node of ``datadir``; never returns to the zygote's loop.

    ``titled`` is a pipe's write end, closed once the process carries the node's command line:
    until then ``status`` would not recognise it as the node.
    """
    code = 1
    try:
        command = node_command(datadir)
        # Before the environment changes: setproctitle writes over the argv and environ area.
        setproctitle.setproctitle(" ".join(command))
        os.close(titled)
        os.setsid()
        out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        os.environ.clear()
        os.environ.update(env)
        _reseed_random_generators()
        sys.argv = ["flnode", *command[3:]]
        from flnode.cli.main import main

        code = main(command[3:])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve() -> int:
    """The zygote's main loop (see the module's docstring for its protocol)."""
    setproctitle.setproctitle("flnode devnet zygote")
    reply = sys.stdout
    import_s = _preload()
    print(json.dumps({"ready": True, "import_s": round(import_s, 3)}), file=reply, flush=True)
    for line in sys.stdin:
        _reap_children()
        if not line.strip():
            continue
        try:
            datadir, log, env = _parse_request(line)
        except ValueError as exc:
            print(json.dumps({"error": f"bad request: {exc}"}), file=reply, flush=True)
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        titled_r, titled_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(titled_r)
            os.close(titled_w)
            print(json.dumps({"error": f"fork failed: {exc}"}), file=reply, flush=True)
            continue
        if pid == 0:
            os.close(titled_r)
            _run_node(datadir, log, env, titled_w)
        os.close(titled_w)
        os.read(titled_r, 1)  # end of file: the child has its title (or has died)
        os.close(titled_r)
        print(json.dumps({"pid": pid}), file=reply, flush=True)
    _reap_children()
    return 0


# --------------------------------------------------------------------------------------------------
# The launcher's side


class Zygote:
    """A running zygote process; :meth:`spawn` forks a node from it.

    Use :func:`open_zygote`, which starts it, waits until its imports are done and stops it
    (closing its input) when the block ends.
    """

    def __init__(self, process: trio.Process, log: Path) -> None:
        self._process = process
        self._log = log
        self._buffer = b""
        self._lock = trio.Lock()

    async def _read_reply(self, timeout_s: float) -> dict[str, Any]:
        assert self._process.stdout is not None
        with trio.move_on_after(timeout_s):
            while b"\n" not in self._buffer:
                chunk = await self._process.stdout.receive_some(65536)
                if not chunk:
                    raise DevnetError(
                        f"the devnet's zygote process exited (code {self._process.poll()}); "
                        f"see {self._log}"
                    )
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                reply = json.loads(line)
            except ValueError:
                raise DevnetError(f"the devnet's zygote answered {line[:200]!r}") from None
            if not isinstance(reply, dict):
                raise DevnetError(f"the devnet's zygote answered {line[:200]!r}")
            return reply
        raise DevnetError(f"the devnet's zygote did not answer within {timeout_s:g} s")

    async def wait_ready(self) -> float:
        reply = await self._read_reply(_READY_TIMEOUT_S)
        if reply.get("ready") is not True:
            raise DevnetError(f"the devnet's zygote did not start: {reply}")
        return float(reply.get("import_s", 0.0))

    async def spawn(self, datadir: Path, log: Path, env: Mapping[str, str]) -> int:
        """Fork the node of ``datadir`` (output appended to ``log``); returns its pid."""
        request = json.dumps({"datadir": str(datadir), "log": str(log), "env": dict(env)})
        async with self._lock:
            assert self._process.stdin is not None
            await self._process.stdin.send_all(request.encode() + b"\n")
            reply = await self._read_reply(_SPAWN_TIMEOUT_S)
        if "pid" not in reply:
            raise DevnetError(
                f"the devnet's zygote could not start {datadir}: {reply.get('error')}"
            )
        return int(reply["pid"])


@contextlib.asynccontextmanager
async def open_zygote(log: Path):  # type: ignore[no-untyped-def]
    """Start a zygote (its own output appended to ``log``) and wait until it has imported."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = node_env()
    with open(log, "ab") as err:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", "import sys, flnode.devnet.zygote as z; sys.exit(z.serve())"],
            stdin=-1,  # subprocess.PIPE
            stdout=-1,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    zygote = Zygote(process, log)
    try:
        await zygote.wait_ready()
        yield zygote
    finally:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            if process.stdin is not None:
                await process.stdin.aclose()
        with trio.move_on_after(10.0) as scope:
            scope.shield = True
            await process.wait()
        if process.poll() is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
