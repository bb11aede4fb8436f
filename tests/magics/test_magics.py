"""%load_ext chorus in a stock IPython kernel: the same engine as the chorus kernel."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest
from jupyter_client.manager import KernelManager

from tests.kernel.conftest import Frontend, running_kernel


@pytest.fixture(scope="module")
def ipython() -> Iterator[Frontend]:
    with running_kernel(KernelManager(kernel_name="python3")) as frontend:
        run = frontend.run("%load_ext chorus\n%chorus start -n 3 --timeout 20")
        assert run.status == "ok", run
        assert "3 ranks ready" in run.stdout
        yield frontend


def test_all_runs_everywhere_with_labels(ipython: Frontend) -> None:
    run = ipython.run("%%all\ng = chorus.init()\nprint('sum', chorus.all_sum(np.ones(2) * rank))")
    assert run.status == "ok", run
    assert "[0-2] sum [3. 3.]" in run.stdout, run.stdout
    subset = ipython.run("%%all --ranks 0,2\nprint('me', rank)")
    assert subset.stdout.strip().splitlines() == ["[0] me 0", "[2] me 2"]


def test_all_result_and_errors(ipython: Frontend) -> None:
    run = ipython.run("%%all\nrank + 100")
    assert any("[0] 100" in d["data"]["text/plain"] for d in run.displays), run.displays
    bad = ipython.run("%%all\n1/0")
    assert bad.status == "error"
    assert "[0-2]" in bad.stderr
    assert "ZeroDivisionError" in bad.stderr


def test_input_and_pdb_through_the_magic(ipython: Frontend) -> None:
    run = ipython.run("%%all\nv = input('v? ')\nprint(v * 2)", inputs=["ab"])
    assert run.prompts == ["[0-2] v? "]
    assert "[0-2] abab" in run.stdout
    run = ipython.run("%%all\nq = rank * 7\nbreakpoint()\nq += 1", inputs=["p q", "c"])
    assert run.prompts == ["[0-2] ipdb> "] * 2, run.prompts
    assert all(f"[{r}] {r * 7}" in run.stdout for r in range(3)), run.stdout


def test_pull_push_status_and_autoall(ipython: Frontend) -> None:
    ipython.run("%chorus push base=[10, 20]")
    run = ipython.run("values = %chorus pull base\nprint(values)")
    assert "[[10, 20], [10, 20], [10, 20]]" in run.stdout, run
    # As magics/README.md has it: np means numpy here too, as on the ranks.
    ipython.run("%chorus push y=np.arange(3)")
    run = ipython.run("%%all\nprint(type(y).__name__, y.tolist())")
    assert "[0-2] ndarray [0, 1, 2]" in run.stdout, run
    run = ipython.run("%%all\nmine = base[0] + rank")
    run = ipython.run(
        "print(%chorus pull mine)".replace(
            "print(%chorus pull mine)", "x = %chorus pull mine\nprint(x)"
        )
    )
    assert "[10, 11, 12]" in run.stdout, run
    status = ipython.run("%chorus status")
    lines = status.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "host", "pid", "state"]
    assert len(lines) == 4
    pids = [int(line.split()[2]) for line in lines[1:]]
    assert all(psutil.pid_exists(p) for p in pids)
    on = ipython.run("%autoall")
    assert "autoall on" in on.stdout
    auto = ipython.run("print('auto', rank)")
    assert "[0] auto 0" in auto.stdout, auto.stdout
    off = ipython.run("%autoall off")
    assert "autoall off" in off.stdout
    local = ipython.run("print('local')")
    assert local.stdout == "local\n"
    ipython.run("%chorus stop")
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    restarted = ipython.run("%chorus start -n 3 --timeout 20")
    assert "3 ranks ready" in restarted.stdout


def test_where_from_the_magic(ipython: Frontend) -> None:
    run = ipython.run("%%all\ng = chorus.init()\nchorus.barrier()")
    assert run.status == "ok", run
    where = ipython.run("%chorus where")
    assert where.status == "ok", where
    assert "chorus where: 3 ranks" in where.stdout, where.stdout
    assert "[0-2]  not in a chorus call: idle" in where.stdout, where.stdout
    assert "verdict: no rank is inside a chorus call" in where.stdout, where.stdout


def test_a_rank_asks_where_every_rank_is_from_a_cell(ipython: Frontend) -> None:
    # Ranks 1 and 2 wait in the barrier for rank 0, which asks the magics' rank set.
    code = (
        "%%all\ng = chorus.init()\n"
        "import time\n"
        "if rank == 0:\n"
        "    for _ in range(100):\n"
        "        report = chorus.debug.where()\n"
        "        if report.verdict.waiting == [1, 2]:\n"
        "            break\n"
        "        time.sleep(0.1)\n"
        "    print('KIND', report.verdict.kind, report.verdict.waiting)\n"
        "chorus.barrier()"
    )
    run = ipython.run(code)
    assert run.status == "ok", run
    assert "[0] KIND missing-call [1, 2]" in run.stdout, run.stdout


def test_a_dead_rank_is_reported_with_what_brings_it_back(ipython: Frontend) -> None:
    # The last test of the module: it leaves rank 2 dead.
    run = ipython.run(
        "%%all\nimport os\nif rank == 2:\n    os._exit(3)\nimport time\ntime.sleep(2)"
    )
    assert run.status == "error", run
    assert "rank 2 exited with code 3" in run.stderr, run.stderr
    assert "%chorus stop, then %chorus start, to get it back" in run.stderr, run.stderr
    assert "restart the kernel" not in run.stderr, run.stderr


def test_status_after_stop_says_so_without_a_traceback(ipython: Frontend) -> None:
    assert ipython.run("%chorus stop").status == "ok"
    run = ipython.run("%chorus status")
    assert run.status == "error", run
    assert run.reply["content"]["ename"] == "UsageError", run.reply
    assert "no chorus ranks: run %chorus start -n 4 first" in run.stderr, run
    shown = run.stderr + "".join(line for e in run.errors for line in e["traceback"])
    assert "magics.py" not in shown, shown
