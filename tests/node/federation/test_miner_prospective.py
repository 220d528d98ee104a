"""Which pending submissions a miner counts on to close a round in the block that records them.

``MinerRole._prospective`` is a pure choice over the head's view of the round and the mempool's
next-in-line ``submitUpdate`` transactions; these tests give it those two inputs directly (the
devnet tests and ``test_device_tasks`` run the whole path on real nodes).
"""

from __future__ import annotations

from types import SimpleNamespace

import structlog

from flnode.cid import Cid
from flnode.config import NodeConfig
from flnode.consensus.ledger import TaskInfo
from flnode.federation.ledgerview import RoundView, SubmittedUpdate
from flnode.federation.miner import MinerRole, _Pending

TASK = 7
ROUND = 2


def _view(recorded: list[SubmittedUpdate], *, per_round: int = 4) -> RoundView:
    task = TaskInfo(
        id=TASK,
        owner="0x" + "ee" * 20,
        spec=Cid.from_data(b"spec"),
        model=Cid.from_data(b"model"),
        rounds=5,
        updates_per_round=per_round,
        reward_per_round=10,
        epsilon=10.0,
        deposit=50,
        round=ROUND,
        submitted=len(recorded),
        last_progress_block=10,
        closed=False,
    )
    return RoundView(task, 12, 1_700_000_000, 10, 1_700_000_000, tuple(recorded))


def _sub(device: int, content: bytes | None = None) -> SubmittedUpdate:
    address = "0x" + f"{device:02x}" * 20
    cid = Cid.from_data(content if content is not None else b"update-%d" % device)
    return SubmittedUpdate(address, cid, 100 + device, 11)


def _pending(sub: SubmittedUpdate, *, task: int = TASK, round_: int = ROUND) -> _Pending:
    return _Pending(task, round_, sub, b"raw-" + sub.device.encode())


def _miner(pending: list[_Pending]) -> MinerRole:
    ctx = SimpleNamespace(log=structlog.get_logger(), config=NodeConfig())
    miner = MinerRole(ctx)  # type: ignore[arg-type]
    miner._pending = {p.sub.device.lower(): p for p in pending}
    return miner


def test_pending_submissions_complete_the_round_in_address_order() -> None:
    recorded = [_sub(9)]
    miner = _miner([_pending(_sub(5)), _pending(_sub(3)), _pending(_sub(4)), _pending(_sub(8))])
    completed = miner._prospective(_view(recorded))
    assert completed is not None
    full, chosen = completed
    # The recorded submission first (ledger order), then as many pending ones as the round
    # still takes, by address; the leader's block carries their transactions in that order.
    assert [s.device for s in full.submissions] == [_sub(n).device for n in (9, 3, 4, 5)]
    assert [p.raw for p in chosen] == [_pending(_sub(n)).raw for n in (3, 4, 5)]
    assert all(s.block == 13 for s in full.submissions[1:])  # the head's next block


def test_too_few_pending_submissions_close_nothing() -> None:
    miner = _miner([_pending(_sub(3)), _pending(_sub(4))])
    assert miner._prospective(_view([_sub(9)])) is None


def test_other_rounds_tasks_and_devices_already_recorded_do_not_count() -> None:
    miner = _miner(
        [
            _pending(_sub(3)),
            _pending(_sub(4), round_=ROUND + 1),
            _pending(_sub(5), task=TASK + 1),
            _pending(SubmittedUpdate(_sub(9).device, Cid.from_data(b"again"), 7, 11)),
        ]
    )
    assert miner._prospective(_view([_sub(9)], per_round=3)) is None
    assert miner._prospective(_view([_sub(9)], per_round=2)) is not None


def test_byte_copies_among_pending_submissions_wait_for_a_block() -> None:
    # Of two copies the first in ledger order stands; address order must not pick it.
    honest, copier = _sub(0xB0, b"the same bytes"), _sub(0x01, b"the same bytes")
    miner = _miner([_pending(honest), _pending(copier)])
    assert miner._prospective(_view([_sub(9)], per_round=3)) is None
    # A copy of a recorded submission is judged as usual (the recorded one comes first).
    miner = _miner([_pending(copier), _pending(_sub(4))])
    completed = miner._prospective(_view([honest], per_round=3))
    assert completed is not None
    assert [s.device for s in completed[0].submissions] == [
        honest.device,
        copier.device,
        _sub(4).device,
    ]


def test_the_view_key_keeps_ledger_order() -> None:
    a, b = _sub(1), _sub(2)
    assert _view([a, b]).key != _view([b, a]).key
    assert _view([a]).extended([b]).key == _view([a, b]).key
