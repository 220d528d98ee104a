"""Network files and genesis: same file → same genesis everywhere; bad or tampered files fail loudly."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from flnode.consensus.errors import NetworkFileError
from flnode.consensus.network import load_network, new_network, parse_network

from .conftest import Cast, make_spec


def test_same_parameters_give_the_same_genesis(cast: Cast) -> None:
    a, b = make_spec(cast), make_spec(cast)
    assert a.genesis_hash == b.genesis_hash is not None
    assert make_spec(cast, chain_id=4243).genesis_hash != a.genesis_hash
    assert make_spec(cast, genesis_timestamp=1).genesis_hash != a.genesis_hash
    assert make_spec(cast, min_stake=2).genesis_hash != a.genesis_hash
    assert make_spec(cast, miners=[]).genesis_hash != a.genesis_hash


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_round_trip(cast: Cast, tmp_path: Path, suffix: str) -> None:
    spec = make_spec(cast)
    path = tmp_path / f"net{suffix}"
    spec.save(path)
    assert load_network(path) == spec


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    data = tomllib.loads(path.read_text())
    change(data)
    import tomli_w

    path.write_text(tomli_w.dumps(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["accounts"][0].update(balance=str(10**30)), "edited after it was made"),
        (lambda d: d["miners"][0].update(stake=str(3 * 10**18)), "edited after it was made"),
        (lambda d: d.update(genesis_timestamp=5), "edited after it was made"),
        (lambda d: d.update(genesis_hash="0x" + "00" * 32), "edited after it was made"),
        (lambda d: d.pop("genesis_hash"), "no genesis_hash"),
        (lambda d: d.update(ledger_code_hash="0x" + "11" * 32), "ledger code hash"),
        (lambda d: d.update(chain_id=0), "chain_id"),
        (lambda d: d.update(network_id="Bad Name"), "network_id"),
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d.pop("chain_id"), "chain_id"),
        (lambda d: d["accounts"][0].update(address="0x1234"), "accounts.0.address"),
        (lambda d: d["accounts"][0].update(balance="-5"), "accounts.0.balance"),
        (lambda d: d["accounts"].append(dict(d["accounts"][0])), "listed twice"),
        (lambda d: d["miners"][0].update(stake="1"), "less than min_stake"),
        (lambda d: d.update(ledger_address="0x" + "00" * 19 + "05"), "precompile"),
        (lambda d: d.update(format="flnode-network/9"), "format"),
    ],
)
def test_bad_or_tampered_files_are_refused(
    cast: Cast,
    tmp_path: Path,
    change,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    path = tmp_path / "net.toml"
    make_spec(cast).save(path)
    _edit(path, change)
    with pytest.raises(NetworkFileError, match=message):
        load_network(path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(NetworkFileError, match="cannot read"):
        load_network(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("this is = = not toml")
    with pytest.raises(NetworkFileError, match="not a valid network file"):
        load_network(tmp_path / "bad.toml")
    (tmp_path / "bad.json").write_text('{"chain_id": 1, "chain_id": 2}')
    with pytest.raises(NetworkFileError, match="duplicate key"):
        load_network(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(NetworkFileError, match="table/object"):
        load_network(tmp_path / "list.json")


def test_json_and_toml_describe_the_same_network(cast: Cast, tmp_path: Path) -> None:
    spec = make_spec(cast)
    data = json.loads(spec.render("json"))
    assert parse_network(data, "json") == spec
    assert data["accounts"][0]["balance"] == str(1000 * 10**18)  # big amounts as strings


def test_new_network_rejects_bad_parameters(cast: Cast) -> None:
    with pytest.raises(NetworkFileError, match="network_id"):
        new_network(network_id="UPPER", chain_id=1)
    with pytest.raises(NetworkFileError, match="less than min_stake"):
        new_network(network_id="n", chain_id=1, miners=[(cast.miners[0].address, 1)])
