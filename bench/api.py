"""Control-API throughput: JSON-RPC round trips per second through the whole API of a real node.

Run: ``python -m bench.api``. Writes bench/results/api.json.

One ``flnode start`` process (all its services: blob store, P2P, metrics, API) serves; the clients
run in this process on trio-websocket, authenticated with ``auth`` like any client. A round trip is
one ``node_info`` call (token-checked connection, JSON parsing, pydantic parameter validation,
dispatch, a reply built from the P2P service) answered before the next is sent. ``rt_s_1`` is one
client; ``rt_s_10`` is ten clients at once, all round trips counted together. Both processes share
the machine's 2 cores, so the client's own cost is part of the number (stack.md measured ~3,350/s
for bare trio-websocket echo on this machine class; the target through the full API is 2,000/s from
one client: ``target_met``).

Other work on the shared machine moves round trips per second a lot, so the record also carries the
load average at start and end and the CPU time per round trip of each side (the server process from
/proc, the clients' process from ``time.process_time``), which depend much less on it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from bench._common import write_result
from flnode.api import ApiClient, ApiEndpoint
from flnode.devnet.zygote import node_env

TARGET_RT_S = 2000.0


async def _echo_server() -> None:
    """Bare trio-websocket JSON echo (no auth, no dispatch): the baseline the API is compared to."""
    from trio_websocket import ConnectionClosed, serve_websocket

    async def handler(request: object) -> None:
        ws = await request.accept()  # type: ignore[attr-defined]
        try:
            while True:
                message = json.loads(await ws.get_message())
                reply = {"jsonrpc": "2.0", "id": message["id"], "result": {"ok": True}}
                await ws.send_message(json.dumps(reply))
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
        )
        print(server.port, flush=True)
        await trio.sleep_forever()


@dataclass
class Run:
    """One measuring window: round trips per second and CPU microseconds per round trip."""

    rt_s: float
    server_cpu_us: float
    client_cpu_us: float


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Window:
    """Wall time and the CPU time of both sides over one measuring window."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.start = time.perf_counter()
        self.server = _process_cpu_s(server_pid)
        self.client = time.process_time()

    def end(self, round_trips: int) -> Run:
        elapsed = time.perf_counter() - self.start
        server = _process_cpu_s(self.server_pid) - self.server
        client = time.process_time() - self.client
        per = 1e6 / max(round_trips, 1)
        return Run(round_trips / elapsed, server * per, client * per)


async def _echo_round_trips(port: int, seconds: float, server_pid: int) -> Run:
    from trio_websocket import open_websocket_url

    async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        for i in range(50):
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": i, "method": "x"}))
            await ws.get_message()
        count, window = 0, _Window(server_pid)
        while time.perf_counter() - window.start < seconds:
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": count, "method": "x"}))
            await ws.get_message()
            count += 1
        return window.end(count)


def _baseline(seconds: float) -> Run:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.api", "--serve-echo"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        return trio.run(_echo_round_trips, port, seconds, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _start_node(datadir: Path) -> subprocess.Popen[bytes]:
    env = node_env()
    subprocess.run(
        [sys.executable, "-m", "flnode.cli.main", "init", "--datadir", str(datadir)],
        check=True,
        capture_output=True,
        env=env,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "flnode.cli.main", "start", "--datadir", str(datadir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**env, "FLNODE_LOG_LEVEL": "warning"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = datadir / "node.json"
        if state.exists() and json.loads(state.read_text()).get("pid") == proc.pid:
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"the node exited with code {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the node did not become ready in 60 s")


async def _round_trips(endpoint: ApiEndpoint, clients: int, seconds: float, server_pid: int) -> Run:
    """Round trips per second, all clients together, over ``seconds`` after a short warm-up."""
    counts = [0] * clients
    measuring = trio.Event()

    async def client(i: int) -> None:
        async with ApiClient.open(endpoint) as c:
            for _ in range(50):  # warm-up
                await c.call("node_info")
            ready.append(i)
            await measuring.wait()
            while not done:
                await c.call("node_info")
                counts[i] += 1

    ready: list[int] = []
    done = False
    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(client, i)
        while len(ready) < clients:
            await trio.sleep(0.01)
        window = _Window(server_pid)
        measuring.set()
        await trio.sleep(seconds)
        done = True
        run = window.end(sum(counts))
    return run


def _describe(run: Run) -> str:
    return (
        f"{run.rt_s:,.0f} round trips/s, CPU per round trip {run.server_cpu_us:.0f} us server "
        f"+ {run.client_cpu_us:.0f} us client"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        trio.run(_echo_server)
        return
    # Other work on the machine changes these numbers a lot; record how busy it was.
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        datadir = Path(tmp) / "node"
        proc = _start_node(datadir)
        try:
            endpoint = ApiEndpoint.from_datadir(datadir)
            runs: dict[int, list[Run]] = {1: [], 10: []}
            baseline: list[Run] = []
            for _ in range(args.repeats):
                baseline.append(_baseline(args.seconds))
                print(f"bare trio-websocket echo, 1 client: {_describe(baseline[-1])}")
                for clients in runs:
                    run = trio.run(_round_trips, endpoint, clients, args.seconds, proc.pid)
                    runs[clients].append(run)
                    print(f"{clients:>2} client(s): {_describe(run)}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    load_after = os.getloadavg()
    rt_1 = statistics.median(r.rt_s for r in runs[1])
    rt_10 = statistics.median(r.rt_s for r in runs[10])
    echo = statistics.median(r.rt_s for r in baseline)
    met = rt_1 >= TARGET_RT_S

    def cpu(rs: list[Run], side: str) -> float:
        return round(statistics.median(getattr(r, f"{side}_cpu_us") for r in rs), 1)

    print(f"median: 1 client {rt_1:,.0f}/s (target >= {TARGET_RT_S:,.0f}/s: "
          f"{'met' if met else 'NOT met'}), 10 clients {rt_10:,.0f}/s; bare echo {echo:,.0f}/s, "
          f"1 client at {rt_1 / echo:.0%} of it; load average (1 min) "
          f"{load_before[0]:.2f} -> {load_after[0]:.2f}")  # fmt: skip
    path = write_result(
        "api",
        {
            "rt_s_1": round(rt_1),
            "rt_s_10": round(rt_10),
            "target_rt_s": TARGET_RT_S,
            "target_met": met,
            "target": "rt_s_1 >= target_rt_s (one client, round trips answered one after another)",
            "method": "node_info",
            "runs_rt_s_1": [round(r.rt_s) for r in runs[1]],
            "runs_rt_s_10": [round(r.rt_s) for r in runs[10]],
            "echo_rt_s_1": round(echo),
            "runs_echo_rt_s_1": [round(r.rt_s) for r in baseline],
            "rt_s_1_vs_echo": round(rt_1 / echo, 3),
            # CPU microseconds per round trip (medians over the repeats), each side separately.
            "cpu_us_per_rt_1": {"server": cpu(runs[1], "server"), "client": cpu(runs[1], "client")},
            "cpu_us_per_rt_10": {
                "server": cpu(runs[10], "server"),
                "client": cpu(runs[10], "client"),
            },
            "cpu_us_per_rt_echo": {
                "server": cpu(baseline, "server"),
                "client": cpu(baseline, "client"),
            },
            "load_avg_1m_before": round(load_before[0], 2),
            "load_avg_1m_after": round(load_after[0], 2),
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in load_after],
            "seconds_per_run": args.seconds,
            "repeats": args.repeats,
            "setup": "one `flnode start` process (all services) serving; clients in the bench "
            "process, trio-websocket, auth by the auth method; both share the 2 cores",
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
