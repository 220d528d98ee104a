"""The blob store across OS processes: concurrent writers, and SIGKILL in the middle of writing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from flnode.storage import BlobStore, Cid

WRITER = textwrap.dedent(
    """
    import os, sys
    from flnode.storage import BlobStore
    root, seed, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = BlobStore(root)
    import random
    rng = random.Random(seed)
    for i in range(count):
        store.put(rng.randbytes(size))
        if i == 0:
            print("writing", flush=True)
    """
)


def _spawn(root: Path, seed: int, count: int, size: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(seed), str(count), str(size)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _expected(seed: int, count: int, size: int) -> list[bytes]:
    import random

    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(count)]


def test_concurrent_writer_processes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    BlobStore(root)
    # Processes 0 and 1 share a seed, so they race on the very same CIDs.
    seeds = [7, 7, 8, 9]
    procs = [_spawn(root, seed, 30, 20_000) for seed in seeds]
    for p in procs:
        assert p.wait(timeout=120) == 0
    store = BlobStore(root)
    expected = {d for seed in set(seeds) for d in _expected(seed, 30, 20_000)}
    assert store.stat().blobs == len(expected)
    for data in expected:
        assert store.get(Cid.from_data(data)) == data
    assert list((root / "tmp").iterdir()) == []


def test_sigkill_mid_write_leaves_only_whole_blobs(tmp_path: Path) -> None:
    """Kill writers at several moments; every blob present afterwards must verify."""
    root = tmp_path / "store"
    BlobStore(root)
    for trial, delay in enumerate((0.05, 0.2, 0.5)):
        proc = _spawn(root, 100 + trial, 10_000, 300_000)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    store = BlobStore(root)  # reopening removes the dead writers' temp files
    present = list(store)
    assert present, "the writers should have finished some blobs before being killed"
    for cid in present:
        assert cid.verify(store.get(cid))
    assert list((root / "tmp").iterdir()) == []
