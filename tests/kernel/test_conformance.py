"""jupyter_kernel_test's protocol conformance tests against the cellfleet kernel."""

from __future__ import annotations

import os
import unittest

import pytest

jkt = pytest.importorskip("jupyter_kernel_test")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _spec(kernelspec_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLFLEET_NUM_CPUS", "1")
        yield


class CellfleetKernelTests(jkt.KernelTests):
    kernel_name = os.environ.get("JKT_KERNEL", "cellfleet")
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "cellfleet.ini", "matches": {"init"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "cellfleet.get?"
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [{"code": "6*7", "result": "42"},
                           {"code": "%remote 6*7", "result": "42"}]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
    ]
    code_history_pattern = "1?2*"
    # "range" and "search" are left out: IPython's history database answers them with nothing
    # in these short-lived kernels, for the stock python3 kernel too.
    supported_history_operations = ("tail",)
    code_inspect_sample = "cellfleet.remote"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


if __name__ == "__main__":
    unittest.main()
