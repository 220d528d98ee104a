"""SIGKILL during block import (a real OS process) leaves a consistent database every time."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from eth.db.atomic import AtomicDB

from flnode.consensus.chain import Chain
from flnode.consensus.network import NetworkSpec
from flnode.storage.chaindb import SqliteAtomicDB

from .conftest import Cast
from .test_chain import _fill

WORKER = Path(__file__).with_name("import_worker.py")
BLOCKS = 12
TXS_PER_BLOCK = 30
KILLS = 3


def _check_consistent(spec: NetworkSpec, db_file: Path, reference: Chain, cast: Cast) -> int:
    """The reopened head is one of the reference blocks and its whole state is readable."""
    db = SqliteAtomicDB(db_file)
    try:
        chain = Chain(spec, db)
        head = chain.head()
        expected = reference.block(head.number)
        assert head.hash == expected.hash
        assert chain.verify_state()
        ref_state = reference._chain.get_vm(expected.header).state
        for person in cast.everyone:
            address = person.address_bytes
            assert chain.balance(address) == ref_state.get_balance(address)
            assert chain.nonce(address) == ref_state.get_nonce(address)
        assert chain.code(spec.ledger_address) == ref_state.get_code(spec.ledger_address_bytes)
        return head.number
    finally:
        db.close()


def test_sigkill_during_import_leaves_a_consistent_head(
    spec: NetworkSpec, cast: Cast, tmp_path: Path
) -> None:
    reference = Chain(spec, AtomicDB())
    blocks = _fill(reference, cast, BLOCKS, TXS_PER_BLOCK)
    network_file = tmp_path / "network.toml"
    spec.save(network_file)
    blocks_file = tmp_path / "blocks.bin"
    blocks_file.write_bytes(b"".join(len(b).to_bytes(4, "big") + b for b in blocks))
    db_file = tmp_path / "chain.sqlite"
    rng = random.Random(7)
    heads = []
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(network_file), str(db_file), str(blocks_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("open"), first
        # Kill while the next block imports: right after the worker reports one to three more
        # blocks (a fixed sleep raced a fast machine, whose worker finished every block first).
        target = int(first.split()[1]) + rng.randint(1, 3)
        while (line := proc.stdout.readline()) and line.strip() != f"imported {target}":
            pass
        time.sleep(rng.uniform(0.0, 0.02))
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        heads.append(_check_consistent(spec, db_file, reference, cast))
    print("heads after each kill:", heads)
    assert heads == sorted(heads)  # progress is never lost
    assert heads[-1] > 0, "the kills should land during the import"
    assert heads[-1] < BLOCKS, "the kills should land before the last block"
    done = subprocess.run(
        [sys.executable, str(WORKER), str(network_file), str(db_file), str(blocks_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip().endswith("done")
    assert _check_consistent(spec, db_file, reference, cast) == BLOCKS
    final = Chain(spec, SqliteAtomicDB(db_file, read_only=True), read_only=True).head()
    assert final.state_root == reference.head().state_root
