"""Control-API throughput: JSON-RPC round trips per second through the whole API of a real node.

Run: ``python -m bench.api``. Writes bench/results/api.json.

One ``flnode start`` process (all its services: blob store, P2P, metrics, API) serves; the clients
run in this process on trio-websocket, authenticated with ``auth`` like any client. A round trip is
one ``node_info`` call (token-checked connection, JSON parsing, pydantic parameter validation,
dispatch, a reply built from the P2P service) answered before the next is sent. ``rt_s_1`` is one
client; ``rt_s_10`` is ten clients at once, all round trips counted together. Both processes share
the machine's 2 cores, so the client's own cost is part of the number (stack.md measured ~3,350/s
for bare trio-websocket echo on this machine class; the target through the full API is 2,000/s).
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
from functools import partial
from pathlib import Path

import trio

from bench._common import write_result
from flnode.api import ApiClient, ApiEndpoint

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


async def _echo_round_trips(port: int, seconds: float) -> float:
    from trio_websocket import open_websocket_url

    async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        for i in range(50):
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": i, "method": "x"}))
            await ws.get_message()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": count, "method": "x"}))
            await ws.get_message()
            count += 1
        return count / (time.perf_counter() - start)


def _baseline(seconds: float) -> float:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.api", "--serve-echo"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        return trio.run(_echo_round_trips, port, seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _start_node(datadir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLNODE_")}
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


async def _round_trips(endpoint: ApiEndpoint, clients: int, seconds: float) -> float:
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
        start = time.perf_counter()
        measuring.set()
        await trio.sleep(seconds)
        done = True
        elapsed = time.perf_counter() - start
    return sum(counts) / elapsed


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
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        datadir = Path(tmp) / "node"
        proc = _start_node(datadir)
        try:
            endpoint = ApiEndpoint.from_datadir(datadir)
            runs: dict[int, list[float]] = {1: [], 10: []}
            baseline: list[float] = []
            for _ in range(args.repeats):
                baseline.append(_baseline(args.seconds))
                print(f"bare trio-websocket echo, 1 client: {baseline[-1]:,.0f} round trips/s")
                for clients in runs:
                    rate = trio.run(_round_trips, endpoint, clients, args.seconds)
                    runs[clients].append(rate)
                    print(f"{clients:>2} client(s): {rate:,.0f} round trips/s")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    rt_1 = statistics.median(runs[1])
    rt_10 = statistics.median(runs[10])
    echo = statistics.median(baseline)
    met = min(rt_1, rt_10) >= TARGET_RT_S
    print(f"median: 1 client {rt_1:,.0f}/s, 10 clients {rt_10:,.0f}/s "
          f"(target >= {TARGET_RT_S:,.0f}/s: {'met' if met else 'NOT met'}); "
          f"bare echo {echo:,.0f}/s, 1 client at {rt_1 / echo:.0%} of it")  # fmt: skip
    path = write_result(
        "api",
        {
            "rt_s_1": round(rt_1),
            "rt_s_10": round(rt_10),
            "target_rt_s": TARGET_RT_S,
            "target_met": met,
            "method": "node_info",
            "runs_rt_s_1": [round(r) for r in runs[1]],
            "runs_rt_s_10": [round(r) for r in runs[10]],
            "echo_rt_s_1": round(echo),
            "load_avg_1m_before": load_before,
            "rt_s_1_vs_echo": round(rt_1 / echo, 3),
            "seconds_per_run": args.seconds,
            "setup": "one `flnode start` process (all services) serving; clients in the bench "
            "process, trio-websocket, auth by the auth method; both share the 2 cores",
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
