"""Run as a separate process by test_crash.py: import blocks into a SQLite chain until killed.

Usage: python import_worker.py NETWORK_FILE DB_FILE BLOCKS_FILE
BLOCKS_FILE holds RLP blocks, each preceded by its length as 4 big-endian bytes. The worker
resumes after whatever head the database holds and prints one line per imported block.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flnode.consensus.chain import Chain
from flnode.consensus.network import load_network
from flnode.storage.chaindb import SqliteAtomicDB


def read_blocks(path: Path) -> list[bytes]:
    data = path.read_bytes()
    blocks, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        blocks.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return blocks


def main() -> None:
    network, db_file, blocks_file = (Path(a) for a in sys.argv[1:4])
    chain = Chain(load_network(network), SqliteAtomicDB(db_file))
    blocks = read_blocks(blocks_file)
    start = chain.head().number
    print(f"open {start}", flush=True)
    for raw in blocks[start:]:
        head = chain.import_block(raw)
        print(f"imported {head.number}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
