"""BFT consensus for the ledger (issue #8): Algorand-style sortition, Tendermint-style agreement.

:mod:`.messages` (wire types), :mod:`.sortition` (credentials, seeds, committee),
:mod:`.signer` (the double-sign guard), :mod:`.certificate` (commit certificates),
:mod:`.core` (the pure agreement state machine) and :mod:`.service` (the node service that
drives it over gossip, block sync and the chain). See ARCHITECTURE.md, "Consensus".
"""
