"""The network file: everything every node of one network must agree on, and the genesis it derives.

A network file (TOML, or JSON with the same keys) names the network and chain id, fixes the genesis
timestamp and gas limit, lists the pre-funded accounts and the initial miner committee with their
stakes, the ledger's parameters (minimum stake, leave delay, idle-task close delay), and pins the ledger contract (its fixed address and the keccak256 of its runtime code).

Genesis is derived, not stored: the ledger contract is placed at its fixed address with the runtime
bytecode shipped in flnode (checked against the pinned hash) and with initial storage written
directly into its slots (minimum stake, leave delay, idle-close delay, each initial miner's stake,
the total staked),
and its balance is the sum of those stakes. No constructor runs, so the genesis is one block and its
hash covers the contracts too; the header's ``extra_data`` is keccak256 of the format, network id
and chain id, so those are covered as well. The file also records the ``genesis_hash`` this derivation gave when
the file was made: a node recomputes it on load, so a tampered or hand-edited file fails loudly
instead of starting a different chain. Amounts are decimal strings (TOML integers stop at 2**63).
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from eth.chains.base import MiningChain
from eth.db.atomic import AtomicDB
from eth.vm.forks import PragueVM
from eth_utils import is_address, keccak, to_canonical_address, to_checksum_address
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from ..fsutil import write_file_atomically
from ..strictjson import loads_strict
from .artifact import LedgerArtifact, load_artifact
from .errors import NetworkFileError

FORMAT = "flnode-network/1"
DEFAULT_LEDGER_ADDRESS = "0x00000000000000000000000000000000000F1000"
DEFAULT_GAS_LIMIT = 30_000_000
DEFAULT_BALANCE = 10**24  # 1,000,000 ether per pre-funded account
DEFAULT_MIN_STAKE = 10**18
DEFAULT_LEAVE_DELAY_BLOCKS = 100
DEFAULT_IDLE_CLOSE_BLOCKS = 1000
ZERO_ADDRESS = b"\x00" * 20
MAX_WEI = 2**255


def _parse_wei(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("an amount must be an integer number of wei")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ValueError(f"an amount must be a decimal integer of wei, got {value!r}")


def _parse_address(value: Any) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise ValueError(f"not an Ethereum address: {value!r}")
    return to_checksum_address(value)


Wei = Annotated[
    int,
    BeforeValidator(_parse_wei),
    Field(ge=0, lt=MAX_WEI),
    PlainSerializer(str, return_type=str),
]
Address = Annotated[str, BeforeValidator(_parse_address)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Account(_Model):
    """A pre-funded account."""

    address: Address
    balance: Wei


class Miner(_Model):
    """A member of the initial miner committee, staked at genesis."""

    address: Address
    stake: Wei


class NetworkSpec(_Model):
    """The parsed network file."""

    format: Literal["flnode-network/1"] = FORMAT
    network_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    chain_id: int = Field(ge=1, lt=2**53)
    genesis_timestamp: int = Field(ge=0, lt=2**63)
    gas_limit: int = Field(DEFAULT_GAS_LIMIT, ge=5_000_000, le=2**40)
    ledger_address: Address = DEFAULT_LEDGER_ADDRESS
    ledger_code_hash: str = Field(pattern=r"^0x[0-9a-f]{64}$")
    min_stake: Wei = DEFAULT_MIN_STAKE
    leave_delay_blocks: int = Field(DEFAULT_LEAVE_DELAY_BLOCKS, ge=0, lt=2**63)
    idle_close_blocks: int = Field(DEFAULT_IDLE_CLOSE_BLOCKS, ge=1, lt=2**63)
    accounts: tuple[Account, ...] = ()
    miners: tuple[Miner, ...] = ()
    genesis_hash: str | None = Field(None, pattern=r"^0x[0-9a-f]{64}$")

    @field_validator("ledger_address")
    @classmethod
    def _not_precompile(cls, value: str) -> str:
        if int(value, 16) < 0x10000:
            raise ValueError("the ledger address must not be in the precompile range (< 0x10000)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NetworkSpec:
        seen = [a.address for a in self.accounts]
        if len(set(seen)) != len(seen):
            raise ValueError("an account is listed twice")
        if self.ledger_address in seen:
            raise ValueError("the ledger address cannot also be a pre-funded account")
        miners = [m.address for m in self.miners]
        if len(set(miners)) != len(miners):
            raise ValueError("a miner is listed twice")
        for m in self.miners:
            if m.stake < max(self.min_stake, 1):
                raise ValueError(f"miner {m.address} stakes less than min_stake")
        return self

    # -- derived ------------------------------------------------------------------------------

    @property
    def ledger_address_bytes(self) -> bytes:
        return to_canonical_address(self.ledger_address)

    def genesis_params(self) -> dict[str, Any]:
        return {
            "coinbase": ZERO_ADDRESS,
            "difficulty": 0,
            "gas_limit": self.gas_limit,
            "timestamp": self.genesis_timestamp,
            # The chain id is in no header field and the network id in no state: bind both into
            # the genesis hash through extra_data (32 bytes at most, stack notes E4).
            "extra_data": keccak(f"{self.format}\x00{self.network_id}\x00{self.chain_id}".encode()),
            "nonce": b"\x00" * 8,
        }

    def genesis_state(self, artifact: LedgerArtifact | None = None) -> dict[bytes, dict[str, Any]]:
        """Pre-funded accounts plus the ledger contract with its code and initial storage."""
        artifact = artifact or load_artifact()
        state: dict[bytes, dict[str, Any]] = {
            to_canonical_address(a.address): {
                "balance": a.balance,
                "nonce": 0,
                "code": b"",
                "storage": {},
            }
            for a in self.accounts
        }
        stake_slot = artifact.slot("miners", "stake")
        storage: dict[int, int] = {}
        total = 0
        for m in self.miners:
            storage[hashmap_slot(stake_slot, to_canonical_address(m.address))] = m.stake
            total += m.stake
        if self.min_stake:
            storage[artifact.slot("miners", "min_stake")] = self.min_stake
        if self.leave_delay_blocks:
            storage[artifact.slot("miners", "leave_delay")] = self.leave_delay_blocks
        if total:
            storage[artifact.slot("miners", "total_staked")] = total
        storage[artifact.slot("idle_close_blocks")] = self.idle_close_blocks
        state[self.ledger_address_bytes] = {
            "balance": total,
            "nonce": 1,  # like a contract created by CREATE (EIP-161)
            "code": artifact.runtime,
            "storage": storage,
        }
        return state

    def derive_genesis_hash(self) -> str:
        """Build the genesis block in memory and return its hash (``0x…``)."""
        self.check_code_hash()
        chain = chain_class(self.chain_id).from_genesis(
            AtomicDB(), self.genesis_params(), self.genesis_state()
        )
        return "0x" + chain.get_canonical_head().hash.hex()

    def check_code_hash(self) -> None:
        shipped = "0x" + load_artifact().code_hash.hex()
        if shipped != self.ledger_code_hash:
            raise NetworkFileError(
                f"the network pins ledger code hash {self.ledger_code_hash}, but this flnode "
                f"ships {shipped}; run the flnode version the network was made with"
            )

    def with_genesis_hash(self) -> NetworkSpec:
        return self.model_copy(update={"genesis_hash": self.derive_genesis_hash()})

    # -- files --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def render(self, fmt: Literal["toml", "json"] = "toml") -> str:
        data = self.to_dict()
        if fmt == "json":
            return json.dumps(data, indent=2) + "\n"
        return "# flnode network file: share it unchanged with every node of the network.\n" + (
            tomli_w.dumps(data)
        )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        fmt: Literal["toml", "json"] = "json" if path.suffix == ".json" else "toml"
        write_file_atomically(path, self.render(fmt).encode("utf-8"))


def hashmap_slot(slot: int, key: bytes) -> int:
    """Vyper's storage slot of ``map[key]`` for a map at ``slot``: keccak256(slot ‖ key), 32 bytes each."""
    return int.from_bytes(keccak(slot.to_bytes(32, "big") + key.rjust(32, b"\x00")), "big")


@cache
def chain_class(chain_id: int) -> type[MiningChain]:
    """The py-evm chain class of a network: Prague rules from block 0 (no proof of work)."""
    return MiningChain.configure(
        __name__="FLChain", vm_configuration=((0, PragueVM),), chain_id=chain_id
    )


def parse_network(data: Mapping[str, Any], source: str) -> NetworkSpec:
    """Validate a network document and check that it derives the genesis hash it records."""
    try:
        spec = NetworkSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise NetworkFileError(f"{source}: invalid network file at {where}: {err['msg']}") from None
    if spec.genesis_hash is None:
        raise NetworkFileError(
            f"{source}: the network file has no genesis_hash; make one with `flnode network new`"
        )
    derived = spec.derive_genesis_hash()
    if derived != spec.genesis_hash:
        raise NetworkFileError(
            f"{source}: the network file derives genesis {derived}, not the recorded "
            f"{spec.genesis_hash}; it was edited after it was made (get an unmodified copy)"
        )
    return spec


def load_network(path: str | Path) -> NetworkSpec:
    """Read and verify a network file (TOML, or JSON if its name ends in ``.json``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NetworkFileError(f"cannot read network file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
        data = loads_strict(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NetworkFileError(f"{path}: not a valid network file: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise NetworkFileError(
            f"{path}: not a valid network file: arrays or tables nested too deeply"
        ) from None
    if not isinstance(data, dict):
        raise NetworkFileError(f"{path}: a network file must be a table/object")
    return parse_network(data, str(path))


def new_network(
    *,
    network_id: str,
    chain_id: int,
    accounts: Iterable[tuple[str, int]] = (),
    miners: Iterable[tuple[str, int]] = (),
    genesis_timestamp: int | None = None,
    gas_limit: int = DEFAULT_GAS_LIMIT,
    min_stake: int = DEFAULT_MIN_STAKE,
    leave_delay_blocks: int = DEFAULT_LEAVE_DELAY_BLOCKS,
    idle_close_blocks: int = DEFAULT_IDLE_CLOSE_BLOCKS,
    ledger_address: str = DEFAULT_LEDGER_ADDRESS,
) -> NetworkSpec:
    """A new network with its genesis hash filled in (the timestamp defaults to now)."""
    try:
        spec = NetworkSpec(
            network_id=network_id,
            chain_id=chain_id,
            genesis_timestamp=int(time.time()) if genesis_timestamp is None else genesis_timestamp,
            gas_limit=gas_limit,
            ledger_address=ledger_address,
            ledger_code_hash="0x" + load_artifact().code_hash.hex(),
            min_stake=min_stake,
            leave_delay_blocks=leave_delay_blocks,
            idle_close_blocks=idle_close_blocks,
            accounts=tuple(Account(address=a, balance=b) for a, b in accounts),
            miners=tuple(Miner(address=a, stake=s) for a, s in miners),
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "network"
        raise NetworkFileError(f"invalid network parameters at {where}: {err['msg']}") from None
    return spec.with_genesis_hash()
