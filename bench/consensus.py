"""BFT consensus benchmark with real `flnode start` processes on loopback.

Run: ``python -m bench.consensus`` (``--quick`` for fewer samples). Writes
``bench/results/consensus.json`` with:

* ``commit_ms_4``, ``commit_ms_7``, ``commit_ms_10``: median time from the first proposal a
  node sees for a height (sent or received) to that node committing it, over every node and
  height, with 4, 7 and 10 miners (each height carries one transfer, submitted to a different
  node each time, after the previous height committed everywhere);
* ``e2e_ms_4`` …: median time from submitting that transfer through a node's control API to every
  node having committed it (adds the transaction gossip and the wait for a leader);
* ``tx_s_4``: transfers per second end to end with 4 miners: 4 wallets submit
  ``TX_BURST`` signed transfers each, one wallet per node, through the API
  (``consensus_submit_batch``, 100 per call);
  from the first submission to the last transfer committed on every node.

The daemons run the default consensus settings (timeouts 3 s / 1 s / 1 s, a leader waits
0.05 s for the others' credentials). Each process is a full node (libp2p host, py-evm on SQLite,
API, metrics); on a 2-core machine 10 of them compete for the CPU, which the numbers include.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench._common import write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.daemons import env_without_flnode  # noqa: E402
from tests.node.consensus.bft.procs import (  # noqa: E402
    ProcessNet,
    status,
    submit_all,
    submit_batches,
)

TX_BURST = 500


def _exe() -> list[str]:
    exe = Path(sys.executable).parent / "flnode"
    return [str(exe)]


async def _statuses(net: ProcessNet) -> list[dict[str, Any]]:
    return [await status(d) for d in net.dirs]


async def _wait(net: ProcessNet, predicate: Any, timeout: float) -> list[dict[str, Any]]:
    with trio.fail_after(timeout):
        while True:
            try:
                statuses = await _statuses(net)
            except Exception:
                statuses = []
            if statuses and predicate(statuses):
                return statuses
            await trio.sleep(0.02)


def _start(net: ProcessNet, count: int) -> None:
    for i in range(count):
        net.start(i)
    for i in range(count):
        net.wait_ready(i, timeout=120)
    for i in range(count):
        daemon = net.daemons[i]
        assert daemon is not None
        daemon.wait_for(
            lambda d=daemon: len(d.connected_peers()) >= count - 1, 120, "connected to all"
        )
    time.sleep(2.0)  # let the gossip meshes form


async def _commit_latency(net: ProcessNet, count: int, samples: int) -> dict[str, float]:
    e2e = []
    txs = net.transfers(samples)
    for k, tx in enumerate(txs):
        before = await _statuses(net)
        done = max(s["txs_committed"] for s in before) + 1
        started = time.monotonic()
        await submit_all(net.dirs[k % count], [tx])
        await _wait(net, lambda s, done=done: all(x["txs_committed"] >= done for x in s), 60)
        e2e.append((time.monotonic() - started) * 1000)
    statuses = await _statuses(net)
    medians = [s["commit_ms_median"] for s in statuses if s["commit_ms_median"] is not None]
    return {
        f"commit_ms_{count}": round(statistics.median(medians), 1),
        f"e2e_ms_{count}": round(statistics.median(e2e), 1),
    }


async def _throughput(net: ProcessNet, burst: int) -> dict[str, float]:
    batches = [net.transfers(burst, wallet=w) for w in range(4)]
    base = max(s["txs_committed"] for s in await _statuses(net))
    total = base + 4 * burst
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for w, batch in enumerate(batches):
            nursery.start_soon(submit_batches, net.dirs[w], batch)
    submitted = time.monotonic() - started
    statuses = await _wait(net, lambda s: all(x["txs_committed"] >= total for x in s), 300)
    elapsed = time.monotonic() - started
    return {
        "tx_s_4": round(4 * burst / elapsed, 1),
        "tx_burst": 4 * burst,
        "tx_submit_s": round(submitted, 2),
        "tx_elapsed_s": round(elapsed, 2),
        "tx_blocks": statuses[0]["head"]["number"],
    }


async def _main(sizes: list[int], samples: int, burst: int) -> dict[str, Any]:
    results: dict[str, Any] = {"samples_per_size": samples}
    for count in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-consensus-{count}-") as tmp:
            net = ProcessNet(_exe(), Path(tmp), env_without_flnode(), count)
            try:
                _start(net, count)
                results.update(await _commit_latency(net, count, samples))
                if count == 4:
                    results.update(await _throughput(net, burst))
            except (trio.TooSlowError, AssertionError) as exc:
                # Record the failure instead of losing the other sizes' numbers.
                results[f"commit_ms_{count}"] = None
                results[f"failure_{count}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                try:
                    statuses = await _statuses(net)
                    results[f"stalled_at_{count}"] = [
                        (s["height"], s["round"], s["step"], s["votes"]) for s in statuses
                    ]
                except Exception:  # the nodes may be gone; the failure is recorded anyway
                    pass
            finally:
                net.stop_all()
        print(results, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--sizes", default="4,7,10")
    parser.add_argument(
        "--merge", action="store_true", help="keep the other keys of an existing results file"
    )
    args = parser.parse_args()
    samples, burst = (5, 100) if args.quick else (20, TX_BURST)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = trio.run(_main, sizes, samples, burst)
    results["target"] = "commit < 1000 ms at 4 miners; >= 200 tx/s end to end"
    if args.merge:
        previous_path = Path(__file__).resolve().parent / "results" / "consensus.json"
        if previous_path.exists():
            previous = json.loads(previous_path.read_text())
            for key in ("machine", "date", "command"):
                previous.pop(key, None)
            results = {**previous, **results}
    path = write_result("consensus", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
