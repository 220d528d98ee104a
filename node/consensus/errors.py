"""Errors of the ledger (network file, genesis, chain, transactions, contract calls)."""

from __future__ import annotations

from ..errors import FLNodeError


class ConsensusError(FLNodeError):
    """Base class of the ledger's and consensus layer's errors."""


class NetworkFileError(ConsensusError):
    """A network file is missing, malformed, or does not derive the genesis it claims."""


class GenesisMismatchError(ConsensusError):
    """The data dir's chain was created from a different genesis than the network file's."""


class ContractArtifactError(ConsensusError):
    """The compiled contract shipped with flnode is missing or does not match its sources/hash."""


class TransactionRejected(ConsensusError):
    """A transaction failed a mempool check; ``reason`` is a short fixed label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"transaction rejected ({self.reason}): {self.detail}"


class BlockRejected(ConsensusError):
    """A block failed validation (unknown parent, bad roots, invalid transaction, ...)."""


class ContractReverted(ConsensusError):
    """A contract call reverted; ``reason`` is the decoded revert string (or a description)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"contract call reverted: {self.reason}"


class NotFound(ConsensusError, KeyError):
    """A block, transaction or receipt is not in the local chain."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"
