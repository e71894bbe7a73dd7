"""The borrowing protocol between an owner and its borrowers, simulated with real counters.

Each simulated process has a real ``ReferenceCounter``; the messages the core worker would send
(``AddBorrowers`` and its acknowledgement, ``RemoveBorrowers``, task pushes carrying a ref, task
results) go through a simulated network whose channels hypothesis delivers in any interleaving,
while processes crash and lose what they had in flight. A process answers a task only once the
owner acknowledged the borrows it registered before (``CoreWorker.after_borrows``): the causal
order that keeps an object alive while a ref to it travels (Ray's borrower protocol).

Checked after every step: the owner never frees the object while a live process holds a ref,
counts it as an argument of a pending task, or a task carrying it is on its way. Checked at the
end, once everything in flight is delivered and every ref dropped: the object is freed and no
process still has an entry for it.
"""

from __future__ import annotations

from collections import deque

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cellfleet.core.reference_counter import ObjectEntry, ReferenceCounter

X = b"x" * 20  # the object, owned by process 0
OWNER = "p0"


class Process:
    """One core worker's reference counting, with its I/O queue drained by hand."""

    def __init__(self, name: str, net: Network) -> None:
        self.name = name
        self.net = net
        self.queue: deque = deque()
        self.refs = ReferenceCounter(name, self.queue, lambda: None, self._on_free,
                                     self._on_borrow)
        self.alive = True
        self.held = 0  # refs the user's code holds (variables, an actor's state)
        self.running: dict[int, str] = {}  # task id -> caller, for tasks running here
        self.unacked: set[int] = set()  # borrow registrations the owner has not acked
        self.waiting_results: list[tuple[set[int], str, int]] = []  # (acks needed, to, task)
        self.freed = False

    def drain(self) -> None:
        """What the I/O thread does with its queue (CoreWorker._drain)."""
        while self.queue:
            item = self.queue.popleft()
            if type(item) is bytes:
                self.refs.apply_releases([item])
            else:
                item()

    def _on_free(self, object_id: bytes, entry: ObjectEntry) -> None:
        if entry.owned:
            self.freed = True
        else:
            self.net.send(self.name, entry.owner, ("remove", self.name))

    def _on_borrow(self, object_id: bytes, owner: str) -> None:
        seq = self.net.next_seq()
        self.unacked.add(seq)
        self.net.send(self.name, owner, ("add", self.name, seq))

    def hold(self) -> bool:
        """The ref is live here: held, or an argument of a task this process submitted."""
        entry = self.refs.entries.get(X)
        return entry is not None and (entry.local > 0 or entry.submitted > 0)

    def answer_when_acked(self, caller: str, task: int) -> None:
        self.waiting_results.append((set(self.unacked), caller, task))
        self._flush_results()

    def _flush_results(self) -> None:
        still = []
        for needed, caller, task in self.waiting_results:
            if needed & self.unacked:
                still.append((needed, caller, task))
            else:
                self.net.send(self.name, caller, ("result", task))
        self.waiting_results = still


class Network:
    """FIFO channels between processes, delivered in whatever interleaving the test picks."""

    def __init__(self, size: int) -> None:
        self.channels: dict[tuple[str, str], deque] = {}
        self.procs = [Process(f"p{i}", self) for i in range(size)]
        self.by_name = {p.name: p for p in self.procs}
        self._seq = 0
        self.tasks: dict[int, tuple[str, str]] = {}  # unanswered task -> (worker, caller)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, src: str, dst: str, message: tuple) -> None:
        self.channels.setdefault((src, dst), deque()).append(message)

    def busy_channels(self) -> list[tuple[str, str]]:
        return sorted(key for key, queue in self.channels.items() if queue)

    def in_flight_tasks(self) -> bool:
        return any(m[0] == "task" for (_, dst), q in self.channels.items()
                   if self.by_name[dst].alive for m in q)

    def deliver(self, key: tuple[str, str]) -> None:
        src, dst = key
        message = self.channels[key].popleft()
        proc = self.by_name[dst]
        if not proc.alive:
            return
        kind = message[0]
        if kind == "add":  # at the owner: register, then acknowledge
            proc.refs.add_borrower([X], message[1])
            self.send(dst, message[1], ("ack", message[2]))
        elif kind == "ack":
            proc.unacked.discard(message[1])
            proc._flush_results()
        elif kind == "remove":
            proc.refs.remove_borrower([X], message[1])
        elif kind == "task":  # deserializing the argument makes a ref here
            _, task, caller = message
            proc.refs.add_local_ref(X, OWNER)
            proc.running[task] = caller
        elif kind == "result":  # the caller's pending task is done: its argument goes
            del self.tasks[message[1]]
            proc.refs.remove_submitted([X])
        proc.drain()

    def crash(self, proc: Process) -> None:
        """kill -9: what it had in flight is lost; the owner hears it exited (the raylet's
        ProcessExited through the GCS); callers of its tasks see them fail."""
        proc.alive = False
        proc.running.clear()
        # Tasks pushed to it whose results never reached their callers fail there.
        failed = [task for task, (worker, _) in self.tasks.items() if worker == proc.name]
        failed_callers = [self.tasks.pop(task)[1] for task in failed]
        for (src, dst), queue in self.channels.items():
            if proc.name in (src, dst):
                queue.clear()
        owner = self.procs[0]
        if owner.alive:
            owner.refs.borrower_gone(proc.name)
            owner.drain()
        for caller in failed_callers:  # the worker died: the caller's task ends (failed)
            caller_proc = self.by_name[caller]
            if caller_proc.alive:
                caller_proc.refs.remove_submitted([X])
                caller_proc.drain()


def check_safety(net: Network) -> None:
    owner = net.procs[0]
    if not owner.freed:
        return
    for proc in net.procs:
        if proc.alive:
            assert not proc.hold(), f"{OWNER} freed the object while {proc.name} holds it"
    assert not net.in_flight_tasks(), "freed while a task carrying the ref is on its way"


STEP = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 3), st.integers(1, 3)),
    st.tuples(st.just("deliver"), st.integers(0, 50)),
    st.tuples(st.just("finish"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("drop"), st.integers(0, 3)),
    st.tuples(st.just("crash"), st.integers(1, 3)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(STEP, max_size=80))
@example([  # the first bug of issue 9: a ref handed on to an actor that keeps it
    ("submit", 0, 1), ("deliver", 0), ("deliver", 0), ("deliver", 0), ("submit", 1, 2),
    ("deliver", 0), ("finish", 2, True), ("drop", 0), ("deliver", 1), ("finish", 1, False),
    ("deliver", 0), ("deliver", 0),
])
def test_the_owner_never_frees_a_borrowed_object_and_frees_it_once_all_are_gone(steps):
    net = Network(4)
    owner = net.procs[0]
    owner.refs.create_owned(X)
    owner.refs.add_local_ref(X, OWNER)
    owner.held = 1
    task_ids = iter(range(1, 10_000))
    for step in steps:
        kind = step[0]
        if kind == "submit":  # a process that holds the ref passes it to a task elsewhere
            src, dst = net.procs[step[1]], net.procs[step[2]]
            if src.alive and dst.alive and src is not dst and src.hold():
                task = next(task_ids)
                src.refs.add_submitted([X])
                net.tasks[task] = (dst.name, src.name)
                net.send(src.name, dst.name, ("task", task, src.name))
        elif kind == "deliver":
            busy = net.busy_channels()
            if busy:
                net.deliver(busy[step[1] % len(busy)])
        elif kind == "finish":  # a task ends; with keep, its process holds on to the ref
            proc, keep = net.procs[step[1]], step[2]
            if proc.alive and proc.running:
                task, caller = next(iter(proc.running.items()))
                del proc.running[task]
                if keep:
                    proc.held += 1
                else:
                    proc.refs.release_local_ref(X)
                    proc.drain()
                proc.answer_when_acked(caller, task)
        elif kind == "drop":  # user code drops a ref it kept
            proc = net.procs[step[1]]
            if proc.alive and proc.held:
                proc.held -= 1
                proc.refs.release_local_ref(X)
                proc.drain()
        else:
            proc = net.procs[step[1]]
            if proc.alive:
                net.crash(proc)
        check_safety(net)
    # Quiesce: run every task to its end, deliver everything, drop every kept ref.
    for _ in range(10_000):
        progressed = False
        for proc in net.procs:
            if proc.alive and proc.running:
                task, caller = next(iter(proc.running.items()))
                del proc.running[task]
                proc.refs.release_local_ref(X)
                proc.drain()
                proc.answer_when_acked(caller, task)
                progressed = True
            while proc.alive and proc.held:
                proc.held -= 1
                proc.refs.release_local_ref(X)
                proc.drain()
                progressed = True
        busy = net.busy_channels()
        if busy:
            net.deliver(busy[0])
            progressed = True
        check_safety(net)
        if not progressed:
            break
    assert owner.alive and owner.freed, "the object outlived every ref to it"
    for proc in net.procs:
        if proc.alive:
            assert X not in proc.refs.entries, f"{proc.name} still has an entry"


def test_a_ref_handed_on_to_an_actor_outlives_the_task_that_handed_it_on():
    """Issue 9's first bug: the driver passes x to a task, which hands it to an actor that
    keeps it. The actor's AddBorrowers and the task worker's RemoveBorrowers travel on
    different connections; the task's answer waits for the actor's registration, so the
    owner hears of the actor before it can hear that the task worker let go."""
    net = Network(3)
    owner, worker, actor = net.procs
    owner.refs.create_owned(X)
    owner.refs.add_local_ref(X, OWNER)
    owner.refs.add_submitted([X])
    net.tasks[1] = ("p1", "p0")
    net.send("p0", "p1", ("task", 1, "p0"))
    owner.refs.release_local_ref(X)  # the driver drops its own ref at once
    owner.drain()
    net.deliver(("p0", "p1"))  # the task runs and registers as a borrower
    net.deliver(("p1", "p0"))
    net.deliver(("p0", "p1"))  # acked
    worker.refs.add_submitted([X])  # it creates the actor with x
    net.tasks[2] = ("p2", "p1")
    net.send("p1", "p2", ("task", 2, "p1"))
    net.deliver(("p1", "p2"))
    del actor.running[2]
    actor.held = 1  # the actor keeps x in its state
    actor.answer_when_acked("p1", 2)  # its registration is not acked yet: no answer
    assert not net.channels.get(("p2", "p1"))
    net.deliver(("p2", "p0"))  # the owner takes the actor's borrow
    net.deliver(("p0", "p2"))  # and acks it: now the creation task answers
    net.deliver(("p2", "p1"))
    worker.refs.release_local_ref(X)  # the task ends and lets go of x
    worker.drain()
    worker.answer_when_acked("p0", 1)
    while net.busy_channels():
        net.deliver(net.busy_channels()[0])
        check_safety(net)
    assert not owner.freed and owner.refs.entries[X].borrowers == {"p2"}
    actor.held = 0
    actor.refs.release_local_ref(X)
    actor.drain()
    net.deliver(("p2", "p0"))
    assert owner.freed
