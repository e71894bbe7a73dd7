"""The owner's submission decisions as a state machine: tasks, leases and results in, pushes,
lease requests and returns out, under any order of grants, results, looks and losses."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cellfleet.core.submit_queues import (
    PIPELINE_DEPTH,
    SPREAD_LEASES_IN_FLIGHT,
    SPREAD_SETTLED_DEPTH,
    AskLease,
    CancelLeases,
    Connect,
    FailTasks,
    IdleCheck,
    LeasedWorker,
    Look,
    LostTask,
    Push,
    ReturnLease,
    Steal,
    SubmitQueues,
)
from cellfleet.core.task_spec import TaskSpec

SHORT, LONG = b"short", b"long"
DURATION = {SHORT: 0.0005, LONG: 0.05}


def spec(n: int, function_id: bytes = SHORT, spread: bool = False) -> TaskSpec:
    return TaskSpec(n.to_bytes(16, "big"), 1, function_id, f"t{n}", b"", [], 1, "owner",
                    bytes(16), "", {"CPU": 1.0}, 0, False,
                    strategy=["SPREAD"] if spread else None)


class Owner:
    """Carries out the actions as the submitter would, and checks each against the state."""

    def __init__(self) -> None:
        self.now = [0.0]
        self.state = SubmitQueues(lambda: self.now[0])
        self.asks: list[AskLease] = []  # lease requests under way
        self.cancelled: set[int] = set()  # of those, the ones cancelled
        self.connects: list[LeasedWorker] = []
        self.looks: list[LeasedWorker] = []
        self.idle_checks: list[IdleCheck] = []
        self.steals: list[Steal] = []
        self.workers: list[LeasedWorker] = []  # connected and not returned
        self.returned: list[LeasedWorker] = []
        self.live: dict[bytes, TaskSpec] = {}  # submitted, not ended
        self.ended: set[bytes] = set()
        self.next_lease = 0

    def carry_out(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Push):
                worker = action.worker
                assert worker in self.workers, "pushed to a worker that is not connected"
                earlier = len(worker.in_flight) - len(action.batch)
                if earlier or len(action.batch) > 1:
                    assert all(s.function_id == SHORT for s in action.batch), \
                        "a task not known short was queued behind another"
                for s in action.batch:
                    assert worker.in_flight.get(s.task_id) is s
            elif isinstance(action, AskLease):
                self.asks.append(action)
            elif isinstance(action, CancelLeases):
                live = {a.ask_id for a in self.asks if a.key == action.key} - self.cancelled
                assert set(action.ask_ids) == live, "cancelled other requests than its own"
                assert not self.state.queues[action.key].tasks, "cancelled while tasks wait"
                self.cancelled |= live
            elif isinstance(action, Connect):
                self.connects.append(action.worker)
            elif isinstance(action, ReturnLease):
                worker = action.worker
                assert worker not in self.returned, "a lease returned twice"
                assert not worker.in_flight or action.failed, "returned with tasks on it"
                if worker in self.workers:
                    self.workers.remove(worker)
                self.returned.append(worker)
            elif isinstance(action, IdleCheck):
                self.idle_checks.append(action)
            elif isinstance(action, Look):
                self.looks.append(action.worker)
            elif isinstance(action, Steal):
                self.steals.append(action)
            elif isinstance(action, FailTasks):
                for s in action.specs:
                    self.end(s)
            elif isinstance(action, LostTask):
                self.end(action.spec)
            else:
                raise AssertionError(f"unknown action {action!r}")

    def end(self, s: TaskSpec) -> None:
        assert s.task_id in self.live, "a task ended twice, or was never submitted"
        del self.live[s.task_id]
        self.ended.add(s.task_id)

    # -- events ---------------------------------------------------------------------------

    def submit(self, n: int, function_id: bytes, spread: bool) -> None:
        s = spec(n, function_id, spread)
        self.live[s.task_id] = s
        self.carry_out(self.state.submit(s))

    def grant(self, i: int) -> None:
        ask = self.asks.pop(i % len(self.asks))
        self.next_lease += 1
        worker = LeasedWorker(self.next_lease, bytes([self.next_lease % 256]) * 4,
                              f"w{self.next_lease}", b"n", ask.key)
        self.carry_out(self.state.lease_granted(worker, ask.ask_id))

    def fail_lease(self, i: int) -> None:
        ask = self.asks.pop(i % len(self.asks))
        before = set(self.live)
        self.carry_out(self.state.lease_failed(ask.key, ask.ask_id, RuntimeError("no lease")))
        if ask.ask_id in self.cancelled:
            assert self.live == before, "a cancelled request's failure failed tasks"

    def answer_cancelled(self, i: int) -> None:
        """A cancelled request comes back without a lease."""
        mine = [a for a in self.asks if a.ask_id in self.cancelled]
        if mine:
            ask = mine[i % len(mine)]
            self.asks.remove(ask)
            self.state.lease_cancelled(ask.key, ask.ask_id)

    def connect(self, i: int, ok: bool) -> None:
        worker = self.connects.pop(i % len(self.connects))
        if ok:
            self.workers.append(worker)
            self.carry_out(self.state.worker_connected(worker))
        else:
            self.carry_out(self.state.worker_unreachable(worker))

    def results(self, picks: list[int]) -> None:
        """A batch of results: each from the task running at the head of a worker."""
        for i in picks:
            busy = [w for w in self.workers if w.in_flight]
            if not busy:
                break
            worker = busy[i % len(busy)]
            head = next(iter(worker.in_flight.values()))
            assert self.state.task_done(head.task_id, head.function_id,
                                        DURATION[head.function_id]) is worker
            self.end(head)
        self.carry_out(self.state.pump_freed())

    def look(self, i: int) -> None:
        self.carry_out(self.state.look(self.looks.pop(i % len(self.looks))))

    def idle(self, i: int) -> None:
        check = self.idle_checks.pop(i % len(self.idle_checks))
        self.carry_out(self.state.idle_expired(check.worker, check.pushes))

    def give_back(self, i: int) -> None:
        steal = self.steals.pop(i % len(self.steals))
        worker = steal.worker
        started = next(iter(worker.in_flight), None)  # the one running stays
        back = [t for t in steal.task_ids if t in worker.in_flight and t != started]
        self.carry_out(self.state.given_back(worker, back))

    def lose(self, i: int) -> None:
        worker = self.workers[i % len(self.workers)]
        self.carry_out(self.state.worker_lost(worker))

    def cancel(self, i: int) -> None:
        queued = [s for q in self.state.queues.values() for s in q.tasks]
        s = queued[i % len(queued)]
        assert self.state.cancel_queued(s.task_id) is s
        self.end(s)

    # -- invariants -------------------------------------------------------------------------

    def check(self) -> None:
        state = self.state
        where: dict[bytes, object] = {}
        for key, queue in state.queues.items():
            for s in queue.tasks:
                assert s.task_id not in where, "a task queued twice"
                where[s.task_id] = queue
            asked = sum(1 for a in self.asks if a.key == key and a.ask_id not in self.cancelled)
            assert queue.leases_pending == asked, "lease requests miscounted"
            assert asked <= (SPREAD_LEASES_IN_FLIGHT if queue.spread else 1)
            connecting = sum(1 for w in self.connects if w.key == key)
            if queue.tasks:
                assert asked or connecting, "tasks wait with no lease under way"
                assert all(w.in_flight for w in queue.workers), "an idle worker beside a queue"
            for worker in queue.workers:
                assert worker in self.workers and not worker.returned
                depth = SPREAD_SETTLED_DEPTH if queue.spread else PIPELINE_DEPTH
                assert len(worker.in_flight) <= depth
        for worker in self.workers:
            assert worker in state.queues[worker.key].workers
            if len(worker.in_flight) > 1:
                assert worker in self.looks or any(t.worker is worker for t in self.steals), \
                    "tasks wait behind another and nobody looks whether it runs long"
            for task_id in worker.in_flight:
                assert task_id not in where, "a task both queued and pushed, or pushed twice"
                where[task_id] = worker
                assert state.workers_by_task[task_id] is worker
        assert set(where) == set(self.live), "a task was lost, or one that ended came back"
        assert len(state.workers_by_task) == sum(len(w.in_flight) for w in self.workers)

    def drain(self) -> None:
        """Every lease granted and connected, every task run, every idle check due: nothing is
        left queued or running, and every lease went back once."""
        for _ in range(10_000):
            self.now[0] += 0.02
            if self.asks:
                self.grant(0)
            elif self.connects:
                self.connect(0, True)
            elif any(w.in_flight for w in self.workers):
                self.results([0])
            elif self.idle_checks:
                self.idle(0)
            else:
                break
            self.check()
        assert not self.live and not self.workers
        granted = self.next_lease
        assert len(self.returned) == granted, "a lease was never given back"


submits = st.tuples(st.just("submit"), st.sampled_from([SHORT, SHORT, LONG]), st.booleans())
events = st.lists(st.one_of(
    submits, submits, submits,
    st.tuples(st.just("grant"), st.integers(0, 7)),
    st.tuples(st.just("fail_lease"), st.integers(0, 7)),
    st.tuples(st.just("answer_cancelled"), st.integers(0, 7)),
    st.tuples(st.just("connect"), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("results"), st.lists(st.integers(0, 7), max_size=6)),
    st.tuples(st.just("look"), st.integers(0, 7)),
    st.tuples(st.just("idle"), st.integers(0, 7)),
    st.tuples(st.just("give_back"), st.integers(0, 7)),
    st.tuples(st.just("lose"), st.integers(0, 7)),
    st.tuples(st.just("cancel"), st.integers(0, 7)),
    st.tuples(st.just("tick"), st.sampled_from([0.001, 0.006, 0.02])),
), max_size=80)

PENDING = {"grant": "asks", "fail_lease": "asks", "answer_cancelled": "asks",
           "connect": "connects", "look": "looks", "idle": "idle_checks", "give_back": "steals",
           "lose": "workers"}


@settings(max_examples=400, deadline=None)
@example(events=[("submit", SHORT, True), ("grant", 0), ("connect", 0, True),
                 ("submit", SHORT, True), ("submit", SHORT, True), ("grant", 0)])
@example(events=[("submit", SHORT, False), ("grant", 0), ("connect", 0, True),
                 ("results", [0]), ("submit", SHORT, False), ("submit", SHORT, False),
                 ("submit", SHORT, True), ("grant", 0), ("connect", 0, True), ("results", [0]),
                 ("submit", SHORT, True), ("submit", SHORT, True), ("lose", 0), ("lose", 1)])
@given(events=events)
def test_every_task_is_in_one_place_and_ends_once(events: list) -> None:
    owner = Owner()
    n = 0
    for event in events:
        name, *args = event
        if name == "submit":
            n += 1
            owner.submit(n, *args)
        elif name == "tick":
            owner.now[0] += args[0]
        elif name == "cancel":
            if any(q.tasks for q in owner.state.queues.values()):
                owner.cancel(*args)
        elif name == "results":
            owner.results(*args)
        elif getattr(owner, PENDING[name]):
            getattr(owner, name)(*args)
        owner.check()
    owner.drain()


def owner_with_a_worker() -> Owner:
    """An owner with one leased worker, idle, that has run one task of ``SHORT`` (which is
    known short from then on)."""
    owner = Owner()
    owner.submit(1, SHORT, False)
    owner.grant(0)
    owner.connect(0, True)
    owner.results([0])
    return owner


def test_short_tasks_are_pipelined_and_long_ones_spread() -> None:
    owner = owner_with_a_worker()
    for n in range(2, 12):
        owner.submit(n, SHORT, False)
    (worker,) = owner.workers
    assert len(worker.in_flight) == 10 and not owner.asks  # all on the one worker
    owner.submit(20, LONG, False)
    owner.submit(21, LONG, False)
    assert len(worker.in_flight) == 10 and owner.asks, "unknown tasks wait for a lease"


def test_a_task_that_runs_long_has_its_followers_taken_back() -> None:
    owner = owner_with_a_worker()
    for n in range(2, 6):
        owner.submit(n, SHORT, False)
    (worker,) = owner.workers
    assert owner.looks == [worker]
    owner.look(0)  # first look: it notes the task running
    owner.look(0)  # second: the same task still runs
    (steal,) = owner.steals
    assert steal.task_ids == list(worker.in_flight)[1:]
    owner.give_back(0)
    assert len(worker.in_flight) == 1 and owner.asks  # the rest wait for another lease
    owner.check()


def test_a_burst_of_short_spread_tasks_asks_for_several_leases() -> None:
    owner = owner_with_a_worker()
    for n in range(2, 12):
        owner.submit(n, SHORT, True)
    assert len(owner.asks) == SPREAD_LEASES_IN_FLIGHT
    for _ in range(3):
        owner.grant(0)
        owner.connect(0, True)
    spread_workers = [w for w in owner.workers if w.key != owner.workers[0].key]
    assert sorted(len(w.in_flight) for w in spread_workers) == [2, 2, 2]  # evenly, 2 deep
    owner.check()


def test_spread_tasks_not_known_short_ask_for_one_lease_at_a_time() -> None:
    owner = Owner()
    for n in range(1, 7):
        owner.submit(n, LONG, True)
    assert len(owner.asks) == 1  # each takes a worker: the raylets' round robin stays exact
    owner.grant(0)
    owner.connect(0, True)
    assert len(owner.asks) == 1 and len(owner.workers[0].in_flight) == 1


def test_a_spread_queue_that_empties_cancels_its_lease_requests() -> None:
    owner = owner_with_a_worker()
    for n in range(2, 6):
        owner.submit(n, SHORT, True)
    assert len(owner.asks) == 4
    owner.grant(0)
    owner.connect(0, True)  # takes two tasks: two wait, three requests still under way
    owner.results([1, 1])  # the two go to it: the queue is empty
    assert owner.cancelled == {a.ask_id for a in owner.asks} and len(owner.cancelled) == 3
    for n in range(10, 13):
        owner.submit(n, SHORT, True)
    fresh = [a for a in owner.asks if a.ask_id not in owner.cancelled]
    assert fresh, "the next burst asks afresh"
    owner.grant(0)  # a cancelled request's lease that comes anyway is used
    owner.check()


def test_an_idle_lease_goes_back_only_after_a_full_idle_period() -> None:
    owner = owner_with_a_worker()
    (check,) = owner.idle_checks
    owner.submit(2, SHORT, False)  # it works again before the check is due
    owner.results([0])
    owner.idle(0)
    assert not owner.returned and len(owner.idle_checks) == 1, "checked again from now"
    owner.idle(0)
    assert owner.returned == [check.worker]
