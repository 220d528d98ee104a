"""The node cache under py-evm and the import-path accelerators return what the originals do."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from eth.db.atomic import AtomicDB
from eth_hash.auto import keccak

from flnode.consensus import chain
from flnode.consensus.network import NetworkSpec
from flnode.storage.chaindb import SqliteAtomicDB

from .conftest import Cast, Ledger
from .test_chain import _fill


def _node(n: int) -> tuple[bytes, bytes]:
    value = b"node-%d" % n * 5
    return keccak(value), value


def test_cache_keeps_only_content_addressed_values_the_database_holds(tmp_path: Path) -> None:
    raw = SqliteAtomicDB(tmp_path / "c.sqlite")
    db = chain.ContentCacheDB(raw)
    key, value = _node(1)
    other = b"\x07" * 32  # a 32-byte key whose value is not its preimage
    raw[key] = value
    raw[other] = b"not the preimage"
    assert db[key] == value and db[other] == b"not the preimage"
    assert key in db._cache and other not in db._cache
    raw[other] = b"changed"
    assert db[other] == b"changed"

    del db[key]  # a delete through the cache evicts
    assert key not in db and key not in db._cache
    with pytest.raises(KeyError):
        db[key]

    written, value2 = _node(2)
    with pytest.raises(RuntimeError), db.atomic_batch() as batch:
        batch[written] = value2
        raise RuntimeError("rolled back")
    assert written not in db._cache and written not in db

    nested_kept, v3 = _node(3)
    nested_dropped, v4 = _node(4)
    with db.atomic_batch() as outer:
        outer[nested_kept] = v3
        with db.atomic_batch() as inner:
            inner[written] = value2
        with pytest.raises(RuntimeError), db.atomic_batch() as inner:
            inner[nested_dropped] = v4
            raise RuntimeError("inner rolled back")
        assert written not in db._cache  # not committed yet
    assert db._cache[nested_kept] == v3 and db._cache[written] == value2
    assert nested_dropped not in db._cache and nested_dropped not in raw
    assert raw[nested_kept] == v3 and raw[written] == value2

    with db.atomic_batch() as batch:
        batch[key] = value
        del batch[key]
    assert key not in db._cache and key not in raw


def test_cache_is_bounded() -> None:
    db = chain.ContentCacheDB(AtomicDB(), max_entries=40)
    for n in range(200):
        key, value = _node(n)
        db[key] = value
        assert db[key] == value
    assert len(db._cache) <= 40
    assert all(db[_node(n)[0]] == _node(n)[1] for n in range(200))


def test_chain_on_the_cache_matches_one_without(
    spec: NetworkSpec, cast: Cast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = chain.Chain(spec, SqliteAtomicDB(tmp_path / "cached.sqlite"))
    monkeypatch.setattr(chain, "_CACHE_NODES", False)
    plain = chain.Chain(spec, SqliteAtomicDB(tmp_path / "plain.sqlite"))
    assert isinstance(cached._chain.chaindb.db, chain.ContentCacheDB)
    assert not isinstance(plain._chain.chaindb.db, chain.ContentCacheDB)
    blocks = _fill(cached, cast, 4, 12)
    for raw in blocks:
        plain.import_block(raw)
    assert plain.head() == cached.head()
    reopened = chain.Chain(spec, SqliteAtomicDB(tmp_path / "cached.sqlite"))
    assert reopened.head() == cached.head() and reopened.verify_state()


def test_serializable_argument_merging_matches_the_original() -> None:
    import rlp.sedes.serializable as serializable

    rng = random.Random(17)
    names = ("a", "b", "c", "d")
    for _ in range(2_000):
        n_args = rng.randrange(0, 6)
        args = tuple(range(n_args))
        kwargs = {k: k for k in rng.sample([*names, "x"], rng.randrange(0, 5))}
        arg_names = rng.choice([names, ("a", "b", "a"), ["a", "b", "c", "d"]])
        for name in ("merge_kwargs_to_args", "merge_args_to_kwargs"):
            outcomes = []
            for function in (getattr(serializable, name), chain.REPLACED[name]):
                try:
                    outcomes.append(function(args, dict(kwargs), arg_names))
                except (TypeError, KeyError) as exc:
                    outcomes.append((type(exc), str(exc)))
            assert outcomes[0] == outcomes[1]
            assert type(outcomes[0]) is type(outcomes[1])
            if isinstance(outcomes[0], dict):
                assert list(outcomes[0]) == list(outcomes[1])  # same key order


def test_jump_analysis_shared_per_code_matches_the_original() -> None:
    import eth.vm.computation

    shared = eth.vm.computation.CodeStream
    original = chain.REPLACED["CodeStream"]
    rng = random.Random(19)
    # bytes biased to PUSHn and JUMPDEST, so PUSH data often hides a 0x5b
    alphabet = [0x5B] * 8 + list(range(0x60, 0x80)) + [0x00, 0x56, 0x57]
    for _ in range(100):
        code = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 200)))
        for _ in range(3):  # later streams reuse what earlier ones worked out
            fresh, reused = original(code), shared(code)
            positions = [rng.randrange(len(code) + 40) for _ in range(60)]
            assert [reused.is_valid_opcode(p) for p in positions] == [
                fresh.is_valid_opcode(p) for p in positions
            ]


def test_import_path_accelerators_are_installed() -> None:
    assert {"merge_kwargs_to_args", "merge_args_to_kwargs", "CodeStream"} <= set(chain.REPLACED)


def test_batch_trie_update_matches_setting_keys_one_by_one() -> None:
    from trie import HexaryTrie

    rng = random.Random(23)
    for trial in range(120):
        db: dict[bytes, bytes] = {}
        key_size = rng.choice([1, 2, 3, 32])
        universe = [rng.randbytes(key_size) for _ in range(rng.choice([3, 20, 200, 500]))]
        t = HexaryTrie(db)
        for k in rng.sample(universe, rng.randrange(0, len(universe) // 2 + 1)):
            t[k] = rng.randbytes(rng.choice([1, 4, 30, 33, 70]))
        root = t.root_hash
        for _ in range(3):
            count = rng.randrange(1, min(len(universe), 150) + 1)
            batch = {
                k: rng.randbytes(rng.choice([1, 4, 30, 33, 70]))
                for k in rng.sample(universe, count)
            }
            expected_db = dict(db)
            expected = HexaryTrie(expected_db, root)
            with expected.squash_changes() as memory:
                for k, v in batch.items():
                    memory[k] = v
            result = chain.trie_batch_set(db.__getitem__, root, batch.items())
            assert result is not None, trial
            root, nodes = result
            assert root == expected.root_hash, trial
            # the same nodes are new (the ones that remain after the trie's own pruning)
            assert set(nodes) - set(db) == set(expected_db) - set(db), trial
            db.update(nodes)
    assert chain.trie_batch_set(db.__getitem__, root, [(b"\x01" * 32, b"")]) is None  # a delete
    assert chain.trie_batch_set(db.__getitem__, b"\x09" * 32, [(b"\x01", b"x")]) is None  # missing


def test_blocks_built_with_the_batch_state_trie_import_without_it(
    spec: NetworkSpec, cast: Cast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eth.vm.forks.prague.state import PragueState

    fast = chain.Chain(spec, AtomicDB())
    blocks = _fill(fast, cast, 4, 12)
    monkeypatch.setattr(chain.LedgerVM, "_state_class", PragueState)
    plain = chain.Chain(spec, AtomicDB())
    for raw in blocks:  # re-executed with py-evm's own AccountDB: the state roots must agree
        plain.import_block(raw)
    assert plain.head() == fast.head()
    more = _fill(plain, cast, 2, 12, t0=1_700_000_200)
    monkeypatch.undo()
    for raw in more:
        fast.import_block(raw)
    assert fast.head() == plain.head()


def test_node_helpers_match_the_originals() -> None:
    import trie.utils.nodes as nodes

    rng = random.Random(29)
    samples: list[object] = [b"", [b"", b"x"], [b"\x40", b"x"], [b"x"] * 3, [b"\x01"] * 17, (1, 2)]
    for _ in range(500):
        path = tuple(rng.randrange(16) for _ in range(rng.randrange(0, 20)))
        leaf = rng.random() < 0.5
        encoded = chain.REPLACED["encode_nibbles"]((*path, 16) if leaf else path)
        samples.append([encoded, rng.randbytes(rng.choice((1, 32)))])
    for node in samples:
        expected: object
        try:
            expected = chain.REPLACED["get_node_type"](node)
        except Exception as exc:
            expected = type(exc)
        try:
            got: object = nodes.get_node_type(node)
        except Exception as exc:
            got = type(exc)
        assert got == expected, node
    keys = [tuple(rng.randrange(3) for _ in range(rng.randrange(0, 6))) for _ in range(60)]
    for a in keys:
        for b in keys:
            assert nodes.key_starts_with(a, b) == chain.REPLACED["key_starts_with"](a, b)


def test_view_calls_are_remembered_until_the_head_changes(ledger: Ledger) -> None:
    chain_, contract = ledger.chain, ledger.contract
    task = ledger.create_task(rounds=2, per_round=2)
    first = contract.task(chain_.call, task)
    cached = dict(chain_._calls)
    assert cached, "the call was not remembered"
    assert contract.task(chain_.call, task) == first
    assert chain_._calls == cached  # served from memory, nothing new computed

    device = ledger.cast.devices[0]
    ledger.join_and_submit(task, 0, [device])  # new heads: the remembered result is stale
    after = contract.task(chain_.call, task)
    assert (first.submitted, after.submitted) == (0, 1)


def test_header_blooms_tell_which_blocks_may_hold_an_event(ledger: Ledger) -> None:
    chain_, contract = ledger.chain, ledger.contract
    start = chain_.head().number
    task = ledger.create_task(rounds=2, per_round=2)
    created = chain_.head().number
    ledger.join_and_submit(task, 0, ledger.cast.devices[:1])
    topics = [contract.event_topic("TaskCreated")]
    address = contract.address
    assert chain_.may_have_logs(start + 1, created, address=address, topics=topics)
    # the join and the submission: no TaskCreated in their blocks' blooms
    assert not chain_.may_have_logs(
        created + 1, chain_.head().number, address=address, topics=topics
    )
    submitted = [contract.event_topic("UpdateSubmitted")]
    assert chain_.may_have_logs(
        created + 1, chain_.head().number, address=address, topics=submitted
    )
