"""Actors and the rest of the core API against a real local cluster.

Ordering, handles, lifetimes (named, detached, killed, out of scope), errors, threaded and
async concurrency, cancellation, the runtime context, resource queries, ActorPool, Queue and
list_actors. Concurrency is measured by overlap (how many calls were inside at once), never
by how long something took; processes are gated by files, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import queue as stdlib_queue
import subprocess
import sys
import textwrap
import threading
import time

import cloudpickle
import psutil
import pytest
from gates import touch, wait_for_file, wait_for_file_async
from helpers import wait_until

import cellfleet as ray
from cellfleet.exceptions import (
    ActorDeathReason,
    ActorDiedError,
    RayActorError,
    RayTaskError,
    TaskCancelledError,
)
from cellfleet.util import ActorPool
from cellfleet.util.queue import Empty, Full, Queue
from cellfleet.util.state import list_actors

pytestmark = pytest.mark.integration

# Workers cannot import this test module: ship its helpers by value with the functions.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

NUM_CPUS = 4
GATE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def actor_cluster():
    """A 4-CPU, 1-GPU local cluster shared by the tests of this module."""
    info = ray.init(num_cpus=NUM_CPUS, num_gpus=1, object_store_memory=256 * 2**20)
    yield info
    ray.shutdown()


# -- helpers (run in tasks and actors too) ------------------------------------------------








def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def cpus_back() -> None:
    """Every CPU of the cluster is free again."""
    wait_until(lambda: ray.available_resources().get("CPU") == NUM_CPUS, timeout=15,
               message=f"all {NUM_CPUS} CPUs to be available again")


def actor_record(actor) -> dict | None:
    for record in list_actors(filters=[("actor_id", "=", actor._actor_id.hex())]):
        return record
    return None


def actor_state(actor) -> str | None:
    record = actor_record(actor)
    return record["state"] if record else None


@ray.remote
class Pid:
    def pid(self) -> int:
        return os.getpid()

    def echo(self, value):
        return value


# -- ordering -------------------------------------------------------------------------------


def test_calls_from_each_caller_run_in_submission_order(actor_cluster):
    @ray.remote
    class Log:
        def __init__(self):
            self.seen = []

        def add(self, caller, seq):
            self.seen.append((caller, seq))

        def entries(self):
            return self.seen

    @ray.remote
    def caller(log, name, n):
        ray.get([log.add.remote(name, i) for i in range(n)])
        return n

    @ray.remote
    def later(i):
        return i

    log = Log.remote()
    tasks = [caller.remote(log, f"task{i}", 200) for i in range(3)]
    # The driver's calls interleave with the tasks'; every 20th one waits for a task's
    # return value, which must not let the calls behind it overtake it.
    driver = [log.add.remote("driver", later.remote(i) if i % 20 == 0 else i)
              for i in range(200)]
    assert ray.get(tasks, timeout=60) == [200, 200, 200]
    ray.get(driver, timeout=60)
    seen = ray.get(log.entries.remote(), timeout=20)
    assert len(seen) == 800
    for name in ("driver", "task0", "task1", "task2"):
        assert [seq for who, seq in seen if who == name] == list(range(200)), name


# -- handles ----------------------------------------------------------------------------


def test_handles_work_inside_tasks_and_other_actors(actor_cluster):
    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self, by=1):
            self.n += by
            return self.n

        def value(self):
            return self.n

    @ray.remote
    def bump(counter, times):
        return ray.get([counter.inc.remote() for _ in range(times)])[-1]

    @ray.remote
    def bump_nested(holder, times):  # the handle arrives inside a container
        return ray.get([holder["counter"].inc.remote() for _ in range(times)])[-1]

    @ray.remote
    class Bumper:
        def __init__(self, counter):
            self.counter = counter

        def bump(self, times):
            return ray.get([self.counter.inc.remote() for _ in range(times)])[-1]

        def handle(self):
            return self.counter

    counter = Counter.remote()
    bumper = Bumper.remote(counter)
    ray.get([bump.remote(counter, 10), bump_nested.remote({"counter": counter}, 10),
             bumper.bump.remote(10)], timeout=30)
    assert ray.get(counter.value.remote(), timeout=20) == 30
    back = ray.get(bumper.handle.remote(), timeout=20)  # a handle returned from an actor
    assert back == counter and hash(back) == hash(counter)
    assert ray.get(back.inc.remote(5), timeout=20) == 35
    copy = pickle.loads(pickle.dumps(counter))
    assert ray.get(copy.value.remote(), timeout=20) == 35


def test_actors_create_and_call_actors(actor_cluster):
    @ray.remote
    class Leaf:
        def __init__(self, base):
            self.base = base

        def get(self, x):
            return self.base + x

    @ray.remote
    class Middle:
        def __init__(self):
            self.leaves = [Leaf.remote(100 * i) for i in range(3)]  # owned by this actor

        def fan_out(self, x):
            return ray.get([leaf.get.remote(x) for leaf in self.leaves])

    @ray.remote
    class Top:
        def __init__(self, middle):
            self.middle = middle

        def run(self, x):
            return ray.get(self.middle.fan_out.remote(x))

    middle = Middle.remote()  # kept: see test_a_handle_stored_by_another_actor_keeps...
    top = Top.remote(middle)
    assert ray.get([top.run.remote(i) for i in range(3)], timeout=30) == [
        [i, 100 + i, 200 + i] for i in range(3)]


def test_a_handle_stored_by_another_actor_keeps_the_actor_alive(actor_cluster):
    """Regression: the borrow used to race the task's result (Top.remote(Middle.remote()))."""

    @ray.remote
    class Holder:
        def hold(self, handle):
            self.handle = handle
            return True

        def call(self):
            return ray.get(self.handle.pid.remote())

    for _ in range(3):  # it was a race: one trial used to lose it four times in five
        target = Pid.remote()
        holder = Holder.remote()
        ray.get(holder.hold.remote(target), timeout=20)
        del target  # the holder's handle must keep the actor alive
        assert isinstance(ray.get(holder.call.remote(), timeout=20), int)


def test_task_can_create_actors_of_a_class_the_driver_already_used(actor_cluster):
    """Regression: a used ActorClass pickled its CoreWorker ("cannot pickle 'mmap.mmap'")."""

    @ray.remote
    class Local:
        def value(self):
            return 1

    assert ray.get(Local.remote().value.remote(), timeout=20) == 1

    @ray.remote
    def make():
        return ray.get(Local.remote().value.remote())

    assert ray.get(make.remote(), timeout=20) == 1


# -- names and lifetimes ------------------------------------------------------------------


def test_named_actors_get_actor_and_get_if_exists(actor_cluster):
    @ray.remote
    class Box:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    @ray.remote
    def look_up(name):
        return ray.get(ray.get_actor(name).get.remote())

    box = Box.options(name="box").remote(1)
    assert ray.get(ray.get_actor("box").get.remote(), timeout=20) == 1
    assert ray.get(look_up.remote("box"), timeout=20) == 1
    with pytest.raises(ValueError, match="already taken"):
        Box.options(name="box").remote(2)
    same = Box.options(name="box", get_if_exists=True).remote(3)
    assert same == box and ray.get(same.get.remote(), timeout=20) == 1
    other = Box.options(name="box", namespace="elsewhere").remote(4)  # names are per namespace
    assert ray.get(ray.get_actor("box", namespace="elsewhere").get.remote(), timeout=20) == 4
    assert ray.get(ray.get_actor("box").get.remote(), timeout=20) == 1
    with pytest.raises(ValueError, match="Failed to look up actor with name 'nope'"):
        ray.get_actor("nope")
    with pytest.raises(ValueError):
        ray.get_actor("")

    ray.kill(box)  # a dead actor's name is free again

    def name_free():
        try:
            ray.get_actor("box")
            return False
        except ValueError:
            return True

    wait_until(name_free, message="the killed actor's name to be released")
    again = Box.options(name="box").remote(5)
    assert ray.get(ray.get_actor("box").get.remote(), timeout=20) == 5
    del other, again


def test_detached_actor_outlives_its_handles_until_killed(actor_cluster):
    keeper = Pid.options(name="keeper", lifetime="detached").remote()
    keeper_pid = ray.get(keeper.pid.remote(), timeout=20)
    del keeper
    # A non-detached control actor dropped afterwards: once it is gone, the release of the
    # detached actor's handle (queued before) has certainly been handled.
    control = Pid.remote()
    control_pid = ray.get(control.pid.remote(), timeout=20)
    del control
    wait_until(lambda: gone(control_pid), message="the control actor to exit")
    assert not gone(keeper_pid)
    found = ray.get_actor("keeper")
    assert ray.get(found.pid.remote(), timeout=20) == keeper_pid
    assert actor_record(found)["is_detached"] is True
    ray.kill(found)
    wait_until(lambda: gone(keeper_pid), message="the killed detached actor to exit")
    with pytest.raises(ActorDiedError, match="killed"):
        ray.get(found.pid.remote(), timeout=20)


JOB_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import cellfleet as ray

    ray.init(address=sys.argv[1], namespace="jobx")

    @ray.remote
    class Keeper:
        def pid(self):
            return os.getpid()

    @ray.remote
    def context_namespace():
        return ray.get_runtime_context().namespace

    @ray.remote
    def make_named():
        Keeper.options(name="made_in_task", lifetime="detached").remote()
        return True

    detached = Keeper.options(name="keeper", lifetime="detached").remote()
    temporary = Keeper.options(name="temporary").remote()
    print(json.dumps({
        "detached": ray.get(detached.pid.remote()),
        "temporary": ray.get(temporary.pid.remote()),
        "namespace": ray.get(context_namespace.remote()) if "--ns" in sys.argv else None,
        "made": ray.get(make_named.remote()) if "--ns" in sys.argv else None,
    }), flush=True)
""")


def run_job(gcs_address: str, *flags: str) -> dict:
    """Run a second driver (a job of its own, namespace "jobx") to its end."""
    done = subprocess.run([sys.executable, "-c", JOB_SCRIPT, gcs_address, *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_detached_actor_outlives_the_job_that_made_it(actor_cluster):
    pids = run_job(actor_cluster["gcs_address"])
    wait_until(lambda: gone(pids["temporary"]),
               message="the ended job's non-detached actor to exit")
    assert not gone(pids["detached"])
    keeper = ray.get_actor("keeper", namespace="jobx")
    assert ray.get(keeper.pid.remote(), timeout=20) == pids["detached"]
    ray.kill(keeper)
    wait_until(lambda: gone(pids["detached"]), message="the killed detached actor to exit")


def test_a_finished_jobs_actors_are_dead_and_their_names_free(actor_cluster):
    """Regression: a finished job's actors stayed ALIVE in the GCS, their names taken."""

    pids = run_job(actor_cluster["gcs_address"])
    wait_until(lambda: gone(pids["temporary"]), message="the job's actor to exit")
    try:
        wait_until(lambda: not any(a["name"] == "temporary" and a["state"] != "DEAD"
                                   for a in list_actors()),
                   timeout=5, message="the job's actor to be DEAD in the GCS")
        with pytest.raises(ValueError):
            ray.get_actor("temporary", namespace="jobx")
    finally:
        ray.kill(ray.get_actor("keeper", namespace="jobx"))


def test_an_actor_dies_with_the_worker_that_created_it_and_frees_its_name(actor_cluster):
    """Regression: an actor whose owner (a worker) died stayed ALIVE, its name taken."""

    @ray.remote(num_cpus=0)
    class Creator:
        def make(self) -> int:
            self.child = Pid.options(name="orphaned", num_cpus=0).remote()
            return ray.get(self.child.pid.remote())

    creator = Creator.remote()
    child_pid = ray.get(creator.make.remote(), timeout=20)
    ray.kill(creator)
    wait_until(lambda: gone(child_pid), message="the orphaned actor's process to exit")
    wait_until(lambda: not any(a["name"] == "orphaned" and a["state"] != "DEAD"
                               for a in list_actors()),
               timeout=10, message="the orphaned actor to be DEAD in the GCS")
    again = Pid.options(name="orphaned", num_cpus=0).remote()  # the name is free again
    assert ray.get(again.pid.remote(), timeout=20) != child_pid
    ray.kill(again)


def test_tasks_run_in_their_jobs_namespace(actor_cluster):
    """Regression: workers used to run every task in the namespace ""."""

    result = run_job(actor_cluster["gcs_address"], "--ns")
    try:
        assert result["namespace"] == "jobx"
        ray.get_actor("made_in_task", namespace="jobx")
    finally:
        for name, namespace in (("keeper", "jobx"), ("made_in_task", "jobx"),
                                ("made_in_task", "")):
            try:
                ray.kill(ray.get_actor(name, namespace=namespace))
            except ValueError:
                pass


def test_actors_created_in_tasks_belong_to_the_job(actor_cluster):
    @ray.remote
    class Made:
        def ping(self):
            return True

    @ray.remote
    def make():
        actor = Made.remote()
        ray.get(actor.ping.remote())
        return actor._actor_id.hex()

    actor_id = ray.get(make.remote(), timeout=20)
    record = list_actors(filters=[("actor_id", "=", actor_id)])[0]
    assert record["job_id"] == ray.get_runtime_context().get_job_id()


# -- kill and handle counting ---------------------------------------------------------------


def test_kill_fails_running_queued_and_later_calls(actor_cluster, tmp_path):
    @ray.remote
    class Blocker:
        def pid(self):
            return os.getpid()

        def block(self, started, gate):
            touch(started)
            wait_for_file(gate)
            return "released"

        def ping(self):
            return "pong"

    actor = Blocker.remote()
    pid = ray.get(actor.pid.remote(), timeout=20)
    started = str(tmp_path / "started")
    running = actor.block.remote(started, str(tmp_path / "never"))
    queued = [actor.ping.remote() for _ in range(3)]
    wait_until(lambda: os.path.exists(started), message="the blocking call to start")
    ray.kill(actor)
    for ref in [running, *queued, actor.ping.remote()]:
        with pytest.raises(ActorDiedError, match="killed") as info:
            ray.get(ref, timeout=20)
        assert isinstance(info.value, RayActorError)
        assert info.value.reason is ActorDeathReason.KILLED
    wait_until(lambda: gone(pid), message="the killed actor's process to exit")
    with pytest.raises(ValueError, match="only supported for actors"):
        ray.kill(running)


def test_kill_from_a_process_that_did_not_call_the_actor(actor_cluster):
    """Regression: such a kill marked the actor DEAD in the GCS but never stopped it."""

    @ray.remote
    def killer(handle):
        ray.kill(handle)
        return True

    actor = Pid.remote()
    pid = ray.get(actor.pid.remote(), timeout=20)
    assert ray.get(killer.remote(actor), timeout=20)
    wait_until(lambda: gone(pid), timeout=5, message="the killed actor's process to exit")


def test_actor_exits_once_its_last_handle_is_gone(actor_cluster, tmp_path):
    actor = Pid.remote()
    pid = ray.get(actor.pid.remote(), timeout=20)
    copy = pickle.loads(pickle.dumps(actor))  # a second handle in this process
    del actor
    assert ray.get(copy.pid.remote(), timeout=20) == pid  # still alive: a handle is left
    record = actor_record(copy)
    del copy
    wait_until(lambda: gone(pid), message="the unreferenced actor to exit")
    wait_until(lambda: actor_state_by_id(record["actor_id"]) == "DEAD")
    dead = list_actors(filters=[("actor_id", "=", record["actor_id"])])[0]
    assert dead["death_cause"] == ActorDeathReason.OUT_OF_SCOPE.value


def actor_state_by_id(actor_id: str) -> str | None:
    records = list_actors(filters=[("actor_id", "=", actor_id)])
    return records[0]["state"] if records else None


def test_pending_call_keeps_an_unreferenced_actor_until_it_returns(actor_cluster, tmp_path):
    @ray.remote
    class Slow:
        def pid(self):
            return os.getpid()

        def wait(self, gate):
            wait_for_file(gate)
            return "done"

    actor = Slow.remote()
    pid = ray.get(actor.pid.remote(), timeout=20)
    gate = str(tmp_path / "gate")
    result = actor.wait.remote(gate)
    del actor
    touch(gate)
    assert ray.get(result, timeout=20) == "done"
    wait_until(lambda: gone(pid), message="the actor to exit after its last call")


# -- errors ---------------------------------------------------------------------------------


def test_raising_constructor_fails_every_call_with_its_traceback(actor_cluster):
    @ray.remote
    class Broken:
        def __init__(self, setting):
            raise ValueError(f"bad setting {setting}")

        def ping(self):
            return "pong"

    @ray.remote
    def call_from_task(handle):
        try:
            ray.get(handle.ping.remote())
        except ActorDiedError as exc:
            return str(exc)
        return "no error"

    broken = Broken.remote(7)
    early = broken.ping.remote()  # submitted before the constructor ran
    refs = [early] + [broken.ping.remote() for _ in range(2)]
    for ref in refs:
        with pytest.raises(ActorDiedError) as info:
            ray.get(ref, timeout=20)
        text = str(info.value)
        assert info.value.reason is ActorDeathReason.CREATION_TASK_ERROR
        assert "error raised in its creation task" in text
        assert "Traceback" in text and "__init__" in text
        assert "ValueError: bad setting 7" in text
    assert "ValueError: bad setting 7" in ray.get(call_from_task.remote(broken), timeout=20)
    record = actor_record(broken)
    assert record["state"] == "DEAD"
    assert record["death_cause"] == ActorDeathReason.CREATION_TASK_ERROR.value
    assert "bad setting 7" in record["death_message"]


def test_raising_method_reaches_the_caller_and_the_actor_keeps_serving(actor_cluster):
    class Overdrawn(Exception):
        def __init__(self, amount):
            super().__init__(f"overdrawn by {amount}")
            self.amount = amount

    @ray.remote
    class Account:
        def __init__(self):
            self.balance = 0

        def deposit(self, amount):
            if amount < 0:
                raise ValueError("negative deposit")
            self.balance += amount
            return self.balance

        def withdraw(self, amount):
            if amount > self.balance:
                raise Overdrawn(amount - self.balance)
            self.balance -= amount
            return self.balance

    account = Account.remote()
    first = account.deposit.remote(10)
    bad = account.deposit.remote(-1)
    overdrawn = account.withdraw.remote(15)
    after = account.deposit.remote(5)
    assert ray.get(first, timeout=20) == 10
    with pytest.raises(ValueError, match="negative deposit") as info:
        ray.get(bad, timeout=20)
    assert isinstance(info.value, RayTaskError)
    assert "Account.deposit" in str(info.value)
    with pytest.raises(Overdrawn) as info:
        ray.get(overdrawn, timeout=20)
    assert info.value.amount == 5
    assert ray.get(after, timeout=20) == 15
    assert ray.get(account.withdraw.remote(15), timeout=20) == 0


# -- concurrency ------------------------------------------------------------------------------


def test_threaded_actor_runs_max_concurrency_calls_at_once(actor_cluster):
    @ray.remote(max_concurrency=4)
    class Threaded:
        def __init__(self):
            self.lock = threading.Lock()
            self.inside = 0
            self.peak = 0
            self.barrier = threading.Barrier(4, timeout=GATE_TIMEOUT_S)

        def enter(self):
            with self.lock:
                self.inside += 1
                self.peak = max(self.peak, self.inside)
            self.barrier.wait()  # returns only once four calls are inside together
            with self.lock:
                self.inside -= 1
            return threading.get_ident()

        def peak_inside(self):
            return self.peak

    actor = Threaded.remote()
    threads = ray.get([actor.enter.remote() for _ in range(8)], timeout=60)
    assert len(set(threads)) >= 4
    assert ray.get(actor.peak_inside.remote(), timeout=20) == 4  # never more than four


def test_async_actor_runs_calls_concurrently_on_its_loop(actor_cluster):
    @ray.remote
    class Gathering:
        def __init__(self):
            self.inside = 0
            self.peak = 0
            self.all_in = asyncio.Event()

        async def enter(self, expected):
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            if self.inside == expected:
                self.all_in.set()
            await asyncio.wait_for(self.all_in.wait(), GATE_TIMEOUT_S)
            self.inside -= 1
            return threading.get_ident()

        def peak_inside(self):  # a sync method of an async actor runs on the loop too
            return self.peak, threading.get_ident()

    actor = Gathering.remote()
    loops = ray.get([actor.enter.remote(10) for _ in range(10)], timeout=60)
    peak, thread = ray.get(actor.peak_inside.remote(), timeout=20)
    assert peak == 10
    assert set(loops) == {thread}  # one event loop thread ran them all


def test_async_actor_respects_max_concurrency(actor_cluster):
    """Regression: max_concurrency used to be ignored for async actors."""

    @ray.remote(max_concurrency=2)
    class Limited:
        def __init__(self):
            self.inside = 0
            self.peak = 0

        async def enter(self):
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            # Wait until a third call is inside (a violation), or give up after half a second
            # (the limit holds): the peak, not the time, is what the test checks.
            deadline = time.monotonic() + 0.5
            while self.inside < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            self.inside -= 1
            return self.peak

    actor = Limited.remote()
    assert max(ray.get([actor.enter.remote() for _ in range(6)], timeout=60)) == 2


def test_object_refs_are_awaitable_in_async_actors(actor_cluster):
    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Source:
        def value(self, x):
            return x + 1000

    @ray.remote
    class Awaiter:
        async def total(self, refs):  # refs inside a list arrive unresolved
            return sum(await asyncio.gather(*refs))

        async def square_of(self, x):
            return await square.remote(x)

        async def from_actor(self, source, x):
            return await source.value.remote(x)

    awaiter = Awaiter.remote()
    assert ray.get(awaiter.total.remote([ray.put(i) for i in range(10)]), timeout=20) == 45
    assert ray.get([awaiter.square_of.remote(i) for i in range(5)], timeout=30) == [
        0, 1, 4, 9, 16]
    assert ray.get(awaiter.from_actor.remote(Source.remote(), 1), timeout=20) == 1001


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_queued_task_never_runs(actor_cluster, tmp_path):
    @ray.remote
    def hold(started, gate):
        touch(started)
        wait_for_file(gate)
        return "held"

    @ray.remote
    def mark(path):
        touch(path)
        return "ran"

    gate = str(tmp_path / "gate")
    started = [str(tmp_path / f"started{i}") for i in range(NUM_CPUS)]
    holders = [hold.remote(path, gate) for path in started]
    wait_until(lambda: all(os.path.exists(p) for p in started),
               message="every CPU to be taken")
    marker = str(tmp_path / "marker")
    queued = mark.remote(marker)
    ray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        ray.get(queued, timeout=20)
    touch(gate)
    assert ray.get(holders, timeout=30) == ["held"] * NUM_CPUS
    assert ray.get(mark.remote(str(tmp_path / "after")), timeout=20) == "ran"
    assert not os.path.exists(marker)
    cpus_back()


def test_cancel_running_task_interrupts_it(actor_cluster, tmp_path):
    @ray.remote
    def spin(started, interrupted):
        touch(started)
        try:
            wait_for_file(started + ".never")
        except KeyboardInterrupt:
            touch(interrupted)
            raise
        return "finished"

    started, interrupted = str(tmp_path / "started"), str(tmp_path / "interrupted")
    ref = spin.remote(started, interrupted)
    wait_until(lambda: os.path.exists(started), message="the task to start")
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=20)
    assert os.path.exists(interrupted)
    cpus_back()


def test_force_cancel_kills_the_worker(actor_cluster, tmp_path):
    @ray.remote
    def stubborn(pid_file):
        with open(pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pid_file + ".tmp", pid_file)
        while True:  # swallows every KeyboardInterrupt
            try:
                wait_for_file(pid_file + ".never")
            except KeyboardInterrupt:
                continue

    pid_file = str(tmp_path / "pid")
    ref = stubborn.remote(pid_file)
    wait_until(lambda: os.path.exists(pid_file), message="the task to start")
    with open(pid_file) as f:
        pid = int(f.read())
    ray.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=20)
    wait_until(lambda: gone(pid), message="the force-cancelled worker to exit")
    cpus_back()


@pytest.mark.parametrize("recursive", [True, False])
def test_cancel_parent_task_cancels_its_children_if_recursive(actor_cluster, tmp_path,
                                                               recursive):
    @ray.remote
    def child(started, interrupted, gate, finished):
        touch(started)
        try:
            wait_for_file(gate)
        except KeyboardInterrupt:
            touch(interrupted)
            raise
        touch(finished)
        return "child done"

    @ray.remote
    def parent(*paths):
        return ray.get(child.remote(*paths))

    started, interrupted, gate, finished = (
        str(tmp_path / name) for name in ("started", "interrupted", "gate", "finished"))
    ref = parent.remote(started, interrupted, gate, finished)
    wait_until(lambda: os.path.exists(started), message="the child task to start")
    ray.cancel(ref, recursive=recursive)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=20)
    if recursive:
        wait_until(lambda: os.path.exists(interrupted), message="the child to be interrupted")
    else:
        touch(gate)  # the child was left running: it finishes normally
        wait_until(lambda: os.path.exists(finished), message="the child to finish")
        assert not os.path.exists(interrupted)
    cpus_back()


def test_cancel_actor_calls(actor_cluster, tmp_path):
    @ray.remote
    class Worker:
        def __init__(self):
            self.done = []

        def run(self, name, started, gate):
            touch(started)
            wait_for_file(gate)
            self.done.append(name)
            return name

        def record(self, name):
            self.done.append(name)
            return name

        def history(self):
            return self.done

    @ray.remote
    def value_after(gate, value):
        wait_for_file(gate)
        return value

    actor = Worker.remote()
    gate = str(tmp_path / "gate")
    # A call waiting for its argument holds back the calls behind it; cancelling it releases
    # them, and it never runs.
    queued = actor.record.remote(value_after.remote(gate, "queued"))
    behind = actor.record.remote("behind")
    ray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        ray.get(queued, timeout=20)
    assert ray.get(behind, timeout=20) == "behind"
    touch(gate)

    started = str(tmp_path / "started")
    running = actor.run.remote("running", started, str(tmp_path / "never"))
    wait_until(lambda: os.path.exists(started), message="the call to start")
    ray.cancel(running)  # a running call of a sync actor gets KeyboardInterrupt
    with pytest.raises(TaskCancelledError):
        ray.get(running, timeout=20)
    assert ray.get(actor.record.remote("after"), timeout=20) == "after"
    assert ray.get(actor.history.remote(), timeout=20) == ["behind", "after"]
    with pytest.raises(ValueError, match="force=True is not supported for actor tasks"):
        ray.cancel(actor.record.remote("x"), force=True)


def test_cancelled_queued_actor_call_fails_without_waiting_for_the_running_one(
        actor_cluster, tmp_path):
    @ray.remote
    class Busy:
        def run(self, started, gate):
            touch(started)
            wait_for_file(gate)

        def record(self):
            return "ran"

    actor = Busy.remote()
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    running = actor.run.remote(started, gate)
    queued = actor.record.remote()
    wait_until(lambda: os.path.exists(started), message="the first call to start")
    ray.cancel(queued)
    try:
        with pytest.raises(TaskCancelledError):
            ray.get(queued, timeout=3)
    finally:
        touch(gate)
        ray.get(running, timeout=20)


def test_cancel_async_actor_call_cancels_its_coroutine(actor_cluster, tmp_path):
    @ray.remote
    class AsyncWorker:
        def __init__(self):
            self.cancelled = 0

        async def wait(self, started):
            touch(started)
            try:
                await wait_for_file_async(started + ".never")
            except asyncio.CancelledError:
                self.cancelled += 1
                raise

        async def ping(self):
            return "pong"

        def cancelled_count(self):
            return self.cancelled

    actor = AsyncWorker.remote()
    started = str(tmp_path / "started")
    ref = actor.wait.remote(started)
    wait_until(lambda: os.path.exists(started), message="the async call to start")
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=20)
    assert ray.get(actor.cancelled_count.remote(), timeout=20) == 1
    assert ray.get(actor.ping.remote(), timeout=20) == "pong"


# -- runtime context and resources ------------------------------------------------------------


def test_runtime_context_in_tasks_and_actors(actor_cluster):
    def describe():
        ctx = ray.get_runtime_context()
        return {"job": ctx.get_job_id(), "job_prop": ctx.job_id, "node": ctx.get_node_id(),
                "worker": ctx.get_worker_id(), "task": ctx.get_task_id(),
                "actor": ctx.get_actor_id(), "namespace": ctx.namespace,
                "resources": ctx.get_assigned_resources(), "pid": os.getpid(),
                "as_dict": ctx.get()}

    @ray.remote(num_cpus=2)
    def in_task():
        return describe()

    @ray.remote
    class InActor:
        def context(self):
            return describe()

    driver = describe()
    assert driver["actor"] is None and driver["namespace"] == ""
    assert len(driver["job"]) == 8 and driver["job"] == driver["job_prop"]
    assert driver["node"] == actor_cluster["node_id"]

    task = ray.get(in_task.remote(), timeout=20)
    assert task["job"] == driver["job"] and task["node"] == driver["node"]
    assert task["worker"] != driver["worker"] and task["pid"] != driver["pid"]
    assert task["task"] and task["actor"] is None
    assert task["resources"] == {"CPU": 2.0}
    assert set(task["as_dict"]) >= {"job_id", "node_id", "task_id", "worker_id", "namespace"}
    assert "actor_id" not in task["as_dict"]  # as in Ray: only the ids that apply

    actor = InActor.remote()
    first, second = ray.get([actor.context.remote(), actor.context.remote()], timeout=20)
    assert first["actor"] == actor._actor_id.hex() == second["actor"]
    assert first["task"] and first["task"] != second["task"]  # each call is a task
    assert first["job"] == driver["job"] and first["worker"] == second["worker"]


def test_actor_methods_see_the_actors_resources(actor_cluster):
    """Regression: methods used to see {} and [] (the call's spec, not the actor's)."""

    @ray.remote(num_cpus=1, num_gpus=1)
    class OnGpu:
        def resources(self):
            ctx = ray.get_runtime_context()
            return ctx.get_assigned_resources(), ray.get_gpu_ids()

    actor = OnGpu.remote()
    seen = ray.get(actor.resources.remote(), timeout=20)
    del actor  # not kept alive by the failure's traceback: later tests need the GPU
    assert seen == ({"CPU": 1.0, "GPU": 1.0}, [0])


def test_get_gpu_ids_in_tasks(actor_cluster):
    @ray.remote(num_gpus=1)
    def with_gpu():
        return ray.get_gpu_ids()

    @ray.remote
    def without_gpu():
        return ray.get_gpu_ids()

    assert ray.get(with_gpu.remote(), timeout=20) == [0]
    assert ray.get(without_gpu.remote(), timeout=20) == []
    assert ray.get_gpu_ids() == []  # the driver holds none


def test_get_gpu_ids_with_a_fractional_gpu(actor_cluster):
    @ray.remote(num_gpus=0.5)
    def half_gpu():
        return ray.get_gpu_ids()

    assert ray.get(half_gpu.remote(), timeout=20) == [0]


def test_nodes_and_resource_queries(actor_cluster, tmp_path):
    nodes = ray.nodes()
    assert len(nodes) == 1
    node = nodes[0]
    assert {"NodeID", "Alive", "NodeManagerAddress", "NodeManagerHostname", "NodeManagerPort",
            "ObjectStoreSocketName", "Resources"} <= set(node)
    assert node["Alive"] is True and node["NodeID"] == ray.get_runtime_context().get_node_id()
    assert node["Resources"]["CPU"] == NUM_CPUS

    total = ray.cluster_resources()
    assert total["CPU"] == NUM_CPUS and total["GPU"] == 1
    assert {"memory", "object_store_memory", f"node:{node['NodeManagerAddress']}"} <= set(total)
    cpus_back()
    assert set(ray.available_resources()) <= set(total)

    @ray.remote(num_cpus=2, num_gpus=1)
    def hold(started, gate):
        touch(started)
        wait_for_file(gate)

    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    ref = hold.remote(started, gate)
    wait_until(lambda: os.path.exists(started), message="the task to start")
    available = ray.available_resources()
    assert available["CPU"] == NUM_CPUS - 2
    assert "GPU" not in available  # exhausted resources are left out, as in Ray
    touch(gate)
    ray.get(ref, timeout=20)
    cpus_back()

    # An actor asking for a CPU holds it for its lifetime; a default actor holds none.
    default, one_cpu = Pid.remote(), Pid.options(num_cpus=1).remote()
    ray.get([default.pid.remote(), one_cpu.pid.remote()], timeout=20)
    wait_until(lambda: ray.available_resources().get("CPU") == NUM_CPUS - 1)
    del default, one_cpu
    cpus_back()


# -- ActorPool ------------------------------------------------------------------------------


@ray.remote
class PoolWorker:
    def double(self, value, gate=None):
        if gate is not None:
            wait_for_file(gate)
        return 2 * value

    def pid(self):
        return os.getpid()

    def fail(self, value):
        raise ValueError(f"cannot do {value}")


def test_actor_pool_map_and_map_unordered(actor_cluster):
    pool = ActorPool([PoolWorker.remote() for _ in range(3)])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(20))) == [
        2 * v for v in range(20)]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(20))) == [
        2 * v for v in range(20)]
    pids = set(pool.map(lambda a, _: a.pid.remote(), range(9)))
    assert len(pids) == 3  # the work was spread over every actor
    assert list(pool.map(lambda a, v: a.double.remote(v), [])) == []


def test_actor_pool_submit_get_next_and_timeouts(actor_cluster, tmp_path):
    first, second = PoolWorker.remote(), PoolWorker.remote()
    pool = ActorPool([first, second])
    gate = str(tmp_path / "gate")
    assert pool.has_free() and not pool.has_next()
    pool.submit(lambda a, v: a.double.remote(v, gate), 0)  # blocks until the gate opens
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)  # waits for a free actor
    assert not pool.has_free() and pool.has_next()
    assert pool.get_next_unordered(timeout=20) == 2  # 1 finished first; 0 is gated
    assert pool.get_next_unordered(timeout=20) == 4  # 2 ran on the actor 1 freed
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.05)
    assert pool.has_next()  # a plain timeout keeps the submission
    touch(gate)
    assert pool.get_next(timeout=20) == 0
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    with pytest.raises(StopIteration):
        pool.get_next_unordered()

    # ignore_if_timedout drops the submission and frees its actor
    gate2 = str(tmp_path / "gate2")
    pool.submit(lambda a, v: a.double.remote(v, gate2), 5)
    with pytest.raises(TimeoutError, match="ignored"):
        pool.get_next(timeout=0.05, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()
    touch(gate2)

    # results come back in submission order with get_next
    for value in range(6):
        pool.submit(lambda a, v: a.double.remote(v), value)
    assert [pool.get_next(timeout=20) for _ in range(6)] == [0, 2, 4, 6, 8, 10]


def test_actor_pool_errors_membership(actor_cluster):
    first, second = PoolWorker.remote(), PoolWorker.remote()
    pool = ActorPool([first, second])
    pool.submit(lambda a, v: a.fail.remote(v), 1)
    with pytest.raises(ValueError, match="cannot do 1"):
        pool.get_next(timeout=20)
    assert pool.has_free()  # the actor came back despite the error
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2])) == [2, 4]

    popped = pool.pop_idle()
    assert popped in (first, second)
    other = pool.pop_idle()
    assert {popped, other} == {first, second}
    assert pool.pop_idle() is None and not pool.has_free()
    pool.submit(lambda a, v: a.double.remote(v), 21)  # no actor: it waits for one
    assert not pool.has_next()
    pool.push(popped)  # the waiting submission starts on it at once
    assert pool.has_next() and pool.get_next(timeout=20) == 42
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(popped)
    pool.push(other)
    assert list(pool.map_unordered(lambda a, v: a.double.remote(v), [3])) == [6]


# -- Queue ----------------------------------------------------------------------------------


def test_queue_basics(actor_cluster):
    q = Queue(maxsize=3)
    assert q.empty() and not q.full() and q.qsize() == 0 and len(q) == 0
    q.put(1)
    q.put_nowait(2)
    q.put(3, timeout=1)
    assert q.full() and q.size() == 3
    with pytest.raises(Full):
        q.put_nowait(4)
    with pytest.raises(Full):
        q.put(4, timeout=0.05)
    assert issubclass(Full, stdlib_queue.Full) and issubclass(Empty, stdlib_queue.Empty)
    assert [q.get(), q.get_nowait(), q.get(timeout=1)] == [1, 2, 3]
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(stdlib_queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(ValueError):
        q.get(timeout=-1)

    q.put_nowait_batch([1, 2])
    with pytest.raises(Full):
        q.put_nowait_batch([3, 4])  # all or nothing
    assert q.qsize() == 2
    with pytest.raises(Empty):
        q.get_nowait_batch(3)  # all or nothing
    assert q.get_nowait_batch(2) == [1, 2]
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)

    record = actor_record(q.actor)
    q.shutdown()
    wait_until(lambda: actor_state_by_id(record["actor_id"]) == "DEAD")
    with pytest.raises(RuntimeError):
        q.put(1)


def test_queue_between_tasks_and_actors(actor_cluster):
    q = Queue(maxsize=2)

    @ray.remote
    def produce(q, items):
        for item in items:
            q.put(item)  # blocks while the queue is full
        return len(items)

    @ray.remote
    def consume(q, n):
        return [q.get(timeout=GATE_TIMEOUT_S) for _ in range(n)]

    @ray.remote
    class AsyncConsumer:
        async def take(self, q, n):
            return [await q.get_async(timeout=GATE_TIMEOUT_S) for _ in range(n)]

    consumer = consume.remote(q, 10)  # blocked on an empty queue at first
    producer = produce.remote(q, list(range(10)))
    assert ray.get(consumer, timeout=30) == list(range(10))
    assert ray.get(producer, timeout=30) == 10

    taker = AsyncConsumer.remote().take.remote(q, 3)
    for item in "abc":
        q.put(item, timeout=GATE_TIMEOUT_S)
    assert ray.get(taker, timeout=30) == ["a", "b", "c"]
    assert q.empty()


def test_queue_actor_options(actor_cluster):
    q = Queue(actor_options={"name": "shared-queue"})
    q.put("hello")
    found = ray.get_actor("shared-queue")
    assert found == q.actor
    assert ray.get(found.qsize.remote(), timeout=20) == 1
    assert q.get() == "hello"
    q.shutdown()


# -- list_actors ------------------------------------------------------------------------------


def test_list_actors_follows_the_life_of_an_actor(actor_cluster, tmp_path):
    @ray.remote
    class SlowStart:
        def __init__(self, gate):
            wait_for_file(gate)

        def pid(self):
            return os.getpid()

    gate = str(tmp_path / "gate")
    actor = SlowStart.options(name="slow-start").remote(gate)
    record = actor_record(actor)
    assert record["state"] == "PENDING_CREATION"
    assert {"actor_id", "class_name", "state", "name", "namespace", "pid", "node_id", "job_id",
            "num_restarts", "death_cause"} <= set(record)
    assert record["class_name"].endswith("SlowStart") and record["name"] == "slow-start"
    assert record["namespace"] == "" and record["num_restarts"] == 0
    assert record["job_id"] == ray.get_runtime_context().get_job_id()
    assert record.state == "PENDING_CREATION"  # attribute access too
    touch(gate)
    pid = ray.get(actor.pid.remote(), timeout=20)
    wait_until(lambda: actor_state(actor) == "ALIVE")
    record = actor_record(actor)
    assert record["pid"] == pid and record["death_cause"] is None
    assert record["node_id"] == ray.get_runtime_context().get_node_id()
    alive = list_actors(filters=[("state", "=", "ALIVE"), ("name", "=", "slow-start")])
    assert [r["actor_id"] for r in alive] == [actor._actor_id.hex()]
    ray.kill(actor)
    wait_until(lambda: actor_state(actor) == "DEAD")
    assert actor_record(actor)["death_cause"] == ActorDeathReason.KILLED.value
    assert len(list_actors(limit=1)) == 1
    assert actor_record(actor)["actor_id"] not in {
        r["actor_id"] for r in list_actors(filters=[("state", "!=", "DEAD")])}
