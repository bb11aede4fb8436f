"""A real chorus kernel driven through jupyter_client, as a frontend would."""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from chorus.kernel.kernelspec import install
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

# Kernelspecs installed the way users install them (chorus kernel install), into a
# private prefix that jupyter_client finds through JUPYTER_PATH.
_PREFIX = tempfile.TemporaryDirectory(prefix="chorus-kernelspecs-")
atexit.register(_PREFIX.cleanup)
_KERNELS = Path(_PREFIX.name) / "share" / "jupyter"
os.environ["JUPYTER_PATH"] = os.pathsep.join(
    p for p in (str(_KERNELS), os.environ.get("JUPYTER_PATH", "")) if p
)


def chorus_kernel_manager(ranks: int = 4) -> KernelManager:
    """A KernelManager for the installed kernelspec "chorus-test-<ranks>"."""
    name = f"chorus-test-{ranks}"
    if not (_KERNELS / "kernels" / name).exists():
        install(name=name, ranks=ranks, backend="shm", timeout=20, prefix=_PREFIX.name)
    return KernelManager(kernel_name=name)


@dataclass
class CellRun:
    reply: dict[str, Any]
    stdout: str = ""
    stderr: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)
    displays: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    # (when it arrived, content) of every update_display_data
    updates: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    # Every comm message (whole), in order.
    comms: list[dict[str, Any]] = field(default_factory=list)
    # (msg_type, content) of every stream, display and result, in order.
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.reply["content"]["status"])


class Frontend:
    """Executes cells and answers input requests from a list of replies."""

    def __init__(self, manager: KernelManager, client: BlockingKernelClient) -> None:
        self.manager = manager
        self.client = client

    def run_interrupted(self, code: str, within: float = 10.0) -> CellRun:
        """Run ``code``, interrupt it 2 s in (the frontend's button); it must stop promptly."""
        sent: list[float] = []

        def interrupt() -> None:
            sent.append(time.monotonic())
            self.manager.interrupt_kernel()

        run = self.run(code, timeout=60, on_start=interrupt)
        assert run.status == "error", run
        assert time.monotonic() - sent[0] < within
        assert any(e["ename"] == "KeyboardInterrupt" for e in run.errors), run.errors
        # As in ipykernel: the user's frames only, not the rank's signal handler.
        lines = [line for e in run.errors for line in e["traceback"]]
        assert not any("_on_sigint" in line for line in lines), lines
        return run

    def run(
        self,
        code: str,
        inputs: list[str] | None = None,
        timeout: float = 60.0,
        on_start: Any = None,
    ) -> CellRun:
        answers = list(inputs or [])
        msg_id = self.client.execute(code, allow_stdin=True)
        run = CellRun(reply={})
        deadline = time.monotonic() + timeout
        idle = False
        started = False
        while not (idle and run.reply):
            if time.monotonic() > deadline:
                pytest.fail(f"cell did not finish in {timeout} s: {code!r}\nso far: {run}")
            if on_start is not None and not started and time.monotonic() > deadline - timeout + 2:
                started = True
                on_start()
            try:
                msg = self.client.get_stdin_msg(timeout=0.02)
            except queue.Empty:
                pass
            else:
                if msg["header"]["msg_type"] == "input_request":
                    run.prompts.append(msg["content"]["prompt"])
                    if not answers:
                        pytest.fail(f"unexpected prompt {msg['content']['prompt']!r}: {run}")
                    self.client.input(answers.pop(0))
            for msg in self._iopub_batch():
                if msg["parent_header"].get("msg_id") == msg_id:
                    kind, content = msg["header"]["msg_type"], msg["content"]
                    if kind in ("stream", "display_data", "execute_result"):
                        run.outputs.append((kind, content))
                    if kind == "stream":
                        if content["name"] == "stdout":
                            run.stdout += content["text"]
                        else:
                            run.stderr += content["text"]
                    elif kind == "execute_result":
                        run.results.append(content)
                    elif kind == "display_data":
                        run.displays.append(content)
                    elif kind == "update_display_data":
                        run.updates.append((time.monotonic(), content))
                    elif kind in ("comm_open", "comm_msg", "comm_close"):
                        run.comms.append(msg)
                    elif kind == "error":
                        run.errors.append(content)
                    elif kind == "status" and content["execution_state"] == "idle":
                        idle = True
            if not run.reply:
                try:
                    reply = self.client.get_shell_msg(timeout=0.01)
                except queue.Empty:
                    pass
                else:
                    if reply["parent_header"].get("msg_id") == msg_id:
                        run.reply = reply
        return run

    def _iopub_batch(self) -> list[dict[str, Any]]:
        """Everything waiting on iopub (at most 0.02 s for the first message)."""
        batch = []
        timeout = 0.02
        while True:
            try:
                batch.append(self.client.get_iopub_msg(timeout=timeout))
            except queue.Empty:
                return batch
            timeout = 0

    def rank_pids(self) -> list[int]:
        kernel = psutil.Process(self.manager.provisioner.process.pid)
        return [
            p.pid
            for p in kernel.children(recursive=True)
            if "chorus.kernel.rank" in " ".join(p.cmdline())
        ]


@contextlib.contextmanager
def running_kernel(manager: KernelManager, now: bool = False) -> Iterator[Frontend]:
    """Start ``manager``'s kernel, yield a Frontend on it, shut it down after."""
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield Frontend(manager, client)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=now)


@pytest.fixture(scope="module")
def kernel() -> Iterator[Frontend]:
    with running_kernel(chorus_kernel_manager()) as frontend:
        yield frontend
