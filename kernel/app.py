"""The kernel application both the chorus kernel and every rank kernel run in.

After a ``shutdown_request`` ipykernel 7 stops the main loop while the
control thread is still flushing ``sys.stdout``, ``sys.stderr`` and its idle
status through the iopub thread. The process then exits, and the first exit
handler stops the iopub thread: a flush that loses this race waits out its
10 s timeout or blocks for good on the stopped thread's pipe. A kernel asked
to shut down exited seconds later or never, and its manager SIGTERMed it
half-way through its own clean-up (the chorus kernel's, of its ranks). Here
the control thread is let finish before the process starts to exit.
"""

from __future__ import annotations

from ipykernel.kernelapp import IPKernelApp

# Seconds the control thread may take to finish after the main loop stops.
CONTROL_FINISH_TIMEOUT = 5.0


class KernelApp(IPKernelApp):
    """:class:`IPKernelApp` whose control thread finishes before the iopub thread stops."""

    def start(self) -> None:
        super().start()  # type: ignore[no-untyped-call]
        control = self.control_thread
        if control is not None and control.is_alive():
            control.stop()
            control.join(CONTROL_FINISH_TIMEOUT)
