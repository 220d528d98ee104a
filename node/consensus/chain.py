"""The embedded chain: a py-evm ``MiningChain`` (Prague rules) on a node's chain database.

:class:`Chain` is synchronous and **not thread-safe**: py-evm's chain object is not. The
:class:`~flnode.consensus.service.ChainService` owns the one instance of a node and runs every call
in one worker thread (a ``CapacityLimiter(1)``), so the trio event loop never executes EVM code.

What it adds to py-evm:

* opening a data dir's DB from a :class:`NetworkSpec` (genesis on first use, and a refusal when the
  DB's genesis is another network's);
* transactions built and signed with the node key (EIP-1559, round-tripped through the decoder to
  get Prague-typed transactions, see stack notes E1);
* a :class:`Mempool` that checks size, encoding, chain id, signature, gas, fee, nonce and funds
  before accepting anything;
* ``build_block`` (the proposer executes the transactions and seals a block *without* importing
  it, so nothing is canonical before consensus certifies it) and ``import_block`` (everybody,
  the proposer included, re-executes and checks every root); only blocks that extend the head are
  imported, since consensus gives finality and there are no forks to choose between;
* read access shaped like Ethereum JSON-RPC: ``call``, balances, nonces, receipts (with each
  transaction's own gas, not py-evm's cumulative figure) and logs (topics as bytes).
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import rlp
import rlp.codec
import trie.hexary
from eth._utils.rlp import validate_imported_block_unchanged
from eth.abc import (
    BlockAPI,
    BlockHeaderAPI,
    ReceiptAPI,
    SignedTransactionAPI,
    StateAPI,
    WithdrawalAPI,
)
from eth.db.account import AccountDB
from eth.db.backends.base import BaseAtomicDB, BaseDB
from eth.estimators.gas import binary_gas_search_exact
from eth.exceptions import (
    BlockNotFound,
    CanonicalHeadNotFound,
    HeaderNotFound,
    TransactionNotFound,
)
from eth.vm.forks import PragueVM
from eth.vm.forks.cancun.state import get_total_blob_gas
from eth.vm.forks.prague.constants import (
    DEPOSIT_CONTRACT_ADDRESS,
    DEPOSIT_EVENT_SIGNATURE_HASH,
    DEPOSIT_REQUEST_TYPE,
)
from eth.vm.forks.prague.state import PragueState
from eth.vm.spoof import SpoofTransaction
from eth_bloom import BloomFilter
from eth_hash.auto import keccak
from eth_keys import keys
from eth_keys.exceptions import BadSignature
from eth_utils import ValidationError, to_bytes, to_canonical_address, to_checksum_address

from .abi import decode_revert
from .errors import BlockRejected, ContractReverted, GenesisMismatchError, NotFound
from .mempool import Mempool
from .network import NetworkSpec, chain_class

ZERO_ADDRESS = b"\x00" * 20
DEFAULT_PRIORITY_FEE = 10**9  # 1 gwei tip
CALL_GAS = 50_000_000
# 30 M gas of calldata at 16 gas per byte is under 2 MB; anything much larger is hostile.
MAX_BLOCK_SIZE = 4 * 2**20
_CACHE_NODES = True  # py-evm reads the DB through a ContentCacheDB (off: for comparisons)
_MAX_BUILT = 8  # built, not yet imported blocks kept for a cheap import of one of them
_MAX_CACHED_CALLS = 512  # view-call results kept per head


# -- accelerators for py-evm's pure-Python hot paths -------------------------------------------
#
# Both replace a function by one that returns exactly the same values, faster; each checks itself
# against the original before it is installed, and is skipped if the check fails. They are
# process-wide, like the libraries they speed up.


def _fast_keccak() -> Callable[[bytes | bytearray], bytes] | None:
    """keccak256 on pycryptodome's C state reused per thread (eth-hash makes a new object per call:
    three times slower, and py-evm hashes some 5,000 times per block of 100 contract calls)."""
    try:
        from Crypto.Hash import keccak as crypto_keccak
        from Crypto.Util._raw_api import ffi
    except ImportError:
        return None
    if ffi is None:  # pycryptodome on ctypes, not cffi
        return None
    lib = crypto_keccak._raw_keccak_lib
    local = threading.local()

    def new_state() -> tuple[Any, Any]:
        pointer = ffi.new("void **")
        if lib.keccak_init(pointer, 64, 24) != 0:  # capacity 512 bits, 24 rounds
            raise RuntimeError("keccak_init failed")
        local.state = (ffi.gc(pointer[0], lib.keccak_destroy), ffi.new("uint8_t[32]"))
        return local.state

    def keccak256(data: bytes | bytearray) -> bytes:
        try:
            state, out = local.state
        except AttributeError:
            state, out = new_state()
        if type(data) is not bytes:
            data = bytes(data)
        lib.keccak_reset(state)
        lib.keccak_absorb(state, data, len(data))
        lib.keccak_digest(state, out, 32, 1)  # 0x01: Keccak padding, not SHA-3's
        return ffi.buffer(out)[:]

    return keccak256


def _copy_node(node: list[Any]) -> list[Any]:
    return [_copy_node(item) if type(item) is list else item for item in node]


# What was replaced, by name (for the tests that compare old and new).
REPLACED: dict[str, Callable[..., Any]] = {}

_TO_NIBBLES = bytes.maketrans(b"0123456789abcdef", bytes(range(16)))
_FROM_NIBBLES = bytes.maketrans(bytes(range(16)), b"0123456789abcdef")
_TERMINATOR = 16


def _bytes_to_nibbles(value: bytes) -> tuple[int, ...]:
    return tuple(value.hex().encode().translate(_TO_NIBBLES))


def _add_nibbles_terminator(nibbles: Sequence[int]) -> tuple[int, ...]:
    nibbles = tuple(nibbles)
    return nibbles if nibbles and nibbles[-1] == _TERMINATOR else (*nibbles, _TERMINATOR)


def _remove_nibbles_terminator(nibbles: Sequence[int]) -> tuple[int, ...]:
    nibbles = tuple(nibbles)
    return nibbles[:-1] if nibbles and nibbles[-1] == _TERMINATOR else nibbles


def _decode_nibbles(value: bytes) -> tuple[int, ...]:
    """The inverse of the hex-prefix encoding (trie.utils.nibbles.decode_nibbles)."""
    nibbles = _bytes_to_nibbles(value)
    flag = nibbles[0]
    raw = nibbles[1:] if flag & 1 else nibbles[2:]
    return (*raw, _TERMINATOR) if flag & 2 and (not raw or raw[-1] != _TERMINATOR) else raw


def _encode_nibbles(nibbles: Sequence[int]) -> bytes:
    """The hex-prefix encoding (trie.utils.nibbles.encode_nibbles)."""
    from trie.exceptions import InvalidNibbles

    nibbles = tuple(nibbles)
    flag = 0
    if nibbles and nibbles[-1] == _TERMINATOR:
        flag, nibbles = 2, nibbles[:-1]
    nibbles = (flag + 1, *nibbles) if len(nibbles) % 2 else (flag, 0, *nibbles)
    try:
        digits = bytes(nibbles)
        if digits and max(digits) > 15:
            raise ValueError
    except ValueError:
        raise InvalidNibbles(
            "Nibbles contained invalid value.  Must be constrained between [0, 15]"
        ) from None
    return bytes.fromhex(digits.translate(_FROM_NIBBLES).decode())


def _install_nibbles() -> None:
    """Swap trie's generator-based nibble helpers (a fifth of import time) for C-level ones."""
    import random

    import trie.hexary
    import trie.utils.nibbles as nib
    import trie.utils.nodes

    pairs = [
        (nib.bytes_to_nibbles, _bytes_to_nibbles),
        (nib.add_nibbles_terminator, _add_nibbles_terminator),
        (nib.remove_nibbles_terminator, _remove_nibbles_terminator),
        (nib.decode_nibbles, _decode_nibbles),
        (nib.encode_nibbles, _encode_nibbles),
    ]
    rng = random.Random(7)
    keys = [rng.randbytes(n) for n in (0, 1, 2, 5, 20, 32, 33)]
    paths = [tuple(rng.randrange(16) for _ in range(n)) for n in (0, 1, 2, 3, 31, 64)]
    paths += [(*p, _TERMINATOR) for p in paths]
    for old, new in pairs:
        if old is new:
            return  # already installed
        if old.__name__ in ("bytes_to_nibbles",):
            samples = keys
        elif old.__name__ == "decode_nibbles":
            samples = [nib.encode_nibbles(p) for p in paths]
        else:
            samples = paths
        if any(old(x) != new(x) for x in samples):
            return
    for module in (nib, trie.hexary, trie.utils.nodes):
        for old, new in pairs:
            if getattr(module, old.__name__, None) is old:
                setattr(module, old.__name__, new)
    REPLACED.update({old.__name__: old for old, _ in pairs})


def _node_helpers(
    get_node_type: Callable[[Any], int],
    key_starts_with: Callable[[Any, Any], bool],
) -> tuple[Callable[[Any], int], Callable[[Any, Any], bool]]:
    """trie's ``get_node_type`` reading a leaf's or extension's kind from its hex-prefix flag
    (instead of decoding its whole path), and ``key_starts_with`` comparing two slices (instead
    of a generator over pairs); anything unusual goes to the originals."""
    from trie.constants import NODE_TYPE_BRANCH, NODE_TYPE_EXTENSION, NODE_TYPE_LEAF

    def node_type(node: Any) -> int:
        if type(node) is list:
            if len(node) == 17:
                return NODE_TYPE_BRANCH
            if len(node) == 2 and type(node[0]) is bytes and node[0]:
                flag = node[0][0] >> 4
                if flag < 2:
                    return NODE_TYPE_EXTENSION
                if flag < 4:
                    return NODE_TYPE_LEAF
        return get_node_type(node)

    def starts_with(full_key: Any, partial_key: Any) -> bool:
        if type(full_key) is tuple and type(partial_key) is tuple:
            return full_key[: len(partial_key)] == partial_key
        return key_starts_with(full_key, partial_key)

    return node_type, starts_with


def _install_node_helpers() -> None:
    import trie.hexary
    import trie.utils.nodes as nodes

    if getattr(nodes.get_node_type, "_flnode_fast", False):
        return
    originals = (nodes.get_node_type, nodes.key_starts_with)
    fast = _node_helpers(*originals)
    samples: list[Any] = [
        b"",
        [b"\x00" * 32] * 17,
        [b"\x20\x01", b"v"],
        [b"\x31", b"v"],
        [b"\x00\x12", b"\x01" * 32],
        [b"\x1a", [b"\x20", b"x"]],
    ]
    keys = [(), (1,), (1, 2), (1, 2, 3), (2, 1), tuple(range(16)) * 4]
    if any(fast[0](node) != originals[0](node) for node in samples):
        return
    if any(fast[1](a, b) != originals[1](a, b) for a in keys for b in keys):
        return
    for new, old in zip(fast, originals, strict=True):
        new._flnode_fast = True  # type: ignore[attr-defined]
        REPLACED[old.__name__] = old
        for module in (nodes, trie.hexary):
            if getattr(module, old.__name__, None) is old:
                setattr(module, old.__name__, new)


_STRING_PREFIX = [bytes((0x80 + n,)) for n in range(56)]
_LIST_PREFIX = [bytes((0xC0 + n,)) for n in range(56)]


def _rlp_encoder(original: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """rlp.codec.encode_raw with exact type tests instead of ABC ``isinstance`` checks for bytes,
    lists and tuples (what trie nodes and serialized transactions, receipts and accounts are);
    anything else goes to the original."""

    def encode_raw(item: Any) -> bytes:
        kind = type(item)
        if kind is bytes:
            n = len(item)
            if n == 1 and item[0] < 128:
                return item
            if n < 56:
                return _STRING_PREFIX[n] + item
            if n < 2**64:
                size = n.to_bytes((n.bit_length() + 7) // 8, "big")
                return bytes((0xB7 + len(size),)) + size + item
        elif kind is list or kind is tuple:
            payload = b"".join([encode_raw(x) for x in item])
            n = len(payload)
            if n < 56:
                return _LIST_PREFIX[n] + payload
            if n < 2**64:
                size = n.to_bytes((n.bit_length() + 7) // 8, "big")
                return bytes((0xF7 + len(size),)) + size + payload
        return original(item)

    return encode_raw


def _install_rlp_encoder() -> None:
    import rlp.codec
    import trie.hexary

    original = rlp.codec.encode_raw
    if getattr(original, "_flnode_fast", False):
        return
    fast = _rlp_encoder(original)
    fast._flnode_fast = True  # type: ignore[attr-defined]
    samples: list[Any] = [
        b"",
        b"\x00",
        b"\x7f",
        b"\x80",
        b"a" * 55,
        b"b" * 56,
        b"c" * 300,
        [],
        [b"", [b"\x01", [b"x" * 60]], (b"y" * 70,)] * 3,
        [[b"z" * 200] * 400],
    ]
    if all(fast(x) == original(x) for x in samples):
        REPLACED["encode_raw"] = original
        rlp.codec.encode_raw = fast
        if trie.hexary.encode_raw is original:
            trie.hexary.encode_raw = fast


def _install_shallow_serializable_copy() -> None:
    """``Serializable.copy`` without ``copy.deepcopy`` of the fields it keeps.

    Serializable objects are immutable (their constructor turns lists into tuples), so a copy can
    share the unchanged field values. The deep copy cost py-evm a block's worth of transaction
    copies each time it copies a block (four times per block) and a dozen field copies per
    header or account update.
    """
    import rlp.sedes.serializable as serializable
    from rlp.sedes.serializable import Serializable

    original = Serializable.copy
    if getattr(original, "_flnode_shallow", False):
        return

    def copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        names = self._meta.field_names
        keep = set(names).difference(kwargs.keys()).difference(names[: len(args)])
        unchanged = {key: value for key, value in zip(names, self, strict=True) if key in keep}
        merged = serializable.merge_args_to_kwargs(args, {**unchanged, **kwargs}, names)
        return type(self)(**merged)

    copy._flnode_shallow = True  # type: ignore[attr-defined]
    REPLACED["Serializable.copy"] = original
    Serializable.copy = copy  # type: ignore[method-assign]


def _serializable_arg_mergers(
    merge_kwargs_to_args: Callable[..., tuple[Any, ...]],
    merge_args_to_kwargs: Callable[..., dict[str, Any]],
) -> tuple[Callable[..., tuple[Any, ...]], Callable[..., dict[str, Any]]]:
    """rlp's ``merge_kwargs_to_args`` and ``merge_args_to_kwargs`` (every Serializable built
    with keywords goes through one: py-evm copies the block header twice per transaction) with
    their argument check done once per field list and argument count instead of with a Counter
    and four sets per call. What the check would refuse (or a list of names that is not a tuple)
    goes to the original, which raises its own error."""
    expected_keys: dict[tuple[tuple[str, ...], int], frozenset[str] | None] = {}

    def expected(names: Any, n_args: int) -> frozenset[str] | None:
        if type(names) is not tuple:
            return None
        key = (names, n_args)
        try:
            return expected_keys[key]
        except KeyError:
            pass
        keys = frozenset(names[n_args:]) if len(set(names)) == len(names) else None
        expected_keys[key] = keys
        return keys

    def fast_kwargs_to_args(
        args: Sequence[Any], kwargs: dict[str, Any], arg_names: Any, allow_missing: bool = False
    ) -> tuple[Any, ...]:
        if not allow_missing:
            keys = expected(arg_names, len(args))
            if keys is not None and kwargs.keys() == keys:
                return (*args, *[kwargs[name] for name in arg_names[len(args) :]])
        return merge_kwargs_to_args(args, kwargs, arg_names, allow_missing)

    def fast_args_to_kwargs(
        args: Sequence[Any], kwargs: dict[str, Any], arg_names: Any, allow_missing: bool = False
    ) -> dict[str, Any]:
        if not allow_missing:
            keys = expected(arg_names, len(args))
            if keys is not None and kwargs.keys() == keys:
                merged = dict(kwargs)
                merged.update(zip(arg_names, args, strict=False))
                return merged
        return merge_args_to_kwargs(args, kwargs, arg_names, allow_missing)

    return fast_kwargs_to_args, fast_args_to_kwargs


def _install_serializable_arg_mergers() -> None:
    import rlp.sedes.serializable as serializable

    if getattr(serializable.merge_kwargs_to_args, "_flnode_fast", False):
        return
    originals = (serializable.merge_kwargs_to_args, serializable.merge_args_to_kwargs)
    fast = _serializable_arg_mergers(*originals)
    names = ("a", "b", "c")
    calls: list[tuple[Any, ...]] = [
        ((), {"a": 1, "b": [2], "c": 3}, names),
        ((1,), {"b": 2, "c": 3}, names),
        ((1, 2, 3), {}, names),
        ((1, 2, 3, 4), {}, names),
        ((), {"c": 3, "a": 1, "b": 2}, names),
        ((1,), {"a": 1, "b": 2, "c": 3}, names),  # duplicate
        ((), {"a": 1, "b": 2}, names),  # missing
        ((), {"a": 1, "b": 2, "c": 3, "d": 4}, names),  # unknown
        ((), {"a": 1}, ("a", "a")),  # duplicate names
        ((), {"a": 1, "b": 2}, ["a", "b"]),
    ]

    def outcome(function: Callable[..., Any], call: tuple[Any, ...]) -> Any:
        try:
            result = function(*call)
        except TypeError as exc:
            return ("raised", str(exc))
        return (type(result), result, list(result))

    for new, old in zip(fast, originals, strict=True):
        if any(outcome(new, call) != outcome(old, call) for call in calls):
            return
    for new, old in zip(fast, originals, strict=True):
        new._flnode_fast = True  # type: ignore[attr-defined]
        REPLACED[old.__name__] = old
        setattr(serializable, old.__name__, new)


def _install_shared_jump_analysis() -> None:
    """py-evm's ``CodeStream`` with the valid/invalid jump destinations it works out shared by
    every execution of the same code, instead of worked out again for each transaction (by
    looking up to 32 bytes back for a PUSH at each jump). Which positions are valid depends on
    the code alone."""
    import eth.vm.computation
    from eth.vm.code_stream import CodeStream

    if getattr(eth.vm.computation.CodeStream, "_flnode_shared", False):
        return
    analyses: dict[bytes, tuple[set[int], set[int]]] = {}

    class SharedAnalysisCodeStream(CodeStream):
        __slots__ = ()
        _flnode_shared = True

        def __init__(self, code_bytes: bytes) -> None:
            super().__init__(code_bytes)
            if type(code_bytes) is not bytes:
                return
            try:
                self.invalid_positions, self.valid_positions = analyses[code_bytes]
            except KeyError:
                if len(analyses) >= 64:
                    del analyses[next(iter(analyses))]
                analyses[code_bytes] = (self.invalid_positions, self.valid_positions)

    # PUSH data that looks like JUMPDEST, PUSH32 near the end, PUSHes in PUSH data
    code = bytes.fromhex("5b6001600a5b5b7f" + "5b" * 32 + "5b60025b615b5b5b" + "7f5b5b")
    for _ in range(2):  # the second time with the analysis of the first
        new, old = SharedAnalysisCodeStream(code), CodeStream(code)
        order = [*range(len(code) + 3), *reversed(range(len(code)))]
        if [new.is_valid_opcode(i) for i in order] != [old.is_valid_opcode(i) for i in order]:
            return
    analyses.clear()
    REPLACED["CodeStream"] = CodeStream
    eth.vm.computation.CodeStream = SharedAnalysisCodeStream  # type: ignore[misc]


NibblePairs = list[tuple[tuple[int, ...], bytes]]
"""(key as nibbles, value) pairs, sorted by key, distinct, no key a prefix of another."""


def _nibble_groups(group: NibblePairs, at: int) -> Iterator[tuple[int, NibblePairs]]:
    """The runs of ``group`` that share the nibble at position ``at``, with that nibble."""
    start = 0
    for end in range(1, len(group) + 1):
        if end == len(group) or group[end][0][at] != group[start][0][at]:
            yield group[start][0][at], group[start:end]
            start = end


def _fresh_subtrie(group: NibblePairs, depth: int, ref: Callable[[list[Any]], Any]) -> list[Any]:
    """The trie node that holds ``group`` below its first ``depth`` nibbles, built bottom-up;
    each child goes through ``ref`` (embedded if short, else stored and referenced by hash)."""
    if len(group) == 1:
        key, value = group[0]
        return [_encode_nibbles((*key[depth:], _TERMINATOR)), value]
    first, last = group[0][0], group[-1][0]
    common = 0
    while first[depth + common] == last[depth + common]:
        common += 1
    if common:
        return [
            _encode_nibbles(first[depth : depth + common]),
            ref(_fresh_subtrie(group, depth + common, ref)),
        ]
    branch: list[Any] = [b""] * 17
    for nibble, sub in _nibble_groups(group, depth):
        branch[nibble] = ref(_fresh_subtrie(sub, depth + 1, ref))
    return branch


def _ordered_trie_builder(
    original: Callable[[tuple[bytes, ...]], tuple[bytes, dict[bytes, bytes]]],
) -> Callable[[tuple[bytes, ...]], tuple[bytes, dict[bytes, bytes]]]:
    """The transactions/receipts trie (keys rlp(index)) built bottom-up in one pass, each node
    encoded and hashed once, instead of by 100 incremental inserts; same root, same nodes."""
    from eth_hash.auto import keccak
    from rlp.sedes import big_endian_int

    def build(items: tuple[bytes, ...]) -> tuple[bytes, dict[bytes, bytes]]:
        if len(items) < 2 or not all(items):
            return original(items)
        pairs = sorted(
            (_bytes_to_nibbles(rlp.encode(i, sedes=big_endian_int)), item)
            for i, item in enumerate(items)
        )
        for (a, _), (b, _) in itertools.pairwise(pairs):
            if b[: len(a)] == a:  # a key that prefixes another (never for rlp(index))
                return original(items)
        encode = rlp.codec.encode_raw
        nodes: dict[bytes, bytes] = {}

        def ref(node: list[Any]) -> Any:
            encoded = encode(node)
            if len(encoded) < 32:
                return node
            digest = keccak(encoded)
            nodes[digest] = encoded
            return digest

        root = encode(_fresh_subtrie(pairs, 0, ref))
        digest = keccak(root)
        nodes[digest] = root
        return digest, nodes

    return build


def _install_ordered_trie() -> None:
    import eth.db.trie

    original = eth.db.trie._make_trie_root_and_nodes
    if getattr(original, "_flnode_fast", False):
        return
    fast = functools.lru_cache(128)(_ordered_trie_builder(original.__wrapped__))
    fast._flnode_fast = True  # type: ignore[attr-defined]
    samples = [tuple(bytes([i % 251 + 1]) * (i % 90 + 1) for i in range(n)) for n in (2, 17, 130)]
    if all(fast.__wrapped__(x) == original.__wrapped__(x) for x in samples):
        REPLACED["_make_trie_root_and_nodes"] = original.__wrapped__
        eth.db.trie._make_trie_root_and_nodes = fast


def _install_accelerators() -> None:
    import eth_hash.auto
    import trie.hexary

    _install_ordered_trie()

    _install_nibbles()
    _install_node_helpers()
    _install_rlp_encoder()
    _install_shallow_serializable_copy()
    _install_serializable_arg_mergers()
    _install_shared_jump_analysis()

    original = eth_hash.auto.keccak
    fast = _fast_keccak()
    samples = [b"", b"\x01", bytes(range(256)) * 3, b"x" * 135, b"y" * 136, bytearray(b"z" * 137)]
    if fast is not None and all(fast(d) == original.hasher(d) for d in samples):
        REPLACED["keccak256"] = original.hasher
        original.hasher = fast

    # Trie nodes are content-addressed, so one encoding always decodes to the same node: cache
    # the pure-Python RLP decoding. HexaryTrie edits decoded nodes in place, hence the copy.
    decode_node = trie.hexary.decode_node
    if getattr(decode_node, "_flnode_cached", False):
        return
    shared = functools.lru_cache(maxsize=16_384)(rlp.decode)

    def cached_decode_node(encoded: Any) -> Any:
        if type(encoded) is bytes and encoded:
            return _copy_node(shared(encoded))
        return decode_node(encoded)

    cached_decode_node._flnode_cached = True  # type: ignore[attr-defined]
    sample = rlp.encode([b"\x20" * 20, [b"\x01", b""], *([b"\x02" * 32] * 15)])
    if cached_decode_node(sample) == decode_node(sample):
        REPLACED["decode_node"] = decode_node
        trie.hexary.decode_node = cached_decode_node


_install_accelerators()


class _BatchRecorder(BaseDB):
    """A write batch of :class:`ContentCacheDB`, noting what it writes (for the cache)."""

    def __init__(self, batch: Any, written: dict[bytes, bytes], evict: Callable[[bytes], None]):
        self._batch = batch
        self._written = written
        self._evict = evict

    def __getitem__(self, key: bytes) -> bytes:
        return self._batch[key]  # type: ignore[no-any-return]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._batch[key] = value
        if len(key) == 32:
            self._written[key] = value

    def __delitem__(self, key: bytes) -> None:
        self._evict(key)
        self._written.pop(key, None)
        del self._batch[key]

    def _exists(self, key: bytes) -> bool:
        return key in self._batch


class ContentCacheDB(BaseAtomicDB):
    """A chain database that keeps the content-addressed values (``key == keccak256(value)``:
    trie nodes, contract code, headers) it has read or committed in memory.

    py-evm opens a new state on every block and reads every trie node it needs from the
    database again, some 2,000 reads of SQLite per block of 100 contract calls. A value whose key
    is its own hash cannot change, and py-evm never deletes state nodes (its tries only prune in
    memory), so a cached one stays right; the cache only ever holds values the database holds
    (read from it, or written in a batch that committed), each checked against its hash, and a
    delete through this object evicts. Everything else is read from and written to ``db``.
    At most ``max_entries`` values are kept (the oldest quarter goes when it is full): some
    15 MB of trie nodes at the default.
    """

    def __init__(self, db: BaseAtomicDB, *, max_entries: int = 32_768) -> None:
        self.db = db
        self._cache: dict[bytes, bytes] = {}
        self._max = max_entries
        self._pending: list[dict[bytes, bytes]] = []  # one per open (nested) batch

    def _remember(self, key: bytes, value: bytes) -> None:
        cache = self._cache
        if len(cache) >= self._max:  # drop the oldest quarter
            for old in list(itertools.islice(cache, self._max // 4)):
                del cache[old]
        cache[key] = value

    def __getitem__(self, key: bytes) -> bytes:
        try:
            return self._cache[key]
        except KeyError:
            pass
        value = self.db[key]
        if len(key) == 32 and type(value) is bytes and keccak(value) == key:
            self._remember(key, value)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._cache.pop(key, None)
        self.db[key] = value

    def __delitem__(self, key: bytes) -> None:
        self._evict(key)
        del self.db[key]

    def _evict(self, key: bytes) -> None:
        self._cache.pop(key, None)

    def _exists(self, key: bytes) -> bool:
        return key in self._cache or key in self.db

    @contextmanager
    def atomic_batch(self) -> Iterator[Any]:
        written: dict[bytes, bytes] = {}
        self._pending.append(written)
        try:
            with self.db.atomic_batch() as batch:
                yield _BatchRecorder(batch, written, self._evict)
        except BaseException:
            self._pending.pop()
            raise
        self._pending.pop()
        if self._pending:  # nested: committed only when the outer batch is
            self._pending[-1].update(written)
            return
        for key, value in written.items():
            if type(value) is bytes and keccak(value) == key:
                self._remember(key, value)


def as_address(value: str | bytes) -> bytes:
    """A 20-byte address from a hex string (checksummed or not) or bytes."""
    if isinstance(value, bytes):
        if len(value) != 20:
            raise ValueError(f"an address is 20 bytes, got {len(value)}")
        return value
    return to_canonical_address(value)


@dataclass(frozen=True, slots=True)
class Head:
    """The canonical head block, summarised."""

    number: int
    hash: bytes
    parent_hash: bytes
    state_root: bytes
    timestamp: int
    coinbase: str
    gas_used: int
    gas_limit: int
    base_fee: int
    tx_count: int


@dataclass(frozen=True, slots=True)
class Log:
    """One EVM log; ``topics`` are 32-byte strings (py-evm hands out ints)."""

    address: bytes
    topics: tuple[bytes, ...]
    data: bytes
    block_number: int
    tx_hash: bytes
    tx_index: int
    log_index: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """A transaction's outcome; ``gas_used`` is this transaction's own gas."""

    tx_hash: bytes
    block_number: int
    block_hash: bytes
    tx_index: int
    sender: str
    to: str | None
    success: bool
    gas_used: int
    cumulative_gas_used: int
    logs: tuple[Log, ...]


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """What executing one transaction of a freshly built block did (before it is imported)."""

    tx_hash: bytes
    success: bool
    gas_used: int
    error: str | None
    output: bytes


@dataclass(frozen=True, slots=True)
class BuiltBlock:
    """A sealed block a proposer built, with the execution results of its transactions."""

    block: BlockAPI
    outcomes: tuple[TxOutcome, ...]

    @property
    def hash(self) -> bytes:
        return self.block.hash

    @property
    def number(self) -> int:
        return int(self.block.number)

    def encode(self) -> bytes:
        return rlp.encode(self.block)


def _logs_of(
    receipt: ReceiptAPI, block_number: int, tx_hash: bytes, tx_index: int, first: int
) -> tuple[Log, ...]:
    return tuple(
        Log(
            address=bytes(log.address),
            topics=tuple(t.to_bytes(32, "big") for t in log.topics),
            data=bytes(log.data),
            block_number=block_number,
            tx_hash=tx_hash,
            tx_index=tx_index,
            log_index=first + i,
        )
        for i, log in enumerate(receipt.logs)
    )


class _NotInBatch(Exception):
    """A trie change :func:`trie_batch_set` leaves to the trie itself."""


def trie_batch_set(
    get: Callable[[bytes], bytes], root_hash: bytes, items: Iterable[tuple[bytes, bytes]]
) -> tuple[bytes, dict[bytes, bytes]] | None:
    """The root and the new nodes of a hexary trie after setting every ``(key, value)`` of
    ``items``, each node on a changed path built, encoded and hashed once.

    Setting them one by one (``HexaryTrie.set``) rebuilds and hashes the path from the root for
    every key and then prunes the nodes it made for the previous ones; the result is the same
    trie, and the nodes returned are the ones that would remain (tests compare both). ``None``
    (nothing done) when this function does not apply: an empty value (a delete), keys of
    different lengths, a key given twice, or a node missing from ``get``.
    """
    from trie.constants import BLANK_NODE_HASH

    pairs = sorted((_bytes_to_nibbles(key), value) for key, value in items)
    if not pairs:
        return None
    size = len(pairs[0][0])
    if size == 0 or any(len(key) != size or not value for key, value in pairs):
        return None
    if any(a[0] == b[0] for a, b in itertools.pairwise(pairs)):
        return None
    encode = rlp.codec.encode_raw
    decode_node = trie.hexary.decode_node
    nodes: dict[bytes, bytes] = {}

    def ref(node: list[Any]) -> Any:
        encoded = encode(node)
        if len(encoded) < 32:
            return node  # embedded in its parent
        digest = keccak(encoded)
        nodes[digest] = encoded
        return digest

    def resolve(reference: Any) -> Any:
        if reference == b"" or type(reference) is list:
            return reference
        try:
            return decode_node(get(reference))
        except KeyError:
            raise _NotInBatch from None  # the trie raises its own error for a missing node

    def build(group: NibblePairs, depth: int) -> list[Any]:
        return _fresh_subtrie(group, depth, ref)

    def update(node: Any, group: list[tuple[tuple[int, ...], bytes]], depth: int) -> list[Any]:
        if node == b"":
            return build(group, depth)
        if len(node) == 17:
            branch = list(node)
            for nibble, sub in _nibble_groups(group, depth):
                branch[nibble] = ref(update(resolve(node[nibble]), sub, depth + 1))
            return branch
        path = _decode_nibbles(node[0])
        if path and path[-1] == _TERMINATOR:  # a leaf: the keys below it, built anew
            key = (*group[0][0][:depth], *path[:-1])
            merged = dict(group)
            if key not in merged:
                if len(key) != size:
                    raise _NotInBatch
                merged[key] = node[1]
            if len(merged) == 1:
                return [node[0], merged[key]]
            return build(sorted(merged.items()), depth)
        common = len(path)  # an extension: how much of its path every key shares
        for key, _ in group:
            i = 0
            while i < common and key[depth + i] == path[i]:
                i += 1
            common = i
        if common == len(path):
            return [node[0], ref(update(resolve(node[1]), group, depth + common))]
        # split the extension where a key leaves it: a branch holding the rest of it
        rest: Any = (
            node[1] if common + 1 == len(path) else [_encode_nibbles(path[common + 1 :]), node[1]]
        )
        at = depth + common
        branch = [b""] * 17
        for nibble, sub in _nibble_groups(group, at):
            if nibble == path[common]:
                branch[nibble] = ref(update(resolve(rest), sub, at + 1))
            else:
                branch[nibble] = ref(build(sub, at + 1))
        if branch[path[common]] == b"":
            branch[path[common]] = ref(rest) if type(rest) is list else rest
        if common:
            return [_encode_nibbles(path[:common]), ref(branch)]
        return branch

    try:
        root = update(b"" if root_hash == BLANK_NODE_HASH else resolve(root_hash), pairs, 0)
    except _NotInBatch:
        return None
    encoded = encode(root)  # the root is stored by its hash whatever its size
    digest = keccak(encoded)
    nodes[digest] = encoded
    return digest, nodes


class LedgerAccountDB(AccountDB):
    """py-evm's AccountDB, with the accounts a block changed written into the state trie in one
    pass (:func:`trie_batch_set`) instead of one ``HexaryTrie.set`` each; deletes, and anything
    the batch does not handle, go the original way."""

    def _apply_account_diff_without_proof(self, diff: Any, trie: Any) -> None:
        if not diff.deleted_keys():
            hexary = trie._db  # HashTrie (keys hashed) over the squashing HexaryTrie
            result = trie_batch_set(
                hexary.db.__getitem__,
                hexary.root_hash,
                [(keccak(address), value) for address, value in diff.pending_items()],
            )
            if result is not None:
                root, nodes = result
                for key, value in nodes.items():
                    hexary._set_db_value(key, value)  # counted for pruning as the trie does
                hexary.root_hash = root
                return
        super()._apply_account_diff_without_proof(diff, trie)


class LedgerState(PragueState):
    account_db_class = LedgerAccountDB


class LedgerVM(PragueVM):
    """PragueVM, with the EIP-6110 deposit scan reading the receipts it has just made from memory.

    PragueVM reads them back from the database and decodes them (a tenth of a block import);
    the outcome is the same, and the database is still used for a block whose receipts this VM
    did not make.
    """

    _state_class = LedgerState
    _made_receipts: tuple[bytes, tuple[ReceiptAPI, ...]] | None = None

    def set_block_transactions_and_withdrawals(
        self,
        base_block: BlockAPI,
        new_header: BlockHeaderAPI,
        transactions: Sequence[SignedTransactionAPI],
        receipts: Sequence[ReceiptAPI],
        withdrawals: Sequence[WithdrawalAPI] | None = None,
    ) -> BlockAPI:
        block = super().set_block_transactions_and_withdrawals(
            base_block, new_header, transactions, receipts, withdrawals
        )
        self._made_receipts = (block.header.receipt_root, tuple(receipts))
        return block

    def increment_blob_gas_used(
        self, old_header: BlockHeaderAPI, transaction: Any
    ) -> BlockHeaderAPI:
        # CancunVM copies the header after every transaction to add its blob gas; a transaction
        # without blobs adds 0, and the header it would copy is immutable: keep it.
        if get_total_blob_gas(transaction) == 0:
            return old_header
        return super().increment_blob_gas_used(old_header, transaction)

    def process_deposit_request_data(self, block: BlockAPI) -> None:
        made = self._made_receipts
        if made is not None and made[0] == block.header.receipt_root:
            receipts: Sequence[ReceiptAPI] = made[1]
        else:
            receipts = block.get_receipts(self.chaindb)
        data = b""
        for receipt in receipts:  # as in PragueVM.process_deposit_request_data
            for log in receipt.logs:
                if (
                    log.address == DEPOSIT_CONTRACT_ADDRESS
                    and len(log.topics) > 0
                    and to_bytes(log.topics[0]) == DEPOSIT_EVENT_SIGNATURE_HASH
                ):
                    data += (
                        log.data[192:240]
                        + log.data[288:320]
                        + log.data[352:360]
                        + log.data[416:512]
                        + log.data[544:552]
                    )
        block.block_requests.append(DEPOSIT_REQUEST_TYPE + data)


class Chain:
    """One node's copy of the ledger (see module docstring). Not thread-safe."""

    def __init__(
        self,
        spec: NetworkSpec,
        db: BaseAtomicDB,
        *,
        mempool_max_txs: int = 10_000,
        max_tx_size: int = 128 * 1024,
        read_only: bool = False,
    ) -> None:
        self.spec = spec
        self.db = db
        base_cls = chain_class(spec.chain_id)
        cls = base_cls.configure(
            __name__=base_cls.__name__,
            vm_configuration=tuple(
                (at, LedgerVM if vm is PragueVM else vm) for at, vm in base_cls.vm_configuration
            ),
        )
        genesis_hash = (
            bytes.fromhex(spec.genesis_hash.removeprefix("0x")) if spec.genesis_hash else None
        )
        # py-evm reads through the node cache; self.db stays the database itself.
        db = ContentCacheDB(db) if _CACHE_NODES else db
        try:
            stored = cls.get_chaindb_class()(db).get_canonical_block_hash(0)
        except (HeaderNotFound, CanonicalHeadNotFound, KeyError):
            stored = None
        if stored is None:
            if read_only:
                raise GenesisMismatchError("the chain database is empty; start the node once first")
            self._chain = cls.from_genesis(db, spec.genesis_params(), spec.genesis_state())
            stored = self._chain.get_canonical_block_hash(0)
        else:
            self._chain = cls(db)
        if genesis_hash is not None and stored != genesis_hash:
            raise GenesisMismatchError(
                f"this data dir's chain starts at genesis 0x{stored.hex()}, but network "
                f"{spec.network_id!r} has genesis 0x{genesis_hash.hex()}; use the network file "
                "this data dir was created with, or a fresh data dir"
            )
        self.genesis_hash = stored
        # Blocks this node built, by hash, with the head they were built on: importing one of
        # them needs no re-execution (see import_block). Bounded: consensus may ask for several
        # proposals at one height, and only one is ever imported.
        self._built: dict[bytes, BlockAPI] = {}
        self._calls_at = b""  # the head whose view-call results self._calls holds
        self._calls: dict[tuple[bytes, bytes, bytes, int, int], bytes] = {}
        # (hash, transaction count) of the last block imported, so head() need not decode it.
        self._head_tx_count: tuple[bytes, int] | None = None
        self._reader: tuple[bytes, StateAPI] | None = None
        self.mempool = Mempool(self, max_txs=mempool_max_txs, max_tx_size=max_tx_size)

    # -- heads and blocks -----------------------------------------------------------------------

    @property
    def chain_id(self) -> int:
        return self.spec.chain_id

    def head_header(self) -> BlockHeaderAPI:
        """The head's header alone (cheap: no transactions decoded)."""
        return self._chain.get_canonical_head()

    def head(self) -> Head:
        header = self._chain.get_canonical_head()
        known = self._head_tx_count
        if known is not None and known[0] == header.hash:
            tx_count = known[1]
        else:
            tx_count = len(
                self._chain.get_canonical_block_by_number(header.block_number).transactions
            )
        return Head(
            number=int(header.block_number),
            hash=header.hash,
            parent_hash=header.parent_hash,
            state_root=header.state_root,
            timestamp=int(header.timestamp),
            coinbase=to_checksum_address(header.coinbase),
            gas_used=int(header.gas_used),
            gas_limit=int(header.gas_limit),
            base_fee=int(header.base_fee_per_gas),
            tx_count=tx_count,
        )

    def block(self, number_or_hash: int | bytes) -> BlockAPI:
        try:
            if isinstance(number_or_hash, int):
                return self._chain.get_canonical_block_by_number(number_or_hash)
            return self._chain.get_block_by_hash(number_or_hash)
        except (BlockNotFound, HeaderNotFound, KeyError):
            raise NotFound(f"no block {number_or_hash!r} in the local chain") from None

    def verify_state(self, block: BlockAPI | None = None) -> bool:
        """Whether the state trie root of ``block`` (default: head) is fully present in the DB."""
        header = (block or self.block(self.head().number)).header
        return header.state_root in self.db

    # -- transactions ---------------------------------------------------------------------------

    def decode_transaction(self, raw: bytes) -> SignedTransactionAPI:
        return self._chain.get_vm().get_transaction_builder().decode(raw)

    def sign_transaction(
        self,
        key: keys.PrivateKey,
        *,
        to: str | bytes | None,
        data: bytes = b"",
        value: int = 0,
        gas: int | None = None,
        nonce: int | None = None,
        max_fee_per_gas: int | None = None,
        max_priority_fee_per_gas: int = DEFAULT_PRIORITY_FEE,
    ) -> SignedTransactionAPI:
        """An EIP-1559 transaction signed by ``key`` (nonce: the next one, counting the mempool)."""
        sender = key.public_key.to_canonical_address()
        target = b"" if to is None else as_address(to)
        if nonce is None:
            nonce = self.mempool.next_nonce(sender)
        if gas is None:
            gas = self.estimate_gas(sender, target, data, value)
        if max_fee_per_gas is None:
            max_fee_per_gas = 2 * self.head_header().base_fee_per_gas + max_priority_fee_per_gas
        builder = self._chain.get_vm().get_transaction_builder()
        unsigned = builder.new_unsigned_dynamic_fee_transaction(
            chain_id=self.chain_id,
            nonce=nonce,
            max_priority_fee_per_gas=max_priority_fee_per_gas,
            max_fee_per_gas=max_fee_per_gas,
            gas=gas,
            to=target,
            value=value,
            data=data,
            access_list=(),
        )
        # Round trip through the decoder: otherwise py-evm returns a London-typed transaction
        # that cannot be RLP-encoded inside a Prague block (stack notes, E1).
        return builder.decode(unsigned.as_signed_transaction(key).encode())

    def estimate_gas(self, sender: bytes, to: bytes, data: bytes, value: int = 0) -> int:
        """Gas for a transaction plus a 10 % margin (see :func:`_estimate_with_margin`)."""
        vm = self._chain.get_vm()
        utx = vm.create_unsigned_transaction(
            nonce=vm.state.get_nonce(sender),
            gas_price=0,
            gas=self.head_header().gas_limit,
            to=to,
            value=value,
            data=data,
        )
        # Estimate as if the sender proposed the block: ``commitRound`` checks block.coinbase.
        at = self._chain.get_canonical_head().copy(coinbase=sender)
        try:
            with self._chain.get_vm(at).in_costless_state() as state:
                return _estimate_with_margin(state, SpoofTransaction(utx, from_=sender))
        except Exception as exc:  # py-evm raises the execution's error (e.g. Revert)
            raise ContractReverted(self._reason(exc)) from None

    def add_transaction(self, tx: bytes | SignedTransactionAPI) -> bytes:
        """Check a transaction and put it in the mempool; returns its hash. See :class:`Mempool`."""
        return self.mempool.add(tx)

    # -- building and importing blocks -----------------------------------------------------------

    def build_block(
        self,
        txs: Sequence[SignedTransactionAPI],
        *,
        coinbase: str | bytes,
        timestamp: int | None = None,
    ) -> BuiltBlock:
        """Execute ``txs`` on top of the head and seal a block, without importing it.

        Transactions that cannot go in (a nonce out of sequence, not enough gas left in the block)
        are skipped; transactions that run and revert are included, as in Ethereum.
        """
        parent = self._chain.get_canonical_head()
        if timestamp is None:
            timestamp = max(parent.timestamp + 1, int(time.time()))
        if timestamp <= parent.timestamp:
            raise BlockRejected(f"block timestamp {timestamp} is not after its parent's")
        # A fixed gas limit: py-evm's default rule decays it by 1/1024 per block towards 5,000
        # (its GENESIS_GAS_LIMIT), which would starve a quiet chain within a few thousand blocks.
        base = self._chain.create_header_from_parent(
            parent,
            timestamp=timestamp,
            coinbase=as_address(coinbase),
            gas_limit=self.spec.gas_limit,
        )
        vm = self._chain.get_vm(base)
        chosen = self._fit(vm, txs, base)
        try:
            header, receipts, computations = vm.apply_all_transactions(chosen, base)
            filled = vm.set_block_transactions_and_withdrawals(
                vm.get_block(), header, chosen, receipts
            )
            block = vm.mine_block(filled).block
        except ValidationError as exc:
            raise BlockRejected(f"cannot build a block: {exc}") from None
        # mine_block wrote the block's state, transaction and receipt tries to the database.
        while len(self._built) >= _MAX_BUILT:
            del self._built[next(iter(self._built))]
        self._built[block.hash] = block
        outcomes = []
        previous = 0
        for tx, receipt, comp in zip(chosen, receipts, computations, strict=True):
            outcomes.append(
                TxOutcome(
                    tx_hash=tx.hash,
                    success=comp.is_success,
                    gas_used=receipt.gas_used - previous,
                    error=None if comp.is_success else self._reason(comp.error),
                    output=bytes(comp.output),
                )
            )
            previous = receipt.gas_used
        return BuiltBlock(block, tuple(outcomes))

    def _fit(
        self, vm: Any, txs: Iterable[SignedTransactionAPI], header: BlockHeaderAPI
    ) -> list[SignedTransactionAPI]:
        """The transactions that can go into a block on ``header``, in order.

        Skipped (left for later or for the mempool to drop): a nonce out of sequence, a max fee
        below this block's base fee (it can rise 12.5 % a block past the head's), a sender who can
        no longer pay the worst case of its transactions, and what no longer fits the block's gas.
        """
        nonces: dict[bytes, int] = {}
        spent: dict[bytes, int] = {}
        gas = 0
        chosen = []
        state = vm.state
        for tx in txs:
            try:
                sender = tx.sender
            except (BadSignature, ValidationError, ValueError) as exc:
                # Never from our mempool (it recovers every sender); from a peer's proposal,
                # which is then invalid as a whole.
                raise BlockRejected(
                    f"transaction 0x{tx.hash.hex()} has an invalid signature: {exc}"
                ) from None
            expected = nonces.get(sender)
            if expected is None:
                expected = state.get_nonce(sender)
            cost = spent.get(sender, 0) + tx.value + tx.gas * tx.max_fee_per_gas
            if (
                tx.nonce != expected
                or gas + tx.gas > header.gas_limit
                or tx.max_fee_per_gas < header.base_fee_per_gas
                or cost > state.get_balance(sender)
            ):
                continue
            nonces[sender] = expected + 1
            spent[sender] = cost
            gas += tx.gas
            chosen.append(tx)
        return chosen

    def decode_block(self, raw: bytes) -> BlockAPI:
        if len(raw) > MAX_BLOCK_SIZE:
            raise BlockRejected(
                f"a block of {len(raw)} bytes is over the limit of {MAX_BLOCK_SIZE} bytes"
            )
        try:
            return rlp.decode(raw, sedes=PragueVM.get_block_class())
        except Exception as exc:  # rlp raises several types on malformed input
            raise BlockRejected(f"not an RLP-encoded block: {exc}") from None

    def import_block(self, block: BlockAPI | bytes) -> Head:
        """Validate and import a block that extends the head.

        A block from elsewhere is re-executed and every root of its header checked. A block this
        node built itself with :meth:`build_block` on the current head (same hash, so the same
        header, state root and transactions root) is not: building executed it and wrote its
        state to the database already, so only the block itself is stored.
        """
        if isinstance(block, bytes | bytearray | memoryview):
            block = self.decode_block(bytes(block))
        head = self._chain.get_canonical_head()
        if block.header.parent_hash != head.hash:
            raise BlockRejected(
                f"block #{block.number} 0x{block.hash.hex()[:16]} does not extend the head "
                f"#{head.block_number} 0x{head.hash.hex()[:16]}"
            )
        chain = self._chain
        built = self._built.pop(block.hash, None)
        try:
            if built is not None and self._same_block(block, built):
                imported = built  # our own object: its transactions are the ones we executed
            else:
                # What py-evm's Chain.import_block does, less re-reading and decoding the block
                # from the database after storing it.
                base = chain.create_header_from_parent(head).copy(gas_used=block.header.gas_used)
                imported = chain.get_vm(base).import_block(block).block
                validate_imported_block_unchanged(imported, block)
            chain.validate_block(imported)
            chain.chaindb.persist_block(imported)  # one atomic batch
        except (ValidationError, rlp.exceptions.RLPException, ValueError, BadSignature) as exc:
            raise BlockRejected(f"block #{block.number} is invalid: {exc}") from None
        chain.header = chain.ensure_header()  # the pending header MiningChain keeps
        self._head_tx_count = (imported.hash, len(imported.transactions))
        self.mempool.prune()
        return self.head()

    def _same_block(self, block: BlockAPI, built: BlockAPI) -> bool:
        """Whether ``block`` is ``built`` (the header hash alone does not cover the body)."""
        if block is built:
            return built.header.state_root in self.db
        return (
            [tx.hash for tx in block.transactions] == [tx.hash for tx in built.transactions]
            and list(block.uncles) == list(built.uncles)
            and list(getattr(block, "withdrawals", ())) == list(getattr(built, "withdrawals", ()))
            and built.header.state_root in self.db
        )

    def mine(
        self,
        txs: Sequence[SignedTransactionAPI],
        *,
        coinbase: str | bytes,
        timestamp: int | None = None,
    ) -> tuple[Head, BuiltBlock]:
        """Build a block and import it (a single proposer without consensus, and tests)."""
        built = self.build_block(txs, coinbase=coinbase, timestamp=timestamp)
        return self.import_block(built.block), built

    # -- reads ----------------------------------------------------------------------------------

    def _state(self) -> StateAPI:
        """The state the next block builds on, for reading; reused while its root is the same.

        Building one (a VM, then its state) costs about a millisecond, and mempool admission
        reads a nonce and a balance for every transaction it checks."""
        root = self._chain.header.state_root
        if self._reader is None or self._reader[0] != root:
            self._reader = (root, self._chain.get_vm().state)
        return self._reader[1]

    def balance(self, address: str | bytes) -> int:
        return int(self._state().get_balance(as_address(address)))

    def nonce(self, address: str | bytes) -> int:
        return int(self._state().get_nonce(as_address(address)))

    def code(self, address: str | bytes) -> bytes:
        return bytes(self._state().get_code(as_address(address)))

    def storage(self, address: str | bytes, slot: int) -> int:
        return int(self._state().get_storage(as_address(address), slot))

    def call(
        self,
        to: str | bytes,
        data: bytes,
        *,
        sender: str | bytes = ZERO_ADDRESS,
        value: int = 0,
        gas: int = CALL_GAS,
    ) -> bytes:
        """Execute a read-only call against the head state (like ``eth_call``).

        Results are remembered until the head changes: py-evm takes milliseconds to tens of
        milliseconds per view call, and the roles, the API and the consensus hooks of one node
        read the same views at the same head (a task, its committee) several times."""
        head = self._chain.get_canonical_head()
        key = (as_address(to), bytes(data), as_address(sender), value, gas)
        if self._calls_at != head.hash:
            self._calls_at, self._calls = head.hash, {}
        cached = self._calls.get(key)
        if cached is not None:
            return cached
        vm = self._chain.get_vm()
        utx = vm.create_unsigned_transaction(
            nonce=vm.state.get_nonce(as_address(sender)),
            gas_price=0,
            gas=gas,
            to=as_address(to),
            value=value,
            data=data,
        )
        try:
            result = self._chain.get_transaction_result(
                SpoofTransaction(utx, from_=as_address(sender)), head
            )
        except ValidationError:
            raise
        except Exception as exc:
            raise ContractReverted(self._reason(exc)) from None
        if len(self._calls) < _MAX_CACHED_CALLS:
            self._calls[key] = result
        return result

    @staticmethod
    def _reason(error: Exception | None) -> str:
        if error is None:
            return "unknown error"
        args = getattr(error, "args", ())
        if type(error).__name__ == "Revert" and args and isinstance(args[0], bytes):
            return decode_revert(args[0])
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__

    def transaction(self, tx_hash: bytes) -> SignedTransactionAPI:
        try:
            block_number, index = self._chain.get_canonical_transaction_index(tx_hash)
        except (TransactionNotFound, KeyError):
            raise NotFound(f"no transaction 0x{tx_hash.hex()} in the local chain") from None
        return self.block(block_number).transactions[index]

    def receipt(self, tx_hash: bytes) -> Receipt:
        try:
            block_number, index = self._chain.get_canonical_transaction_index(tx_hash)
        except (TransactionNotFound, KeyError):
            raise NotFound(f"no receipt for 0x{tx_hash.hex()} in the local chain") from None
        block = self.block(block_number)
        return self._receipts_of(block)[index]

    def _receipts_of(self, block: BlockAPI) -> list[Receipt]:
        out = []
        previous = 0
        first_log = 0
        for index, (tx, receipt) in enumerate(
            zip(block.transactions, block.get_receipts(self._chain.chaindb), strict=True)
        ):
            logs = _logs_of(receipt, int(block.number), tx.hash, index, first_log)
            first_log += len(logs)
            out.append(
                Receipt(
                    tx_hash=tx.hash,
                    block_number=int(block.number),
                    block_hash=block.hash,
                    tx_index=index,
                    sender=to_checksum_address(tx.sender),
                    to=to_checksum_address(tx.to) if tx.to else None,
                    success=receipt.state_root == b"\x01",
                    gas_used=receipt.gas_used - previous,
                    cumulative_gas_used=receipt.gas_used,
                    logs=logs,
                )
            )
            previous = receipt.gas_used
        return out

    def receipts(self, number: int) -> list[Receipt]:
        return self._receipts_of(self.block(number))

    def _logs_in(self, block: BlockAPI) -> Iterator[Log]:
        """The logs of ``block``, as :meth:`_receipts_of` numbers them, without what only a
        receipt needs: recovering each transaction's sender costs an ECDSA recovery."""
        first_log = 0
        receipts = block.get_receipts(self._chain.chaindb)
        for index, (tx, receipt) in enumerate(zip(block.transactions, receipts, strict=True)):
            logs = _logs_of(receipt, int(block.number), tx.hash, index, first_log)
            first_log += len(logs)
            yield from logs

    def may_have_logs(
        self, from_block: int, to_block: int, *, address: str | bytes, topics: Sequence[bytes]
    ) -> bool:
        """Whether a block in the range may hold a log of ``address`` whose first topic is one of
        ``topics``: header blooms only (false positives possible, never false negatives)."""
        want = as_address(address)
        last = min(to_block, self.head_header().block_number)
        for number in range(max(0, from_block), last + 1):
            header = self._chain.get_canonical_block_header_by_number(number)
            if header.gas_used == 0:
                continue
            bloom = BloomFilter(header.bloom)
            if want in bloom and any(topic in bloom for topic in topics):
                return True
        return False

    def logs(
        self,
        from_block: int = 0,
        to_block: int | None = None,
        *,
        address: str | bytes | None = None,
        topics: Sequence[bytes | None] = (),
    ) -> Iterator[Log]:
        """Logs in a block range, filtered by emitter and by topic position (None = any).

        Each header's bloom filter is checked first, so blocks that cannot hold a match are
        skipped without reading their receipts.
        """
        head = self.head_header().block_number
        last = head if to_block is None else min(to_block, head)
        want = as_address(address) if address is not None else None
        probes = ([want] if want is not None else []) + [t for t in topics if t is not None]
        for number in range(max(0, from_block), last + 1):
            header = self._chain.get_canonical_block_header_by_number(number)
            bloom = BloomFilter(header.bloom)
            if header.gas_used == 0 or any(p not in bloom for p in probes):
                continue
            for log in self._logs_in(self.block(number)):
                if want is not None and log.address != want:
                    continue
                if any(
                    t is not None and (i >= len(log.topics) or log.topics[i] != t)
                    for i, t in enumerate(topics)
                ):
                    continue
                yield log


def _estimate_with_margin(state: StateAPI, tx: SignedTransactionAPI) -> int:
    """The gas ``tx`` needs on ``state``, plus 10 % and 5,000, capped at the block gas limit.

    One execution at the block gas limit gives the gas used before refunds, which is what the
    transaction needs up to the 1/64 that a call must leave behind; one more execution checks the
    margin covers it. Only when it does not (deep nested calls) does py-evm's binary search decide
    (a dozen or more executions: it used to run for every transaction, and every device sends one
    per round). Raises the execution's error (e.g. a revert).
    """
    limit = state.gas_limit

    def with_margin(gas: int) -> int:
        return min(limit, gas + gas // 10 + 5_000)

    snapshot = state.snapshot()
    try:
        computation = state.apply_transaction(SpoofTransaction(tx, gas=limit, gas_price=0))
        if computation.is_error:
            raise computation.error
        needed = tx.intrinsic_gas + computation.get_gas_used()
    finally:
        state.revert(snapshot)
    gas = with_margin(needed)
    snapshot = state.snapshot()
    try:
        enough = not state.apply_transaction(SpoofTransaction(tx, gas=gas, gas_price=0)).is_error
    except Exception:  # e.g. below a floor the fork sets for the gas limit: search instead
        enough = False
    finally:
        state.revert(snapshot)
    if enough:
        return gas
    return with_margin(binary_gas_search_exact(state, tx))
