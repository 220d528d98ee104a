"""Blob store throughput: verified put (with fsync) and get, against plain sha256 hashing.

Run: ``python -m bench.storage`` (or ``make bench-storage``). Writes bench/results/storage.json.

Puts are of fresh random bytes (so none is a de-duplicated no-op) and include the temp-file write,
fsync, rename and directory fsync. Gets read from a warm page cache and re-hash every byte, so they
measure the verification cost the store adds on each read; the target is gets at least half as fast
as hashing alone.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench._common import write_result
from flnode.storage import BlobStore

MB = 1e6


def _measure(store: BlobStore, size: int, count: int, repeats: int) -> dict[str, float]:
    put_rates, get_rates, sha_rates = [], [], []
    for _ in range(repeats):
        blobs = [os.urandom(size) for _ in range(count)]
        t0 = time.perf_counter()
        cids = [store.put(b) for b in blobs]
        put_rates.append(size * count / (time.perf_counter() - t0) / MB)
        t0 = time.perf_counter()
        for cid in cids:
            store.get(cid)
        get_rates.append(size * count / (time.perf_counter() - t0) / MB)
        t0 = time.perf_counter()
        for b in blobs:
            hashlib.sha256(b).digest()
        sha_rates.append(size * count / (time.perf_counter() - t0) / MB)
        for cid in cids:
            store.delete(cid)
    put, get, sha = (statistics.median(r) for r in (put_rates, get_rates, sha_rates))
    return {
        "blob_bytes": size,
        "blobs_per_repeat": count,
        "repeats": repeats,
        "put_mb_s": round(put, 1),
        "get_mb_s": round(get, 1),
        "sha256_mb_s": round(sha, 1),
        "get_vs_sha256": round(get / sha, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to put the store (default: a temp dir)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = BlobStore(Path(tmp) / "store")
        small = _measure(store, 250_000, 80, args.repeats)
        large = _measure(store, 5_000_000, 16, args.repeats)
    print(f"{'blob':>8} {'put MB/s':>10} {'get MB/s':>10} {'sha256 MB/s':>12} {'get/sha256':>11}")
    for name, r in (("250 KB", small), ("5 MB", large)):
        print(
            f"{name:>8} {r['put_mb_s']:>10} {r['get_mb_s']:>10} {r['sha256_mb_s']:>12} {r['get_vs_sha256']:>11}"
        )
    target_met = large["get_vs_sha256"] >= 0.5
    print(
        f"verified get at {large['get_vs_sha256']:.0%} of sha256 speed (target >= 50%): "
        f"{'met' if target_met else 'NOT met'}"
    )
    path = write_result(
        "storage",
        {
            "put_mb_s": large["put_mb_s"],
            "get_mb_s": large["get_mb_s"],
            "sha256_mb_s": large["sha256_mb_s"],
            "get_vs_sha256": large["get_vs_sha256"],
            "target_get_vs_sha256": 0.5,
            "target_met": target_met,
            "blob_5mb": large,
            "blob_250kb": small,
            "fsync": True,
            "page_cache": "warm for gets",
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
