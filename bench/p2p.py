"""P2P benchmark with real processes on loopback: announcement latency and fetch throughput.

Run: ``python -m bench.p2p``. Writes ``bench/results/p2p.json`` with ``announce_p50_ms``,
``announce_p90_ms`` (8 nodes: one publishes signed update announcements carrying a 20 KB inline
update, the head-only update size of the default design; latency = receive time − the envelope's
send timestamp, same machine clock) and ``fetch_mb_s`` (one provider serves a 5 MB blob to 7
requesters fetching at once; aggregate MB/s from the first request to the last verified byte).

Each node is its own OS process running flnode's P2P service (``--worker``), driven over its
stdin/stdout by this coordinator.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

NODES = 8
ANNOUNCEMENTS = 200
INLINE_BYTES = 20_000
FETCH_BYTES = 5_000_000


# -- worker (one process per node) ----------------------------------------------------------


async def _worker(bootstrap: str | None) -> None:
    import trio

    from flnode.cid import Cid
    from flnode.config import P2PSection
    from flnode.identity import NodeIdentity
    from flnode.log import configure_logging
    from flnode.p2p.envelope import wall_clock_ms
    from flnode.p2p.messages import UpdateAnnouncement
    from flnode.p2p.service import P2PService

    configure_logging("warning", "json", stream=sys.stderr)  # stdout carries the protocol
    blobs: dict[Cid, bytes] = {}

    async def source(cid: Cid) -> bytes | None:
        return blobs.get(cid)

    section = P2PSection(bootstrap=(bootstrap,) if bootstrap else (), peer_exchange_interval_s=1.0)
    service = P2PService(NodeIdentity.generate(), section, "flnode-bench", source)

    def say(obj: dict[str, Any]) -> None:
        print(json.dumps(obj), flush=True)

    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        inbox = await service.subscribe("updates")
        latencies: list[float] = []

        async def receive() -> None:
            async for envelope in inbox:
                latencies.append(wall_clock_ms() - envelope.timestamp_ms)

        nursery.start_soon(receive)
        say({"ready": service.addrs[0], "peer_id": service.peer_id})
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                break
            cmd, *args = line.split()
            if cmd == "peers":
                await service.wait_for_peers(int(args[0]), timeout=60)
                await service.wait_for_topic_peers("updates", int(args[0]), timeout=60)
                say({"ok": True})
            elif cmd == "announce":
                count, gap = int(args[0]), float(args[1])
                blob = os.urandom(INLINE_BYTES)
                for n in range(count):
                    blob = n.to_bytes(4, "big") + blob[4:]
                    cid = Cid.from_data(blob)
                    await service.publish(
                        "updates",
                        UpdateAnnouncement(
                            task_id=1,
                            round=n,
                            cid=str(cid),
                            n_samples=6000,
                            size=len(blob),
                            blob=blob,
                        ),
                    )
                    await trio.sleep(gap)
                say({"ok": True})
            elif cmd == "latencies":
                say(
                    {
                        "latencies": latencies,
                        "dropped": service.stats.dropped,
                        "overflow": service.stats.queue_overflow,
                    }
                )
            elif cmd == "put":
                data = os.urandom(int(args[0]))
                cid = Cid.from_data(data)
                blobs[cid] = data
                say({"cid": str(cid)})
            elif cmd == "fetch":
                cid = Cid.parse(args[0])
                start = time.time()
                data = await service.fetch(cid, [args[1]])
                say({"start": start, "end": time.time(), "bytes": len(data)})
            elif cmd == "quit":
                break
        nursery.cancel_scope.cancel()


# -- coordinator ----------------------------------------------------------------------------


class Node:
    def __init__(self, bootstrap: str | None) -> None:
        cmd = [sys.executable, "-m", "bench.p2p", "--worker"]
        if bootstrap:
            cmd += ["--bootstrap", bootstrap]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        hello = self.read()
        self.addr, self.peer_id = hello["ready"], hello["peer_id"]

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark worker died")
        return json.loads(line)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def ask(self, command: str) -> dict[str, Any]:
        self.send(command)
        return self.read()

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--announcements", type=int, default=ANNOUNCEMENTS)
    args = parser.parse_args()
    if args.worker:
        import trio

        trio.run(_worker, args.bootstrap)
        return

    from bench._common import write_result

    nodes = [Node(None)]
    try:
        nodes += [Node(nodes[0].addr) for _ in range(NODES - 1)]
        for node in nodes:
            node.send(f"peers {NODES - 1}")
        for node in nodes:
            node.read()
        time.sleep(2.0)  # a couple of heartbeats so every mesh is full

        # Announcement latency: node 0 publishes, 10 per second.
        nodes[0].ask(f"announce {args.announcements} 0.1")
        time.sleep(1.0)
        reports = [n.ask("latencies") for n in nodes[1:]]
        latencies = [lat for r in reports for lat in r["latencies"]]
        drops = [(r["dropped"], r["overflow"]) for r in reports if r["dropped"] or r["overflow"]]
        if drops:
            print(f"receivers that dropped messages: {drops}")
        delivered = len(latencies) / ((NODES - 1) * args.announcements)

        # Fetch throughput: 7 requesters fetch one 5 MB blob from node 0 at once.
        cid = nodes[0].ask(f"put {FETCH_BYTES}")["cid"]
        for node in nodes[1:]:
            node.send(f"fetch {cid} {nodes[0].peer_id}")
        results = [node.read() for node in nodes[1:]]
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        fetch_mb_s = sum(r["bytes"] for r in results) / span / 1e6
    finally:
        for node in nodes:
            node.close()

    p50, p90 = percentile(latencies, 0.5), percentile(latencies, 0.9)
    print(
        f"announcement latency over {len(latencies)} deliveries ({delivered:.1%} delivered): "
        f"p50 {p50:.1f} ms, p90 {p90:.1f} ms, mean {statistics.mean(latencies):.1f} ms "
        f"(target p50 < 30 ms)"
    )
    print(
        f"fetch: 7 x 5 MB from one provider in {span:.2f} s = {fetch_mb_s:.0f} MB/s aggregate "
        f"(target >= 50 MB/s)"
    )
    path = write_result(
        "p2p",
        {
            "nodes": NODES,
            "announce_p50_ms": p50,
            "announce_p90_ms": p90,
            "announce_mean_ms": round(statistics.mean(latencies), 2),
            "announcements": args.announcements,
            "announce_inline_bytes": INLINE_BYTES,
            "delivered_fraction": round(delivered, 4),
            "fetch_mb_s": round(fetch_mb_s, 1),
            "fetch_requesters": NODES - 1,
            "fetch_blob_bytes": FETCH_BYTES,
            "targets": {"announce_p50_ms": 30, "fetch_mb_s": 50},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
