# pragma version ~=0.4.3
"""Pull-based payouts: every payment is first credited here, then withdrawn by its owner.

Nothing in the ledger ever sends value to a device, miner or task owner while it is changing
state; it credits ``owed`` instead, and the owner calls ``withdraw``. A failing or hostile
recipient can therefore never block a round, and re-entrancy has nothing to exploit: the
balance is zeroed before the transfer and the external ``withdraw`` holds the reentrancy lock.
"""

# Why a credit was made (the ``kind`` field of RewardCredited).
KIND_DEVICE: constant(uint8) = 0
KIND_LEADER: constant(uint8) = 1
KIND_COMMITTEE: constant(uint8) = 2
KIND_REFUND: constant(uint8) = 3
KIND_STAKE: constant(uint8) = 4
KIND_REPORTER: constant(uint8) = 5

owed: public(HashMap[address, uint256])
total_owed: public(uint256)


event RewardCredited:
    account: indexed(address)
    task: indexed(uint256)
    amount: uint256
    kind: uint8


event Withdrawn:
    account: indexed(address)
    amount: uint256


@internal
def _credit(account: address, amount: uint256, task: uint256, kind: uint8):
    if amount == 0:
        return
    self.owed[account] += amount
    self.total_owed += amount
    log RewardCredited(account=account, task=task, amount=amount, kind=kind)


@internal
def _withdraw(account: address):
    amount: uint256 = self.owed[account]
    assert amount > 0, "nothing to withdraw"
    # Effects before the interaction: a re-entrant call finds nothing owed.
    self.owed[account] = 0
    self.total_owed -= amount
    log Withdrawn(account=account, amount=amount)
    raw_call(account, b"", value=amount)
