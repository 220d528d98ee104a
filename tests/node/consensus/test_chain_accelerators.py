"""The accelerators chain.py installs into py-evm's dependencies return what the originals do."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading

from flnode.consensus import chain

_TRIE_SCRIPT = r"""
import json, random, sys
from trie import HexaryTrie
if sys.argv[1] == "fast":
    import flnode.consensus.chain  # noqa: F401  (installs the accelerators)
rng = random.Random(11)
db = {}
t = HexaryTrie(db)
roots = []
keys = []
for step in range(1500):
    if keys and rng.random() < 0.25:
        k = keys.pop(rng.randrange(len(keys)))
        del t[k]
    else:
        k = rng.randbytes(rng.choice((1, 2, 3, 20, 32)))
        t[k] = rng.randbytes(rng.choice((1, 5, 31, 32, 33, 80)))
        keys.append(k)
    if step % 50 == 0:
        roots.append(t.root_hash.hex())
        for k in keys[-5:]:
            assert t[k] is not None
print(json.dumps(roots + [t.root_hash.hex()]))
"""


def test_all_accelerators_are_installed() -> None:
    assert set(chain.REPLACED) >= {
        "keccak256",
        "decode_node",
        "bytes_to_nibbles",
        "decode_nibbles",
        "encode_nibbles",
        "add_nibbles_terminator",
        "remove_nibbles_terminator",
        "encode_raw",
        "Serializable.copy",
        "_make_trie_root_and_nodes",
    }


def test_ordered_trie_matches_the_incremental_one() -> None:
    import eth.db.trie

    original = chain.REPLACED["_make_trie_root_and_nodes"]
    fast = eth.db.trie._make_trie_root_and_nodes.__wrapped__
    rng = random.Random(13)
    for n in [*range(40), 127, 128, 129, 255, 256, 257, 700]:
        items = tuple(
            rng.randbytes(rng.choice((1, 2, 10, 30, 31, 32, 33, 100, 300))) for _ in range(n)
        )
        assert fast(items) == original(items), n  # same root and the same stored nodes


def test_rlp_encoding_matches_the_original() -> None:
    import rlp
    import rlp.codec

    original = chain.REPLACED["encode_raw"]
    rng = random.Random(9)

    def item(depth: int) -> object:
        if depth > 3 or rng.random() < 0.5:
            return rng.randbytes(rng.choice((0, 1, 1, 2, 55, 56, 57, 300, 7_000)))
        return [item(depth + 1) for _ in range(rng.randrange(0, 20))]

    for _ in range(200):
        x = item(0)
        assert rlp.codec.encode_raw(x) == original(x)
        assert rlp.decode(rlp.encode(x)) == x
    for bad in (1, "text", None, [b"ok", 3]):
        try:
            original(bad)
        except Exception as exc:
            expected: type[Exception] | None = type(exc)
        else:
            expected = None
        try:
            got = rlp.codec.encode_raw(bad)
        except Exception as exc:
            assert type(exc) is expected
        else:
            assert expected is None and got == original(bad)


def test_keccak_matches_the_original_in_every_thread() -> None:
    from eth_hash.auto import keccak

    rng = random.Random(3)
    data = [rng.randbytes(n) for n in range(0, 600, 7)]
    expected = [chain.REPLACED["keccak256"](d) for d in data]
    assert [keccak(d) for d in data] == expected
    assert keccak(bytearray(data[5])) == expected[5]
    results: list[list[bytes]] = []
    threads = [
        threading.Thread(target=lambda: results.append([keccak(d) for d in data * 20]))
        for _ in range(4)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(r == expected * 20 for r in results)


def test_nibble_helpers_match_the_originals() -> None:
    rng = random.Random(5)
    for _ in range(300):
        raw = rng.randbytes(rng.randrange(0, 40))
        assert chain._bytes_to_nibbles(raw) == chain.REPLACED["bytes_to_nibbles"](raw)
        path = tuple(rng.randrange(16) for _ in range(rng.randrange(0, 65)))
        for p in (path, (*path, 16)):
            enc = chain.REPLACED["encode_nibbles"](p)
            assert chain._encode_nibbles(p) == enc
            assert chain._decode_nibbles(enc) == chain.REPLACED["decode_nibbles"](enc)
            for name in ("add_nibbles_terminator", "remove_nibbles_terminator"):
                assert getattr(chain, "_" + name)(p) == chain.REPLACED[name](p)


def test_cached_node_decoding_hands_out_copies() -> None:
    import rlp
    import trie.hexary

    encoded = rlp.encode([b"\x01" * 32] * 16 + [b""])
    first = trie.hexary.decode_node(encoded)
    first[3] = b"changed"
    assert trie.hexary.decode_node(encoded) == rlp.decode(encoded)


def test_trie_roots_are_the_same_with_and_without_accelerators() -> None:
    def roots(mode: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", _TRIE_SCRIPT, mode], capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout)

    assert roots("fast") == roots("plain")


def test_serializable_copy_is_equal_to_the_deep_one(spec: object, cast: object) -> None:
    from eth.db.atomic import AtomicDB

    c = chain.Chain(spec, AtomicDB())  # type: ignore[arg-type]
    tx = c.sign_transaction(
        cast.devices[0].private_key,  # type: ignore[attr-defined]
        to=cast.outsider.address,  # type: ignore[attr-defined]
        value=1,
        gas=21_000,
    )
    built = c.build_block([tx], coinbase=cast.miners[0].address)  # type: ignore[attr-defined]
    deep = chain.REPLACED["Serializable.copy"]
    for obj in (built.block, built.block.header):
        assert obj.copy() == deep(obj) and obj.copy().hash == obj.hash
    header = built.block.header
    assert header.copy(gas_used=7) == deep(header, gas_used=7)
    assert header.copy(gas_used=7).gas_used == 7 and header.gas_used != 7
    block = built.block.copy(transactions=[])
    assert block == deep(built.block, transactions=[]) and len(built.block.transactions) == 1
