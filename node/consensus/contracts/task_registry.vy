# pragma version ~=0.4.3
# pragma experimental-codegen
# (Vyper's Venom pipeline: it computes each storage slot's hash once per call, where the legacy
# one recomputes it at every access. submitUpdate runs 195 EVM instructions instead of 300, and
# py-evm executes instructions one Python call each. ABI and storage layout are unchanged.)
"""The flnode ledger contract: task registry, with reputation, rewards and miners as modules.

One contract is deployed (at a fixed address in the genesis state); the modules keep each concern
in its own source file and their state in their own storage slots.

Task life: ``createTask`` (with a deposit covering every round's reward) → devices ``joinTask`` →
each round, devices ``submitUpdate`` → the round's proposer ``commitRound`` (judges the round's
submissions, updates reputation, credits rewards, records the new global model) → after the last
round (or when the task has been idle for ``idle_close_blocks``, set at genesis) the owner ``closeTask``s it and the
unspent deposit is credited back.

Who may commit: ``commitRound`` requires ``msg.sender == block.coinbase``, a committee member of the
task and an active miner. The consensus layer only imports a block whose coinbase is the certified
proposer of that block, so the only account that can commit a round in a block is that block's
certified proposer, through a transaction it signed itself.

Round reward (``reward_per_round`` of the deposit): LEADER_BPS to the proposer, COMMITTEE_BPS shared
equally by the committee (the proposer included), the rest to the accepted devices in proportion to

    weight = reputation (after this round's judgement) × n_samples × score / SCALE

Integer-division dust, and the device share of a round nobody was accepted in, stay in the deposit.
Every payout is a credit in ``rewards``; nothing is paid that the deposit does not hold.
"""

import miners
import reputation
import rewards

initializes: rewards
initializes: reputation
initializes: miners[rewards := rewards]

exports: (
    rewards.owed,
    rewards.total_owed,
    reputation.good,
    reputation.bad,
    reputation.judgements,
    miners.stake,
    miners.leaving_at,
    miners.min_stake,
    miners.leave_delay,
    miners.total_staked,
)

MAX_COMMITTEE: constant(uint256) = 16
MAX_UPDATES: constant(uint256) = 128
MAX_SAMPLES: constant(uint256) = 2**32
SCALE: constant(uint256) = 10**6
LEADER_BPS: constant(uint256) = 1000  # 10 % of each round's reward to the proposer
COMMITTEE_BPS: constant(uint256) = 1000  # 10 % shared by the committee
DEVICE_BPS: constant(uint256) = 8000  # 80 % to the accepted devices

# Submission status
PENDING: constant(uint256) = 1
ACCEPTED: constant(uint256) = 2
REJECTED: constant(uint256) = 3


struct Task:
    owner: address
    spec: bytes32
    model: bytes32
    rounds: uint256
    updates_per_round: uint256
    reward_per_round: uint256
    epsilon_milli: uint256
    deposit: uint256
    round: uint256
    submitted: uint256
    last_progress: uint256
    closed: bool


task_count: public(uint256)
tasks: public(HashMap[uint256, Task])
committee: public(HashMap[uint256, DynArray[address, MAX_COMMITTEE]])
in_committee: public(HashMap[uint256, HashMap[address, bool]])
joined: public(HashMap[uint256, HashMap[address, bool]])
# One storage word per submission: n_samples << 8 | status. The update's CID is not kept in state:
# it is in the UpdateSubmitted event (and the transaction), which is all a miner or auditor needs,
# and every extra word written costs ~20k gas and, above all, a state-trie write per device.
submissions: public(HashMap[uint256, HashMap[uint256, HashMap[address, uint256]]])
total_deposits: public(uint256)
idle_close_blocks: public(uint256)  # set in the genesis state from the network file


event TaskCreated:
    task: indexed(uint256)
    owner: indexed(address)
    spec: bytes32
    model: bytes32
    rounds: uint256
    updates_per_round: uint256
    reward_per_round: uint256
    epsilon_milli: uint256
    deposit: uint256


event TaskJoined:
    task: indexed(uint256)
    device: indexed(address)


event UpdateSubmitted:
    task: indexed(uint256)
    round: indexed(uint256)
    device: indexed(address)
    cid: bytes32
    n_samples: uint256


event RoundCommitted:
    task: indexed(uint256)
    round: indexed(uint256)
    proposer: indexed(address)
    aggregate: bytes32
    accepted: uint256
    rejected: uint256
    paid: uint256


event TaskClosed:
    task: indexed(uint256)
    refund: uint256


@external
@payable
def createTask(
    spec: bytes32,
    model: bytes32,
    rounds: uint256,
    updates_per_round: uint256,
    reward_per_round: uint256,
    epsilon_milli: uint256,
    committee: DynArray[address, MAX_COMMITTEE],
) -> uint256:
    assert rounds > 0, "a task needs at least one round"
    assert updates_per_round > 0 and updates_per_round <= MAX_UPDATES, "updates per round must be 1..128"
    assert len(committee) > 0, "a task needs a committee"
    assert msg.value >= rounds * reward_per_round, "deposit too small for rounds x reward per round"
    task: uint256 = self.task_count + 1
    self.task_count = task
    for member: address in committee:
        assert miners._is_active(member), "committee member is not an active miner"
        assert not self.in_committee[task][member], "committee member listed twice"
        self.in_committee[task][member] = True
    self.committee[task] = committee
    self.tasks[task] = Task(
        owner=msg.sender,
        spec=spec,
        model=model,
        rounds=rounds,
        updates_per_round=updates_per_round,
        reward_per_round=reward_per_round,
        epsilon_milli=epsilon_milli,
        deposit=msg.value,
        round=0,
        submitted=0,
        last_progress=block.number,
        closed=False,
    )
    self.total_deposits += msg.value
    log TaskCreated(
        task=task,
        owner=msg.sender,
        spec=spec,
        model=model,
        rounds=rounds,
        updates_per_round=updates_per_round,
        reward_per_round=reward_per_round,
        epsilon_milli=epsilon_milli,
        deposit=msg.value,
    )
    return task


@internal
@view
def _open_task(task: uint256):
    assert self.tasks[task].owner != empty(address), "no such task"
    assert not self.tasks[task].closed, "task is closed"
    assert self.tasks[task].round < self.tasks[task].rounds, "task has finished all its rounds"


@external
def joinTask(task: uint256):
    self._open_task(task)
    assert not self.joined[task][msg.sender], "already joined"
    self.joined[task][msg.sender] = True
    log TaskJoined(task=task, device=msg.sender)


@external
def submitUpdate(task: uint256, round: uint256, cid: bytes32, n_samples: uint256):
    # Every field is read once (py-evm runs SLOADs slowly, and this is the busiest call).
    # Having joined implies that the task exists.
    assert self.joined[task][msg.sender], "join the task first"
    assert not self.tasks[task].closed, "task is closed"
    current: uint256 = self.tasks[task].round
    assert current < self.tasks[task].rounds, "task has finished all its rounds"
    assert round == current, "wrong round"
    assert self.submissions[task][round][msg.sender] == 0, "already submitted in this round"
    assert n_samples > 0 and n_samples <= MAX_SAMPLES, "n_samples must be 1..2**32"
    submitted: uint256 = self.tasks[task].submitted
    assert submitted < self.tasks[task].updates_per_round, "this round is full"
    self.submissions[task][round][msg.sender] = (n_samples << 8) | PENDING
    self.tasks[task].submitted = submitted + 1
    log UpdateSubmitted(task=task, round=round, device=msg.sender, cid=cid, n_samples=n_samples)


@external
def commitRound(
    task: uint256,
    round: uint256,
    aggregate: bytes32,
    accepted: DynArray[address, MAX_UPDATES],
    rejected: DynArray[address, MAX_UPDATES],
    scores: DynArray[uint256, MAX_UPDATES],
):
    assert msg.sender == block.coinbase, "only the block's proposer may commit a round"
    self._open_task(task)
    assert self.in_committee[task][msg.sender], "proposer is not on the task's committee"
    assert miners._is_active(msg.sender), "proposer is not an active miner"
    assert round == self.tasks[task].round, "wrong round"
    assert len(scores) == len(accepted), "one score per accepted update"

    weights: DynArray[uint256, MAX_UPDATES] = []
    total_weight: uint256 = 0
    for i: uint256 in range(len(accepted), bound=MAX_UPDATES):
        device: address = accepted[i]
        record: uint256 = self.submissions[task][round][device]
        assert record & 255 == PENDING, "accepted device has no pending submission"
        assert scores[i] <= SCALE, "a score is at most 10**6"
        self.submissions[task][round][device] = record ^ PENDING ^ ACCEPTED
        rep: uint256 = reputation._record(device, True)
        w: uint256 = rep * (record >> 8) * scores[i] // SCALE
        weights.append(w)
        total_weight += w
    for device: address in rejected:
        record: uint256 = self.submissions[task][round][device]
        assert record & 255 == PENDING, "rejected device has no pending submission"
        self.submissions[task][round][device] = record ^ PENDING ^ REJECTED
        reputation._record(device, False)

    pot: uint256 = self.tasks[task].reward_per_round
    paid: uint256 = pot * LEADER_BPS // 10000
    rewards._credit(msg.sender, paid, task, rewards.KIND_LEADER)
    members: DynArray[address, MAX_COMMITTEE] = self.committee[task]
    each: uint256 = pot * COMMITTEE_BPS // 10000 // len(members)
    for member: address in members:
        rewards._credit(member, each, task, rewards.KIND_COMMITTEE)
        paid += each
    if total_weight > 0:
        device_pot: uint256 = pot * DEVICE_BPS // 10000
        for i: uint256 in range(len(accepted), bound=MAX_UPDATES):
            share: uint256 = device_pot * weights[i] // total_weight
            rewards._credit(accepted[i], share, task, rewards.KIND_DEVICE)
            paid += share

    # paid <= pot <= deposit: the deposit covered rounds x pot at creation and each round takes
    # at most one pot; the checked subtraction would revert otherwise.
    self.tasks[task].deposit -= paid
    self.total_deposits -= paid
    self.tasks[task].model = aggregate
    self.tasks[task].round = round + 1
    self.tasks[task].submitted = 0
    self.tasks[task].last_progress = block.number
    log RoundCommitted(
        task=task,
        round=round,
        proposer=msg.sender,
        aggregate=aggregate,
        accepted=len(accepted),
        rejected=len(rejected),
        paid=paid,
    )


@external
def closeTask(task: uint256):
    assert self.tasks[task].owner != empty(address), "no such task"
    assert msg.sender == self.tasks[task].owner, "only the task owner may close it"
    assert not self.tasks[task].closed, "task is closed"
    finished: bool = self.tasks[task].round >= self.tasks[task].rounds
    idle: bool = block.number >= self.tasks[task].last_progress + self.idle_close_blocks
    assert finished or idle, "task is still running (close after its last round or when idle)"
    refund: uint256 = self.tasks[task].deposit
    self.tasks[task].deposit = 0
    self.tasks[task].closed = True
    self.total_deposits -= refund
    rewards._credit(msg.sender, refund, task, rewards.KIND_REFUND)
    log TaskClosed(task=task, refund=refund)


@external
@view
def getCommittee(task: uint256) -> DynArray[address, MAX_COMMITTEE]:
    return self.committee[task]


@external
@view
def reputationOf(device: address) -> uint256:
    return reputation._reputation(device)


@external
@view
def isActiveMiner(miner: address) -> bool:
    return miners._is_active(miner)


@external
@payable
def registerMiner():
    miners._register(msg.sender, msg.value)


@external
def requestLeave():
    miners._request_leave(msg.sender)


@external
def leave():
    miners._leave(msg.sender)


@external
def slash(a: miners.Vote, sig_a: Bytes[65], b: miners.Vote, sig_b: Bytes[65]):
    miners._slash(msg.sender, a, sig_a, b, sig_b)


@external
@nonreentrant
def withdraw():
    rewards._withdraw(msg.sender)
