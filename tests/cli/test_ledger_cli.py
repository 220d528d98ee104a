"""`flnode network` and `flnode chain` as a user runs them, and a daemon started with --network."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from flnode.cli.main import main
from flnode.consensus.chain import Chain
from flnode.consensus.ledger import LedgerContract
from flnode.consensus.network import load_network
from flnode.consensus.service import CHAIN_DB_FILE, adopt_network
from flnode.datadir import init_datadir
from flnode.identity import NodeIdentity
from flnode.storage.chaindb import SqliteAtomicDB

from ..daemons import Daemon

ETHER = 10**18


def flnode(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def nodes(tmp_path: Path) -> tuple[Path, Path]:
    return init_datadir(tmp_path / "miner").datadir.path, init_datadir(
        tmp_path / "dev"
    ).datadir.path


def test_network_new_and_show(capsys: pytest.CaptureFixture[str], tmp_path: Path, nodes) -> None:  # type: ignore[no-untyped-def]
    miner, dev = nodes
    out = tmp_path / "net.toml"
    other = "0x" + "ab" * 20
    code, stdout, err = flnode(
        capsys,
        "network",
        "new",
        str(out),
        "--network-id",
        "lab",
        "--chain-id",
        "99",
        "--miner",
        f"{miner}=3ether",
        "--account",
        str(dev),
        "--account",
        f"{other}=5",
        "--timestamp",
        "1700000000",
    )
    assert code == 0, err
    spec = load_network(out)
    assert spec.genesis_hash in stdout
    miner_addr = NodeIdentity.load(miner / "node.key").address
    assert [(m.address, m.stake) for m in spec.miners] == [(miner_addr, 3 * ETHER)]
    balances = {a.address.lower(): a.balance for a in spec.accounts}
    assert balances[other] == 5 and balances[miner_addr.lower()] == 10**6 * ETHER
    code, stdout, _ = flnode(capsys, "network", "show", str(out))
    assert code == 0 and "(verified)" in stdout
    code, stdout, _ = flnode(capsys, "network", "show", str(out), "--json")
    assert json.loads(stdout)["chain_id"] == 99
    # same inputs, same genesis: another operator can reproduce the file
    again = tmp_path / "again.json"
    flnode(
        capsys,
        "network",
        "new",
        str(again),
        "--network-id",
        "lab",
        "--chain-id",
        "99",
        "--miner",
        f"{miner}=3ether",
        "--account",
        str(dev),
        "--account",
        f"{other}=5",
        "--timestamp",
        "1700000000",
    )
    assert load_network(again).genesis_hash == spec.genesis_hash


def test_network_new_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path, nodes) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "net.toml"
    base = ["network", "new", str(out), "--network-id", "lab", "--chain-id", "5"]
    assert flnode(capsys, *base)[0] == 0
    code, _, err = flnode(capsys, *base)
    assert code == 2 and "refusing to overwrite" in err
    code, _, err = flnode(capsys, *base, "--force", "--account", "0x1234=5")
    assert code == 2 and "neither an address nor an initialised data dir" in err
    code, _, err = flnode(capsys, *base, "--force", "--account", f"{nodes[0]}=lots")
    assert code == 2 and "is not an amount" in err
    code, _, err = flnode(capsys, *base, "--force", "--miner", f"{nodes[0]}=1wei")
    assert code == 1 and "less than min_stake" in err
    out.write_text(out.read_text().replace("chain_id = 5", "chain_id = 6"))
    code, _, err = flnode(capsys, "network", "show", str(out))
    assert code == 1 and "edited after it was made" in err
    assert len(err.strip().splitlines()) == 1


def test_chain_commands_read_the_local_ledger(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    nodes,  # type: ignore[no-untyped-def]
) -> None:
    miner, dev = nodes
    net = tmp_path / "net.toml"
    flnode(
        capsys,
        "network",
        "new",
        str(net),
        "--network-id",
        "lab",
        "--chain-id",
        "7",
        "--miner",
        str(miner),
        "--account",
        str(dev),
    )
    code, _, err = flnode(capsys, "chain", "head", "--datadir", str(dev))
    assert code == 1 and "has no ledger" in err
    spec = load_network(net)
    adopt_network(dev, spec)
    db = SqliteAtomicDB(dev / CHAIN_DB_FILE)
    chain = Chain(spec, db)
    device = NodeIdentity.load(dev / "node.key")
    contract = LedgerContract(spec.ledger_address)
    tx = chain.sign_transaction(
        device.private_key, to=spec.ledger_address, data=contract.register_miner(), value=ETHER
    )
    chain.add_transaction(tx)
    head, _ = chain.mine(chain.mempool.pending(), coinbase=spec.miners[0].address)
    db.close()

    code, stdout, _ = flnode(capsys, "chain", "head", "--datadir", str(dev), "--json")
    data = json.loads(stdout)
    assert code == 0 and data["number"] == 1 and data["hash"] == "0x" + head.hash.hex()
    code, stdout, _ = flnode(capsys, "chain", "block", "1", "--datadir", str(dev))
    assert code == 0 and "0x" + tx.hash.hex() in stdout
    code, stdout, _ = flnode(capsys, "chain", "tx", "0x" + tx.hash.hex(), "--datadir", str(dev))
    assert code == 0 and "success" in stdout and "MinerRegistered(" in stdout
    code, stdout, _ = flnode(
        capsys, "chain", "balance", device.address, "--datadir", str(dev), "--json"
    )
    data = json.loads(stdout)
    assert data["stake_wei"] == ETHER and data["nonce"] == 1
    code, stdout, _ = flnode(capsys, "chain", "reputation", device.address, "--datadir", str(dev))
    assert code == 0 and "0.5" in stdout
    code, _, err = flnode(capsys, "chain", "block", "9", "--datadir", str(dev))
    assert code == 1 and "no block 9" in err
    code, _, err = flnode(capsys, "chain", "tx", "0x12", "--datadir", str(dev))
    assert code == 2 and "32-byte hex hash" in err
    code, _, err = flnode(capsys, "chain", "balance", "nobody", "--datadir", str(dev))
    assert code == 2 and "not an address" in err


def test_daemon_runs_the_ledger_and_refuses_another_network(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    nodes,  # type: ignore[no-untyped-def]
    flnode_exe: list[str],
    clean_env: dict[str, str],
) -> None:
    miner, _ = nodes
    net, other = tmp_path / "net.toml", tmp_path / "other.toml"
    for path, chain_id in ((net, "11"), (other, "12")):
        flnode(
            capsys,
            "network",
            "new",
            str(path),
            "--network-id",
            "lab",
            "--chain-id",
            chain_id,
            "--miner",
            str(miner),
        )
    daemon = Daemon(flnode_exe, miner, clean_env, "--network", str(net), "--role", "miner")
    try:
        daemon.wait_for(lambda: bool(daemon.events("ready")), 30, "ready")
        (opened,) = daemon.events("chain open")
        assert opened["chain_id"] == 11 and opened["head"] == 0
        assert opened["genesis"] == load_network(net).genesis_hash
        state = json.loads((miner / "node.json").read_text())
        assert state["chain_id"] == 11 and state["network_id"] == "lab"
        # the CLI reads the ledger while the daemon holds it
        code, stdout, _ = flnode(capsys, "chain", "head", "--datadir", str(miner), "--json")
        assert code == 0 and json.loads(stdout)["number"] == 0
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGKILL)
    refused = subprocess.run(
        [*flnode_exe, "start", "--datadir", str(miner), "--network", str(other)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env,
    )
    assert refused.returncode == 1
    assert "use a fresh data dir for another network" in refused.stderr
    assert "Traceback" not in refused.stderr
