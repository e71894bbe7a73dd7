"""The cellfleet kernel through a real kernel process (one per module, 2 CPUs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import free_port, wait_until

pytestmark = pytest.mark.integration


def test_kernel_info(kernel) -> None:
    msg_id = kernel.kc.kernel_info()
    reply = kernel.kc.get_shell_msg(timeout=10)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kernel.kc.get_shell_msg(timeout=10)
    content = reply["content"]
    assert content["status"] == "ok"
    assert content["implementation"] == "cellfleet"
    assert content["language_info"]["name"] == "python"
    assert "cellfleet" in content["banner"]


def test_cellfleet_is_in_the_namespace_and_tasks_run(kernel) -> None:
    cell = kernel.execute(
        "@cellfleet.remote\n"
        "def double(x):\n"
        "    print('doubling', x)\n"
        "    return 2 * x\n"
        "cellfleet.get([double.remote(i) for i in range(3)])"
    )
    assert cell.ok, cell.traceback_text()
    assert cell.result == "[0, 2, 4]"
    assert "doubling 2" in cell.stdout
    assert "(double pid=" in cell.stdout


def test_remote_ships_reads_and_pulls_assignments(kernel) -> None:
    assert kernel.execute("data = [1, 2, 3]\nfactor = 10\nunused = object()").ok
    cell = kernel.execute(
        "%%remote\n"
        "import os\n"
        "scaled = [x * factor for x in data]\n"
        "worker_pid = os.getpid()\n"
        "sum(scaled)"
    )
    assert cell.ok, cell.traceback_text()
    assert cell.result == "60"
    check = kernel.execute("import os\n(scaled, worker_pid != os.getpid(), os.__name__)")
    assert check.result == "([10, 20, 30], True, 'os')"


def test_remote_push_and_pull_override_the_analysis(kernel) -> None:
    assert kernel.execute("p1 = 1\np2 = 2").ok
    cell = kernel.execute(
        "%%remote --push p1 --pull c\n"
        "c = p1 + 1\n"
        "d = 'stays remote'\n"
        "shipped = sorted(n for n in dir() if n.startswith('p'))\n"
        "shipped"
    )
    assert cell.ok, cell.traceback_text()
    assert cell.result == "['p1']"  # p2 was not sent although it exists
    check = kernel.execute("(c, 'd' in dir(), 'shipped' in dir())")
    assert check.result == "(2, False, False)"
    missing = kernel.execute("%%remote --push nowhere_defined\n1")
    assert not missing.ok
    assert "nowhere_defined" in missing.traceback_text()


def test_remote_error_points_at_the_cells_own_line(kernel) -> None:
    cell = kernel.execute(
        "%%remote\n"
        "a = 1\n"
        "b = 2\n"
        "c = a / (b - 2)\n"
    )
    assert not cell.ok
    assert cell.reply["content"]["ename"] == "ZeroDivisionError"
    text = cell.traceback_text()
    assert re.search(r'File "<cell-\d+>", line 4, in <module>', text), text
    assert "c = a / (b - 2)" in text
    assert "remote_exec" not in text and "executor" not in text
    assert "ZeroDivisionError: division by zero" in text


def test_remote_syntax_error_runs_nothing(kernel) -> None:
    cell = kernel.execute("%%remote\nok = 1\nbad = (1,\n")
    assert not cell.ok
    assert cell.reply["content"]["ename"] == "SyntaxError"
    assert "interactiveshell" not in cell.traceback_text()


def test_unshippable_name_is_named_before_anything_runs(kernel) -> None:
    assert kernel.execute("import threading\nmy_lock = threading.Lock()\nran = False").ok
    cell = kernel.execute("%%remote\nran = True\nwith my_lock:\n    pass\n")
    assert not cell.ok
    assert cell.reply["content"]["ename"] == "UnshippableError"
    assert "'my_lock'" in cell.traceback_text()
    assert kernel.execute("ran").result == "False"


def test_objectrefs_travel_by_reference_and_remote_functions_travel(kernel) -> None:
    cell = kernel.execute(
        "ref = cellfleet.put(41)\n"
        "@cellfleet.remote\n"
        "def inc(x):\n"
        "    return x + 1\n"
        "cellfleet.get(inc.remote(0))"
    )
    assert cell.ok, cell.traceback_text()
    cell = kernel.execute(
        "%%remote\n"
        "kind = type(ref).__name__\n"
        "cellfleet.get(inc.remote(cellfleet.get(ref)))"
    )
    assert cell.ok, cell.traceback_text()
    assert cell.result == "42"
    assert kernel.execute("kind").result == "'ObjectRef'"


def test_remote_line_magic(kernel) -> None:
    assert kernel.execute("base = 5").ok
    cell = kernel.execute("%remote --num-cpus 1 base * 2 + sum(range(3))")
    assert cell.ok, cell.traceback_text()
    assert cell.result == "13"


def test_remote_help_documents_every_option(kernel) -> None:
    cell = kernel.execute("%%remote?")
    assert cell.ok
    pages = [p for p in cell.reply["content"].get("payload", []) if p.get("source") == "page"]
    text = pages[0]["data"]["text/plain"]
    for option in ("--push", "--pull", "--num-cpus", "--num-gpus", "--resources", "--name",
                   "--nowait", "--actor", "--all-nodes", "--node"):
        assert option in text


def test_prints_stream_live_while_the_cell_runs(kernel) -> None:
    msg_id = kernel.submit(
        "%%remote\n"
        "import time\n"
        "for i in range(6):\n"
        "    print('tick', i)\n"
        "    time.sleep(0.3)\n"
    )
    reply = kernel.reply(msg_id)
    assert reply["content"]["status"] == "ok"
    streams = [m for m in kernel.messages_of(msg_id) if m["msg_type"] == "stream"]
    before_reply = [m for m in streams if m["arrived"] < reply["arrived"] - 0.2]
    assert len(before_reply) >= 3, [m["content"]["text"] for m in streams]
    assert "tick 0" in before_reply[0]["content"]["text"]


def test_output_lands_under_its_own_cell_after_another_cell_ran(kernel) -> None:
    first = kernel.execute(
        "@cellfleet.remote\n"
        "def late():\n"
        "    import time\n"
        "    time.sleep(1.0)\n"
        "    print('late line')\n"
        "late_ref = late.remote()"
    )
    assert first.ok
    second = kernel.execute("later_cell = 1")
    assert second.ok
    kernel.wait_for(lambda: "late line" in first.stdout, timeout=15,
                    message="the late line in the first cell")
    assert kernel.execute("cellfleet.get(late_ref)").ok
    assert "late line" not in second.stdout + second.stderr


def test_nowait_returns_a_handle_and_names_arrive(kernel) -> None:
    cell = kernel.execute(
        "%%remote --nowait\n"
        "import time\n"
        "time.sleep(0.5)\n"
        "arrived = 'yes'\n"
        "'last'"
    )
    assert cell.ok, cell.traceback_text()
    assert "RemoteCellHandle" in cell.result
    check = kernel.execute("handle = _\n(handle.result(timeout=15), arrived)")
    assert check.result == "('last', 'yes')", check.traceback_text()


def test_actor_namespace_persists(kernel) -> None:
    first = kernel.execute("%%remote --actor interp\nimport os\ncounter = 1\nos.getpid()")
    assert first.ok, first.traceback_text()
    second = kernel.execute("%%remote --actor interp\nimport os\ncounter += 1\n"
                            "(counter, os.getpid())")
    assert second.ok, second.traceback_text()
    assert second.result == f"(2, {first.result})"
    assert kernel.execute("'counter' in dir()").result == "False"
    pulled = kernel.execute("%%remote --actor interp --pull counter\ncounter += 1")
    assert pulled.ok
    assert kernel.execute("counter").result == "3"


def test_all_nodes_runs_once_per_node(kernel) -> None:
    cell = kernel.execute(
        "%%remote --all-nodes\n"
        "import os\n"
        "os.getpid()"
    )
    assert cell.ok, cell.traceback_text()
    check = kernel.execute("result = _\n"
                           "nodes = [n['NodeID'] for n in cellfleet.nodes() if n['Alive']]\n"
                           "(sorted(result) == sorted(nodes), len(result))")
    assert check.result == "(True, 1)"


def test_node_option_is_accepted(kernel) -> None:
    node = kernel.execute("cellfleet.nodes()[0]['NodeID']").result.strip("'")
    cell = kernel.execute(f"%remote --node {node[:8]} 'ran'")
    assert cell.ok, cell.traceback_text()
    assert cell.result == "'ran'"
    bad = kernel.execute("%remote --node ffffffffffff 'ran'")
    assert not bad.ok


def test_cluster_magic_shows_the_cluster(kernel) -> None:
    cell = kernel.execute("%cluster")
    assert cell.ok, cell.traceback_text()
    data = [m for m in cell.messages if m["msg_type"] == "execute_result"][0]["content"]["data"]
    assert "text/html" in data
    assert "CPU" in data["text/plain"] and "dashboard" in data["text/plain"]
    assert "2 free of 2" in data["text/plain"] or "free of 2" in data["text/plain"]


def test_dashboard_magic_embeds_the_clusters_page(kernel) -> None:
    cell = kernel.execute("%dashboard graph")
    assert cell.ok, cell.traceback_text()
    data = [m for m in cell.messages if m["msg_type"] == "execute_result"][0]["content"]["data"]
    assert "<iframe" in data["text/html"] and "/cellfleet/dashboard/" in data["text/html"]
    assert "/graph" in data["text/html"]
    link = kernel.execute("%dashboard --link")
    html = [m for m in link.messages if m["msg_type"] == "execute_result"][0]["content"]["data"]
    assert "<a href=" in html["text/html"]
    bad = kernel.execute("%dashboard nonsense")
    assert "no page 'nonsense'" in json.dumps([m["content"] for m in bad.messages])


def _cpus_free(kernel, expected: float, timeout: float = 10) -> None:
    def free() -> bool:
        cell = kernel.execute("cellfleet.available_resources().get('CPU', 0)")
        return cell.result is not None and float(cell.result) == expected

    wait_until(free, timeout=timeout, interval=0.1, message=f"{expected:g} CPUs free")


def _interrupt_when(kernel, msg_id: str, marker: str) -> dict:
    kernel.wait_for(lambda: any(m["msg_type"] == "stream" and marker in m["content"]["text"]
                                for m in kernel.messages_of(msg_id)),
                    timeout=20, message=f"{marker!r} in the cell")
    kernel.km.interrupt_kernel()
    return kernel.reply(msg_id, timeout=10)  # how fast it ends is measured in benchmarks/


def test_interrupt_during_get_cancels_the_cells_tasks(kernel) -> None:
    msg_id = kernel.submit(
        "@cellfleet.remote\n"
        "def spin(i):\n"
        "    import time\n"
        "    print('spinning', i, flush=True)\n"
        "    while True:\n"
        "        time.sleep(0.01)\n"
        "spinners = [spin.remote(i) for i in range(2)]\n"
        "cellfleet.get(spinners)"
    )
    reply = _interrupt_when(kernel, msg_id, "spinning")
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    _cpus_free(kernel, 2.0)
    cell = kernel.execute(
        "try:\n"
        "    cellfleet.get(spinners[0], timeout=10)\n"
        "except cellfleet.exceptions.TaskCancelledError:\n"
        "    print('cancelled')\n"
    )
    assert "cancelled" in cell.stdout, cell.traceback_text()


def test_interrupt_during_remote_cell(kernel) -> None:
    msg_id = kernel.submit(
        "%%remote\n"
        "import time\n"
        "print('sleeping', flush=True)\n"
        "time.sleep(60)\n"
    )
    reply = _interrupt_when(kernel, msg_id, "sleeping")
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    shown = "\n".join(reply["content"]["traceback"])
    assert "time.sleep(60)" in shown and "interrupted" in shown, shown
    assert f"Cell In[{reply['content']['execution_count']}]" in shown, shown
    assert "run_cell_magic" not in shown and "get_ipython" not in shown, shown
    _cpus_free(kernel, 2.0)
    assert kernel.execute("1 + 1").result == "2"


def test_long_get_on_many_refs_shows_a_progress_bar_that_goes_away(kernel) -> None:
    cell = kernel.execute(
        "@cellfleet.remote\n"
        "def slowly(i):\n"
        "    import time\n"
        "    time.sleep(0.5 * i)\n"
        "    return i\n"
        "cellfleet.get([slowly.remote(i) for i in range(1, 5)])"
    )
    assert cell.ok, cell.traceback_text()
    assert cell.result == "[1, 2, 3, 4]"
    kinds = [m["msg_type"] for m in cell.messages]
    shown = [m for m in cell.messages if m["msg_type"] == "display_data"
             and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
    assert shown  # (beside it, the cell's live strip: kernel/cellstrip.py)
    assert "comm_msg" in kinds and "comm_close" in kinds
    bar = shown[0]["content"]["transient"]["display_id"]
    cleared = [m for m in cell.messages if m["msg_type"] == "update_display_data"
               and m["content"]["transient"]["display_id"] == bar]
    assert cleared and cleared[-1]["content"]["data"] == {"text/plain": ""}
    quick = kernel.execute("cellfleet.get([slowly.remote(0), slowly.remote(0)])")
    assert "display_data" not in [m["msg_type"] for m in quick.messages]


def test_an_output_flood_is_rate_limited_with_one_notice(kernel) -> None:
    cell = kernel.execute(
        "%%remote\n"
        "for i in range(30000):\n"
        "    print('flood', i)\n"
        "'done'"
    )
    assert cell.ok, cell.traceback_text()
    assert cell.result == "'done'"
    assert cell.stderr.count("dropping lines") == 1
    assert 1000 <= cell.stdout.count("\n") < 30000
    assert kernel.execute("'still responsive'").result == "'still responsive'"


def test_resource_options(kernel) -> None:
    named = kernel.execute("%%remote --name my-job --num-cpus 0.5 --resources '{}'\n"
                           "print('named')\n"
                           "cellfleet.get_runtime_context().get_assigned_resources()")
    assert named.ok, named.traceback_text() + named.stderr
    assert "(my-job pid=" in named.stdout
    assert named.result == "{'CPU': 0.5}"
    waiting = kernel.submit("%%remote --num-gpus 1\n1")  # no node has a GPU: it waits
    reply = _interrupt_when(kernel, waiting, "cannot be scheduled yet: no node of the cluster")
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    bad = kernel.execute("%%remote --resources '{\"CPU\": 1}'\n1")
    assert not bad.ok and bad.reply["content"]["ename"] == "UsageError"
    bad_json = kernel.execute("%%remote --resources '{oops'\n1")
    assert not bad_json.ok and "not valid JSON" in bad_json.stderr


def test_an_unpicklable_return_value_shows_the_users_frames_and_the_reason(kernel) -> None:
    cell = kernel.execute(
        "@cellfleet.remote\n"
        "def make_lock():\n"
        "    import threading\n"
        "    return threading.Lock()\n"
        "cellfleet.get(make_lock.remote())"
    )
    assert not cell.ok
    shown = cell.traceback_text()
    assert "Could not serialize the return value of make_lock() (lock)" in shown, shown
    assert "cellfleet.get(make_lock.remote())" in shown, shown  # the cell's own line
    for plumbing in ("executor.py", "_serialization.py", "cloudpickle", "direct cause"):
        assert plumbing not in shown, shown


def test_an_option_typo_names_the_closest_option(kernel) -> None:
    cell = kernel.execute("%%remote --nowiat\n1")  # IPython shows a UsageError on stderr
    assert "UsageError" in cell.stderr and "did you mean --nowait?" in cell.stderr, cell.stderr
    assert "'%%remote?'" in cell.stderr and cell.result is None
    abbreviated = kernel.execute("%%remote --num-cpu 1\n1")
    assert "did you mean --num-cpus?" in abbreviated.stderr and abbreviated.result is None


def test_actor_prints_are_prefixed_with_the_class(kernel) -> None:
    cell = kernel.execute(
        "@cellfleet.remote\n"
        "class Counter:\n"
        "    def inc(self):\n"
        "        print('incremented')\n"
        "        return 1\n"
        "counter_actor = Counter.remote()\n"
        "cellfleet.get(counter_actor.inc.remote())"
    )
    assert cell.ok, cell.traceback_text()
    assert re.search(r"\(Counter pid=\d+\) incremented", cell.stdout), cell.stdout


def test_a_large_name_read_by_a_remote_cell_gets_one_put_suggestion(kernel) -> None:
    assert kernel.execute("big_blob = bytes(101 * 2**20)").ok
    first = kernel.execute("%%remote\nlen(big_blob)")
    assert first.result == str(101 * 2**20), first.traceback_text()
    assert "'big_blob'" in first.stderr and "cellfleet.put(big_blob)" in first.stderr
    second = kernel.execute("%%remote\nlen(big_blob)")
    assert second.ok, second.traceback_text()
    assert "cellfleet.put" not in second.stderr, second.stderr
    assert kernel.execute("del big_blob").ok


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellfleet.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_cellfleet_status_lists_the_kernels_cluster_and_the_clis(kernel) -> None:
    cell = kernel.execute("cellfleet.init(ignore_reinit_error=True)['gcs_address']")
    kernel_address = cell.result.strip("'")
    name = os.path.basename(kernel.km.connection_file)
    kernel_id = name[len("kernel-"):-len(".json")]
    port = free_port()
    cli_address = f"127.0.0.1:{port}"
    try:
        started = _cli("start", "--head", "--port", str(port), "--num-cpus", "1")
        assert started.returncode == 0, started.stderr
        status = _cli("status")
        assert status.returncode == 0, status.stderr
        listing = status.stdout.split("\n\n")[0]
        assert f"{kernel_address}" in listing and f"Jupyter kernel {kernel_id}" in listing, \
            status.stdout
        assert re.search(rf"{re.escape(cli_address)}\s+cellfleet start", listing), status.stdout
        assert status.stdout.count("node ") >= 2  # the nodes of both
        one = _cli("status", "--address", kernel_address)
        assert one.returncode == 0, one.stderr
        assert kernel_address in one.stdout and cli_address not in one.stdout
    finally:
        _cli("stop")
