"""The ledger and its consensus: an embedded py-evm chain (Prague rules), the Vyper ledger
contract, and the miner committee's BFT agreement.

This package holds the network file and genesis, the chain and its mempool, the chain service and
the contract (task registry, reputation, rewards, miners); :mod:`.bft` holds sortition, votes,
commit certificates, the double-sign guard and block sync.
"""

from .abc import LedgerAPI as LedgerAPI
from .chain import BuiltBlock as BuiltBlock
from .chain import Chain as Chain
from .chain import Head as Head
from .chain import Log as Log
from .chain import Receipt as Receipt
from .errors import BlockRejected as BlockRejected
from .errors import ConsensusError as ConsensusError
from .errors import ContractReverted as ContractReverted
from .errors import GenesisMismatchError as GenesisMismatchError
from .errors import NetworkFileError as NetworkFileError
from .errors import NotFound as NotFound
from .errors import TransactionRejected as TransactionRejected
from .ledger import LedgerContract as LedgerContract
from .ledger import SignedVote as SignedVote
from .ledger import TaskInfo as TaskInfo
from .ledger import Vote as Vote
from .network import NetworkSpec as NetworkSpec
from .network import load_network as load_network
from .network import new_network as new_network
from .service import ChainService as ChainService

__all__ = [
    "BlockRejected",
    "BuiltBlock",
    "Chain",
    "ChainService",
    "ConsensusError",
    "ContractReverted",
    "GenesisMismatchError",
    "Head",
    "LedgerAPI",
    "LedgerContract",
    "Log",
    "NetworkFileError",
    "NetworkSpec",
    "NotFound",
    "Receipt",
    "SignedVote",
    "TaskInfo",
    "TransactionRejected",
    "Vote",
    "load_network",
    "new_network",
]
