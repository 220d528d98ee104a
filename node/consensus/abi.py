"""ABI encoding and decoding of calls, results, reverts and events, through eth-abi.

The ABI is the one the Vyper compiler exports; nothing here hand-encodes a type. Function and event
names map to their selectors and topics with eth-utils, so a typo'd name fails at once
(``KeyError``-like :class:`AbiError`) instead of producing calldata that reverts on chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import eth_abi
from eth_abi.exceptions import DecodingError, EncodingError
from eth_utils import (
    event_abi_to_log_topic,
    function_abi_to_4byte_selector,
    get_abi_input_types,
    get_abi_output_types,
    to_checksum_address,
)

from .errors import ConsensusError

ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)


class AbiError(ConsensusError):
    """Unknown function or event, or values that do not fit the ABI types."""


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    """One log decoded against the ABI: the event's name and its arguments by name."""

    name: str
    args: Mapping[str, Any]
    address: str
    block_number: int | None = None
    tx_hash: bytes | None = None
    log_index: int | None = None


def _normalise(value: Any, abi_type: str) -> Any:
    """Make decoded values friendly: checksummed addresses, tuples of tuples left as they are."""
    if abi_type == "address":
        return to_checksum_address(value)
    if abi_type == "address[]":
        return tuple(to_checksum_address(v) for v in value)
    return value


class AbiCodec:
    """Encoder/decoder for one contract's ABI."""

    def __init__(self, abi: Sequence[Mapping[str, Any]]) -> None:
        self.abi = tuple(abi)
        self._functions: dict[str, Mapping[str, Any]] = {}
        self._events: dict[bytes, Mapping[str, Any]] = {}
        self._event_by_name: dict[str, Mapping[str, Any]] = {}
        for item in self.abi:
            if item.get("type") == "function":
                if item["name"] in self._functions:
                    raise AbiError(f"overloaded function {item['name']} is not supported")
                self._functions[item["name"]] = item
            elif item.get("type") == "event":
                self._events[event_abi_to_log_topic(dict(item))] = item
                self._event_by_name[item["name"]] = item

    def function(self, name: str) -> Mapping[str, Any]:
        try:
            return self._functions[name]
        except KeyError:
            raise AbiError(f"the contract has no function {name!r}") from None

    def selector(self, name: str) -> bytes:
        return function_abi_to_4byte_selector(dict(self.function(name)))

    def event_topic(self, name: str) -> bytes:
        try:
            return event_abi_to_log_topic(dict(self._event_by_name[name]))
        except KeyError:
            raise AbiError(f"the contract has no event {name!r}") from None

    def encode_call(self, name: str, *args: Any) -> bytes:
        """Calldata: 4-byte selector followed by the ABI-encoded arguments."""
        fn = self.function(name)
        types = get_abi_input_types(dict(fn))
        if len(args) != len(types):
            raise AbiError(f"{name} takes {len(types)} arguments, got {len(args)}")
        try:
            return self.selector(name) + eth_abi.encode(types, list(args))
        except (EncodingError, TypeError, ValueError) as exc:
            raise AbiError(f"cannot encode arguments of {name}: {exc}") from None

    def decode_call(self, name: str, calldata: bytes) -> tuple[Any, ...]:
        """The arguments of a call of ``name`` (``calldata`` starts with its selector)."""
        if calldata[:4] != self.selector(name):
            raise AbiError(f"calldata is not a call of {name}")
        types = get_abi_input_types(dict(self.function(name)))
        try:
            values = eth_abi.decode(types, calldata[4:])
        except DecodingError as exc:
            raise AbiError(f"cannot decode the arguments of {name}: {exc}") from None
        return tuple(_normalise(v, t) for v, t in zip(values, types, strict=True))

    def decode_output(self, name: str, data: bytes) -> Any:
        """The return value: a single value when there is one output, else a tuple."""
        types = get_abi_output_types(dict(self.function(name)))
        try:
            values = eth_abi.decode(types, data)
        except DecodingError as exc:
            raise AbiError(f"cannot decode the result of {name}: {exc}") from None
        values = tuple(_normalise(v, t) for v, t in zip(values, types, strict=True))
        return values[0] if len(values) == 1 else values

    def decode_event(
        self,
        address: bytes,
        topics: Sequence[bytes],
        data: bytes,
        **where: Any,
    ) -> DecodedEvent | None:
        """Decode a log emitted by this contract, or None if its topic is not one of our events."""
        if not topics:
            return None
        event = self._events.get(bytes(topics[0]))
        if event is None:
            return None
        inputs = event["inputs"]
        indexed = [i for i in inputs if i.get("indexed")]
        plain = [i for i in inputs if not i.get("indexed")]
        if len(topics) - 1 != len(indexed):
            raise AbiError(f"log for {event['name']} has {len(topics) - 1} indexed topics")
        args: dict[str, Any] = {}
        try:
            for param, topic in zip(indexed, topics[1:], strict=True):
                (value,) = eth_abi.decode([param["type"]], bytes(topic))
                args[param["name"]] = _normalise(value, param["type"])
            values = eth_abi.decode([p["type"] for p in plain], data)
        except DecodingError as exc:
            raise AbiError(f"cannot decode event {event['name']}: {exc}") from None
        for param, value in zip(plain, values, strict=True):
            args[param["name"]] = _normalise(value, param["type"])
        return DecodedEvent(event["name"], args, to_checksum_address(address), **where)


def decode_revert(output: bytes) -> str:
    """The human-readable reason of a revert's return data."""
    if output[:4] == ERROR_SELECTOR:
        try:
            (reason,) = eth_abi.decode(["string"], output[4:])
            return str(reason)
        except DecodingError:
            pass
    if output[:4] == PANIC_SELECTOR and len(output) == 36:
        return f"panic 0x{int.from_bytes(output[4:], 'big'):02x}"
    if not output:
        return "reverted without a reason (e.g. an arithmetic or bounds check)"
    return f"reverted with data 0x{output.hex()}"
