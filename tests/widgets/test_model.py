"""The graph model: grouping, lineage, replay, scope, bounds (no cluster)."""

from __future__ import annotations

import pytest

from cellfleet.gcs.task_events import TaskEventStore
from cellfleet.widgets.model import GraphModel, state_at


def _submit(tid: str, name: str, *, args=(), job=1, tag="cell-a", parent="", ts=1.0,
            actor=None, kind="NORMAL_TASK") -> list:
    return [bytes.fromhex(tid), "PENDING_ARGS_AVAIL", ts, {
        "name": name, "func_or_class_name": name, "job_id": job, "tag": tag,
        "parent_task_id": parent, "args": list(args), "returns": [tid + "01"],
        "actor_id": actor, "type": kind, "owner": "127.0.0.1:1"}]


def _tid(i: int) -> str:
    return f"{i:032x}"


def _fan(model: GraphModel, n: int) -> list[str]:
    """n ``stage1`` tasks whose results go into one ``combine``."""
    ids = [_tid(i) for i in range(n)]
    model.add_events([_submit(t, "stage1", ts=1.0 + i) for i, t in enumerate(ids)])
    total = _tid(10_000)
    model.add_events([_submit(total, "combine", args=[t + "01" for t in ids], ts=100.0)])
    return [*ids, total]


def test_small_graph_shows_every_task_with_data_edges():
    model = GraphModel("all")
    ids = _fan(model, 3)
    view = model.view()
    assert not view["grouped"]
    assert {n["id"] for n in view["nodes"]} == set(ids)
    assert {(e["s"], e["t"]) for e in view["edges"]} == {(t, ids[-1]) for t in ids[:3]}
    assert view["legend"] == {"PENDING_ARGS_AVAIL": 4}


def test_many_tasks_collapse_into_group_nodes_that_expand():
    model = GraphModel("all", max_nodes=50, expand_limit=20)
    ids = _fan(model, 120)
    model.add_events([[bytes.fromhex(t), "FINISHED", 200.0, {}] for t in ids[:100]])
    model.add_events([[bytes.fromhex(ids[100]), "RUNNING", 200.0, {}]])
    view = model.view()
    assert view["grouped"]
    groups = {n["key"]: n for n in view["nodes"]}
    stage = groups["stage1"]
    assert stage["count"] == 120 and stage["states"]["FINISHED"] == 100
    assert stage["label"] == "stage1 × 120 · 19 waiting · 1 running · 100 done"
    assert stage["state"] == "RUNNING"
    assert [(e["s"], e["t"], e["n"]) for e in view["edges"]] == [
        ("g:stage1", "g:combine", 120)]
    opened = model.view({"stage1"})
    tasks = [n for n in opened["nodes"] if n["kind"] == "task"]
    more = [n for n in opened["nodes"] if n["kind"] == "more"]
    assert len(tasks) == 20 and {t["id"] for t in tasks} == set(ids[100:120])
    assert more[0]["count"] == 100
    assert opened["expanded"] == ["stage1"]
    # each shown task and the "more" node feed the combine group
    assert {e["s"] for e in opened["edges"]} == {t["id"] for t in tasks} | {more[0]["id"]}


def test_lineage_is_transitive_and_stops_at_the_roots():
    model = GraphModel("all")
    a, b, c, d = (_tid(i) for i in range(4))
    model.add_events([_submit(a, "load"), _submit(b, "clean", args=[a + "01"]),
                      _submit(c, "train", args=[b + "01", "ff" * 20]), _submit(d, "other")])
    tasks, objects = model.upstream(c)
    assert tasks == {a, b}
    assert objects == {a + "01", b + "01", "ff" * 20}
    assert model.upstream(a) == (set(), set())


def test_replay_gives_the_states_at_a_moment():
    model = GraphModel("all")
    a, b = _tid(1), _tid(2)
    model.add_events([_submit(a, "f", ts=1.0), _submit(b, "f", ts=2.0)])
    model.add_events([[bytes.fromhex(a), "RUNNING", 3.0, {}],
                      [bytes.fromhex(a), "FINISHED", 5.0, {}]])
    assert model.replay(0.5) == {}
    assert model.replay(1.5) == {"PENDING_ARGS_AVAIL": 1}
    assert model.replay(4.0) == {"RUNNING": 1, "PENDING_ARGS_AVAIL": 1}
    assert model.replay(9.0) == {"FINISHED": 1, "PENDING_ARGS_AVAIL": 1}
    assert state_at(model.records[a], 3.5) == "RUNNING"
    assert (model.t0, model.t1) == (1.0, 5.0)


def test_out_of_order_events_keep_the_furthest_state():
    model = GraphModel("all")
    a = _tid(1)
    # the worker's RUNNING and the owner's FINISHED arrive before the submission
    model.add_events([[bytes.fromhex(a), "FINISHED", 3.0, {"end_time": 3.0}],
                      [bytes.fromhex(a), "RUNNING", 2.0, {"start_time": 2.0}]])
    assert model.total() == 0  # who submitted it is not known yet
    model.add_events([_submit(a, "f", ts=1.0)])
    (node,) = model.view()["nodes"]
    assert node["state"] == "FINISHED" and node["duration"] == 1.0
    assert model.legend() == {"FINISHED": 1}


def test_scopes_filter_by_cell_and_notebook():
    events = [_submit(_tid(1), "f", tag="cell-a", job=1), _submit(_tid(2), "g", tag="cell-b"),
              _submit(_tid(3), "h", job=2, tag="other")]
    cell = GraphModel("cell", tag="cell-a")
    notebook = GraphModel("notebook", job_id=1)
    everything = GraphModel("all")
    for model in (cell, notebook, everything):
        model.add_events(events)
    assert [n["label"] for n in cell.view()["nodes"]] == ["f"]
    assert sorted(n["label"] for n in notebook.view()["nodes"]) == ["f", "g"]
    assert everything.total() == 3
    assert list(cell.records) == [_tid(1)]  # the others' records are not kept
    cell.add_events([[bytes.fromhex(_tid(2)), "FINISHED", 9.0, {}]])
    assert list(cell.records) == [_tid(1)]
    with pytest.raises(ValueError, match="scope"):
        GraphModel("cells")
    with pytest.raises(ValueError, match="tag"):
        GraphModel("cell")


def test_actor_methods_sit_in_their_actor_and_child_tasks_link_to_the_parent():
    model = GraphModel("all")
    actor = "aa" * 8
    create, call, child = _tid(1), _tid(2), _tid(3)
    model.add_events([
        _submit(create, "Counter", actor=actor, kind="ACTOR_CREATION_TASK"),
        _submit(call, "Counter.incr", actor=actor, kind="ACTOR_TASK"),
        _submit(child, "nested", parent=call),
    ])
    view = model.view()
    assert view["actors"] == [{"id": actor, "label": "Counter"}]
    assert {"s": call, "t": child, "kind": "child", "n": 1} in view["edges"]


def test_records_are_bounded_and_counts_follow():
    model = GraphModel("all", max_tasks=100)
    model.add_events([_submit(_tid(i), "f") for i in range(250)])
    assert len(model.records) == 100 and model.total() == 100
    assert model.legend() == {"PENDING_ARGS_AVAIL": 100}


def test_records_from_the_gcs_cursor_merge_like_events():
    store = TaskEventStore()
    store.add_task_events([_submit(_tid(1), "f"), [bytes.fromhex(_tid(1)), "FINISHED", 2.0,
                                                   {"end_time": 2.0}]])
    model = GraphModel("all")
    model.add_records(store.changes_since(0, 10)["tasks"])
    (node,) = model.view()["nodes"]
    assert node["state"] == "FINISHED" and node["ev"] == {"PENDING_ARGS_AVAIL": 1.0,
                                                          "FINISHED": 2.0}


def test_cell_strip_model_and_render_counts_and_a_timeline():
    from cellfleet.kernel.cellstrip import StripModel, render_strip, render_summary

    store = TaskEventStore()  # the records the GCS pushes
    model = StripModel("cell-a")
    events = [_submit(_tid(i), "stage1") for i in range(3)] + [
        _submit(_tid(9), "other", tag="cell-b"), _submit(_tid(4), "combine")]
    store.add_task_events(events)
    model.add_records(store.changes_since(0, 100)["tasks"])
    cursor = store.seq
    store.add_task_events([[bytes.fromhex(_tid(i)), "FINISHED", 5.0, {
        "start_time": 2.0, "end_time": 5.0, "node_id": "ab" * 14, "worker_pid": 42}]
        for i in range(3)] + [[bytes.fromhex(_tid(4)), "FAILED", 6.0, {}]])
    model.add_records(store.changes_since(cursor, 100)["tasks"])
    assert model.total() == 4 and dict(model.counts["stage1"]) == {
        "PENDING_ARGS_AVAIL": 0, "FINISHED": 3}
    strip = render_strip(model, started=1.0, now=7.0)
    assert "<b>stage1</b> × 3" in strip and "3 done" in strip and "1 failed" in strip
    assert "<svg" in strip and "other" not in strip
    assert render_summary(model, 6.0) == ("cellfleet: 4 tasks (stage1 ×3, combine ×1) in 6.0 s"
                                          " · 1 failed")


def test_counts_from_the_gcs_groups_and_only_the_newest_records_kept():
    store = TaskEventStore()
    model = GraphModel("notebook", job_id=1, max_nodes=20, expand_limit=10)
    store.add_task_events([_submit(_tid(i), "stage1") for i in range(500)] +
                          [_submit(_tid(900), "stage1", job=2)])
    update = store.view_update(0, per_job=30)
    model.add_groups(update["groups"], update["cursor"])
    model.add_records(update["tasks"])
    assert model.counted and model.total() == 500  # job 2's task is another notebook's
    assert len(model.members["stage1"]) == 20 and len(model.records) == 20  # trimmed
    view = model.view()
    (group,) = view["nodes"]
    assert group["kind"] == "group" and group["count"] == 500
    assert view["legend"] == {"PENDING_ARGS_AVAIL": 500}
    opened = model.view({"stage1"})
    assert [n["kind"] for n in opened["nodes"]].count("task") == 10
    (more,) = [n for n in opened["nodes"] if n["kind"] == "more"]
    assert more["count"] == 490
    # an older answer (a view's history read after a newer push) does not win
    store.add_task_events([[bytes.fromhex(_tid(i)), "FINISHED", 3.0, {}] for i in range(500)])
    newer = store.view_update(update["cursor"])
    model.add_groups(newer["groups"], newer["cursor"])
    model.add_groups(update["groups"], update["cursor"])
    assert model.legend() == {"FINISHED": 500}


def test_cell_strip_takes_its_counts_from_the_gcs_groups():
    from cellfleet.kernel.cellstrip import MAX_SPANS, StripModel, render_summary

    store = TaskEventStore()
    store.add_task_events([_submit(_tid(i), "stage1") for i in range(MAX_SPANS + 50)] +
                          [_submit(_tid(5000), "other", tag="cell-b")])
    update = store.view_update(0, per_job=MAX_SPANS + 100)
    model = StripModel("cell-a")
    model.add_groups(update["groups"], update["cursor"])
    model.add_records(update["tasks"])
    assert model.total() == MAX_SPANS + 50 and len(model.records) == MAX_SPANS
    assert render_summary(model, 1.0) == f"cellfleet: {MAX_SPANS + 50} tasks " \
                                         f"(stage1 ×{MAX_SPANS + 50}) in 1.0 s"


def test_object_sizes_reach_edges_and_details():
    model = GraphModel("all")
    a, b = _tid(1), _tid(2)
    model.add_events([_submit(a, "make"), [bytes.fromhex(a), "FINISHED", 2.0,
                                           {"return_sizes": [1234]}],
                      _submit(b, "use", args=[a + "01", _tid(3) + "01"])])
    nodes = {n["id"]: n for n in model.view()["nodes"]}
    assert nodes[a]["return_sizes"] == [1234]
    assert nodes[b]["arg_sizes"] == [1234, None]  # the second is nobody's in the view
    (edge,) = model.view()["edges"]
    assert edge["bytes"] == 1234 and edge["obj"] == a + "01"


def test_a_cancelled_task_says_so_with_its_node_and_attempt():
    model = GraphModel("all")
    a, b, c = _tid(1), _tid(2), _tid(3)
    model.add_events([_submit(a, "slow"), _submit(b, "bad"), _submit(c, "flaky"),
                      [bytes.fromhex(a), "FAILED", 2.0, {"error_message": "KeyboardInterrupt",
                                                         "node_id": "ab" * 14}],
                      [bytes.fromhex(b), "FAILED", 2.0, {"error_message": "ValueError: no"}],
                      [bytes.fromhex(c), "PENDING_NODE_ASSIGNMENT", 2.0, {"attempt_number": 2}],
                      [bytes.fromhex(c), "FINISHED", 3.0, {"node_id": "cd" * 14}]])
    nodes = {n["id"]: n for n in model.view()["nodes"]}
    assert nodes[a]["cancelled"] and nodes[a]["error"].startswith("TaskCancelledError")
    assert "KeyboardInterrupt" not in nodes[a]["error"] and nodes[a]["node"] == "ab" * 14
    assert not nodes[b]["cancelled"] and nodes[b]["error"] == "ValueError: no"
    assert nodes[c]["attempt"] == 2 and nodes[c]["node"] == "cd" * 14
