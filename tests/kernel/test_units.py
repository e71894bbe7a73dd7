"""Unit tests of the kernel's parts that need no kernel process."""

from __future__ import annotations

import json
import os

import pytest

from cellfleet.kernel.analysis import analyze, analyze_expression
from cellfleet.kernel.install import kernel_spec, main
from cellfleet.kernel.magics import split_line_options
from cellfleet.kernel.output import OutputRouter
from cellfleet.kernel.remote_exec import compile_cell, execute

ANALYSIS = [
    ("x = y + 1\nz = x * 2\nz", {"y"}, {"x", "z"}),
    ("x = x + 1", {"x"}, {"x"}),
    ("total += i", {"total", "i"}, {"total"}),
    ("import numpy as np\nnp.zeros(n)", {"n"}, {"np"}),
    ("def f(a):\n    return a + helper(b)\nr = f(1)", {"helper", "b"}, {"f", "r"}),
    ("def f():\n    return later()\ndef later():\n    return 1\nf()", set(), {"f", "later"}),
    ("if c:\n    v = 1\nprint(v)", {"c", "print", "v"}, {"v"}),
    ("for i in range(n):\n    acc = acc + i\n", {"range", "n", "acc"}, {"i", "acc"}),
    ("[x * k for x in data]", {"data", "k"}, set()),
    ("class A(Base):\n    k = K\n    def m(self):\n        return g(self.k)\na = A()",
     {"Base", "K", "g"}, {"A", "a"}),
    ("def inc():\n    global counter\n    counter += 1\ninc()", {"counter"}, {"inc", "counter"}),
    ("with open(p) as fh:\n    data = fh.read()\nlen(data)", {"open", "p", "len"},
     {"fh", "data"}),
    ("try:\n    r = risky()\nexcept E as e:\n    r = None\nr", {"risky", "E", "r"}, {"r", "e"}),
    ("f = lambda q: q + w\nf(1)", {"w"}, {"f"}),
    ("(y := 3) + y", set(), {"y"}),
    ("del zz", {"zz"}, set()),
]


@pytest.mark.parametrize(("code", "reads", "assigns"), ANALYSIS)
def test_analysis(code: str, reads: set, assigns: set) -> None:
    names = analyze(code)
    assert set(names.reads) == reads
    assert set(names.assigns) == assigns


def test_analysis_last_expression_and_expressions() -> None:
    assert analyze("x = 1\nx").ends_with_expression
    assert not analyze("x = 1").ends_with_expression
    assert set(analyze_expression("f(x) + [y for y in z]").reads) == {"f", "x", "z"}
    with pytest.raises(SyntaxError):
        analyze("x = (1,\n")


def test_execute_pulls_names_last_value_and_line_numbers() -> None:
    ns: dict = {"__name__": "__main__"}
    out = execute(ns, "b = a * 2\nimport os\nb + 1\n", "<cell-7>", "%%remote\n", 1, "exec",
                  ["b", "os"], {"a": 20})
    assert out["result"] == 41
    assert out["values"] == {"b": 40}
    assert out["modules"] == {"os": "os"}
    with pytest.raises(ZeroDivisionError) as info:
        execute({}, "x = 1\ny = x / 0\n", "<cell-8>", "%%remote\n", 1, "exec", [], {})
    text = info.value._cellfleet_traceback
    assert 'File "<cell-8>", line 3, in <module>' in text
    assert "y = x / 0" in text
    assert "remote_exec" not in text


def test_execute_reports_unpicklable_results() -> None:
    out = execute({}, "import threading\nlock = threading.Lock()\nlock\n", "<cell-9>", "", 0,
                  "exec", ["lock"], {})
    assert set(out["unpulled"]) == {"lock", "Out"}
    assert out["result"] is None


def test_compile_eval_mode_keeps_line() -> None:
    _, code = compile_cell("2 * 3", "<x>", 2, "eval")
    assert eval(code) == 6


def test_split_line_options() -> None:
    assert split_line_options("--num-cpus 2 --nowait f(x)") == ("--num-cpus 2 --nowait", "f(x)")
    assert split_line_options("f(x) --nowait") == ("", "f(x) --nowait")
    assert split_line_options("--name=job g()") == ("--name job", "g()")
    assert split_line_options("-x") == ("", "-x")


class FakeSession:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, socket, msg_type, content, parent=None, ident=None):
        self.sent.append((msg_type, content, parent))


def test_router_sends_to_the_submitting_cell() -> None:
    session = FakeSession()
    router = OutputRouter(session, object())
    router.register_cell({"header": {"msg_id": "cell-a"}})
    router.register_cell({"header": {"msg_id": "cell-b"}})
    router.handle([[1, "cell-a", "t", "f", 12, "stdout", "hello"],
                   [1, "cell-a", "t", "f", 12, "stderr", "oops"],
                   [1, "", "t", "g", 13, "stdout", "untagged"]])
    sent = {(c["name"], p["header"]["msg_id"]): c["text"] for _, c, p in session.sent}
    assert sent[("stdout", "cell-a")] == "(f pid=12) hello\n"
    assert sent[("stderr", "cell-a")] == "(f pid=12) oops\n"
    assert sent[("stdout", "cell-b")] == "(g pid=13) untagged\n"  # the latest cell


def test_router_rate_limit_drops_with_one_notice() -> None:
    session = FakeSession()
    now = [0.0]
    router = OutputRouter(session, object(), rate_limit=10, clock=lambda: now[0])
    router.register_cell({"header": {"msg_id": "c"}})
    for second in range(3):
        now[0] = float(second)
        router.handle([[1, "c", "t", "f", 1, "stdout", f"line {i}"] for i in range(50)])
    text = "".join(c["text"] for _, c, _ in session.sent if c["name"] == "stdout")
    notices = "".join(c["text"] for _, c, _ in session.sent if c["name"] == "stderr")
    assert text.count("\n") == 30  # 10 a second
    assert notices.count("dropping lines") == 1
    for second in (3.0, 4.0):  # a calm second ends the flood
        now[0] = second
        router.handle([[1, "c", "t", "f", 1, "stdout", "calm"]])
    notices = "".join(c["text"] for _, c, _ in session.sent if c["name"] == "stderr")
    assert "flood is over" in notices


def test_install_writes_a_spec(tmp_path) -> None:
    assert main(["install", "--prefix", str(tmp_path), "--name", "cf-remote",
                 "--address", "127.0.0.1:6379"]) == 0
    spec = json.loads((tmp_path / "share/jupyter/kernels/cf-remote/kernel.json").read_text())
    assert spec["argv"][1:3] == ["-m", "cellfleet.kernel"]
    assert os.path.isabs(spec["argv"][0])
    assert spec["env"]["CELLFLEET_ADDRESS"] == "127.0.0.1:6379"
    assert spec["display_name"] == "Python 3 (cellfleet) @ 127.0.0.1:6379"
    assert main(["install", "--prefix", str(tmp_path), "--num-cpus", "3"]) == 0
    spec = json.loads((tmp_path / "share/jupyter/kernels/cellfleet/kernel.json").read_text())
    assert spec["env"] == {"CELLFLEET_NUM_CPUS": "3"}
    assert spec["display_name"] == "Python 3 (cellfleet)"


def test_install_rejects_bad_arguments(tmp_path, capsys) -> None:
    assert main(["install", "--prefix", str(tmp_path), "--address", "nowhere"]) == 2
    assert main(["install", "--prefix", str(tmp_path), "--address", "h:1",
                 "--num-cpus", "2"]) == 2
    assert main(["install", "--prefix", str(tmp_path), "--name", "bad name"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_shipped_kernel_json_matches_the_generated_one() -> None:
    here = os.path.dirname(__file__)
    shipped = json.load(open(os.path.join(here, "../../kernel/kernelspec/kernel.json")))
    generated = kernel_spec(executable="python")
    assert shipped["argv"] == generated["argv"]
    assert shipped["display_name"] == generated["display_name"] == "Python 3 (cellfleet)"
    assert shipped["interrupt_mode"] == generated["interrupt_mode"]
