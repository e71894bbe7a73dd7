"""The Ray backend's decisions without Ray: backend choice, cell bookkeeping and cancel plans,
output line batching, the import rewrite, and Ray's state records in cellfleet's shapes."""

from __future__ import annotations

import ast

import pytest

from cellfleet.kernel.backends import choose, default_backend
from cellfleet.kernel.backends.ray_backend import CancelPlan, ImportRewriter, SubmissionBook
from cellfleet.kernel.backends.ray_output import BATCH_S, BURST_LINES, LineBuffer
from cellfleet.kernel.backends.ray_state import RayTranslator, task_record


def test_addresses_choose_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELLFLEET_BACKEND", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert choose(None) == ("cellfleet", None)
    assert choose("127.0.0.1:6380") == ("cellfleet", "127.0.0.1:6380")
    assert choose("ray://head:10001") == ("ray", "ray://head:10001")
    assert choose("ray:auto") == ("ray", "auto")
    assert choose("ray:10.0.0.1:6379") == ("ray", "10.0.0.1:6379")
    assert choose("cellfleet:local", "ray") == ("cellfleet", None)
    assert choose("local", "ray") == ("ray", None)
    monkeypatch.setenv("CELLFLEET_BACKEND", "ray")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert choose(None) == ("ray", "127.0.0.1:6379")
    monkeypatch.setenv("CELLFLEET_BACKEND", "spark")
    with pytest.raises(ValueError, match="use one of cellfleet, ray"):
        default_backend()


def test_the_book_maps_tasks_to_cells_and_forgets_finished_ones() -> None:
    book = SubmissionBook(max_tasks=3)
    book.submitted("cell-a", "t1", "ref1", False)
    book.submitted("cell-a", "t2", "ref2", True)
    book.submitted("cell-b", "t3", "ref3", False)
    assert book.tag_of("t2") == "cell-a" and book.tag_of("unknown") == ""
    book.finished("t1")
    assert [ref for ref, _ in book.plan("cell-a").refs] == ["ref2"]
    book.submitted("cell-b", "t4", "ref4", False)  # over the bound: t1's entry goes first
    assert book.tag_of("t1") == "" and book.tag_of("t4") == "cell-b"


def test_a_cell_interrupted_again_is_forced_at_once() -> None:
    book = SubmissionBook()
    book.submitted("c", "t1", "normal", False)
    book.submitted("c", "t2", "actor-call", True)
    first = book.plan("c")
    assert first.first(force=False) == [("normal", False), ("actor-call", False)]
    assert first.escalate({"normal", "actor-call"}) == [("normal", True)]  # never an actor's
    assert first.escalate(set()) == []
    second = book.plan("c")
    assert second.first(force=False) == [("normal", True), ("actor-call", False)]
    assert second.escalate({"normal"}) == []
    assert CancelPlan([], again=False).first(True) == []


def test_lines_go_one_by_one_then_in_batches_under_a_flood() -> None:
    buffer = LineBuffer()
    assert buffer.write("hello", 0.0) == []  # no newline yet
    assert buffer.write(" world\nnext", 0.0) == ["hello world"]
    assert buffer.write("\n:task_name:f\n", 0.0) == ["next"]  # Ray's own marker lines: dropped
    now = 0.5
    for i in range(BURST_LINES - 2):
        assert buffer.write(f"{i}\n", now) == [f"{i}"]
    assert buffer.write("held\n", now) == []  # over the burst: held for the flusher
    assert not buffer.due(now) and buffer.due(now + BATCH_S)
    assert buffer.write("more\n", now + BATCH_S) == ["held", "more"]
    assert buffer.write("new second\n", 2.0) == ["new second"]


def _rewritten(source: str) -> str:
    return ast.unparse(ImportRewriter().visit(ast.parse(source)))


def test_cellfleet_imports_become_ray_imports() -> None:
    assert _rewritten("import cellfleet as ray") == "import ray as ray"
    assert _rewritten("import cellfleet") == "import ray as cellfleet"
    assert _rewritten("from cellfleet import remote, get") == "from ray import remote, get"
    assert _rewritten("from cellfleet.util import ActorPool") == "from ray.util import ActorPool"
    assert _rewritten("from cellfleet.widgets import TaskGraph") == \
        "from cellfleet.widgets import TaskGraph"  # the kernel's own parts stay cellfleet's
    assert _rewritten("import numpy as np") == "import numpy as np"


RAY_TASK = {
    "task_id": "16310a0f0a45af5cffffffffffffffffffffffff01000000", "attempt_number": 0,
    "name": "f", "state": "FINISHED", "job_id": "01000000", "actor_id": None,
    "type": "NORMAL_TASK", "func_or_class_name": "f",
    "parent_task_id": "ffffffffffffffffffffffffffffffffffffffff01000000",
    "node_id": "09f4", "worker_id": "5907", "worker_pid": 2790, "error_type": None,
    "required_resources": {"CPU": 1.0},
    "events": [{"state": "PENDING_ARGS_AVAIL", "created_ms": 1000.0},
               {"state": "PENDING_NODE_ASSIGNMENT", "created_ms": 1004.0},
               {"state": "SUBMITTED_TO_WORKER", "created_ms": 1010.0},
               {"state": "RUNNING", "created_ms": 1020.0},
               {"state": "RUNNING_IN_RAY_GET", "created_ms": 1030.0},
               {"state": "FINISHED", "created_ms": 1500.0}],
    "start_time_ms": 1020, "end_time_ms": 1500, "error_message": None,
}


def test_a_ray_task_is_a_cellfleet_record() -> None:
    record = task_record(RAY_TASK)
    assert record["state"] == "FINISHED" and record["parent_task_id"] is None
    assert record["events"]["RUNNING"] == 1.02 and record["events"]["FINISHED"] == 1.5
    assert record["returns"] == [RAY_TASK["task_id"] + "01000000"]
    assert record["args"] == [] and record["tag"] is None
    cancelled = task_record({**RAY_TASK, "state": "FAILED", "error_type": "TASK_CANCELLED"})
    assert cancelled["error_message"].startswith("TaskCancelledError")


def test_the_translator_gives_ray_a_change_cursor() -> None:
    translator = RayTranslator()
    running = {**RAY_TASK, "state": "RUNNING", "events": RAY_TASK["events"][:4]}
    other = {**RAY_TASK, "task_id": "ab" * 24, "name": "g"}
    translator.add_tasks([running, other])
    first = translator.changes_since(0, 100)
    assert len(first["tasks"]) == 2
    translator.add_tasks([running, other])  # nothing moved: nothing new past the cursor
    assert translator.changes_since(first["cursor"], 100)["tasks"] == []
    translator.add_tasks([RAY_TASK])
    moved = translator.changes_since(first["cursor"], 100)
    assert [t["state"] for t in moved["tasks"]] == ["FINISHED"]
    assert translator.summary()["summary"]["f"]["state_counts"] == {"FINISHED": 1}
    assert sorted(translator.groups({})["groups"]) == [["01000000", None, "f", {"FINISHED": 1}],
                                                       ["01000000", None, "g", {"FINISHED": 1}]]
    assert translator.groups({"tag": "a cell"})["groups"] == []  # Ray has no cells
    assert [r["name"] for r in translator.records({"name": "g"}, 10)] == ["g"]


def test_nodes_estimate_free_cpus_and_store_use() -> None:
    translator = RayTranslator()
    translator.add_tasks([{**RAY_TASK, "state": "RUNNING", "node_id": "aa" * 28}])
    node = {"node_id": "aa" * 28, "node_ip": "127.0.0.1", "state": "ALIVE",
            "is_head_node": True, "resources_total": {"CPU": 2.0, "node:127.0.0.1": 1.0,
                                                      "object_store_memory": 1e9}}
    translator.node_records([node])
    translator.set_objects([{"object_id": "o1", "object_size": 300, "ip": "127.0.0.1",
                             "type": "DRIVER", "call_site": "disabled"}])
    (record,) = translator.node_records([node])
    assert record["node_id"] == bytes.fromhex("aa" * 28) and record["alive"]
    assert record["available"]["CPU"] == 1.0 and "node:127.0.0.1" not in record["resources"]
    assert record["store"]["used"] == 300 and record["store"]["num_objects"] == 1
