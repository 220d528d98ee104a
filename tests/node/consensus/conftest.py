"""A real chain (py-evm, in memory) with the real compiled ledger contract, and people to use it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from eth.db.atomic import AtomicDB

from flnode.cid import Cid
from flnode.consensus.chain import Chain, Receipt, TxOutcome
from flnode.consensus.ledger import LedgerContract
from flnode.consensus.network import NetworkSpec, new_network
from flnode.identity import NodeIdentity

ETHER = 10**18
STAKE = 2 * ETHER
TX_GAS = 3_000_000  # fixed gas, so that a transaction that reverts is still included


def people(n: int, seed: int) -> list[NodeIdentity]:
    """Deterministic identities (tests are reproducible)."""
    return [NodeIdentity.from_secret((seed * 1000 + i + 1).to_bytes(32, "big")) for i in range(n)]


@dataclass
class Cast:
    owner: NodeIdentity
    miners: list[NodeIdentity]
    devices: list[NodeIdentity]
    outsider: NodeIdentity

    @property
    def everyone(self) -> list[NodeIdentity]:
        return [self.owner, *self.miners, *self.devices, self.outsider]


def make_cast(devices: int = 4) -> Cast:
    ids = people(4 + devices, seed=7)
    return Cast(owner=ids[0], miners=ids[1:3], devices=ids[3 : 3 + devices], outsider=ids[-1])


def make_spec(cast: Cast, **overrides: object) -> NetworkSpec:
    params: dict[str, object] = {
        "network_id": "test-net",
        "chain_id": 4242,
        "accounts": [(p.address, 1000 * ETHER) for p in cast.everyone],
        "miners": [(m.address, STAKE) for m in cast.miners],
        "genesis_timestamp": 1_700_000_000,
        "min_stake": ETHER,
        "leave_delay_blocks": 3,
        "idle_close_blocks": 5,
    }
    params.update(overrides)
    return new_network(**params)  # type: ignore[arg-type]


@dataclass
class Ledger:
    """A chain plus helpers to send one transaction per block, like a busy proposer would."""

    chain: Chain
    contract: LedgerContract
    cast: Cast
    timestamp: int = field(default=1_700_000_100)

    def call(self, to: bytes, data: bytes) -> bytes:
        return self.chain.call(to, data)

    def send(
        self,
        who: NodeIdentity,
        data: bytes,
        *,
        value: int = 0,
        coinbase: NodeIdentity | None = None,
        to: bytes | None = None,
    ) -> tuple[TxOutcome, Receipt]:
        tx = self.chain.sign_transaction(
            who.private_key, to=to or self.contract.address, data=data, value=value, gas=TX_GAS
        )
        self.chain.add_transaction(tx.encode())
        outcomes = self.mine(coinbase or self.cast.miners[0])
        (outcome,) = [o for o in outcomes if o.tx_hash == tx.hash]
        return outcome, self.chain.receipt(tx.hash)

    def mine(self, coinbase: NodeIdentity) -> tuple[TxOutcome, ...]:
        self.timestamp += 1
        _, built = self.chain.mine(
            self.chain.mempool.pending(), coinbase=coinbase.address, timestamp=self.timestamp
        )
        return built.outcomes

    def ok(self, who: NodeIdentity, data: bytes, **kw: object) -> Receipt:
        outcome, receipt = self.send(who, data, **kw)  # type: ignore[arg-type]
        assert outcome.success, outcome.error
        return receipt

    def reverts(self, who: NodeIdentity, data: bytes, reason: str, **kw: object) -> None:
        outcome, receipt = self.send(who, data, **kw)  # type: ignore[arg-type]
        assert not outcome.success, "expected a revert"
        assert not receipt.success
        assert outcome.error is not None and reason in outcome.error, outcome.error

    def events(self, receipt: Receipt) -> list[tuple[str, dict]]:
        return [(e.name, dict(e.args)) for e in self.contract.decode_logs(receipt.logs)]

    # -- task helpers ----------------------------------------------------------------------------

    def create_task(
        self,
        *,
        rounds: int = 2,
        reward: int = ETHER,
        per_round: int = 10,
        committee: Sequence[NodeIdentity] | None = None,
        value: int | None = None,
    ) -> int:
        committee = list(self.cast.miners) if committee is None else list(committee)
        receipt = self.ok(
            self.cast.owner,
            self.contract.create_task(
                spec=Cid.from_data(b"spec"),
                model=Cid.from_data(b"model-0"),
                rounds=rounds,
                updates_per_round=per_round,
                reward_per_round=reward,
                epsilon=10.0,
                committee=[m.address for m in committee],
            ),
            value=rounds * reward if value is None else value,
        )
        (name, args), *_ = self.events(receipt)
        assert name == "TaskCreated"
        return int(args["task"])

    def join_and_submit(self, task: int, round_: int, devices: Sequence[NodeIdentity]) -> None:
        for i, d in enumerate(devices):
            if self.contract.submission(self.call, task, round_, d.address).status != "none":
                continue
            if round_ == 0:
                self.ok(d, self.contract.join_task(task))
            self.ok(
                d,
                self.contract.submit_update(
                    task, round_, Cid.from_data(f"u{task}-{round_}-{i}".encode()), 100 * (i + 1)
                ),
            )


@pytest.fixture
def cast() -> Cast:
    return make_cast()


@pytest.fixture
def spec(cast: Cast) -> NetworkSpec:
    return make_spec(cast)


@pytest.fixture
def ledger(spec: NetworkSpec, cast: Cast) -> Ledger:
    return Ledger(Chain(spec, AtomicDB()), LedgerContract(spec.ledger_address), cast)
