"""Jupyter's own kernel conformance suite (jupyter_kernel_test) against a 4-rank chorus kernel.

The samples are those the standard Python kernel passes, plus chorus's own:
every cell runs on 4 ranks, and what a frontend or nbconvert reads must look
as it does from ipykernel (the result's data is the value, one pager
payload, the history of the cells typed).
"""

from __future__ import annotations

from typing import Any, ClassVar

import jupyter_kernel_test as jkt

from tests.kernel.conftest import chorus_kernel_manager

# Installs the kernelspec "chorus-test-4" (the way users install it) if needed.
KERNEL_NAME = chorus_kernel_manager(ranks=4).kernel_name


class ChorusKernelConformance(jkt.KernelTests):
    kernel_name = KERNEL_NAME
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples: ClassVar[list[dict[str, Any]]] = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples: ClassVar[list[str]] = [
        "1",
        "print('hello, world')",
        "def f(x):\n  return x*2\n\n\n",
    ]
    incomplete_code_samples: ClassVar[list[str]] = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples: ClassVar[list[str]] = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result: ClassVar[list[dict[str, str]]] = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        # chorus's own: a collective's result, the same on every rank.
        {"code": "int(chorus.all_sum(np.ones(1))[0])", "result": "4"},
    ]
    code_display_data: ClassVar[list[dict[str, str]]] = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
            "mime": "text/latex",
        },
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        # The suite allows 15 s a request; the first cell waits for 4 rank
        # kernels to start, which a loaded 2-core machine may take longer for.
        reply = cls.kc.execute_interactive("rank", timeout=120)
        assert reply["content"]["status"] == "ok", reply
